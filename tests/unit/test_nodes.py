import pytest
from pydantic import BaseModel, ValidationError

from services.contracts.nodes import (InvalidNodeCode, NodeCode, Tier, ancestors_of, is_within, load_node_tree,
                                      normalize_code, parent_of, tier_of)
from tests.support import ROOT

DIVISIONS = [ROOT / "infra" / "divisions" / "xinyang-4115.csv"]


@pytest.mark.parametrize("code,tier", [
    ("411502008001", Tier.community), ("411502008000", Tier.street), ("411502000000", Tier.district),
    ("411500000000", Tier.city), ("410000000000", Tier.province), ("4115", Tier.city), ("411502008", Tier.street),
])
def test_tier_is_derived_from_the_code(code, tier):
    assert tier_of(code) == tier


def test_parent_and_ancestry_by_prefix():
    assert parent_of("411502008006") == "411502008000"
    assert parent_of("411502008000") == "411502000000"
    assert parent_of("411502000000") == "411500000000"
    assert parent_of("410000000000") is None
    assert ancestors_of("411502008006") == ["411502008000", "411502000000", "411500000000", "410000000000"]
    assert is_within("411502008006", "411502008000")
    assert is_within("411502008000", "411502008000")
    assert not is_within("411502008000", "411502008006")
    assert not is_within("411503001001", "411502000000")


def test_city_without_county_level():
    # 东莞 (4419): streets sit directly under the city.
    assert tier_of("441900003000") == Tier.street
    assert parent_of("441900003000") == "441900000000"


@pytest.mark.parametrize("bad", ["", "41150200800X", "4115020080011", "12345", "000000000000", "４１１５"])
def test_malformed_codes_are_clear_errors(bad):
    with pytest.raises(InvalidNodeCode) as info:
        normalize_code(bad)
    assert repr(bad) in str(info.value) or "digits" in str(info.value)


def test_node_code_field_normalises_and_rejects():
    class M(BaseModel):
        node: NodeCode
    assert M(node="4115").node == "411500000000"
    with pytest.raises(ValidationError) as info:
        M(node="abc")
    assert "digits" in str(info.value)


def test_node_tree_from_the_nbs_files():
    tree = load_node_tree("411502008000", DIVISIONS)
    names = {n.code: n.name for n in tree.children_of("411502008000")}
    assert names["411502008001"].startswith("周家山")
    assert names["411502008006"].startswith("飨堂")
    assert names["411502008008"].startswith("十里河")
    assert tree.name_of("411502000000") == "浉河区"          # ancestors are kept, by name
    assert tree.name_of("411503000000") is None             # a sibling district is not
    assert tree.within_home("411502008006") and not tree.within_home("411502001001")


def test_bad_division_file_names_the_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("code,name\n411502008001,周家山\n41150200800Z,坏\n", encoding="utf-8")
    with pytest.raises(InvalidNodeCode, match=r"bad.csv:3"):
        load_node_tree("411502008000", [bad])
