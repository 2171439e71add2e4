"""The checklist catalogue: the packaged default and validation of office-supplied files."""
import copy
from datetime import date

import pytest
import yaml

from services.contracts.checklists import (
    DEFAULT_CATALOGUE_PATH,
    Catalogue,
    CatalogueError,
    ChecklistLookupError,
    UnknownChecklist,
    UnknownChecklistItem,
    UnknownChecklistVersion,
    default_catalogue,
    load_catalogue,
)
from services.contracts.vocab import PlaceType, Severity

TEN_AREAS = [
    "爱国卫生组织管理", "健康教育", "市容环境卫生", "环境保护", "公共场所和生活饮用水卫生",
    "食品安全", "传染病防治", "病媒生物防制", "单位和居民区卫生", "城中村及城乡结合部卫生",
]

PLACE_CHECKLISTS = {
    "public-toilet": PlaceType.public_toilet,
    "refuse-station": PlaceType.refuse_station,
    "farmers-market": PlaceType.farmers_market,
    "five-smalls": PlaceType.five_smalls,
    "construction-site": PlaceType.construction_site,
    "back-alley": PlaceType.back_alley,
    "river": PlaceType.river,
    "urban-village": PlaceType.urban_village,
}


# --- The packaged default -----------------------------------------------------------


def test_default_catalogue_loads_and_is_cached():
    catalogue = default_catalogue()
    assert isinstance(catalogue, Catalogue)
    assert catalogue.catalogue_id == "chuangwei-default"
    assert catalogue.name == "创卫检查标准目录"
    assert [v.version for v in catalogue.versions] == ["2010.1"]
    assert catalogue.version("2010.1").effective_from == date(2010, 1, 1)
    assert catalogue.latest().version == "2010.1"
    assert default_catalogue() is catalogue


def test_load_catalogue_without_path_reads_the_packaged_default():
    assert load_catalogue() == load_catalogue(DEFAULT_CATALOGUE_PATH) == default_catalogue()


def test_default_has_the_ten_areas_and_every_place_checklist():
    version = default_catalogue().latest()
    assert {c.code for c in version.checklists} == {"national-ten-areas", *PLACE_CHECKLISTS}
    for code, place_type in PLACE_CHECKLISTS.items():
        assert version.checklist(code).place_types == [place_type]


@pytest.mark.parametrize("checklist", default_catalogue().latest().checklists, ids=lambda c: c.code)
def test_every_default_checklist_totals_100(checklist):
    assert checklist.max_points == 100
    assert sum(item.max_points for _, item in checklist.items()) == 100


def test_ten_areas_has_exactly_the_ten_categories_and_applies_to_any_subject():
    ten_areas = default_catalogue().checklist("2010.1", "national-ten-areas")
    assert ten_areas.name == "国家卫生城市标准十项内容"
    assert [category.name for category in ten_areas.categories] == TEN_AREAS
    assert ten_areas.place_types == []
    assert all(2 <= len(category.items) <= 4 for category in ten_areas.categories)


def test_urban_village_checklist_is_the_eight_nos():
    eight_nos = default_catalogue().checklist("2010.1", "urban-village")
    texts = [item.text for _, item in eight_nos.items()]
    assert len(texts) == 8
    assert all(text.startswith("无") for text in texts)


def test_default_items_are_well_formed_and_use_the_immediate_deadline():
    deadlines = set()
    for checklist in default_catalogue().latest().checklists:
        for _, item in checklist.items():
            assert 0 < item.deduction_per_finding <= item.max_points
            assert isinstance(item.severity, Severity)
            deadlines.add(item.deadline_hours)
    # Immediate (立即整改), one day, three days and seven days all occur.
    assert {0, 24, 72, 168} <= deadlines


def test_item_lookup_returns_the_item_and_items_yields_categories():
    toilet = default_catalogue().checklist("2010.1", "public-toilet")
    flies = toilet.item("PT-02")
    assert "蝇" in flies.text
    assert flies.deadline_hours == 0
    assert flies.severity is Severity.critical
    category_of = {item.code: category.code for category, item in toilet.items()}
    assert category_of["PT-02"] == "SAN"


