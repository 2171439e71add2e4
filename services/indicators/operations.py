"""Use cases of the indicators service: take a session, an outbox and the caller; no nameko.

Vector density: control levels per office, monitoring forms (idempotent by key), the
verdict per area and month recomputed on every change and published when it changes (also
upward), a notice when an area slips. Surveys: versioned questionnaires, waves with a
reproducible random sample and one-time answer codes, answers by interviewers or residents,
rates with Wilson intervals, flagged areas and low items published when a wave closes.
"""
from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.contracts.errors import DomainError, RuleViolation, StateConflict, UnknownReference
from services.contracts.events.indicators import (Area, MethodFigure as MethodFigureEvent, QuestionnaireRef,
                                                  RateFigure, Responsible, SatisfactionItemLow,
                                                  SatisfactionPublished, SpeciesFigure as SpeciesFigureEvent,
                                                  SurveyItemRef, VectorDensitySlipped, VectorVerdictPublished)
from services.contracts.identity import ADMINISTRATOR, INSPECTOR, Principal
from services.contracts.nodes import InvalidNodeCode, ancestors_of, is_within, normalize_code, subtree_prefix
from services.contracts.periods import CST, Period
from services.contracts.tiers import UP_EXCHANGE, routing_key as tier_routing_key
from services.indicators import domain, metrics
from services.indicators.domain import METHODS, Method
from services.indicators.models import (ChildReport, ControlLevel, DensityForm, DensityRecord, PublicAttempt,
                                        Questionnaire, Respondent, SatisfactionResult, Survey, VectorVerdict)
from services.indicators.schemas import (AreaSatisfactionOut, ChildReportOut, CloseOut, ControlLevelsIn,
                                         DensityFormIn, DensityFormOut, InterviewIn, LevelOut, PublicAnswerIn,
                                         PublicAnswerOut, QuestionnaireIn, QuestionnaireOut, RateOut, ReadingOut,
                                         ResponseOut, RespondentOut, SatisfactionOut, SurveyIn, SurveyOut,
                                         VerdictOut)
from services.plumbing.idempotency import KEY_IN_FLIGHT, KEY_REUSED, client_key, stored_for_key
from services.plumbing.rate_limit import RateLimit
from services.plumbing.sql import advisory_xact_lock

RECORDERS = (INSPECTOR, ADMINISTRATOR)
MAX_RESPONDENTS_PER_SURVEY = 5000


@dataclass(frozen=True)
class Settings:
    tolerance: float = domain.DEFAULT_TOLERANCE
    public_max_requests: int = 30
    public_max_failures: int = 10
    public_window_seconds: int = 600

    @classmethod
    def from_config(cls, config: dict) -> "Settings":
        return cls(tolerance=float(config.get("INDICATORS_VECTOR_TOLERANCE", domain.DEFAULT_TOLERANCE)),
                   public_max_requests=int(config.get("INDICATORS_PUBLIC_MAX_REQUESTS", 30)),
                   public_max_failures=int(config.get("INDICATORS_PUBLIC_MAX_FAILURES", 10)),
                   public_window_seconds=int(config.get("INDICATORS_PUBLIC_WINDOW_SECONDS", 600)))


@dataclass(frozen=True)
class Context:
    home: str
    names: object  # a NodeTree or None
    outbox: object
    settings: Settings

    def name_of(self, code: str) -> str:
        return (self.names.name_of(code) if self.names is not None else None) or code


def _within_home(ctx: Context, node: str, field: str) -> str:
    node = normalize_code(node)
    if not is_within(node, ctx.home):
        raise RuleViolation(field, f"{node} 不在本级辖区内; {node} is outside this office's area ({ctx.home})")
    return node


def path_node(node: str, field: str = "node") -> str:
    """A division code from a URL path; 404 when it is none."""
    try:
        return normalize_code(node)
    except InvalidNodeCode:
        raise UnknownReference(field, f"{node!r} is not a division code (不是区划代码)") from None


def _today(now: datetime) -> date:
    return now.astimezone(CST).date()


# --- control levels ---

def effective_levels(session: Session, area: str) -> dict[Method, LevelOut]:
    """The level of each method for `area`: the nearest office's (self or above), else the default."""
    chain = [normalize_code(area), *ancestors_of(area)]
    rows = session.execute(select(ControlLevel).where(ControlLevel.node.in_(chain))).scalars().all()
    depth = {node: i for i, node in enumerate(chain)}
    best: dict[str, ControlLevel] = {}
    for row in rows:
        if row.method not in best or depth[row.node] < depth[best[row.method].node]:
            best[row.method] = row
    out = {}
    for method, spec in METHODS.items():
        row = best.get(method.value)
        out[method] = LevelOut(method=method, species=spec.species, label=spec.label, unit=spec.unit,
                               level=row.level if row else spec.default_level,
                               source=row.node if row else "default",
                               set_by=row.set_by if row else None, set_at=row.set_at if row else None)
    return out


