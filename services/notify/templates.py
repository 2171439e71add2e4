"""Rendering notices with Jinja2: Chinese defaults, overridable per node.

For a node, templates are looked up nearest first: database overrides (the node's own,
then its ancestors'), then a directory `<NOTIFY_TEMPLATE_DIR>/<node>/` for the node and
its ancestors, then the packaged defaults in `templates/`. Every notice type has a
Markdown template (`<notice>.md`, also used for webhooks and plain-text e-mail, and which
sets the `title`) and an HTML one (`<notice>.html`, autoescaped). Operator-supplied
templates run in Jinja's sandbox.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from jinja2 import (ChoiceLoader, DictLoader, FileSystemLoader, StrictUndefined, TemplateError,
                    select_autoescape)
from jinja2.sandbox import SandboxedEnvironment

from services.contracts.periods import CST
from services.contracts.vocab import INSPECTION_KIND_LABELS, PLACE_TYPE_LABELS, SEVERITY_LABELS
from services.notify.domain import NOTICE_LABELS, NoticeType, NotifyRuleViolation

DEFAULT_TEMPLATE_DIR = Path(__file__).parent / "templates"
TEMPLATE_NAMES = sorted(p.name for p in DEFAULT_TEMPLATE_DIR.iterdir() if p.suffix in (".md", ".html"))
STATUS_LABELS = {"open": "待整改", "in_progress": "整改中", "fix_submitted": "已提交整改",
                 "closed": "已销号", "escalated": "已上报协调"}


def cst(value: Any, fmt: str = "%Y年%m月%d日 %H:%M") -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(CST).strftime(fmt)


def _label(table: dict):
    def lookup(value: Any) -> str:
        for key, label in table.items():
            if str(key) == str(value) or getattr(key, "value", None) == value:
                return label
        return str(value)
    return lookup


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def score(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Rendered:
    title: str
    markdown: str
    html: str


class Templates:
    def __init__(self, template_dir: str | Path | None = None):
        self.template_dir = Path(template_dir) if template_dir else None

    def environment(self, node_chain: Iterable[str] = (), overrides: dict[str, str] | None = None
                    ) -> SandboxedEnvironment:
        loaders = []
        if overrides:
            loaders.append(DictLoader(dict(overrides)))
        if self.template_dir is not None:
            loaders += [FileSystemLoader(str(self.template_dir / n)) for n in node_chain
                        if (self.template_dir / n).is_dir()]
        loaders.append(FileSystemLoader(str(DEFAULT_TEMPLATE_DIR)))
        env = SandboxedEnvironment(loader=ChoiceLoader(loaders), undefined=StrictUndefined,
                                   autoescape=select_autoescape(enabled_extensions=("html",),
                                                                default_for_string=False, default=False),
                                   trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
        env.filters.update(cst=cst, percent=percent, score=score,
                           severity=_label(SEVERITY_LABELS), place_type=_label(PLACE_TYPE_LABELS),
                           inspection_kind=_label(INSPECTION_KIND_LABELS), status=_label(STATUS_LABELS),
                           notice=_label(NOTICE_LABELS))
        return env

    def render(self, notice: str, context: dict, node_chain: Iterable[str] = (),
               overrides: dict[str, str] | None = None) -> Rendered:
        env = self.environment(list(node_chain), overrides)
        ctx = dict(context, notice_label=NOTICE_LABELS.get(NoticeType(notice), notice))
        module = env.get_template(f"{notice}.md").make_module(ctx)
        title = str(getattr(module, "title", "") or ctx["notice_label"]).strip()
        markdown = str(module).strip() + "\n"
        html = env.get_template(f"{notice}.html").render(ctx, title=title)
        return Rendered(title=title, markdown=markdown, html=html)

    def default_source(self, name: str) -> str:
        return (DEFAULT_TEMPLATE_DIR / name).read_text(encoding="utf-8")


def check_template(name: str, source: str) -> None:
    """Refuse a template that does not parse, or a name no notice uses."""
    if name not in TEMPLATE_NAMES:
        raise NotifyRuleViolation("name", f"unknown template {name!r}; one of {TEMPLATE_NAMES}")
    try:
        Templates().environment().parse(source)
    except TemplateError as exc:
        raise NotifyRuleViolation("source", f"template does not parse: {exc}") from None
