"""Pure rectification rules (整改): deadlines, lights, the state machine, the sweeper's
decisions, relapse matching and ledger figures.

No nameko or database imports: unit-tested directly.

Decisions documented here:
- A finding's time limit runs from the inspection time (`found_at`), when the
  rectification notice is issued on site.
- Deadline: the inspector's `deadline_at` if set; else `found_at + deadline_hours`; an
  item with 0 hours (立即整改, "immediately") is due by the end of the inspection's day in
  China Standard Time (the next local midnight), but never sooner than
  IMMEDIATE_MIN_HOURS after the inspection (a finding at 23:30 is due at 01:30).
- Light: green while under 80 % of the time is used, yellow from 80 % up to the deadline,
  red once overdue. A closed task has no light. A submitted fix stops the clock for the
  subject (it is waiting for verification) but its light still shows the deadline.
- On time: the fix that was accepted was submitted by the deadline (the subject is not
  blamed for the inspecting side's verification delay). Time to fix = found → accepted fix.
- Unannounced inspections (暗访): the time limit runs from the release, when the subject
  learns of the finding (`deadline_after_release`).
- Escalation (上报协调) adds pressure, it never locks a task: the subject may still start and
  submit the fix of an escalated task, the inspecting side verify (销号) or reject it, and the
  tier asked may answer while the coordination is pending, whatever the subject did meanwhile.
  A request goes to the parent stack (the tier above that runs a stack and is federated,
  config PARENT_STACK); a stack without one escalates inside its own office (督办: its own
  inspectors and administrators answer), since a tier that runs no stack would never answer.
- Relapse (反弹): a new finding for the same place (or, with no place, the same subject) and
  the same checklist item, found within the window (default 90 days) after an earlier task
  was closed; the most recently closed such task is the one linked.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Iterable, Sequence

from services.contracts.errors import PermissionDenied, RuleViolation, StateConflict
from services.contracts.events.tasks import Light, TaskStatus
from services.contracts.nodes import is_within, parent_of, subtree_prefix  # noqa: F401 (subtree_prefix: domain API)
from services.contracts.periods import CST

YELLOW_FRACTION = 0.8
IMMEDIATE_MIN_HOURS = 2
DEFAULT_RELAPSE_WINDOW = timedelta(days=90)
DEFAULT_URGE_REPEAT = timedelta(hours=24)
DEFAULT_ESCALATION_GRACE = timedelta(hours=72)
DEFAULT_ANSWER_HOURS = 72


class TaskRuleViolation(RuleViolation):
    """Input breaks a rectification rule (422); `field` names where."""


class TaskStateConflict(StateConflict):
    """The action does not fit the task's current state (409)."""


class TaskPermissionDenied(PermissionDenied):
    """The actor's role may not take this action (403)."""


class Role(StrEnum):
    inspector = "inspector"      # the inspecting side (检查方): verifies and closes, or rejects
    responsible = "responsible"  # the responsible subject (责任主体): fixes, or asks for help
    coordinator = "coordinator"  # the office asked to coordinate (协调): the parent stack's, or this one's
    system = "system"            # the sweeper (督办): urges and escalates overdue tasks


class Action(StrEnum):
    start = "start"            # 开始整改
    submit_fix = "submit_fix"  # 提交整改 (after-photos and a note)
    verify = "verify"          # 核实销号 (close-out)
    reject = "reject"          # 退回重改
    escalate = "escalate"      # 上报协调 ("cannot solve locally")
    answer = "answer"          # 协调答复 (the tier above answers)


ACTION_LABELS = {
    Action.start: "开始整改", Action.submit_fix: "提交整改", Action.verify: "核实销号",
    Action.reject: "退回重改", Action.escalate: "上报协调", Action.answer: "协调答复",
}

STATUS_LABELS = {
    TaskStatus.open: "待整改", TaskStatus.in_progress: "整改中", TaskStatus.fix_submitted: "待核实",
    TaskStatus.closed: "已销号", TaskStatus.escalated: "已上报协调",
}