def get_levels(session: Session, principal: Principal, node: str) -> list[LevelOut]:
    node = path_node(node)
    principal.require_sees(node, "node")
    return list(effective_levels(session, node).values())


def set_levels(session: Session, ctx: Context, principal: Principal, node: str, body: ControlLevelsIn,
               now: datetime) -> list[LevelOut]:
    node = path_node(node)
    principal.require(ADMINISTRATOR, node, "node")
    _within_home(ctx, node, "node")
    seen = set()
    for index, entry in enumerate(body.levels):
        if entry.method in seen:
            raise RuleViolation(f"levels[{index}].method", f"{entry.method} is given twice (重复)")
        seen.add(entry.method)
        try:
            domain.check_level(entry.method, entry.level)
        except domain.DensityProblem as exc:
            raise RuleViolation(f"levels[{index}].{exc.field}", exc.reason) from exc
    lock_vectors(session)
    for entry in body.levels:
        row = session.get(ControlLevel, (node, entry.method.value))
        if row is None:
            row = ControlLevel(node=node, method=entry.method.value)
            session.add(row)
        row.level, row.set_by, row.set_at = entry.level, principal.label, now
    session.flush()
    # Verdicts already published for the subtree are judged again against the new levels.
    prefix = subtree_prefix(node)
    pairs = session.execute(select(DensityRecord.area, DensityRecord.period).where(
        DensityRecord.area.like(f"{prefix}%")).distinct()).all()
    for area, period in sorted(pairs):
        refresh_verdict(session, ctx, area, period, now)
    return list(effective_levels(session, node).values())


def lock_vectors(session: Session) -> None:
    # Verdicts are recomputed from shared rows: one recomputation at a time per database.
    advisory_xact_lock(session, "indicators-vectors")


# --- density forms and verdicts ---

def _reading_out(row: DensityRecord) -> ReadingOut:
    return ReadingOut(species=row.species, method=row.method, value=row.value, sampled_on=row.sampled_on,
                      sample_size=row.sample_size, site=row.site)


def _form_out(session: Session, ctx: Context, form: DensityForm) -> DensityFormOut:
    rows = session.execute(select(DensityRecord).where(DensityRecord.form_id == form.id)
                           .order_by(DensityRecord.id)).scalars().all()
    return DensityFormOut(form_id=form.id, idempotency_key=form.idempotency_key, area=form.area,
                          period=form.period, source=form.source, recorded_by=form.recorded_by,
                          recorded_at=form.recorded_at, readings=[_reading_out(r) for r in rows],
                          verdict=verdict_for(session, ctx, form.area, form.period))


# Idempotency keys are scoped to the caller and the endpoint (plumbing/idempotency.py).
FORM_ENDPOINT = "POST /vector/forms"
SURVEY_ENDPOINT = "POST /surveys"


def record_form(session: Session, ctx: Context, principal: Principal, body: DensityFormIn,
                now: datetime) -> tuple[DensityFormOut, bool]:
    """Store a monitoring form and re-judge the area's month. Returns (form, created); the same
    idempotency key again returns the stored form unchanged."""
    area = _within_home(ctx, body.area, "area")
    principal.require(RECORDERS, area, "area")
    key = client_key(body.idempotency_key, FORM_ENDPOINT, principal.subject, body, "idempotency_key")
    existing = stored_for_key(session, DensityForm, key, DensityForm.recorded_by_subject == principal.subject)
    if existing is not None and (existing.area != area or existing.period != body.period):
        raise StateConflict(key.field, KEY_REUSED)
    if existing is not None:
        key.check_retry(existing.request_fingerprint)
        return _form_out(session, ctx, existing), False
    first, after = Period.parse(body.period).bounds()
    today = _today(now)
    for index, reading in enumerate(body.readings):
        try:
            domain.check_figure(reading.method, reading.species, reading.value)
        except domain.DensityProblem as exc:
            raise RuleViolation(f"readings[{index}].{exc.field}", exc.reason) from exc
        if not first <= reading.sampled_on < after:
            raise RuleViolation(f"readings[{index}].sampled_on",
                                f"{reading.sampled_on} lies outside the period {body.period} (监测日期不在本期内)")
        if reading.sampled_on > today + timedelta(days=1):
            raise RuleViolation(f"readings[{index}].sampled_on",
                                f"{reading.sampled_on} is in the future (监测日期晚于今天)")
    lock_vectors(session)
    form = DensityForm(id=str(uuid.uuid4()), idempotency_key=body.idempotency_key, idempotency_scope=key.scope,
                       request_fingerprint=key.fingerprint, area=area, period=body.period,
                       source=body.source, recorded_by=principal.label, recorded_by_subject=principal.subject,
                       recorded_at=now)
    session.add(form)
    try:
        session.flush()
    except IntegrityError:
        raise key.in_flight()
    for reading in body.readings:
        session.add(DensityRecord(form_id=form.id, area=area, period=body.period, species=reading.species.value,
                                  method=reading.method.value, value=reading.value, sample_size=reading.sample_size,
                                  sampled_on=reading.sampled_on, site=reading.site))
    session.flush()
    metrics.DENSITY_READINGS.inc(len(body.readings))
    refresh_verdict(session, ctx, area, body.period, now)
    return _form_out(session, ctx, form), True


