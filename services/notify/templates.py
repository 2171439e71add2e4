"""Rendering notices with Jinja2: Chinese defaults, overridable per node.

For a node, templates are looked up nearest first: database overrides (the node's own,
then its ancestors'), then a directory `<NOTIFY_TEMPLATE_DIR>/<node>/` for the node and
its ancestors, then the packaged defaults in `templates/`. Every notice type has a
Markdown template (`<notice>.md`, also used for webhooks and plain-text e-mail, and which
sets the `title`) and an HTML one (`<notice>.html`, autoescaped). Operator-supplied
templates run in a bounded sandbox (`sandbox.py`): every render has a budget of
operations, output and sizes, so no template can stall the process; a stored template is
test-rendered with sample data before it is kept (`check_template`), and one that still
fails on a real event falls back to the packaged default (`render_safely`), so a notice is
never lost to a template.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import logging

from jinja2 import (ChoiceLoader, DictLoader, FileSystemLoader, StrictUndefined, TemplateError,
                    select_autoescape)

from services.contracts.periods import CST
from services.contracts.vocab import INSPECTION_KIND_LABELS, PLACE_TYPE_LABELS, SEVERITY_LABELS
from services.notify.domain import NOTICE_LABELS, NoticeType, NotifyRuleViolation
from services.notify.sandbox import DEFAULT_LIMITS, PACKAGED_LIMITS, BoundedSandbox, Limits, markdown_block, one_line

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE_DIR = Path(__file__).parent / "templates"
TEMPLATE_NAMES = sorted(p.name for p in DEFAULT_TEMPLATE_DIR.iterdir() if p.suffix in (".md", ".html"))
FREQUENCY_LABELS = {"daily": "每日", "weekly": "每周", "monthly": "每月"}
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
    # One format for every score and deduction: "92.00" beside "86.74", never "92".
    return "—" if value is None else f"{value:.2f}"


@dataclass(frozen=True)
class Rendered:
    title: str
    markdown: str
    html: str


class Templates:
    def __init__(self, template_dir: str | Path | None = None):
        self.template_dir = Path(template_dir) if template_dir else None

    def environment(self, node_chain: Iterable[str] = (), overrides: dict[str, str] | None = None,
                    limits: Limits = DEFAULT_LIMITS) -> BoundedSandbox:
        loaders = []
        if overrides:
            loaders.append(DictLoader(dict(overrides)))
        if self.template_dir is not None:
            loaders += [FileSystemLoader(str(self.template_dir / n)) for n in node_chain
                        if (self.template_dir / n).is_dir()]
        loaders.append(FileSystemLoader(str(DEFAULT_TEMPLATE_DIR)))
        env = BoundedSandbox(loader=ChoiceLoader(loaders), undefined=StrictUndefined,
                             autoescape=select_autoescape(enabled_extensions=("html",),
                                                          default_for_string=False, default=False),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, limits=limits)
        env.filters.update(cst=cst, percent=percent, score=score,
                           severity=_label(SEVERITY_LABELS), place_type=_label(PLACE_TYPE_LABELS),
                           inspection_kind=_label(INSPECTION_KIND_LABELS), status=_label(STATUS_LABELS),
                           notice=_label(NOTICE_LABELS), md_block=markdown_block,
                           frequency=_label(FREQUENCY_LABELS))
        env.finish_filters()
        return env

    def render(self, notice: str, context: dict, node_chain: Iterable[str] = (),
               overrides: dict[str, str] | None = None, limits: Limits = DEFAULT_LIMITS) -> Rendered:
        """Render a notice's Markdown (which sets the title) and HTML within one budget."""
        env = self.environment(list(node_chain), overrides, limits)
        ctx = dict(context, notice_label=NOTICE_LABELS.get(NoticeType(notice), notice))
        module = env.get_template(f"{notice}.md").make_module(ctx)
        # A title goes into e-mail headers and bot titles: one line, no control characters.
        title = one_line(getattr(module, "title", "") or "", TITLE_LIMIT) or ctx["notice_label"]
        markdown = str(module).strip() + "\n"
        html = env.get_template(f"{notice}.html").render(ctx, title=title)
        return Rendered(title=title, markdown=markdown, html=html)

    def render_safely(self, notice: str, context: dict, node_chain: Iterable[str] = (),
                      overrides: dict[str, str] | None = None) -> tuple[Rendered, str | None]:
        """Render with the node's templates; if they fail, with the packaged defaults; if those
        fail too (e.g. a rule sends a notice for an event it was not written for), a minimal
        notice. Returns the rendering and the problem met (None when there was none)."""
        customised = bool(overrides) or self.template_dir is not None
        try:
            return self.render(notice, context, node_chain, overrides,
                               DEFAULT_LIMITS if customised else PACKAGED_LIMITS), None
        except Exception as exc:  # any template failure: the notice must still go out
            problem = f"template for {notice} failed ({exc.__class__.__name__}: {exc}); default used"
        log.warning("notify: %s", problem)
        try:
            return Templates(None).render(notice, context, limits=PACKAGED_LIMITS), problem
        except Exception as exc:
            problem += f"; the default failed too ({exc.__class__.__name__}: {exc}); minimal notice sent"
        log.warning("notify: %s", problem)
        return minimal_notice(notice, context), problem

    def default_source(self, name: str) -> str:
        return (DEFAULT_TEMPLATE_DIR / name).read_text(encoding="utf-8")


