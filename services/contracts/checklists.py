"""The checklist catalogue (检查标准目录): what inspectors score against.

A catalogue holds versions of the standard (every inspection pins the version it used,
because standards are revised); each version holds checklists (the national ten content
areas, one per place type, ...); each checklist holds categories of items; each item
carries its points, the deduction per finding, a severity and the default rectification
deadline.

Catalogues are YAML files, validated in full at load so that a campaign office supplying
its own file learns of a mistake at start-up, with the file and the path of the offending
entry, rather than from a wrong score months later.

Pure module: no nameko imports, so every service and tool can use it.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from services.contracts.vocab import PlaceType, Severity

DEFAULT_CATALOGUE_PATH = Path(__file__).parent / "checklist_data" / "default.yaml"

# Every checklist is scored out of 100 so that a score reads directly on the 100-point
# scale the street offices use; coarser scales (a city's 1000 points) are derived later.
CHECKLIST_TOTAL_POINTS = 100.0

# A location inside the catalogue document, e.g. ("versions", 0, "checklists", 2).
Location = tuple[str | int, ...]


# --- Errors -------------------------------------------------------------------------


class CatalogueError(ValueError):
    """A catalogue file is unreadable or invalid.

    `problems` lists (path, message) pairs, the path in the document's own terms
    (``versions[0].checklists[2].categories[1].items[3].deduction_per_finding``).
    """

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]):
        self.source = source
        self.problems = list(problems)
        lines = [f"{source}: {path}: {message}" if path else f"{source}: {message}"
                 for path, message in self.problems]
        super().__init__("\n".join(lines))


class ChecklistLookupError(LookupError):
    """A version, checklist or item that the catalogue does not contain.

    A lookup miss is the caller's mistake (a bad code in a request), so HTTP layers map
    this family to 4xx.
    """

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        # KeyError (a parent of the subclasses) would otherwise print the repr in quotes.
        return self.message


class UnknownChecklistVersion(ChecklistLookupError, KeyError):
    def __init__(self, version: str, catalogue_id: str, known: Sequence[str]):
        self.version = version
        super().__init__(f"unknown checklist version {version!r} in catalogue {catalogue_id!r}; "
                         f"known versions: {', '.join(known)}")


class UnknownChecklist(ChecklistLookupError, KeyError):
    def __init__(self, code: str, version: str, known: Sequence[str]):
        self.code = code
        self.version = version
        super().__init__(f"unknown checklist {code!r} in version {version!r}; "
                         f"known checklists: {', '.join(known)}")


class UnknownChecklistItem(ChecklistLookupError, KeyError):
    def __init__(self, code: str, checklist_code: str, known: Sequence[str]):
        self.code = code
        self.checklist_code = checklist_code
        super().__init__(f"unknown item {code!r} in checklist {checklist_code!r}; "
                         f"known items: {', '.join(known)}")


def _rule_violation(message: str, at: Location = ()) -> PydanticCustomError:
    """An error for a catalogue rule, located `at` a path below the validating model.

    Pydantic locates a model validator's error at the model itself; carrying the
    sub-path lets the message point at the exact entry (the second duplicate code,
    not the whole checklist).
    """
    return PydanticCustomError("catalogue_rule", "{message}", {"message": message, "at": at})


def _first_duplicate(codes: Sequence[tuple[str, Location]]) -> tuple[str, Location, Location] | None:
    """(code, where first seen, where repeated) for the first repeated code, else None."""
    first_seen: dict[str, Location] = {}
    for code, location in codes:
        if code in first_seen:
            return code, first_seen[code], location
        first_seen[code] = location
    return None


def _format_location(location: Location) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


def _check_unique(kind: str, codes: Sequence[tuple[str, Location]]) -> None:
    duplicate = _first_duplicate(codes)
    if duplicate:
        code, first, repeated = duplicate
        raise _rule_violation(f"duplicate {kind} {code!r} (already used at {_format_location(first)})",
                              at=repeated)


# --- Models -------------------------------------------------------------------------


class _CatalogueModel(BaseModel):
    # Frozen: the default catalogue is cached and shared. Extra keys forbidden: a typo
    # in an office's file ("deadline_hour") must fail loudly, not fall back to a default.
    model_config = ConfigDict(frozen=True, extra="forbid")


class ChecklistItem(_CatalogueModel):
    code: str = Field(min_length=1)
    text: str = Field(min_length=1)
    max_points: float = Field(gt=0)
    deduction_per_finding: float = Field(gt=0)
    severity: Severity
    # Default rectification deadline (限期整改); 0 means 立即整改 (fix immediately).
    deadline_hours: int = Field(ge=0)

    @field_validator("deduction_per_finding")
    @classmethod
    def _deduction_within_item(cls, deduction: float, info: ValidationInfo) -> float:
        max_points = info.data.get("max_points")  # absent if max_points itself was invalid
        if max_points is not None and deduction > max_points:
            raise _rule_violation(f"{deduction:g} exceeds max_points {max_points:g}")
        return deduction


class ChecklistCategory(_CatalogueModel):
    code: str = Field(min_length=1)
    name: str = Field(min_length=1)
    items: list[ChecklistItem] = Field(min_length=1)


class Checklist(_CatalogueModel):
    code: str = Field(min_length=1)
    name: str = Field(min_length=1)
    # Empty: applies to any subject (e.g. the national ten content areas).
    place_types: list[PlaceType] = Field(default_factory=list)
    categories: list[ChecklistCategory] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_codes_and_total(self) -> Checklist:
        _check_unique("category code", [(category.code, ("categories", c, "code"))
                                        for c, category in enumerate(self.categories)])
        # Item codes are unique across categories: a finding names an item by code alone.
        _check_unique("item code", [(item.code, ("categories", c, "items", i, "code"))
                                    for c, category in enumerate(self.categories)
                                    for i, item in enumerate(category.items)])
        # Rounded so that e.g. 0.1-point items adding to 100 are not rejected for float noise.
        if round(self.max_points, 6) != CHECKLIST_TOTAL_POINTS:
            raise _rule_violation(f"items total {self.max_points:g} points; "
                                  f"a checklist must total exactly {CHECKLIST_TOTAL_POINTS:g}")
        return self

    @property
    def max_points(self) -> float:
        return sum(item.max_points for _, item in self.items())

    def items(self) -> Iterator[tuple[ChecklistCategory, ChecklistItem]]:
        """Every item with its category, in document order."""
        for category in self.categories:
            for item in category.items:
                yield category, item

    def item(self, code: str) -> ChecklistItem:
        for _, item in self.items():
            if item.code == code:
                return item
        raise UnknownChecklistItem(code, self.code, [item.code for _, item in self.items()])


class ChecklistVersion(_CatalogueModel):
    version: str = Field(min_length=1)
    effective_from: date
    checklists: list[Checklist] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_codes(self) -> ChecklistVersion:
        _check_unique("checklist code", [(checklist.code, ("checklists", c, "code"))
                                         for c, checklist in enumerate(self.checklists)])
        return self

    def checklist(self, code: str) -> Checklist:
        for checklist in self.checklists:
            if checklist.code == code:
                return checklist
        raise UnknownChecklist(code, self.version, [checklist.code for checklist in self.checklists])


class Catalogue(_CatalogueModel):
    catalogue_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    versions: list[ChecklistVersion] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_versions(self) -> Catalogue:
        _check_unique("version", [(version.version, ("versions", v, "version"))
                                  for v, version in enumerate(self.versions)])
        # Two versions taking effect the same day would make latest() ambiguous.
        _check_unique("effective_from date", [(version.effective_from.isoformat(), ("versions", v, "effective_from"))
                                              for v, version in enumerate(self.versions)])
        return self

    def version(self, version: str) -> ChecklistVersion:
        for candidate in self.versions:
            if candidate.version == version:
                return candidate
        raise UnknownChecklistVersion(version, self.catalogue_id, [v.version for v in self.versions])

    def latest(self) -> ChecklistVersion:
        """The version that took effect last (not the last one listed in the file)."""
        return max(self.versions, key=lambda version: version.effective_from)

    def checklist(self, version: str, code: str) -> Checklist:
        return self.version(version).checklist(code)


# --- Loading ------------------------------------------------------------------------


def _describe_validation_error(error: dict[str, Any]) -> tuple[str, str]:
    location = tuple(error["loc"]) + tuple(error.get("ctx", {}).get("at", ()))
    message = error["msg"]
    given = error.get("input")
    if error["type"] == "missing":
        message = "required field is missing"
    elif error["type"] == "string_type" and isinstance(given, (int, float)):
        # The usual cause: an unquoted version such as 2010.1, which YAML reads as a number.
        message = f"{message} (got the number {given!r}; quote it in the YAML file)"
    elif error["type"] != "catalogue_rule" and isinstance(given, (str, int, float, bool)):
        message = f"{message} (got {given!r})"
    return _format_location(location), message


def _describe_yaml_error(error: yaml.YAMLError) -> tuple[str, str]:
    # str(error) quotes the source around each mark; line and column are enough here.
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return "", f"malformed YAML: {error}"
    mark = error.problem_mark
    message = f"malformed YAML: {error.problem}"
    if error.context:
        context_mark = error.context_mark
        started = f" at line {context_mark.line + 1}, column {context_mark.column + 1}" if context_mark else ""
        message += f" ({error.context}{started})"
    return f"line {mark.line + 1}, column {mark.column + 1}", message


def parse_catalogue(document: Any, source: str = "<catalogue>") -> Catalogue:
    """Validate an already-parsed catalogue document (a dict, as from YAML or JSON)."""
    if not isinstance(document, dict):
        raise CatalogueError(source, [("", f"the document must be a mapping, got {type(document).__name__}")])
    try:
        return Catalogue.model_validate(document)
    except ValidationError as error:
        raise CatalogueError(source, [_describe_validation_error(e) for e in error.errors()]) from error


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Load and validate a catalogue YAML file; None loads the packaged default."""
    path = DEFAULT_CATALOGUE_PATH if path is None else Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CatalogueError(source, [("", f"cannot read the file: {error.strerror or error}")]) from error
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CatalogueError(source, [_describe_yaml_error(error)]) from error
    return parse_catalogue(document, source)


