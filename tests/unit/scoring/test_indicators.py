"""The measured indicators in a scoring policy (issue 17): satisfaction (群众满意率) as a weighted
source, vector density (病媒生物密度) as a veto. Figures worked out by hand in the comments."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import uuid4

import pytest
from nameko.testing.services import worker_factory
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

from services.contracts.events import InvalidEvent, Producer, make_event
from services.contracts.events.indicators import SatisfactionPublished, VectorVerdictPublished
from services.contracts.events.inspection import InspectionSubmitted
from services.contracts.nodes import Tier
from services.contracts.periods import Period
from services.plumbing.consumer import DUPLICATE
from services.plumbing.db import WorkerDatabase
from services.plumbing.providers import StackIdentity
from services.scoring import domain
from services.scoring.domain import ScoreInput, ScoringRuleViolation, VectorInput
from services.scoring.models import Base, PeriodScore, PolicyVersion, ScoreInputRow, Subject, VectorVerdictInput
from services.scoring.service import ScoringService

CST = timezone(timedelta(hours=8))
SAMPLES = Path(__file__).resolve().parents[3] / "services" / "contracts" / "events" / "samples"
STREET = "411502008000"
COMMUNITY = "411502008001"


def p(key):
    return Period.parse(key)


def inp(score, day, kind="routine", scale=100, ident=None):
    when = datetime.fromisoformat(day).replace(hour=10, tzinfo=CST)
    return ScoreInput(ident or f"{kind}-{day}-{score}", kind, score, scale, when)


@pytest.fixture(scope="module")
def street():
    return domain.load_shipped_policy("street", Tier.street)


@pytest.fixture(scope="module")
def city():
    return domain.load_shipped_policy("city", Tier.city)


def with_indicators(policy, weights=None, verdicts=("fail",)):
    """A copy of `policy` that weighs satisfaction and vetoes on vector density."""
    document = policy.model_dump(mode="json")
    if weights is not None:
        document["source_weights"] = weights
    document["vetoes"]["vector_density"] = {"verdicts": list(verdicts)}
    return domain.parse_policy(document, Tier.city if policy.scale == 1000 else Tier.street)


CITY_WEIGHTS = [{"name": "暗访", "kinds": ["unannounced"], "weight": 35},
                {"name": "明查", "kinds": ["announced"], "weight": 45},
                {"name": "数字城管", "kinds": ["digital_city", "citizen_report"], "weight": 10},
                {"name": "群众满意率", "kinds": ["satisfaction_survey"], "weight": 10}]


# --- policy documents --------------------------------------------------------------------


def test_shipped_policies_leave_both_indicators_off(street, city):
    for policy in (street, city):
        assert policy.vetoes.vector_density is None
        assert "satisfaction_survey" not in domain.weighted_kinds(policy)


def test_a_policy_may_name_the_satisfaction_kind_and_the_vector_veto(city):
    policy = with_indicators(city, CITY_WEIGHTS)
    assert domain.weighted_kinds(policy) >= {"satisfaction_survey", "unannounced"}
    assert policy.vetoes.vector_density.verdicts == ["fail"]
    # Stored as JSON and read back unchanged.
    assert domain.Policy.model_validate(policy.model_dump(mode="json")) == policy


def test_unknown_source_kinds_and_verdicts_are_refused(city):
    document = city.model_dump(mode="json")
    document["source_weights"][2]["kinds"] = ["digital_city", "satisfaction"]
    with pytest.raises(ScoringRuleViolation) as bad:
        domain.parse_policy(document, Tier.city)
    assert bad.value.field.startswith("source_weights.2.kinds")
    document = city.model_dump(mode="json")
    document["vetoes"]["vector_density"] = {"verdicts": ["pass"]}
    with pytest.raises(ScoringRuleViolation) as bad:
        domain.parse_policy(document, Tier.city)
    assert bad.value.field.startswith("vetoes.vector_density.verdicts")
    # The same kind in two groups is refused as for inspection kinds.
    document = city.model_dump(mode="json")
    document["source_weights"] = CITY_WEIGHTS[:3] + [{"name": "满意率", "kinds": ["satisfaction_survey",
                                                                                  "digital_city"], "weight": 10}]
    with pytest.raises(ScoringRuleViolation, match="already weighted"):
        domain.parse_policy(document, Tier.city)


def test_the_satisfaction_kind_stays_out_of_the_shared_inspection_vocabulary():
    from services.contracts.vocab import InspectionKind
    assert "satisfaction_survey" not in {k.value for k in InspectionKind}


# --- satisfaction as a weighted source -----------------------------------------------------


def test_satisfaction_counts_with_its_weight(city):
    policy = with_indicators(city, CITY_WEIGHTS)
    inputs = [inp(100, "2026-11-03", "unannounced"), inp(80, "2026-11-05", "announced"),
              inp(85, "2026-11-01", "satisfaction_survey", ident="survey-1")]
    result = domain.subject_score(p("2026-11"), policy, inputs)
    # On 1000 points: 0.35 × 1000 + 0.45 × 800 + 0.10 × 850 over 90 % of the weight
    # (数字城管 has no case this month) = (350 + 360 + 85) / 0.9 = 883.33.
    assert result.score == pytest.approx(795 / 0.9, abs=0.005)
    groups = {g["name"]: (g["inspections"], g["mean"]) for g in result.explain["source_weights"]}
    assert groups["群众满意率"] == (1, 850.0)
    assert result.inputs == 3
    listed = {i["inspection_id"]: i["counted"] for i in result.explain["inspections"]}
    assert listed["survey-1"] is True


@pytest.mark.parametrize("name", ["street", "city"])
def test_a_policy_that_does_not_weigh_satisfaction_ignores_it_entirely(name, street, city):
    policy = {"street": street, "city": city}[name]
    kind = "unannounced" if name == "city" else "routine"
    inspections = [inp(90, "2026-11-03", kind)]
    survey = inp(40, "2026-11-01", "satisfaction_survey", ident="survey-1")
    for period in ("2026-11", "2026-Q4", "2026-H2", "2026"):
        before = domain.subject_score(p(period), policy, inspections)
        after = domain.subject_score(p(period), policy, inspections + [survey])
        assert (after.score, after.inputs, after.grade) == (before.score, before.inputs, before.grade)
        assert after.explain == before.explain  # not even listed as excluded
    # Alone it makes no figure either.
    assert domain.subject_score(p("2026-11"), policy, [survey]).score is None


# --- vector density as a veto ------------------------------------------------------------------


def test_a_failing_month_vetoes_that_month_and_the_longer_periods(street):
    policy = with_indicators(street)
    inputs = [inp(96, "2026-11-03"), inp(94, "2026-11-10")]
    fail = [VectorInput("2026-11", "fail", 1)]
    result = domain.subject_score(p("2026-11"), policy, inputs, vectors=fail)
    assert result.score == 95.0 and result.vetoed and result.grade == "合格"
    assert result.explain["grade_before_veto"] == "优秀"
    assert result.veto_reasons == ["病媒生物密度（vector_density）：病媒生物密度未达标（2026-11）"]
    [veto] = result.explain["vetoes"]
    assert veto == {"reason": "vector_density", "label": "病媒生物密度", "period": "2026-11",
                    "detail": "病媒生物密度未达标（2026-11）", "source": "indicators"}
    for key in ("2026-Q4", "2026-H2", "2026"):
        assert domain.subject_score(p(key), policy, inputs, vectors=fail).vetoed
    # Not October, nor a week of November (a month's veto does not reach back into weeks).
    assert not domain.subject_score(p("2026-10"), policy, [inp(96, "2026-10-05")], vectors=fail).vetoed
    assert not domain.subject_score(p("2026-W46"), policy, inputs, vectors=fail).vetoed


def test_pass_and_incomplete_do_not_veto_unless_the_policy_says_so(street):
    inputs = [inp(96, "2026-11-03")]
    policy = with_indicators(street)
    for verdict in ("pass", "incomplete"):
        assert not domain.subject_score(p("2026-11"), policy, inputs,
                                        vectors=[VectorInput("2026-11", verdict, 2)]).vetoed
    strict = with_indicators(street, verdicts=("fail", "incomplete"))
    result = domain.subject_score(p("2026-11"), strict, inputs, vectors=[VectorInput("2026-11", "incomplete", 1)])
    assert result.vetoed and result.explain["vetoes"][0]["detail"] == "病媒生物密度监测不完整（2026-11）"


def test_the_shipped_policy_ignores_a_failing_verdict(street):
    inputs = [inp(96, "2026-11-03")]
    before = domain.subject_score(p("2026-11"), street, inputs)
    after = domain.subject_score(p("2026-11"), street, inputs, vectors=[VectorInput("2026-11", "fail", 1)])
    assert not after.vetoed and after.explain == before.explain


# --- the handlers (worker_factory, SQLite) -------------------------------------------------------


class RecordingOutbox:
    def __init__(self):
        self.events = []

    def add(self, session, payload, correlation_id=None, exchange=None, **kw):
        if not exchange and type(payload).__name__.startswith("ScorePublished"):
            self.events.append(payload)


def make_service(policy="street"):
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    Base.metadata.create_all(engine)
    svc = worker_factory(ScoringService, db=WorkerDatabase(sessionmaker(bind=engine, expire_on_commit=False)),
                         outbox=RecordingOutbox(), identity=StackIdentity(home=STREET, tier=Tier.street, tree=None),
                         default_policy=policy)
    svc.engine = engine
    return svc


@pytest.fixture
def service():
    svc = make_service()
    yield svc
    svc.engine.dispose()


def enable_indicators(service, weights):
    """Adopt a street policy version that weighs satisfaction and vetoes on vector density
    (stored directly: the two-administrator route is tested elsewhere)."""
    street = domain.load_shipped_policy("street", Tier.street)
    policy = with_indicators(street, weights)
    with sessionmaker(bind=service.engine)() as session, session.begin():
        from services.scoring import operations as ops
        ops.seed_default_policy(session, ops.Context(STREET, None, None, "street"))
        session.add(PolicyVersion(node=STREET, version=2, policy_id="street-indicators",
                                  document=policy.model_dump(mode="json"), created_by="test",
                                  created_at=datetime.now(timezone.utc)))


STREET_WEIGHTS = [{"name": "检查", "kinds": ["routine", "announced", "unannounced"], "weight": 80},
                  {"name": "群众满意率", "kinds": ["satisfaction_survey"], "weight": 20}]


def inspection_event(node, score, day, subject_id):
    base = json.loads((SAMPLES / "inspection_submitted.v1.json").read_text(encoding="utf-8"))["payload"]
    base.update(inspection_id=str(uuid4()), score=score, inspected_at=f"{day}T10:00:00+08:00", kind="routine",
                subject={"subject_id": subject_id, "node": node, "name": "周家山社区", "subject_type": "child_unit"})
    return make_event(InspectionSubmitted.model_validate(base), Producer(node=STREET, service="inspection")).to_message()


def satisfaction_event(rate, revision=1, survey_id="survey-1", area=COMMUNITY, period="2026-11",
                       surveying_node=STREET):
    base = json.loads((SAMPLES / "satisfaction_published.v1.json").read_text(encoding="utf-8"))["payload"]
    base.update(survey_id=survey_id, rate=rate, revision=revision, period=period, surveying_node=surveying_node,
                area={"node": area, "name": "周家山社区"})
    return make_event(SatisfactionPublished.model_validate(base), Producer(node=STREET, service="indicators")).to_message()


def vector_event(verdict, revision, area=COMMUNITY, period="2026-11", evaluating_node=STREET):
    base = json.loads((SAMPLES / "vector_verdict_published.v1.json").read_text(encoding="utf-8"))["payload"]
    base.update(verdict=verdict, revision=revision, period=period, evaluating_node=evaluating_node,
                area={"node": area, "name": "周家山社区"})
    return make_event(VectorVerdictPublished.model_validate(base), Producer(node=STREET, service="indicators")).to_message()


def figure(service, node, period):
    with service.engine.connect() as conn:
        return conn.execute(select(PeriodScore).where(PeriodScore.subject_id == node,
                                                      PeriodScore.period == period)).one_or_none()


def count(service, table):
    with service.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_the_default_policy_ignores_both_events(service):
    subject_id = str(uuid4())
    service.on_inspection_submitted([inspection_event(COMMUNITY, 90.0, "2026-11-03", subject_id)])
    before = {k: figure(service, COMMUNITY, k) for k in ("2026-11", "2026-Q4", "2026")}
    service.outbox.events.clear()
    assert service.on_satisfaction_published(satisfaction_event(0.4)) == 0
    assert service.on_vector_verdict_published(vector_event("fail", 1)) == 0
    assert service.outbox.events == []
    for key, row in before.items():
        after = figure(service, COMMUNITY, key)
        assert (after.score, after.vetoed, after.revision, after.explain) == (row.score, row.vetoed, row.revision,
                                                                              row.explain)
    # Both are kept (a later policy may use them), and an unscored area gets no figure.
    assert count(service, ScoreInputRow) == 2 and count(service, VectorVerdictInput) == 1
    assert service.on_satisfaction_published(satisfaction_event(0.5, area="411502008002")) == 0
    assert figure(service, "411502008002", "2026-11") is None


def test_satisfaction_feeds_its_weighted_source_and_revisions_replace_it(service):
    enable_indicators(service, STREET_WEIGHTS)
    subject_id = str(uuid4())
    service.on_inspection_submitted([inspection_event(COMMUNITY, 90.0, "2026-11-03", subject_id)])
    assert figure(service, COMMUNITY, "2026-11").score == 90.0
    body = satisfaction_event(0.85, revision=1)
    assert service.on_satisfaction_published(body) > 0
    # 0.8 × 90 + 0.2 × 85 = 89.
    assert figure(service, COMMUNITY, "2026-11").score == 89.0
    assert figure(service, COMMUNITY, "2026-Q4").score == 89.0  # mean of months: November alone
    assert figure(service, COMMUNITY, "2026-W45").score == 90.0  # a month's wave is not in its weeks
    assert service.on_satisfaction_published(body) == DUPLICATE
    # A higher revision replaces the score: 0.8 × 90 + 0.2 × 60 = 84.
    assert service.on_satisfaction_published(satisfaction_event(0.6, revision=2)) > 0
    assert figure(service, COMMUNITY, "2026-11").score == 84.0
    # An older or equal revision (another event id) changes nothing.
    assert service.on_satisfaction_published(satisfaction_event(0.99, revision=1)) == 0
    assert service.on_satisfaction_published(satisfaction_event(0.99, revision=2)) == 0
    assert figure(service, COMMUNITY, "2026-11").score == 84.0
    assert count(service, ScoreInputRow) == 2
    # Another office's survey does not count here.
    assert service.on_satisfaction_published(satisfaction_event(0.1, survey_id="s-2",
                                                                surveying_node="411502001000")) == 0
    assert figure(service, COMMUNITY, "2026-11").score == 84.0


def test_satisfaction_alone_scores_an_area_not_inspected_yet(service):
    enable_indicators(service, STREET_WEIGHTS)
    assert service.on_satisfaction_published(satisfaction_event(0.92, area="411502008003")) > 0
    row = figure(service, "411502008003", "2026-11")
    assert row.score == 92.0 and row.inputs == 1 and row.subject_type == "child_unit"
    with service.engine.connect() as conn:
        subject = conn.execute(select(Subject).where(Subject.subject_id == "411502008003")).one()
    assert subject.node == "411502008003"


def test_a_failing_vector_month_vetoes_until_a_passing_revision(service):
    enable_indicators(service, STREET_WEIGHTS)
    subject_id = str(uuid4())
    for day in ("2026-11-03", "2026-11-10"):
        service.on_inspection_submitted([inspection_event(COMMUNITY, 96.0, day, subject_id)])
    assert figure(service, COMMUNITY, "2026-11").grade == "优秀"
    assert service.on_vector_verdict_published(vector_event("fail", 1)) > 0
    for key in ("2026-11", "2026-Q4", "2026-H2", "2026"):
        row = figure(service, COMMUNITY, key)
        assert row.vetoed and row.score == 96.0 and row.grade == "合格", key
        assert row.veto_reasons == ["病媒生物密度（vector_density）：病媒生物密度未达标（2026-11）"]
    assert not figure(service, COMMUNITY, "2026-W45").vetoed
    # A late, older revision changes nothing; a higher pass lifts the veto.
    assert service.on_vector_verdict_published(vector_event("pass", 1)) == 0
    assert figure(service, COMMUNITY, "2026-11").vetoed
    assert service.on_vector_verdict_published(vector_event("pass", 2)) > 0
    row = figure(service, COMMUNITY, "2026-11")
    assert not row.vetoed and row.grade == "优秀" and row.veto_reasons == []
    assert service.on_vector_verdict_published(vector_event("fail", 2)) == 0  # equal revision: no-op


def test_a_verdict_for_an_area_scored_later_counts_then(service):
    enable_indicators(service, STREET_WEIGHTS)
    assert service.on_vector_verdict_published(vector_event("fail", 1)) == 0
    assert figure(service, COMMUNITY, "2026-11") is None  # no empty figure made for it
    service.on_inspection_submitted([inspection_event(COMMUNITY, 96.0, "2026-11-03", str(uuid4()))])
    assert figure(service, COMMUNITY, "2026-11").vetoed


def test_a_vector_verdict_must_be_for_a_month(service):
    with pytest.raises(InvalidEvent):
        service.on_vector_verdict_published(vector_event("fail", 1, period="2026-Q4"))


@pytest.mark.parametrize("name,tier", [("street", Tier.street), ("city", Tier.city)])
def test_the_commented_examples_in_the_shipped_policies_are_valid(name, tier):
    """The YAML files document both options as commented-out examples (not enabled): each
    one, uncommented, is a valid policy with the indicators on."""
    import re
    import yaml
    text = (domain.POLICY_DIR / f"{name}.yaml").read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    assert "vector_density" not in document["vetoes"]
    weights = [re.sub(r"^\s*#   ", "", line) for line in text.splitlines() if re.match(r"^\s*#   - \{name", line)]
    document["source_weights"] = yaml.safe_load("\n".join(weights))
    document["vetoes"]["vector_density"] = yaml.safe_load(
        re.search(r"^\s*# vector_density: (.*)$", text, re.M).group(1))
    policy = domain.parse_policy(document, tier)
    assert "satisfaction_survey" in domain.weighted_kinds(policy) and policy.vetoes.vector_density.verdicts == ["fail"]