LIGHT_LABELS = {Light.green: "绿灯", Light.yellow: "黄灯", Light.red: "红灯"}

OPEN_STATUSES = (TaskStatus.open, TaskStatus.in_progress, TaskStatus.fix_submitted, TaskStatus.escalated)
# Statuses in which the subject still owes a fix: these go overdue, get urged and escalated.
OWING_STATUSES = (TaskStatus.open, TaskStatus.in_progress)


@dataclass(frozen=True)
class Rule:
    sources: tuple[TaskStatus, ...]
    target: TaskStatus | None   # None: the status stays as it is
    roles: tuple[Role, ...]

    def target_from(self, status: TaskStatus) -> TaskStatus:
        return status if self.target is None else self.target


# The coordinator's answer resumes an escalated task; one the subject already took up again
# (started, or even fixed) keeps its status and only gets the answer (and a new deadline).
ANSWER_RESUMES = TaskStatus.in_progress

TRANSITIONS: dict[Action, Rule] = {
    # An escalated task stays the subject's to fix: escalation asks for help, it does not lock.
    Action.start: Rule((TaskStatus.open, TaskStatus.escalated), TaskStatus.in_progress, (Role.responsible,)),
    Action.submit_fix: Rule((TaskStatus.in_progress, TaskStatus.escalated), TaskStatus.fix_submitted,
                            (Role.responsible,)),
    Action.verify: Rule((TaskStatus.fix_submitted,), TaskStatus.closed, (Role.inspector,)),
    Action.reject: Rule((TaskStatus.fix_submitted,), TaskStatus.in_progress, (Role.inspector,)),
    Action.escalate: Rule((TaskStatus.open, TaskStatus.in_progress), TaskStatus.escalated,
                          (Role.responsible, Role.system)),
    # Possible while the coordination is pending (`coordination_pending`), from any status the
    # task can have meanwhile; from `escalated` it resumes the work.
    Action.answer: Rule((TaskStatus.escalated, TaskStatus.in_progress, TaskStatus.fix_submitted), None,
                        (Role.coordinator,)),
}


def coordination_pending(status: TaskStatus | str, escalated_at: datetime | None,
                         answered_at: datetime | None) -> bool:
    """Whether the tier asked still owes the answer to the task's latest escalation: escalated,
    not answered since, and the task not closed (a closed task needs no coordination)."""
    if TaskStatus(status) == TaskStatus.closed or escalated_at is None:
        return False
    return answered_at is None or answered_at < escalated_at


def check_transition(status: TaskStatus | str, action: Action | str, role: Role | str, actor: str,
                     fixed_by: str | None = None, *, pending: bool | None = None) -> TaskStatus:
    """The status `action` leads to, or a clear error naming the field at fault.

    `role` is the side the caller acts for; `actor` and `fixed_by` identify people (the
    authenticated account's subject: a name could be typed twice, an account cannot).
    `pending`: whether an escalation awaits its answer (`coordination_pending`); None means
    "only when the task is escalated" (a caller that does not track answers)."""
    status, action, role = TaskStatus(status), Action(action), Role(role)
    if pending is None:
        pending = status == TaskStatus.escalated
    rule = TRANSITIONS[action]
    if role not in rule.roles:
        allowed = " or ".join(r.value for r in rule.roles)
        raise TaskPermissionDenied("role", f"only the {allowed} side may {action.value} a task "
                                           f"({ACTION_LABELS[action]}); {role.value!r} may not")
    if action == Action.answer and not pending:
        raise TaskStateConflict("status", f"任务当前{STATUS_LABELS[status]}，没有待答复的上报协调 (no escalation of "
                                          f"this task awaits an answer; it is {status.value})")
    if action == Action.escalate and pending:
        raise TaskStateConflict("status", "任务已上报协调，正在等待答复，不能重复上报 (the task's escalation still "
                                          "awaits its answer)")
    if status not in rule.sources:
        if action == Action.verify:
            raise TaskStateConflict(
                "status", f"任务当前{STATUS_LABELS[status]}：未提交整改，不能销号 (the task is {status.value}: only a "
                          "submitted fix can be verified and closed)")
        allowed = ", ".join(s.value for s in rule.sources)
        raise TaskStateConflict("status", f"任务当前{STATUS_LABELS[status]}，不能{ACTION_LABELS[action]} (cannot "
                                          f"{action.value} a task that is {status.value}; allowed from: {allowed})")
    target = rule.target_from(status)
    if action == Action.answer and status == TaskStatus.escalated:
        target = ANSWER_RESUMES
    if action in (Action.verify, Action.reject) and fixed_by is not None and actor == fixed_by:
        raise TaskPermissionDenied("actor", "you submitted this fix and cannot verify or reject it; the verifier "
                                            "must be someone else from the inspecting side (不能核实自己提交的整改)")
    return target