# --- Lookups of what is not there ---------------------------------------------------


def test_unknown_version_is_a_lookup_error_naming_it_and_the_known_ones():
    with pytest.raises(UnknownChecklistVersion) as raised:
        default_catalogue().version("2099.9")
    assert isinstance(raised.value, ChecklistLookupError)
    assert str(raised.value) == (
        "unknown checklist version '2099.9' in catalogue 'chuangwei-default'; known versions: 2010.1")


def test_unknown_checklist_is_a_lookup_error_naming_it():
    with pytest.raises(UnknownChecklist) as raised:
        default_catalogue().checklist("2010.1", "swimming-pool")
    assert isinstance(raised.value, ChecklistLookupError)
    message = str(raised.value)
    assert message.startswith("unknown checklist 'swimming-pool' in version '2010.1'; known checklists: ")
    assert "public-toilet" in message


def test_unknown_version_through_catalogue_checklist():
    with pytest.raises(UnknownChecklistVersion):
        default_catalogue().checklist("1999.1", "public-toilet")


def test_unknown_item_is_a_key_error_with_a_readable_message():
    river = default_catalogue().checklist("2010.1", "river")
    with pytest.raises(UnknownChecklistItem) as raised:
        river.item("PT-02")
    assert isinstance(raised.value, KeyError)
    assert isinstance(raised.value, ChecklistLookupError)
    # Not KeyError's quoted repr: the message reads as written.
    assert str(raised.value) == "unknown item 'PT-02' in checklist 'river'; known items: RV-01, RV-02, RV-03, RV-04"


# --- Invalid office-supplied files --------------------------------------------------


def minimal_document() -> dict:
    """A small valid catalogue: one version, one checklist of two categories."""
    return {
        "catalogue_id": "test",
        "name": "测试目录",
        "versions": [{
            "version": "2024.1",
            "effective_from": date(2024, 1, 1),
            "checklists": [{
                "code": "public-toilet",
                "name": "公厕",
                "place_types": ["public_toilet"],
                "categories": [
                    {"code": "SAN", "name": "环境卫生", "items": [
                        {"code": "PT-01", "text": "无蝇蛆", "max_points": 40, "deduction_per_finding": 5,
                         "severity": "critical", "deadline_hours": 0},
                        {"code": "PT-02", "text": "无臭味", "max_points": 30, "deduction_per_finding": 5,
                         "severity": "major", "deadline_hours": 24},
                    ]},
                    {"code": "FAC", "name": "设施", "items": [
                        {"code": "PT-03", "text": "设施完好", "max_points": 30, "deduction_per_finding": 4,
                         "severity": "minor", "deadline_hours": 72},
                    ]},
                ],
            }],
        }],
    }