def list_forms(session: Session, principal: Principal, period: str | None, area: str | None,
               limit: int, ctx: Context) -> list[DensityFormOut]:
    stmt = select(DensityForm).order_by(DensityForm.recorded_at.desc(), DensityForm.id).limit(limit)
    if area:
        stmt = stmt.where(DensityForm.area.like(f"{subtree_prefix(area)}%"))
    if period:
        stmt = stmt.where(DensityForm.period.in_([p.key for p in Period.parse(period).months()]))
    return [_form_out(session, ctx, f) for f in session.execute(stmt).scalars() if principal.sees(f.area)]


def _evaluate(session: Session, ctx: Context, area: str, period: str) -> domain.VectorVerdict:
    months = [p.key for p in Period.parse(period).months()]
    rows = session.execute(select(DensityRecord).where(DensityRecord.area == area,
                                                       DensityRecord.period.in_(months))).scalars().all()
    levels = {m: out.level for m, out in effective_levels(session, area).items()}
    readings = [domain.Reading(Method(r.method), r.value, float(r.sample_size or 1)) for r in rows]
    return domain.evaluate_vectors(readings, levels, tolerance=ctx.settings.tolerance)


def _species_json(result: domain.VectorVerdict) -> list[dict]:
    return [{"species": f.species.value, "ratio": None if f.ratio is None else round(f.ratio, 4),
             "at_level": f.at_level,
             "methods": [{"method": m.method.value, "value": m.value, "level": m.level, "ratio": round(m.ratio, 4),
                          "readings": m.readings} for m in f.methods]} for f in result.species]


def refresh_verdict(session: Session, ctx: Context, area: str, period: str, now: datetime) -> VectorVerdict:
    """Judge one area's month again; publish the verdict if it changed, and a notice if it slipped."""
    result = _evaluate(session, ctx, area, period)
    species = _species_json(result)
    row = session.get(VectorVerdict, (area, period))
    if row is not None and (row.verdict, row.species, row.explanation) == (result.verdict.value, species,
                                                                            result.explanation):
        return row
    prior_verdict = row.verdict if row is not None else None
    # What the area slips from: this month's last judgement, or, while this month has none
    # yet (no row, or readings still incomplete), last month's.
    slip_from, slip_period = prior_verdict, period
    if prior_verdict in (None, domain.Verdict.incomplete):
        previous = Period.parse(period).previous().key
        before = session.get(VectorVerdict, (area, previous))
        slip_from, slip_period = (before.verdict, previous) if before else (None, None)
    if row is None:
        row = VectorVerdict(area=area, period=period, name=ctx.name_of(area), revision=0)
        session.add(row)
    row.verdict, row.species, row.explanation = result.verdict.value, species, result.explanation
    row.revision += 1
    row.computed_at = now
    session.flush()
    event = VectorVerdictPublished(
        evaluating_node=ctx.home, area=Area(node=area, name=row.name), period=period, verdict=row.verdict,
        previous_verdict=prior_verdict, species=[SpeciesFigureEvent(
            species=s["species"], ratio=s["ratio"], at_level=s["at_level"],
            methods=[MethodFigureEvent(**m) for m in s["methods"]]) for s in species],
        explanation=row.explanation, revision=row.revision, computed_at=now)
    ctx.outbox.add(session, event, correlation_id=f"vector:{area}:{period}")
    ctx.outbox.add(session, event, correlation_id=f"vector:{area}:{period}", exchange=UP_EXCHANGE,
                   routing_key=tier_routing_key("vector_verdict_published", ctx.home))
    metrics.VERDICTS_PUBLISHED.labels(row.verdict).inc()
    if domain.slipped(slip_from, result.verdict):
        metrics.VECTOR_SLIPS.inc()
        ctx.outbox.add(session, VectorDensitySlipped(
            evaluating_node=ctx.home, area=Area(node=area, name=row.name), period=period, verdict=row.verdict,
            previous_verdict=slip_from, previous_period=slip_period, explanation=row.explanation,
            computed_at=now), correlation_id=f"vector:{area}:{period}")
    return row