@functools.lru_cache(maxsize=1)
def default_catalogue() -> Catalogue:
    """The packaged default catalogue, loaded once per process."""
    return load_catalogue()


# --- the ten content areas (十项内容) -------------------------------------------------

TEN_AREAS = {
    "ORG": "爱国卫生组织管理", "EDU": "健康教育", "CITY": "市容环境卫生", "ENVP": "环境保护",
    "PUB": "公共场所和生活饮用水卫生", "FOOD": "食品安全", "DIS": "传染病防治", "VEC": "病媒生物防制",
    "UNIT": "单位和居民区卫生", "UV": "城中村及城乡结合部卫生",
}
# Where the place checklists file in the national standard's ten areas (the re-review's
# archive is kept per area): toilets, refuse stations, markets, alleys, sites and rivers are
# city appearance and sanitation; the five smalls public places; urban villages their own.
CHECKLIST_AREAS = {
    "public-toilet": "CITY", "refuse-station": "CITY", "farmers-market": "CITY", "back-alley": "CITY",
    "construction-site": "CITY", "river": "CITY", "five-smalls": "PUB", "urban-village": "UV",
}


def area_of(checklist_code: str, category_code: str | None = None) -> str | None:
    """The content area an inspection (or one finding) belongs to: the category itself on the
    ten-areas checklist, else the area its place checklist files under."""
    if checklist_code == "national-ten-areas":
        return category_code if category_code in TEN_AREAS else None
    return CHECKLIST_AREAS.get(checklist_code)