def write_yaml(tmp_path, document, name="office.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return path


def load_error(tmp_path, document) -> CatalogueError:
    path = write_yaml(tmp_path, document)
    with pytest.raises(CatalogueError) as raised:
        load_catalogue(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: "), message
    return raised.value


def test_minimal_document_is_valid(tmp_path):
    catalogue = load_catalogue(write_yaml(tmp_path, minimal_document()))
    assert catalogue.checklist("2024.1", "public-toilet").max_points == 100


def test_duplicate_item_code_across_categories_is_rejected(tmp_path):
    document = minimal_document()
    document["versions"][0]["checklists"][0]["categories"][1]["items"][0]["code"] = "PT-01"
    error = load_error(tmp_path, document)
    assert error.problems == [(
        "versions[0].checklists[0].categories[1].items[0].code",
        "duplicate item code 'PT-01' (already used at categories[0].items[0].code)",
    )]


def test_duplicate_category_and_checklist_codes_and_versions_are_rejected(tmp_path):
    document = minimal_document()
    document["versions"][0]["checklists"][0]["categories"][1]["code"] = "SAN"
    assert "versions[0].checklists[0].categories[1].code: duplicate category code 'SAN'" in str(
        load_error(tmp_path, document))

    document = minimal_document()
    checklists = document["versions"][0]["checklists"]
    checklists.append(copy.deepcopy(checklists[0]))
    assert "versions[0].checklists[1].code: duplicate checklist code 'public-toilet'" in str(
        load_error(tmp_path, document))

    document = minimal_document()
    later = copy.deepcopy(document["versions"][0])
    later["effective_from"] = date(2025, 1, 1)
    document["versions"].append(later)
    assert "versions[1].version: duplicate version '2024.1'" in str(load_error(tmp_path, document))


def test_deduction_above_max_points_is_rejected(tmp_path):
    document = minimal_document()
    item = document["versions"][0]["checklists"][0]["categories"][1]["items"][0]
    item["deduction_per_finding"] = 31
    error = load_error(tmp_path, document)
    assert error.problems == [(
        "versions[0].checklists[0].categories[1].items[0].deduction_per_finding",
        "31 exceeds max_points 30",
    )]


def test_checklist_not_totalling_100_is_rejected(tmp_path):
    document = minimal_document()
    document["versions"][0]["checklists"][0]["categories"][0]["items"][1]["max_points"] = 25
    error = load_error(tmp_path, document)
    assert error.problems == [(
        "versions[0].checklists[0]",
        "items total 95 points; a checklist must total exactly 100",
    )]


def test_missing_field_is_named_by_path(tmp_path):
    document = minimal_document()
    del document["versions"][0]["checklists"][0]["categories"][0]["items"][1]["severity"]
    error = load_error(tmp_path, document)
    assert error.problems == [(
        "versions[0].checklists[0].categories[0].items[1].severity", "required field is missing")]


def test_bad_values_and_unknown_keys_are_named_by_path(tmp_path):
    document = minimal_document()
    item = document["versions"][0]["checklists"][0]["categories"][0]["items"][0]
    item["severity"] = "severe"
    item["deadline_hour"] = 24  # misspelt: must not be silently ignored
    document["versions"][0]["checklists"][0]["place_types"] = ["swimming_pool"]
    message = str(load_error(tmp_path, document))
    assert "versions[0].checklists[0].place_types[0]: " in message and "'swimming_pool'" in message
    assert "versions[0].checklists[0].categories[0].items[0].severity: " in message and "'severe'" in message
    assert "versions[0].checklists[0].categories[0].items[0].deadline_hour: " in message


def test_unquoted_version_number_is_rejected(tmp_path):
    document = minimal_document()
    document["versions"][0]["version"] = 2024.1  # as YAML reads an unquoted 2024.1
    message = str(load_error(tmp_path, document))
    assert "versions[0].version: " in message and "quote it" in message


def test_empty_checklist_is_rejected(tmp_path):
    document = minimal_document()
    document["versions"][0]["checklists"][0]["categories"] = []
    assert "versions[0].checklists[0].categories: " in str(load_error(tmp_path, document))


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("catalogue_id: x\nversions:\n  - version: [unclosed\n", encoding="utf-8")
    with pytest.raises(CatalogueError) as raised:
        load_catalogue(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: line ")
    assert "malformed YAML" in message


def test_document_that_is_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(CatalogueError, match="must be a mapping"):
        load_catalogue(path)


def test_missing_file_is_a_catalogue_error(tmp_path):
    with pytest.raises(CatalogueError, match="cannot read"):
        load_catalogue(tmp_path / "nowhere.yaml")


def test_latest_is_by_effective_date_not_file_order(tmp_path):
    document = minimal_document()
    older = copy.deepcopy(document["versions"][0])
    older.update(version="2010.1", effective_from=date(2010, 1, 1))
    document["versions"].append(older)
    assert load_catalogue(write_yaml(tmp_path, document)).latest().version == "2024.1"