# --- who may act, and who sees what (issue 10) ------------------------------------------
# The role names of the identity contract (services.plumbing.auth, which imports nameko and
# so cannot be imported here); a unit test keeps the two in step.
ADMINISTRATOR, INSPECTOR, RECTIFIER, VIEWER = "administrator", "inspector", "rectifier", "viewer"

SUBJECT_ACTIONS = (Action.start, Action.submit_fix, Action.escalate)
INSPECTING_ACTIONS = (Action.verify, Action.reject)

UNANNOUNCED = "unannounced"
REDACTED_INSPECTORS = "检查组"   # who the subject side is told acted for an unannounced inspection


def side_of(action: Action) -> Role:
    """The side an action is taken for (the state machine's `role`)."""
    if action in SUBJECT_ACTIONS:
        return Role.responsible
    if action in INSPECTING_ACTIONS:
        return Role.inspector
    return Role.coordinator


def inspecting_nodes(inspecting_node: str, owner_node: str, responsible_node: str) -> list[str]:
    """Nodes whose inspectors act for the inspecting side of a task: the office that inspected,
    and the office whose ledger holds it when that is not the subject itself (a task handed
    down from a higher tier is verified by that tier, or by the ledger's office above the
    subject — never by the subject's own node)."""
    nodes = [inspecting_node]
    if owner_node != inspecting_node and not is_within(owner_node, responsible_node):
        nodes.append(owner_node)
    return nodes


def acting_role(principal, action: Action, *, inspecting_node: str, owner_node: str, responsible_node: str,
                escalated_to: str | None) -> str:
    """The role `principal` acts in for `action` on a task, or TaskPermissionDenied (403).

    - start, fix, escalate: a rectifier holding the role on the responsible subject's node
      (the subject's contact; administrators do not act for a subject: a fix is the
      subject's own declaration, so it stays with its own account).
    - verify, reject (销号 / 退回): an inspector of the inspecting side (`inspecting_nodes`).
    - answer: an inspector or administrator of the tier the task was escalated to: the
      parent stack's office, or the ledger's own office when there is no parent stack.
    """
    if action in SUBJECT_ACTIONS:
        if principal.holds(RECTIFIER, responsible_node):
            return RECTIFIER
        raise TaskPermissionDenied("role", f"只有责任主体 {responsible_node} 的整改责任人可以{ACTION_LABELS[action]}; "
                                           f"requires role rectifier on the responsible subject's node "
                                           f"{responsible_node}")
    if action in INSPECTING_ACTIONS:
        nodes = inspecting_nodes(inspecting_node, owner_node, responsible_node)
        if any(principal.holds(INSPECTOR, n) for n in nodes):
            return INSPECTOR
        raise TaskPermissionDenied("role", f"只有检查方的检查员可以{ACTION_LABELS[action]}; requires role "
                                           f"inspector on the inspecting side ({' or '.join(nodes)})")
    target = escalated_to or (parent_of(owner_node) or owner_node)
    for role in (INSPECTOR, ADMINISTRATOR):
        if principal.holds(role, target):
            return role
    raise TaskPermissionDenied("role", f"只有受理上报协调的 {target} 的检查员或管理员可以协调答复; requires role "
                                       f"inspector or administrator on {target}, the office asked to coordinate")


