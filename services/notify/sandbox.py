"""A Jinja sandbox that bounds the work a template may do, not the time it may take.

Operators write templates; a template such as two nested loops of 100,000 would, under
eventlet, block every service of the process (a CPU loop never yields), so a wall-clock
timer cannot stop it. Instead every render gets a budget that the template spends as it
runs, and the render stops with `TemplateTooCostly` the moment it is spent:

- operations: each loop iteration, call (functions, macros, methods, `caller()`), filter,
  attribute or item access, and template load (`include`, `import`, `extends`);
- output: every character written by `{{ … }}` or template text, in any buffer (macro
  bodies and `{% set %}` blocks included);
- work: the size of every string or list a filter, call or operator takes or makes (a loop
  that upper-cases a long text ten thousand times is as costly as a long loop);
- sizes: no intermediate string or list longer than `max_string`, no integer wider than
  `MAX_INT_BITS` bits (checked before a `*`/`**` that would build one), no numeric
  argument above `MAX_ARGUMENT` to a filter or call (widths, counts, ranges);
- source: at most `max_source` characters; recursive loops are refused.

The sandbox is immutable (no `append`/`update` on lists and dicts) and string methods are
limited to a harmless list (no `format`, `ljust`, `replace`, `join` as methods; the filters
`replace` and `join` are bounded instead). Markdown templates (`*.md`) escape every value
they print for Markdown (see `markdown_inline`), HTML templates autoescape.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Iterable

from jinja2 import nodes, pass_context, pass_eval_context
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.filters import do_indent, do_join, do_replace
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_ARGUMENT = 10_000
MAX_INT_BITS = 4096
# Under eventlet, give other green threads a turn every so many operations.
YIELD_EVERY = 2_000

STR_METHODS = frozenset({
    "strip", "lstrip", "rstrip", "upper", "lower", "title", "capitalize", "casefold", "swapcase",
    "startswith", "endswith", "split", "rsplit", "splitlines", "partition", "rpartition",
    "count", "find", "rfind", "index", "rindex", "removeprefix", "removesuffix",
    "isdigit", "isalpha", "isalnum", "isspace", "isnumeric", "isdecimal", "islower", "isupper",
})
# Filters written in Python that take long on long input: their input is kept short and
# weighs this many times its size in the work budget (measured: wordwrap(1) and urlize are
# the slowest per character).
SLOW_FILTERS = {"wordwrap": 500, "urlize": 200, "striptags": 50, "wordcount": 50, "truncate": 20, "pprint": 20,
                "xmlattr": 20, "groupby": 20, "dictsort": 20, "sort": 20, "unique": 20, "title": 50}
SLOW_INPUT = 10_000
DICT_METHODS = frozenset({"items", "keys", "values", "get"})
SEQUENCE_METHODS = frozenset({"index", "count"})

ITERATE, OUTPUT, OUTPUT_MD, CHARGE, BOUNDED = ("cw iterate", "cw output", "cw output md", "cw charge",
                                               "cw bounded")


class TemplateTooCostly(SecurityError):
    """The template spent its budget (operations, output or size)."""


@dataclass(frozen=True)
class Limits:
    operations: int = 100_000
    output: int = 500_000       # characters written, all buffers together
    max_string: int = 200_000   # characters in any one string, items in any one list
    max_source: int = 50_000    # characters of one template's source
    work: int = 10_000_000      # characters and items handled by filters, calls and operators


DEFAULT_LIMITS = Limits()
# The packaged templates are ours, but their work grows with the data (a bulletin of a city
# with a thousand subjects): bounded all the same, more generously.
PACKAGED_LIMITS = Limits(operations=2_000_000, output=20_000_000, max_string=10_000_000, work=500_000_000)


class MarkdownText(str):
    """Text already made safe for Markdown (a print does not escape it again)."""


# Markdown metacharacters become their full-width forms: readable in Chinese text, inert in
# every Markdown dialect (WeCom and DingTalk bots do not all honour backslash escapes).
_MD_INLINE = str.maketrans({
    "\\": "＼", "`": "｀", "*": "＊", "_": "＿", "[": "［", "]": "］", "<": "＜", ">": "＞", "|": "｜",
    "#": "＃", "~": "～", "&": "＆", "!": "！",
})
_LINE_BREAKS = re.compile(r"[\r\n\u0085\u2028\u2029\t\v\f]+")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def markdown_inline(value: Any) -> MarkdownText:
    """One line of text, inert in Markdown: no line breaks (a name cannot start a heading or a
    list), metacharacters replaced by their full-width forms."""
    if isinstance(value, MarkdownText):
        return value
    text = _LINE_BREAKS.sub(" ", str(value))
    return MarkdownText(_CONTROLS.sub("", text).translate(_MD_INLINE))


def markdown_block(value: Any) -> MarkdownText:
    """Several paragraphs of plain text: lines kept, each escaped and kept from starting a
    block (heading, list, quote, code) — for a newsletter's content."""
    lines = re.split(r"\r\n|[\r\n\u0085\u2028\u2029]", str(value))
    out = []
    for line in lines:
        escaped = markdown_inline(line)
        # A line may not open a list, a quote, a numbered item or a code block.
        escaped = re.sub(r"^(\s*)([-+=]|\d+\.)", lambda m: m.group(1) + "\u200b" + m.group(2), escaped)
        out.append(escaped.lstrip(" ") if escaped.startswith("    ") else escaped)
    return MarkdownText("\n".join(out))