def verdict_for(session: Session, ctx: Context, area: str, period: str) -> VerdictOut:
    stored = session.get(VectorVerdict, (area, period))
    result = _evaluate(session, ctx, area, period)
    return VerdictOut(area=area, name=ctx.name_of(area), period=period, verdict=result.verdict,
                      species=_species_json(result), explanation=result.explanation,
                      revision=stored.revision if stored else None,
                      computed_at=stored.computed_at if stored else None)


def list_verdicts(session: Session, ctx: Context, principal: Principal, period: str,
                  area: str | None) -> list[VerdictOut]:
    months = [p.key for p in Period.parse(period).months()]
    stmt = select(DensityRecord.area).where(DensityRecord.period.in_(months)).distinct()
    if area:
        stmt = stmt.where(DensityRecord.area.like(f"{subtree_prefix(area)}%"))
    areas = sorted(a for a in session.execute(stmt).scalars() if principal.sees(a))
    return [verdict_for(session, ctx, a, period) for a in areas]


def explain_verdict(session: Session, ctx: Context, principal: Principal, area: str, period: str) -> VerdictOut:
    area = normalize_code(area)
    principal.require_sees(area, "area")
    return verdict_for(session, ctx, area, period)


def refresh_gauges(session: Session) -> None:
    latest = session.execute(select(VectorVerdict.verdict, func.count()).group_by(VectorVerdict.verdict)).all()
    counts = dict(latest)
    for verdict in domain.Verdict:
        metrics.VERDICT_AREAS.labels(verdict.value).set(counts.get(verdict.value, 0))


# --- questionnaires ---

def _items(row: Questionnaire) -> dict[str, domain.Item]:
    return {i["code"]: domain.Item(code=i["code"], text=i["text"], satisfied=frozenset(i["satisfied"]),
                                   excluded=frozenset(i["excluded"]),
                                   values=frozenset(o["value"] for o in i["scale"]),
                                   place_type=i.get("place_type"), content_area=i.get("content_area"),
                                   finding_below=i.get("finding_below")) for i in row.items}


def _questionnaire_out(row: Questionnaire) -> QuestionnaireOut:
    return QuestionnaireOut(code=row.code, version=row.version, node=row.node, title=row.title,
                            threshold=row.threshold, items=row.items, defined_by=row.defined_by,
                            defined_at=row.defined_at)


def define_questionnaire(session: Session, ctx: Context, principal: Principal, body: QuestionnaireIn,
                         now: datetime) -> QuestionnaireOut:
    node = _within_home(ctx, body.node or ctx.home, "node")
    principal.require(ADMINISTRATOR, node, "node")
    codes = set()
    for index, item in enumerate(body.items):
        where = f"items[{index}]"
        if item.code in codes:
            raise RuleViolation(f"{where}.code", f"item {item.code} is defined twice (题目编号重复)")
        codes.add(item.code)
        values = [o.value for o in item.scale]
        if len(set(values)) != len(values):
            raise RuleViolation(f"{where}.scale", "answer values must be unique (量表选项重复)")
        for name in ("satisfied", "excluded"):
            for value in getattr(item, name):
                if value not in values:
                    raise RuleViolation(f"{where}.{name}", f"{value!r} is not on the item's scale (不在量表内)")
        if set(item.satisfied) & set(item.excluded):
            raise RuleViolation(f"{where}.excluded", "an answer cannot be both satisfied and excluded")
        if len(set(values) - set(item.excluded)) < 2:
            raise RuleViolation(f"{where}.scale", "the scale needs at least two answers that count")
        if item.place_type is None and item.content_area is None:
            raise RuleViolation(f"{where}.place_type", "say which place type or content area the item concerns "
                                                       "(须注明点位类型或内容领域)")
    advisory_xact_lock(session, f"indicators-questionnaire:{body.code}")
    latest = session.execute(select(func.max(Questionnaire.version)).where(
        Questionnaire.code == body.code)).scalar_one_or_none() or 0
    row = Questionnaire(code=body.code, version=latest + 1, node=node, title=body.title, threshold=body.threshold,
                        items=[item.model_dump(mode="json") for item in body.items], defined_by=principal.label,
                        defined_at=now)
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise StateConflict("code", "another version of this questionnaire is being defined; retry")
    return _questionnaire_out(row)


def _sees_questionnaire(principal: Principal, node: str) -> bool:
    """A questionnaire is its office's: seen by those with a role on that office's node or above
    it, and by those below it, whose areas it surveys — not by another office (issue 27)."""
    return principal.sees(node) or any(is_within(mine, node) for mine in principal.nodes_with())