def on_inspecting_side(principal, inspecting_node: str) -> bool:
    return principal.on_inspecting_side(inspecting_node)


# --- deadlines and lights ---------------------------------------------------------------


def deadline_for(found_at: datetime, deadline_hours: int, inspector_deadline: datetime | None = None
                 ) -> tuple[datetime, str]:
    """(deadline, source) where source is "inspector", "item" or "immediate"."""
    if inspector_deadline is not None:
        if inspector_deadline <= found_at:
            raise TaskRuleViolation("deadline_at", "the deadline must be after the inspection time")
        return inspector_deadline, "inspector"
    if deadline_hours < 0:
        raise TaskRuleViolation("deadline_hours", "must not be negative")
    if deadline_hours == 0:
        local = found_at.astimezone(CST)
        end_of_day = datetime(local.year, local.month, local.day, tzinfo=CST) + timedelta(days=1)
        return max(end_of_day, found_at + timedelta(hours=IMMEDIATE_MIN_HOURS)), "immediate"
    return found_at + timedelta(hours=deadline_hours), "item"


def deadline_after_release(found_at: datetime, deadline_at: datetime, released_at: datetime | None) -> datetime:
    """An unannounced inspection's (暗访) subject learns of a finding only when the office
    releases it: the whole time limit then runs from the release, not from the visit, so a
    late release never makes a task overdue before the subject could act."""
    if released_at is None or released_at <= found_at:
        return deadline_at
    return deadline_at + (released_at - found_at)


def yellow_from(found_at: datetime, deadline_at: datetime) -> datetime:
    """The moment 80 % of the time limit is used."""
    return found_at + (deadline_at - found_at) * YELLOW_FRACTION


def is_overdue(status: TaskStatus | str, deadline_at: datetime, now: datetime, marked_overdue: bool = False) -> bool:
    """Not closed, and past the deadline or already marked overdue by the sweeper (a mark
    stays until the tier above grants a new deadline)."""
    return TaskStatus(status) != TaskStatus.closed and (marked_overdue or now >= deadline_at)


def light_of(status: TaskStatus | str, found_at: datetime, deadline_at: datetime, now: datetime,
             marked_overdue: bool = False) -> Light | None:
    if TaskStatus(status) == TaskStatus.closed:
        return None
    if is_overdue(status, deadline_at, now, marked_overdue):
        return Light.red
    if now >= yellow_from(found_at, deadline_at):
        return Light.yellow
    return Light.green


def time_used(found_at: datetime, deadline_at: datetime, now: datetime) -> float:
    """Fraction of the time limit used so far (1.0 = due now)."""
    total = (deadline_at - found_at).total_seconds()
    return round(max(0.0, (now - found_at).total_seconds()) / total, 4) if total > 0 else 1.0


def hours_between(start: datetime, end: datetime) -> float:
    return round((end - start).total_seconds() / 3600, 2)


def answer_due(now: datetime, answer_hours: int = DEFAULT_ANSWER_HOURS) -> datetime:
    return now + timedelta(hours=answer_hours)


def escalation_target(owner_node: str, parent_stack: str | None) -> str:
    """Who is asked to coordinate an escalation of a task in `owner_node`'s ledger.

    The parent stack (PARENT_STACK: the tier above that runs a stack and is federated with
    this one) when there is one: the request goes up the link and that office answers.
    Without one, the office itself (督办 inside the office): the tier above runs no stack and
    would never answer, which left every escalated task waiting for ever."""
    if parent_stack is None:
        return owner_node
    if parent_stack == owner_node or not is_within(owner_node, parent_stack):
        raise TaskRuleViolation("PARENT_STACK", f"上级系统 {parent_stack} 不是 {owner_node} 的上级区划 (the parent "
                                                f"stack must be a tier above the ledger's node)")
    return parent_stack


