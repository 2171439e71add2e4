"""Closed vocabularies shared by all services (English codes, Chinese labels)."""
from enum import StrEnum


class PlaceType(StrEnum):
    public_toilet = "public_toilet"          # 公厕
    refuse_station = "refuse_station"        # 垃圾站房
    farmers_market = "farmers_market"        # 农贸市场
    five_smalls = "five_smalls"              # 五小行业 (small restaurant, hotel, bathhouse, salon, karaoke)
    construction_site = "construction_site"  # 建筑工地
    back_alley = "back_alley"                # 背街小巷
    river = "river"                          # 河道
    urban_village = "urban_village"          # 城中村
    residential_compound = "residential_compound"  # 居民小区
    road_section = "road_section"            # 路段 (门前五包 / 包保)
    other = "other"


PLACE_TYPE_LABELS = {
    PlaceType.public_toilet: "公厕",
    PlaceType.refuse_station: "垃圾站房",
    PlaceType.farmers_market: "农贸市场",
    PlaceType.five_smalls: "五小行业",
    PlaceType.construction_site: "建筑工地",
    PlaceType.back_alley: "背街小巷",
    PlaceType.river: "河道",
    PlaceType.urban_village: "城中村",
    PlaceType.residential_compound: "居民小区",
    PlaceType.road_section: "路段",
    PlaceType.other: "其他",
}


class SubjectType(StrEnum):
    """Who gets evaluated (考评对象) by a tier."""
    child_unit = "child_unit"    # 下级单位: a street's communities, a district's streets
    department = "department"    # 机关部门 (evaluated on adopted road sections)
    area_unit = "area_unit"      # 辖区单位: schools, companies, hospitals


SUBJECT_TYPE_LABELS = {
    SubjectType.child_unit: "下级单位",
    SubjectType.department: "机关部门",
    SubjectType.area_unit: "辖区单位",
}


class InspectionKind(StrEnum):
    routine = "routine"                  # 日常检查
    announced = "announced"              # 明查
    unannounced = "unannounced"          # 暗访
    special_campaign = "special_campaign"  # 专项整治
    re_inspection = "re_inspection"      # 复查
    self_check = "self_check"            # 自查
    citizen_report = "citizen_report"    # 群众举报 / 12319
    digital_city = "digital_city"        # 数字城管


INSPECTION_KIND_LABELS = {
    InspectionKind.routine: "日常检查",
    InspectionKind.announced: "明查",
    InspectionKind.unannounced: "暗访",
    InspectionKind.special_campaign: "专项整治",
    InspectionKind.re_inspection: "复查",
    InspectionKind.self_check: "自查",
    InspectionKind.citizen_report: "群众举报",
    InspectionKind.digital_city: "数字城管",
}


class Severity(StrEnum):
    minor = "minor"        # 一般
    major = "major"        # 较重
    critical = "critical"  # 严重


SEVERITY_LABELS = {Severity.minor: "一般", Severity.major: "较重", Severity.critical: "严重"}


def movement_text(movement: int | None) -> str:
    """A rank's movement as bulletins, the console and the demo print it: 新 for a first
    ranking, ↑n up, ↓n down, — unchanged."""
    if movement is None:
        return "新"
    if movement > 0:
        return f"↑{movement}"
    if movement < 0:
        return f"↓{-movement}"
    return "—"
