"""Low satisfaction items (群众满意率) from the indicators service as rectification tasks.

A `satisfaction_item_low` event — one questionnaire item whose satisfaction rate in an area
fell below the item's `finding_below` when the survey wave was closed — is a rectification
finding (整改问题) for the area as responsible subject (属地管理). Like a case from intake
(`cases.py`) it is shaped as a one-finding inspection and handed to `ops.open_tasks`, so every
ledger rule applies unchanged: lights, urge notices (督办), escalation, hand-down to a child
stack, relapse links (反弹: the same item low again within the relapse window of a close-out)
and close-out with evidence (销号). How the finding is shaped:

- the finding's item is the survey item (its code and Chinese text), its category
  `satisfaction` (群众满意率), its checklist the questionnaire (catalogue `survey`, version,
  code); severity 一般 (minor): the policy grades no survey finding above another;
- the note states the wave, the question, the rate with its answers and the threshold:
  "群众满意度调查 2026-11：「您对公厕卫生是否满意？」满意率 72.00%（18/25），低于 90%";
- the deduction is the one-point marker every task needs: a survey deducts no checklist points;
- the kind is `citizen_report` (群众), the nearest of the shared vocabulary
  (`services.contracts.vocab.InspectionKind`): a kind of its own would be a change of the
  shared contract, which a child stack not yet upgraded would refuse when the task is handed
  down (`task_delegated` carries the inspection). The catalogue, category, note and the
  inspector name "群众满意度调查" say where the task came from;
- the ids are deterministic (uuid5): the task's over the survey, period, item code and
  responsible subject, the "inspection's" over the survey, period and subject (one area's
  low items of one wave are one inspection). A redelivered event is caught by the event id
  (`apply_once`); the same finding published again under another event id finds its task and
  opens nothing (`open_satisfaction_task`);
- the time limit (整改时限) runs from the wave's close (`found_at`) for
  `TASKS_SATISFACTION_DEADLINE_DAYS` days. 30 days is our default, not the campaign's: the
  policy leaves the time limit for a survey finding to the office.

Which ledger opens it: the stack whose home node is the surveying node, as with cases (the
office whose intake took the case, `receiving_node`). The surveying office ran the wave and
will judge the next one, so it stands where an inspecting office stands: it verifies the fix
(销号) and its ledger owns the task; a responsible area in a child stack's subtree is handed
down to that stack's ledger by `open_tasks`, as any finding is. Indicators publishes the event
only on its own stack's `indicators.events`, so another stack's surveys do not normally reach
this ledger; the check keeps it so if they ever do (a shared vhost, a replayed dead letter).
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from services.contracts.events.indicators import SatisfactionItemLow
from services.contracts.events.inspection import ChecklistRef, Finding, InspectionSubmitted, SubjectRef
from services.contracts.vocab import InspectionKind, Severity, SubjectType
from services.plumbing.sql import advisory_xact_lock
from services.tasks import operations as ops
from services.tasks.models import Task

SURVEY_CATALOGUE = "survey"
SATISFACTION_CATEGORY = ("satisfaction", "群众满意率")
SURVEY_KIND = InspectionKind.citizen_report
SURVEYOR = "群众满意度调查"
SATISFACTION_MARKER_POINTS = 1.0
DEFAULT_DEADLINE_DAYS = 30
ITEM_CODE_MAX = 32   # tasks_tasks.item_code; a questionnaire allows 64 (the task id keeps the whole code)

# uuid5 namespace of the tasks opened from satisfaction findings (fixed: ids must not change).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:chuangwei:tasks:satisfaction_item_low")


def task_id(low: SatisfactionItemLow) -> str:
    """The same finding (survey, period, item, responsible subject) always gets the same task id."""
    return str(uuid.uuid5(NAMESPACE, "|".join(
        ("task", low.survey_id, low.period, low.item.code, low.responsible.subject_id))))


def inspection_id(low: SatisfactionItemLow) -> uuid.UUID:
    """One area's low items of one survey wave form one inspection."""
    return uuid.uuid5(NAMESPACE, "|".join(("inspection", low.survey_id, low.period, low.responsible.subject_id)))


def percent(fraction: float) -> str:
    """0.9 → "90%", 0.855 → "85.5%"."""
    return f"{round(fraction * 100, 2):g}%"


def note(low: SatisfactionItemLow) -> str:
    return (f"{SURVEYOR} {low.period}：「{low.item.text}」满意率 {low.rate * 100:.2f}%"
            f"（{low.satisfied}/{low.answers}），低于 {percent(low.finding_below)}")


def deadline(low: SatisfactionItemLow, days: float = DEFAULT_DEADLINE_DAYS) -> datetime:
    return low.found_at + timedelta(days=days if days > 0 else DEFAULT_DEADLINE_DAYS)


def as_inspection(low: SatisfactionItemLow, deadline_days: float = DEFAULT_DEADLINE_DAYS) -> InspectionSubmitted:
    code, category_name = SATISFACTION_CATEGORY
    finding = Finding(
        item_code=low.item.code[:ITEM_CODE_MAX], item_text=low.item.text, category_code=code,
        category_name=category_name, severity=Severity.minor, findings=1, deduction=SATISFACTION_MARKER_POINTS,
        max_points=SATISFACTION_MARKER_POINTS, note=note(low)[:4000], deadline_hours=0,
        deadline_at=deadline(low, deadline_days))
    subject = SubjectRef(subject_id=low.responsible.subject_id, node=low.responsible.node, name=low.responsible.name,
                         subject_type=SubjectType.child_unit)
    return InspectionSubmitted(
        inspection_id=inspection_id(low), inspecting_node=low.surveying_node, kind=SURVEY_KIND, subject=subject,
        place=None, checklist=ChecklistRef(catalogue_id=SURVEY_CATALOGUE, version=str(low.questionnaire.version),
                                           code=low.questionnaire.code),
        inspected_at=low.found_at, submitted_at=low.found_at, inspectors=[SURVEYOR], score=0.0, scale=100,
        points_available=0.0, points_deducted=0.0, findings=[finding])


def open_satisfaction_task(session: Session, low: SatisfactionItemLow, outbox, home: str, settings, now: datetime,
                           child_stacks: tuple[str, ...] = ()) -> list[Task]:
    """Open the finding's task in this ledger; nothing when another office surveyed or the
    task is already there (the same finding published again under another event id)."""
    if low.surveying_node != home:
        return []  # another office's survey: its findings are not in this ledger
    tid = task_id(low)
    # Two copies consumed at once: the second waits for the first's commit, then finds its task.
    advisory_xact_lock(session, f"tasks-satisfaction:{tid}")
    if session.get(Task, tid) is not None:
        return []
    return ops.open_tasks(session, as_inspection(low, settings.satisfaction_deadline_days), outbox, home, settings,
                          now, correlation_id=f"survey:{low.survey_id}", child_stacks=child_stacks,
                          task_ids={low.item.code[:ITEM_CODE_MAX]: tid})