def escalated_outside(escalated_to: str | None, owner_node: str) -> bool:
    """Whether an escalation was addressed to another tier's office (up the federation link)."""
    return escalated_to is not None and not is_within(escalated_to, owner_node)


# --- the sweeper -------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepDecision:
    mark_overdue: bool = False
    urge: bool = False
    escalate: bool = False

    @property
    def any(self) -> bool:
        return self.mark_overdue or self.urge or self.escalate


def sweep_decision(status: TaskStatus | str, deadline_at: datetime, now: datetime, *,
                   overdue_since: datetime | None, last_urged_at: datetime | None,
                   escalated_at: datetime | None, urge_repeat: timedelta = DEFAULT_URGE_REPEAT,
                   grace: timedelta = DEFAULT_ESCALATION_GRACE) -> SweepDecision:
    """What the sweeper does with one task now. Idempotent: applying the decision and asking
    again at the same moment yields nothing to do, so concurrent sweepers cannot double up."""
    if TaskStatus(status) not in OWING_STATUSES or now < deadline_at:
        return SweepDecision()
    mark = overdue_since is None
    urge = last_urged_at is None or now - last_urged_at >= urge_repeat
    escalate = escalated_at is None and now - deadline_at >= grace
    return SweepDecision(mark_overdue=mark, urge=urge, escalate=escalate)


# --- relapse -----------------------------------------------------------------------------


def relapse_key(place_id: str | None, subject_id: str) -> str:
    """What "the same place" means: the place, or the inspected subject when there is none."""
    return f"place:{place_id}" if place_id else f"subject:{subject_id}"


@dataclass(frozen=True)
class ClosedTask:
    task_id: str
    key: str
    item_code: str
    closed_at: datetime


def find_relapse(closed: Iterable[ClosedTask], key: str, item_code: str, found_at: datetime,
                 window: timedelta = DEFAULT_RELAPSE_WINDOW) -> ClosedTask | None:
    """The closed task a new finding repeats, if any: the most recently closed match."""
    matches = [c for c in closed if c.key == key and c.item_code == item_code
               and c.closed_at <= found_at <= c.closed_at + window]
    return max(matches, key=lambda c: c.closed_at) if matches else None


# --- figures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskFacts:
    status: TaskStatus
    deadline_at: datetime
    closed: bool
    on_time: bool | None
    hours_to_fix: float | None
    relapse: bool
    marked_overdue: bool = False


@dataclass(frozen=True)
class Figures:
    opened: int
    closed: int
    closed_on_time: int
    overdue_open: int
    relapses: int
    close_rate: float | None
    on_time_rate: float | None
    mean_hours_to_fix: float | None

    def as_dict(self) -> dict:
        return dict(opened=self.opened, closed=self.closed, closed_on_time=self.closed_on_time,
                    overdue_open=self.overdue_open, relapses=self.relapses, close_rate=self.close_rate,
                    on_time_rate=self.on_time_rate, mean_hours_to_fix=self.mean_hours_to_fix)


def compute_figures(tasks: Sequence[TaskFacts], now: datetime) -> Figures:
    """销号率 = closed / opened; on-time rate = closed on time / closed; mean time to fix over
    closed tasks; overdue_open = not closed and overdue (`is_overdue`); relapses = tasks that repeat
    a closed one. Rates are None when their denominator is zero."""
    opened = len(tasks)
    closed = [t for t in tasks if t.closed]
    on_time = sum(1 for t in closed if t.on_time)
    overdue = sum(1 for t in tasks if not t.closed and (t.marked_overdue or now >= t.deadline_at))
    hours = [t.hours_to_fix for t in closed if t.hours_to_fix is not None]
    return Figures(
        opened=opened, closed=len(closed), closed_on_time=on_time, overdue_open=overdue,
        relapses=sum(1 for t in tasks if t.relapse),
        close_rate=round(len(closed) / opened, 4) if opened else None,
        on_time_rate=round(on_time / len(closed), 4) if closed else None,
        mean_hours_to_fix=round(sum(hours) / len(hours), 2) if hours else None)
