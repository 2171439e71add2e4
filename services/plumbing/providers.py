"""Small dependency providers every service may need: the stack's identity and catalogue."""
from __future__ import annotations

import glob
import logging
from dataclasses import dataclass

from nameko.extensions import DependencyProvider

from services.contracts.checklists import Catalogue, load_catalogue
from services.contracts.nodes import NodeTree, is_within, load_node_tree, normalize_code, tier_of, Tier
from services.plumbing.config import home_node, parent_stack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackIdentity:
    """Who this stack is: its home node, tier and (if loaded) the named division tree."""
    home: str
    tier: Tier
    tree: NodeTree | None
    child_stacks: tuple[str, ...] = ()

    def child_stack_for(self, code: str) -> str | None:
        """The child stack whose subtree holds `code`, if it has a stack of its own."""
        for child in self.child_stacks:
            if is_within(code, child):
                return child
        return None

    def name_of(self, code: str) -> str | None:
        return self.tree.name_of(code) if self.tree else None


class Identity(DependencyProvider):
    """Config: NODE_CODE (required), DIVISIONS_FILES (optional glob(s) of NBS-format CSVs),
    CHILD_STACKS (optional: codes of the nodes below that run a stack of their own; their
    subtrees' tasks are handed down to them), PARENT_STACK (optional: the tier above that runs
    a stack; checked here so that a wrong code stops the start, not a later sweep)."""

    def setup(self):
        config = self.container.config
        home = home_node(config)
        patterns = config.get("DIVISIONS_FILES") or []
        if isinstance(patterns, str):
            patterns = [p for p in patterns.split(",") if p]
        files = sorted(f for p in patterns for f in glob.glob(p))
        if patterns and not files:
            raise RuntimeError(f"DIVISIONS_FILES {patterns} matched no file")
        tree = load_node_tree(home, files) if files else None
        parent_stack(config)
        self.identity = StackIdentity(home=home, tier=tier_of(home), tree=tree,
                                      child_stacks=child_stacks(config, home))

    def get_dependency(self, worker_ctx):
        return self.identity


class CatalogueProvider(DependencyProvider):
    """Config: CHECKLIST_CATALOGUE (optional path to an office's own YAML catalogue)."""

    def setup(self):
        path = self.container.config.get("CHECKLIST_CATALOGUE") or None
        self.catalogue: Catalogue = load_catalogue(path)

    def get_dependency(self, worker_ctx):
        return self.catalogue


def child_stacks(config: dict, home: str) -> tuple[str, ...]:
    raw = config.get("CHILD_STACKS") or []
    if isinstance(raw, (str, int)):
        raw = [part for part in str(raw).split(",") if part.strip()]
    codes = tuple(normalize_code(str(code).strip()) for code in raw)
    for code in codes:
        if code == home or not is_within(code, home):
            raise RuntimeError(f"CHILD_STACKS: {code} is not below this stack's home node {home}")
    return codes