def list_questionnaires(session: Session, principal: Principal) -> list[QuestionnaireOut]:
    rows = session.execute(select(Questionnaire).order_by(Questionnaire.code, Questionnaire.version)).scalars()
    return [_questionnaire_out(r) for r in rows if _sees_questionnaire(principal, r.node)]


def get_questionnaire(session: Session, code: str, version: str, principal: Principal) -> QuestionnaireOut:
    wanted = version.isascii() and version.isdigit() and len(version) < 8
    row = session.get(Questionnaire, (code, int(version))) if wanted else None
    if row is None or not _sees_questionnaire(principal, row.node):
        raise UnknownReference("version", f"no questionnaire {code} version {version} (问卷不存在)")
    return _questionnaire_out(row)


# --- surveys ---

_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud and typed by residents


def new_response_code() -> str:
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(12))
    return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"


def code_hash(code: str) -> str:
    canonical = code.replace("-", "").upper()
    return hashlib.sha256(canonical.encode()).hexdigest()


def _respondent_out(row: Respondent, code: str | None = None) -> RespondentOut:
    return RespondentOut(respondent_id=row.id, area=row.area, label=row.label, position=row.position,
                         answered=row.answered_at is not None, channel=row.channel, response_code=code)


def _survey_out(session: Session, survey: Survey, codes: dict[str, str] | None = None) -> SurveyOut:
    rows = session.execute(select(Respondent).where(Respondent.survey_id == survey.id)
                           .order_by(Respondent.area, Respondent.position)).scalars().all()
    return SurveyOut(survey_id=survey.id, node=survey.node,
                     questionnaire={"code": survey.questionnaire_code, "version": survey.questionnaire_version},
                     period=survey.period, seed=survey.seed, areas=survey.areas, status=survey.status,
                     created_by=survey.created_by, created_at=survey.created_at, closed_at=survey.closed_at,
                     respondents=[_respondent_out(r, (codes or {}).get(r.id)) for r in rows])


def create_survey(session: Session, ctx: Context, principal: Principal, body: SurveyIn,
                  now: datetime) -> tuple[SurveyOut, bool]:
    """Draw the sample of each area and give every respondent a one-time answer code (shown once)."""
    key = client_key(body.idempotency_key, SURVEY_ENDPOINT, principal.subject, body, "idempotency_key")
    if key is not None:
        existing = stored_for_key(session, Survey, key, Survey.created_by == principal.label)
        if existing is not None:
            key.check_retry(existing.request_fingerprint)
            if not principal.sees(existing.node):
                raise StateConflict(key.field, KEY_REUSED)
            return _survey_out(session, existing), False
    questionnaire = session.get(Questionnaire, (body.questionnaire.code, body.questionnaire.version))
    if questionnaire is None:
        raise UnknownReference("questionnaire", f"no questionnaire {body.questionnaire.code} version "
                                                f"{body.questionnaire.version} (问卷不存在)")
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    total = 0
    seen = set()
    drawn: list[tuple[str, list[str]]] = []
    areas = []
    for index, spec in enumerate(body.areas):
        where = f"areas[{index}]"
        area = _within_home(ctx, spec.node, f"{where}.node")
        principal.require(RECORDERS, area, f"{where}.node")
        if area in seen:
            raise RuleViolation(f"{where}.node", f"{area} is listed twice (重复)")
        seen.add(area)
        if (spec.frame is None) == (spec.frame_size is None):
            raise RuleViolation(f"{where}.frame", "give either a frame or a frame_size (二者选一)")
        if spec.frame is not None and len(set(spec.frame)) != len(spec.frame):
            raise RuleViolation(f"{where}.frame", "the frame lists a respondent twice (抽样框重复)")
        size = len(spec.frame) if spec.frame is not None else spec.frame_size
        if spec.sample_size > size:
            raise RuleViolation(f"{where}.sample_size", f"cannot draw {spec.sample_size} from a frame of {size} "
                                                        "(样本量超过抽样框)")
        total += spec.sample_size
        if total > MAX_RESPONDENTS_PER_SURVEY:
            raise RuleViolation(f"{where}.sample_size", f"a wave draws at most {MAX_RESPONDENTS_PER_SURVEY} "
                                                        "respondents (单次调查样本量上限)")
        population = spec.frame if spec.frame is not None else range(1, size + 1)
        labels = [p if isinstance(p, str) else f"#{p}"
                  for p in domain.draw_sample(population, spec.sample_size, seed, area)]
        drawn.append((area, labels))
        areas.append({"node": area, "name": ctx.name_of(area), "frame_size": size, "sample_size": spec.sample_size})
    survey = Survey(id=str(uuid.uuid4()), idempotency_key=body.idempotency_key, node=ctx.home,
                    idempotency_scope=key.scope if key else None,
                    request_fingerprint=key.fingerprint if key else None,
                    questionnaire_code=questionnaire.code, questionnaire_version=questionnaire.version,
                    period=body.period, seed=seed, areas=areas, status="open", created_by=principal.label,
                    created_at=now, revision=0)
    session.add(survey)
    try:
        session.flush()
    except IntegrityError:
        raise key.in_flight() if key else StateConflict("idempotency_key", KEY_IN_FLIGHT)
    codes = {}
    for area, labels in drawn:
        for position, label in enumerate(labels, start=1):
            code = new_response_code()
            row = Respondent(id=str(uuid.uuid4()), survey_id=survey.id, area=area, label=label, position=position,
                             code_hash=code_hash(code))
            session.add(row)
            codes[row.id] = code
    session.flush()
    return _survey_out(session, survey, codes), True