def one_line(value: Any, limit: int | None = None) -> str:
    """Text for a header or a title: no control characters or line breaks."""
    text = " ".join(_CONTROLS.sub(" ", str(value)).split())
    return text[:limit] if limit else text


class Budget:
    def __init__(self, limits: Limits):
        self.limits = limits
        self.operations = 0
        self.output = 0
        self.work = 0
        self._cooperative = _eventlet_patched()

    def spend(self, n: int = 1) -> None:
        self.operations += n
        if self.operations > self.limits.operations:
            raise TemplateTooCostly(f"template exceeds {self.limits.operations} operations "
                                    "(loop iterations, calls, filters, lookups)")
        if self._cooperative and self.operations % YIELD_EVERY == 0:
            import eventlet
            eventlet.sleep(0)

    def write(self, n: int) -> None:
        self.output += n
        if self.output > self.limits.output:
            raise TemplateTooCostly(f"template output exceeds {self.limits.output} characters")

    def add_work(self, n: int) -> None:
        self.work += n
        if self.work > self.limits.work:
            raise TemplateTooCostly(f"template handles more than {self.limits.work} characters or items "
                                    "in filters, calls and operators")

    def check(self, value: Any) -> Any:
        """Refuse a value bigger than any one value may be; what it holds counts as work."""
        if isinstance(value, (str, list, tuple, dict, set, frozenset)):
            self.add_work(len(value))
        if isinstance(value, (str, list, tuple, dict, set, frozenset)) and len(value) > self.limits.max_string:
            raise TemplateTooCostly(f"template builds a value of {len(value)} characters or items "
                                    f"(limit {self.limits.max_string})")
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
            raise TemplateTooCostly(f"template builds a number wider than {MAX_INT_BITS} bits")
        return value

    def check_arguments(self, args: Iterable[Any], kwargs: dict) -> None:
        for value in (*args, *kwargs.values()):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_ARGUMENT:
                raise TemplateTooCostly(f"template passes {value!r} where at most {MAX_ARGUMENT} is allowed")


