"""Node identity: 12-digit statistical division codes (统计用区划代码).

A code reads 省2 市2 县2 乡镇/街道3 村/社区3. The parent of a unit is a prefix of its code
with the rest zero-filled, so tier, parent and ancestry are all derived from the code.
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Iterable

from pydantic import AfterValidator

CODE_LENGTH = 12
# Significant digits per level: province, city, county, town/street, village/community.
_LEVEL_DIGITS = (2, 4, 6, 9, 12)


class InvalidNodeCode(ValueError):
    pass


class Tier(StrEnum):
    province = "province"    # 省
    city = "city"            # 市
    district = "district"    # 区/县
    street = "street"        # 街道/镇
    community = "community"  # 社区/村

    @property
    def label(self) -> str:
        return TIER_LABELS[self]

    @property
    def depth(self) -> int:
        return _TIER_ORDER.index(self)


_TIER_ORDER = (Tier.province, Tier.city, Tier.district, Tier.street, Tier.community)
TIER_LABELS = {
    Tier.province: "省", Tier.city: "市", Tier.district: "区县",
    Tier.street: "街道", Tier.community: "社区",
}


def normalize_code(code: str | int) -> str:
    """Accept a 2/4/6/9/12-digit code (as the NBS files list them) and return 12 digits."""
    text = str(code).strip()
    if not text.isdigit() or not text.isascii():
        raise InvalidNodeCode(f"node code {text!r} must contain digits only")
    if len(text) not in _LEVEL_DIGITS:
        raise InvalidNodeCode(
            f"node code {text!r} must have 12 digits (or 2/4/6/9 for a higher level), got {len(text)}")
    full = text.ljust(CODE_LENGTH, "0")
    if full[:2] == "00":
        raise InvalidNodeCode(f"node code {text!r} has no province part")
    return full


def tier_of(code: str) -> Tier:
    full = normalize_code(code)
    # The tier is the lowest level with a non-zero digit. Some cities have no county
    # level (东莞 4419xx: streets sit directly under the city), so zero parts may be skipped.
    significant = full.rstrip("0")
    for tier, digits in zip(_TIER_ORDER, _LEVEL_DIGITS):
        if len(significant) <= digits:
            return tier
    raise InvalidNodeCode(full)  # pragma: no cover - normalize_code rules this out


def parent_of(code: str) -> str | None:
    """The code of the unit directly above, or None for a province."""
    full = normalize_code(code)
    depth = tier_of(full).depth
    if depth == 0:
        return None
    return full[: _LEVEL_DIGITS[depth - 1]].ljust(CODE_LENGTH, "0")


def ancestors_of(code: str) -> list[str]:
    """Parent first, province last."""
    out = []
    current = parent_of(code)
    while current is not None:
        out.append(current)
        current = parent_of(current)
    return out


@functools.lru_cache(maxsize=65536)  # asked per row of a list (who sees it): 3,474 rows a ranking
def subtree_prefix(code: str) -> str:
    """The significant digits of `code`: every code in its subtree starts with them (for SQL
    `LIKE 'prefix%'` filters)."""
    full = normalize_code(code)
    return full[: _LEVEL_DIGITS[tier_of(full).depth]]


def is_within(code: str, ancestor: str) -> bool:
    """True if `code` is `ancestor` itself or lies inside it."""
    return normalize_code(code).startswith(subtree_prefix(ancestor))


def _validate_code(value: str) -> str:
    return normalize_code(value)


NodeCode = Annotated[str, AfterValidator(_validate_code)]
"""A pydantic field type: a division code normalised to 12 digits."""


@dataclass(frozen=True)
class Node:
    code: str
    name: str

    @property
    def tier(self) -> Tier:
        return tier_of(self.code)

    @property
    def parent(self) -> str | None:
        return parent_of(self.code)


@dataclass
class NodeTree:
    """The units a stack knows by name: its home node and what lies under it."""
    home: str
    nodes: dict[str, Node] = field(default_factory=dict)

    def add(self, code: str, name: str) -> Node:
        node = Node(normalize_code(code), name)
        self.nodes[node.code] = node
        return node

    def name_of(self, code: str) -> str | None:
        node = self.nodes.get(normalize_code(code))
        return node.name if node else None

    def children_of(self, code: str) -> list[Node]:
        full = normalize_code(code)
        return sorted((n for n in self.nodes.values() if n.parent == full), key=lambda n: n.code)

    def within_home(self, code: str) -> bool:
        return is_within(code, self.home)


def load_division_rows(paths: Iterable[str | Path]) -> Iterable[tuple[str, str]]:
    """Yield (12-digit code, name) from NBS-format CSV files (first columns: code,name)."""
    for path in paths:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or reader.fieldnames[:2] != ["code", "name"]:
                raise InvalidNodeCode(f"{path}: expected a CSV whose header starts with 'code,name'")
            for line_no, row in enumerate(reader, start=2):
                try:
                    yield normalize_code(row["code"]), row["name"].strip()
                except InvalidNodeCode as exc:
                    raise InvalidNodeCode(f"{path}:{line_no}: {exc}") from exc


def load_node_tree(home: str, paths: Iterable[str | Path]) -> NodeTree:
    """Build a stack's node tree: the home node, its ancestors, and every unit inside it."""
    home = normalize_code(home)
    keep = set(ancestors_of(home))
    tree = NodeTree(home=home)
    for code, name in load_division_rows(paths):
        if code in keep or is_within(code, home):
            tree.add(code, name)
    return tree