def _visible_survey(session: Session, principal: Principal, survey_id: str, lock: bool = False) -> Survey:
    stmt = select(Survey).where(Survey.id == survey_id)
    if lock:
        stmt = stmt.with_for_update()
    survey = session.execute(stmt).scalar_one_or_none()
    if survey is None or not (principal.sees(survey.node) or any(principal.sees(a["node"]) for a in survey.areas)):
        raise UnknownReference("survey_id", f"no survey {survey_id} (调查不存在)")
    return survey


def get_survey(session: Session, principal: Principal, survey_id: str) -> SurveyOut:
    return _survey_out(session, _visible_survey(session, principal, survey_id))


def list_surveys(session: Session, principal: Principal, period: str | None, limit: int) -> list[SurveyOut]:
    stmt = select(Survey).order_by(Survey.created_at.desc(), Survey.id).limit(limit)
    if period:
        stmt = stmt.where(Survey.period == period)
    return [_survey_out(session, s) for s in session.execute(stmt).scalars()
            if principal.sees(s.node) or any(principal.sees(a["node"]) for a in s.areas)]


def _checked_answers(items: dict[str, domain.Item], answers) -> dict[str, str]:
    out: dict[str, str] = {}
    for index, answer in enumerate(answers):
        item = items.get(answer.item_code)
        if item is None:
            raise RuleViolation(f"answers[{index}].item_code", f"the questionnaire has no item {answer.item_code} "
                                                               "(问卷无此题)")
        if answer.item_code in out:
            raise RuleViolation(f"answers[{index}].item_code", f"item {answer.item_code} is answered twice")
        problem = domain.answer_problem(item, answer.value)
        if problem:
            raise RuleViolation(f"answers[{index}].value", problem)
        out[answer.item_code] = answer.value
    return out


def _answer(session: Session, survey: Survey, respondent: Respondent, answers: dict[str, str], channel: str,
            recorded_by: str, now: datetime) -> tuple[ResponseOut, bool]:
    if respondent.answered_at is not None:
        if respondent.answers == answers:  # the same form sent again: nothing changes
            return _response_out(respondent), False
        raise StateConflict("respondent_id", "this respondent has already answered (该受访者已作答)")
    respondent.answers, respondent.channel, respondent.recorded_by = answers, channel, recorded_by
    respondent.answered_at = now
    session.flush()
    metrics.SURVEY_ANSWERS.labels(channel).inc()
    return _response_out(respondent), True


def _response_out(row: Respondent) -> ResponseOut:
    return ResponseOut(survey_id=row.survey_id, respondent_id=row.id, area=row.area, channel=row.channel,
                       answered_at=row.answered_at, answers=row.answers)


def record_interview(session: Session, principal: Principal, survey_id: str, body: InterviewIn,
                     now: datetime) -> tuple[ResponseOut, bool]:
    survey = _visible_survey(session, principal, survey_id)
    respondent = session.execute(select(Respondent).where(
        Respondent.id == body.respondent_id, Respondent.survey_id == survey.id).with_for_update()
    ).scalar_one_or_none()
    if respondent is None:
        raise UnknownReference("respondent_id", "no such respondent in this survey's sample (不在样本内)")
    principal.require(RECORDERS, respondent.area, "respondent_id")
    if survey.status != "open":
        raise StateConflict("survey_id", "the survey is closed (调查已结束)")
    items = _items(session.get(Questionnaire, (survey.questionnaire_code, survey.questionnaire_version)))
    return _answer(session, survey, respondent, _checked_answers(items, body.answers), "interviewer",
                   principal.label, now)


_ATTEMPTS_KEPT = timedelta(days=1)
UNKNOWN_CODE = "回答码无效或已过期; unknown or expired response code"


@dataclass
class Throttled:
    retry_after: int


