"""How tiers talk: the exchanges that cross federation links and their routing keys.

Each tier's broker (or vhost) has four topic exchanges:
- `chuangwei.up`       this tier's aggregate facts for its parent (published here)
- `chuangwei.children` federated from every child's `chuangwei.up` (consumed here)
- `chuangwei.down`     facts for a child's subtree, e.g. a task for a community (published here)
- `chuangwei.parent`   federated from the parent's `chuangwei.down` (consumed here)
Links use max-hops 1: a tier republishes what it must pass on as a new event of its own,
so no message crosses more than one link.

Routing keys are `<event_type>.<node path>`, the node path being the cumulative codes
from province down (`41.4115.411502.411502008.411502008001`), so a child binds only to
its own subtree: `*.41.4115.411502.411502008.#`.
"""
from __future__ import annotations

from services.contracts.nodes import normalize_code, tier_of

UP_EXCHANGE = "chuangwei.up"
CHILDREN_EXCHANGE = "chuangwei.children"
DOWN_EXCHANGE = "chuangwei.down"
PARENT_EXCHANGE = "chuangwei.parent"
TIER_EXCHANGES = (UP_EXCHANGE, CHILDREN_EXCHANGE, DOWN_EXCHANGE, PARENT_EXCHANGE)

_LEVEL_DIGITS = (2, 4, 6, 9, 12)


def node_path(code: str) -> list[str]:
    full = normalize_code(code)
    depth = tier_of(full).depth
    return [full[:digits] for digits in _LEVEL_DIGITS[: depth + 1]]


def routing_key(event_type: str, node: str) -> str:
    return ".".join([event_type, *node_path(node)])


def subtree_binding(home: str, event_type: str = "*") -> str:
    """Binding key matching events addressed to `home` or anything below it."""
    return ".".join([event_type, *node_path(home), "#"])