def _eventlet_patched() -> bool:
    try:
        from eventlet import patcher
        return patcher.is_monkey_patched("thread")
    except Exception:  # pragma: no cover - eventlet is always installed here
        return False


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple)) else 0


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """A sandbox with a work budget per environment: make one environment per render."""

    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})

    def __init__(self, *args, limits: Limits = DEFAULT_LIMITS, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.budget = Budget(limits)
        self.globals.pop("lipsum", None)  # lipsum(n=10**6) would write forever
        self.filters["replace"] = _bounded_replace
        self.filters["join"] = _bounded_join
        self.filters["format"] = _refused("format")
        self.filters["center"] = _refused("center")
        self.filters["indent"] = _bounded_indent
        self.filters.update({ITERATE: self._iterate, OUTPUT: self._output, OUTPUT_MD: self._output_md,
                             CHARGE: self._charge, BOUNDED: self._bounded})

    def finish_filters(self) -> None:
        """Wrap every public filter: each use spends, numeric arguments and results are bounded."""
        for name, func in list(self.filters.items()):
            if not name.startswith("cw "):
                self.filters[name] = self._wrap_filter(name, func)

    def _wrap_filter(self, name, func):
        budget = self.budget
        weight = SLOW_FILTERS.get(name, 0)

        @functools.wraps(func)
        def bounded(*args, **kwargs):
            budget.spend()
            budget.check_arguments(args[1:], kwargs)
            for arg in args:
                budget.check(arg)
                if weight and isinstance(arg, (str, list, tuple, dict)):
                    if len(arg) > SLOW_INPUT:
                        raise TemplateTooCostly(f"the {name} filter takes at most {SLOW_INPUT} characters or items")
                    budget.add_work(len(arg) * weight)
            result = func(*args, **kwargs)
            return budget.check(result)
        return bounded

    # --- the hooks the compiled template calls ---

    @pass_context
    def _iterate(self, context, iterable):
        for item in iterable:
            self.budget.spend()
            yield item

    @pass_context
    def _output(self, context, value):
        self.budget.write(len(str(value)))
        return value

    @pass_context
    def _output_md(self, context, value):
        escaped = markdown_inline(value) if not hasattr(value, "__html__") else value
        self.budget.write(len(escaped))
        return escaped

    @pass_context
    def _charge(self, context, value, characters):
        if not isinstance(characters, int) or characters < 0:
            raise SecurityError("invalid charge")
        self.budget.write(characters)
        return value

    @pass_context
    def _bounded(self, context, value):
        return self.budget.check(value)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's signature
        __self.budget.spend()
        __self.budget.check_arguments(args, kwargs)
        for arg in (*args, *kwargs.values()):
            __self.budget.check(arg)
        if isinstance(getattr(__obj, "__self__", None), (str, list, tuple, dict)):
            __self.budget.check(__obj.__self__)  # a method works on its object
        return __self.budget.check(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj, attribute):
        self.budget.spend()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        self.budget.spend()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value):
        return None  # str.format is refused by is_safe_attribute: widths could be any size

    def is_safe_attribute(self, obj, attr, value):
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if isinstance(obj, str):
            return attr in STR_METHODS
        if isinstance(obj, dict):
            return attr in DICT_METHODS or not callable(value)
        if isinstance(obj, (list, tuple)):
            return attr in SEQUENCE_METHODS
        return True

    def call_binop(self, context, operator, left, right):
        self.budget.spend()
        self.budget.check(left)
        self.budget.check(right)
        if operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                if max(abs(left), 2).bit_length() * right > MAX_INT_BITS:
                    raise TemplateTooCostly(f"template raises a number beyond {MAX_INT_BITS} bits")
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                    if _size(seq) * max(times, 0) > self.limits.max_string:
                        raise TemplateTooCostly(f"template repeats a value beyond {self.limits.max_string} "
                                                "characters or items")
        elif operator == "%" and isinstance(left, str):
            raise SecurityError("the % formatting of strings is not allowed in templates")
        return self.budget.check(super().call_binop(context, operator, left, right))

    def _load_template(self, name, globals):
        self.budget.spend()
        return super()._load_template(name, globals)

    # --- compiling: instrument the template's syntax tree ---

    def _parse(self, source, name, filename):
        if len(source) > self.limits.max_source:
            raise TemplateTooCostly(f"template source exceeds {self.limits.max_source} characters")
        tree = super()._parse(source, name, filename)
        markdown = bool(name) and name.endswith(".md")
        for loop in tree.find_all(nodes.For):
            if loop.recursive:
                raise TemplateSyntaxError("recursive loops are not allowed in templates", loop.lineno, name,
                                          filename)
            loop.iter = _filter(loop.iter, ITERATE)
        for concat in list(tree.find_all(nodes.Concat)):
            concat.nodes = [_filter(n, BOUNDED) for n in concat.nodes]
        for output in tree.find_all(nodes.Output):
            constant = sum(len(n.data) for n in output.nodes if isinstance(n, nodes.TemplateData))
            children = [n if isinstance(n, nodes.TemplateData) else _filter(n, OUTPUT_MD if markdown else OUTPUT)
                        for n in output.nodes]
            if constant:
                children.insert(0, _filter(nodes.Const(""), CHARGE, [nodes.Const(constant)]))
            output.nodes = children
        return tree


def _filter(node: nodes.Expr, name: str, args: list | None = None) -> nodes.Filter:
    return nodes.Filter(node, name, args or [], [], None, None, lineno=node.lineno or 1)


# --- bounded replacements for filters that could build huge strings ---

def _refused(name: str):
    def refused(*args, **kwargs):
        raise SecurityError(f"the {name} filter is not allowed in templates")
    return refused


@pass_eval_context
def _bounded_replace(eval_ctx, s, old, new, count=None):
    text, old, new = str(s), str(old), str(new)
    occurrences = (len(text) + 1) if not old else text.count(old)
    if len(text) + occurrences * len(new) > DEFAULT_LIMITS.max_string:
        raise TemplateTooCostly("replace would build a string beyond the limit")
    return do_replace(eval_ctx, s, old, new, count)


@pass_eval_context
def _bounded_join(eval_ctx, value, d="", attribute=None):
    items = list(value)
    if len(items) > DEFAULT_LIMITS.max_string:
        raise TemplateTooCostly("join over too many items")
    total = sum(len(str(i)) for i in items) + len(str(d)) * max(len(items) - 1, 0)
    if total > DEFAULT_LIMITS.max_string:
        raise TemplateTooCostly("join would build a string beyond the limit")
    return do_join(eval_ctx, items, d, attribute)


def _bounded_indent(s, width=4, first=False, blank=False):
    width_chars = len(width) if isinstance(width, str) else int(width)
    if len(str(s)) + (str(s).count("\n") + 1) * width_chars > DEFAULT_LIMITS.max_string:
        raise TemplateTooCostly("indent would build a string beyond the limit")
    return do_indent(s, width, first, blank)
