"""Roles held on nodes: what a caller holds, sees, and which side of an inspection it is on."""
import pytest

from services.contracts.errors import PermissionDenied
from services.contracts.identity import Grant, Principal
from services.contracts.nodes import subtree_prefix

CITY, STREET, COMMUNITY, OTHER_STREET = "411500000000", "411502008000", "411502008001", "411502003000"


def caller(*grants):
    return Principal(subject="u-1", name="王芳", grants=tuple(Grant(r, n) for r, n in grants))


def test_a_grant_covers_its_node_and_everything_below_it():
    p = caller(("inspector", STREET))
    assert p.holds("inspector", STREET) and p.holds("inspector", COMMUNITY)
    assert not p.holds("inspector", CITY) and not p.holds("inspector", OTHER_STREET)
    assert not p.holds("administrator", COMMUNITY)
    assert p.sees(COMMUNITY) and not p.sees(OTHER_STREET)


@pytest.mark.parametrize("grants", [
    [("inspector", STREET)], [("viewer", CITY), ("rectifier", COMMUNITY)], [("viewer", COMMUNITY)],
    [("administrator", "410000000000"), ("viewer", OTHER_STREET)], [],
])
def test_seen_prefixes_see_exactly_the_codes_sees_does(grants):
    p = caller(*grants)
    codes = [CITY, STREET, COMMUNITY, OTHER_STREET, "411502008006", "411502003001", "411503000000",
             "410000000000", "420100000000", "411500000001"]
    assert [c.startswith(p.seen_prefixes()) for c in codes] == [p.sees(c) for c in codes]


def test_require_names_the_field_and_the_roles():
    p = caller(("viewer", STREET))
    assert p.require(("administrator", "viewer"), COMMUNITY) == "viewer"
    with pytest.raises(PermissionDenied) as refused:
        p.require("inspector", COMMUNITY, "subject_id")
    assert refused.value.field == "subject_id" and "inspector" in refused.value.reason


@pytest.mark.parametrize("grants,expected", [
    ([("inspector", STREET)], True),
    ([("viewer", STREET)], True),
    ([("administrator", CITY)], True),             # an office above speaks for the one below
    ([("rectifier", STREET)], False),              # a subject's contact, even on the office's node
    ([("administrator", COMMUNITY)], False),       # the inspected community's own office
    ([("inspector", OTHER_STREET)], False),
    ([], False),
])
def test_only_office_roles_on_the_inspecting_node_are_the_inspecting_side(grants, expected):
    assert caller(*grants).on_inspecting_side(STREET) is expected
    assert caller(*grants).on_inspecting_side(None) is False


def test_nodes_with_gives_the_tops_of_the_callers_subtrees():
    p = caller(("viewer", STREET), ("viewer", COMMUNITY), ("rectifier", OTHER_STREET))
    assert p.nodes_with() == [OTHER_STREET, STREET]
    assert p.nodes_with(("viewer",)) == [STREET]


@pytest.mark.parametrize("code,prefix", [(CITY, "4115"), (STREET, "411502008"), (COMMUNITY, COMMUNITY),
                                         ("41", "41")])
def test_subtree_prefix(code, prefix):
    assert subtree_prefix(code) == prefix
