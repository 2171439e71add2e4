"""The bulletin's section on the measured indicators (pure: notify's bulletin assembly)."""
from datetime import datetime

from services.contracts.periods import CST
from services.notify.bulletin import IndicatorFact, assemble_bulletin, indicator_section
from services.notify.domain import BulletinPolicy


def test_the_section_lists_failed_and_flagged_areas_only():
    facts = [IndicatorFact("vector", "411502008002", "华森社区", False, {"verdict": "pass", "explanation": "达标"}),
             IndicatorFact("vector", "411502008001", "周家山社区", True, {"verdict": "fail", "explanation": "未达标"}),
             IndicatorFact("satisfaction", "411502008001", "周家山社区", True,
                           {"rate": 0.7, "answers": 20, "ci_low": 0.481, "ci_high": 0.8545, "threshold": 0.9}),
             IndicatorFact("satisfaction", "411502008002", "华森社区", False,
                           {"rate": 1.0, "answers": 19, "ci_low": 0.8318, "ci_high": 1.0, "threshold": 0.9})]
    assert indicator_section(facts) == {
        "vector_areas": 2, "vector_failed": [{"area": "411502008001", "name": "周家山社区", "explanation": "未达标"}],
        "satisfaction_areas": 2, "satisfaction_flagged": [{"area": "411502008001", "name": "周家山社区", "rate": 0.7,
                                                            "answers": 20, "ci_low": 0.481, "ci_high": 0.8545,
                                                            "threshold": 0.9}]}


def test_without_indicators_the_bulletin_has_no_section():
    data = assemble_bulletin("2026-11", "411502008000", "金牛山街道", [], [], [], BulletinPolicy(),
                             datetime(2026, 12, 1, 9, tzinfo=CST))
    assert data.indicators == {}