def public_answer(session: Session, body: PublicAnswerIn, client: str, settings: Settings,
                  now: datetime) -> PublicAnswerOut | Throttled | DomainError:
    """A resident answers through the public link with the one-time code. Every attempt is
    counted per client address (in this transaction, which always commits): too many in the
    window, or too many wrong codes, are refused with 429 before the code is even looked at.
    Returns the outcome, or the error to answer with."""
    advisory_xact_lock(session, f"indicators-public:{client}")
    window = timedelta(seconds=settings.public_window_seconds)
    attempts = session.execute(select(PublicAttempt.at, PublicAttempt.succeeded).where(
        PublicAttempt.client == client, PublicAttempt.at > now - window)).all()
    waits = [wait for wait in (
        RateLimit(settings.public_max_requests, window).retry_after([a.at for a in attempts], now),
        RateLimit(settings.public_max_failures, window).retry_after([a.at for a in attempts if not a.succeeded], now),
    ) if wait]
    if waits:
        metrics.PUBLIC_REFUSED.inc()
        return Throttled(max(waits))
    session.execute(delete(PublicAttempt).where(PublicAttempt.at < now - _ATTEMPTS_KEPT))

    def attempt(succeeded: bool):
        session.add(PublicAttempt(client=client[:64], at=now, succeeded=succeeded))

    respondent = session.execute(select(Respondent).where(
        Respondent.code_hash == code_hash(body.response_code)).with_for_update()).scalar_one_or_none()
    survey = session.get(Survey, respondent.survey_id) if respondent is not None else None
    if respondent is None or survey is None or survey.status != "open":
        attempt(False)
        return UnknownReference("response_code", UNKNOWN_CODE)
    items = _items(session.get(Questionnaire, (survey.questionnaire_code, survey.questionnaire_version)))
    try:
        answers = _checked_answers(items, body.answers)
        if respondent.answered_at is not None:
            raise StateConflict("response_code", "此回答码已使用; this response code has already been used")
    except DomainError as exc:
        attempt(False)
        return exc
    _answer(session, survey, respondent, answers, "public", "resident", now)
    attempt(True)
    return PublicAnswerOut(accepted=True, message="感谢您的参与！Thank you for answering.")


# --- satisfaction ---

def _rate(key: str, tally: domain.Tally) -> RateOut:
    interval = tally.interval
    return RateOut(key=key, rate=None if tally.rate is None else round(tally.rate, 4), satisfied=tally.satisfied,
                   answers=tally.answers, respondents=len(tally.respondents),
                   ci_low=None if interval is None else round(interval.low, 4),
                   ci_high=None if interval is None else round(interval.high, 4))


def _area_figures(session: Session, ctx: Context, survey: Survey,
                  questionnaire: Questionnaire) -> list[tuple[AreaSatisfactionOut, domain.AreaSatisfaction]]:
    items = _items(questionnaire)
    rows = session.execute(select(Respondent).where(Respondent.survey_id == survey.id,
                                                    Respondent.answered_at.is_not(None))).scalars().all()
    out = []
    for spec in survey.areas:
        area = spec["node"]
        tally = domain.tally_area(items, [(r.id, r.answers) for r in rows if r.area == area])
        overall = _rate(area, tally.overall)
        out.append((AreaSatisfactionOut(
            area=area, name=spec["name"], rate=overall.rate, satisfied=overall.satisfied, answers=overall.answers,
            respondents=overall.respondents, sample_size=spec["sample_size"], ci_low=overall.ci_low,
            ci_high=overall.ci_high, threshold=questionnaire.threshold,
            flagged=domain.flagged(tally.overall.rate, questionnaire.threshold),
            by_place_type=[_rate(k, t) for k, t in sorted(tally.by_place_type.items())],
            by_content_area=[_rate(k, t) for k, t in sorted(tally.by_content_area.items())],
            by_item=[_rate(k, t) for k, t in sorted(tally.by_item.items())]), tally))
    return out


def satisfaction(session: Session, ctx: Context, principal: Principal, survey_id: str) -> SatisfactionOut:
    survey = _visible_survey(session, principal, survey_id)
    questionnaire = session.get(Questionnaire, (survey.questionnaire_code, survey.questionnaire_version))
    areas = [a for a, _ in _area_figures(session, ctx, survey, questionnaire) if principal.sees(a.area)]
    return SatisfactionOut(survey_id=survey.id, period=survey.period,
                           questionnaire={"code": survey.questionnaire_code, "version": survey.questionnaire_version},
                           status=survey.status, areas=areas)