TITLE_LIMIT = 200


def minimal_notice(notice: str, context: dict) -> Rendered:
    """The last resort: the notice's name and the office, nothing a template could break."""
    from markupsafe import escape
    label = NOTICE_LABELS.get(NoticeType(notice), notice)
    office = one_line(context.get("office") or "", 100)
    title = f"{label}（{office}）" if office else label
    text = f"### {title}\n请登录创卫系统查看详情。\n"
    html = (f"<!DOCTYPE html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"</head><body><h3>{escape(title)}</h3><p>请登录创卫系统查看详情。</p></body></html>")
    return Rendered(title=title, markdown=text, html=html)


def notices_using(name: str) -> list[str]:
    """The notices a template file takes part in: its own, or all of its kind for a partial."""
    stem, _, ext = name.partition(".")
    if stem.startswith("_"):
        return [n.value for n in NoticeType]
    return [stem]


def check_template(name: str, source: str, overrides: dict[str, str] | None = None,
                   node_chain: Iterable[str] = (), template_dir: str | Path | None = None) -> None:
    """Refuse a template that does not parse, a name no notice uses, or a template that
    fails a test render with sample data of its event or goes over the sandbox's limits.

    `overrides` are the stored templates in force for the node; the new source replaces
    the one of the same name for the test."""
    if name not in TEMPLATE_NAMES:
        raise NotifyRuleViolation("name", f"unknown template {name!r}; one of {TEMPLATE_NAMES}")
    if len(source) > DEFAULT_LIMITS.max_source:
        raise NotifyRuleViolation("source", f"template source exceeds {DEFAULT_LIMITS.max_source} characters")
    templates = Templates(template_dir)
    try:
        templates.environment().parse(source)
    except TemplateError as exc:
        raise NotifyRuleViolation("source", f"template does not parse: {exc}") from None
    except (RecursionError, MemoryError, ValueError) as exc:  # e.g. brackets nested thousands deep
        raise NotifyRuleViolation("source", f"template does not parse: {exc.__class__.__name__}") from None
    from services.notify.samples import sample_contexts
    trial = {**(overrides or {}), name: source}
    for notice in notices_using(name):
        try:
            for context in sample_contexts(notice):
                templates.render(notice, context, list(node_chain), trial)
        except Exception as exc:  # whatever the template does wrong, it is refused, not stored
            raise NotifyRuleViolation(
                "source", f"模板试渲染失败 (test render of the {notice} notice with sample data failed): "
                          f"{exc.__class__.__name__}: {exc}") from None