def close_survey(session: Session, ctx: Context, principal: Principal, survey_id: str, now: datetime) -> CloseOut:
    """End the wave: publish each area's rate (here and to the tier above) and turn the items
    the questionnaire's policy names into findings for the area."""
    survey = _visible_survey(session, principal, survey_id, lock=True)
    principal.require(RECORDERS, survey.node, "survey_id")
    if survey.status != "open":
        raise StateConflict("survey_id", "the survey is already closed (调查已结束)")
    questionnaire = session.get(Questionnaire, (survey.questionnaire_code, survey.questionnaire_version))
    items = _items(questionnaire)
    ref = QuestionnaireRef(code=questionnaire.code, version=questionnaire.version)
    survey.status, survey.closed_at = "closed", now
    survey.revision = (survey.revision or 0) + 1
    published = findings = 0
    flagged = []

    def figure(rate: RateOut) -> RateFigure:
        return RateFigure(key=rate.key, rate=rate.rate, satisfied=rate.satisfied, answers=rate.answers,
                          ci_low=rate.ci_low, ci_high=rate.ci_high)

    for out, tally in _area_figures(session, ctx, survey, questionnaire):
        event = SatisfactionPublished(
            surveying_node=ctx.home, survey_id=survey.id, questionnaire=ref, area=Area(node=out.area, name=out.name),
            period=survey.period, rate=out.rate, satisfied=out.satisfied, answers=out.answers,
            respondents=out.respondents, sample_size=out.sample_size, ci_low=out.ci_low, ci_high=out.ci_high,
            threshold=out.threshold, flagged=out.flagged, by_place_type=[figure(r) for r in out.by_place_type],
            by_content_area=[figure(r) for r in out.by_content_area], revision=survey.revision, computed_at=now)
        session.add(SatisfactionResult(survey_id=survey.id, area=out.area, period=survey.period,
                                       figure=out.model_dump(mode="json"), revision=survey.revision))
        ctx.outbox.add(session, event, correlation_id=f"survey:{survey.id}")
        ctx.outbox.add(session, event, correlation_id=f"survey:{survey.id}", exchange=UP_EXCHANGE,
                       routing_key=tier_routing_key("satisfaction_published", ctx.home))
        published += 1
        if out.flagged:
            flagged.append(out.area)
            metrics.SATISFACTION_FLAGGED.inc()
        for item, item_tally in domain.low_items(items, tally):
            ctx.outbox.add(session, SatisfactionItemLow(
                surveying_node=ctx.home, survey_id=survey.id, questionnaire=ref, period=survey.period,
                responsible=Responsible(subject_id=out.area, node=out.area, name=out.name),
                item=SurveyItemRef(code=item.code, text=item.text, place_type=item.place_type,
                                   content_area=item.content_area),
                rate=round(item_tally.rate, 4), satisfied=item_tally.satisfied, answers=item_tally.answers,
                finding_below=item.finding_below, found_at=now), correlation_id=f"survey:{survey.id}")
            findings += 1
    session.flush()
    return CloseOut(survey_id=survey.id, status=survey.status, published=published, findings=findings,
                    flagged=flagged)


# --- tiers ---

def apply_child_vector(session: Session, received_at: datetime, payload: VectorVerdictPublished) -> bool:
    return _keep_latest(session, "vector", payload.area.node, payload.period, "", payload.evaluating_node,
                        payload.model_dump(mode="json"), payload.revision, received_at)


def apply_child_satisfaction(session: Session, received_at: datetime, payload: SatisfactionPublished) -> bool:
    return _keep_latest(session, "satisfaction", payload.area.node, payload.period, payload.survey_id,
                        payload.surveying_node, payload.model_dump(mode="json"), payload.revision, received_at)


def _keep_latest(session: Session, kind: str, area: str, period: str, source: str, reporting_node: str,
                 payload: dict, revision: int, received_at: datetime) -> bool:
    row = session.get(ChildReport, (kind, area, period, source), with_for_update=True)
    if row is not None and row.revision >= revision:
        return False  # an older report arriving late
    if row is None:
        row = ChildReport(kind=kind, area=area, period=period, source=source)
        session.add(row)
    row.reporting_node, row.payload, row.revision, row.received_at = reporting_node, payload, revision, received_at
    session.flush()
    return True


def child_reports(session: Session, principal: Principal, period: str | None, kind: str | None) -> list[ChildReportOut]:
    stmt = select(ChildReport).order_by(ChildReport.kind, ChildReport.area, ChildReport.period)
    if period:
        stmt = stmt.where(ChildReport.period == period)
    if kind:
        stmt = stmt.where(ChildReport.kind == kind)
    return [ChildReportOut(kind=r.kind, area=r.area, period=r.period, reporting_node=r.reporting_node,
                           revision=r.revision, received_at=r.received_at, report=r.payload)
            for r in session.execute(stmt).scalars() if principal.sees(r.area)]
