"""Events published by the rectification tasks service (整改任务)."""
from __future__ import annotations

from enum import StrEnum

from pydantic import AwareDatetime, Field

from services.contracts.events import Payload, event_payload
from services.contracts.events.inspection import Evidence, InspectionSubmitted, PlaceRef
from services.contracts.nodes import NodeCode
from services.contracts.vocab import Severity


class TaskStatus(StrEnum):
    open = "open"                    # 待整改
    in_progress = "in_progress"      # 整改中
    fix_submitted = "fix_submitted"  # 已提交整改 (after-photos)
    closed = "closed"                # 已销号
    escalated = "escalated"          # 已上报协调


class Light(StrEnum):
    green = "green"    # < 80 % of the time used
    yellow = "yellow"  # 80–100 %
    red = "red"        # overdue



class Responsible(Payload):
    subject_id: str
    node: NodeCode
    name: str


class TaskRef(Payload):
    """What every task event carries, so consumers (notify, scoring) need no lookups."""
    task_id: str
    inspection_id: str
    inspecting_node: NodeCode
    owner_node: NodeCode = Field(description="the stack whose ledger holds the task")
    responsible: Responsible
    place: PlaceRef | None = None
    item_code: str
    item_text: str
    category_code: str
    category_name: str
    severity: Severity
    deadline_at: AwareDatetime
    status: TaskStatus


@event_payload("task_opened", 1)
class TaskOpened(Payload):
    task: TaskRef
    opened_at: AwareDatetime
    found_at: AwareDatetime | None = Field(
        default=None, description="when the problem was found (the inspection's time); bulletins count the "
                                  "problem in that month, whatever day the task was entered")
    evidence: list[Evidence] = Field(default_factory=list)
    note: str | None = None
    relapse_of: str | None = Field(default=None, description="the closed task this one repeats (反弹)")
    historic: bool = Field(default=False, description="opened from imported history: no notice goes out")


@event_payload("task_status_changed", 1)
class TaskStatusChanged(Payload):
    task: TaskRef
    from_status: TaskStatus
    to_status: TaskStatus
    actor: str
    reason: str | None = None
    at: AwareDatetime


@event_payload("task_overdue", 1)
class TaskOverdue(Payload):
    """An urge notice (督办单) is due: the deadline passed without a close-out."""
    task: TaskRef
    overdue_since: AwareDatetime
    urge_count: int = Field(ge=1)


@event_payload("task_escalated", 1)
class TaskEscalated(Payload):
    task: TaskRef
    to_node: NodeCode = Field(description="the office asked to coordinate: the parent stack's, or the ledger's "
                                          "own office (its owner node) when this stack has no parent stack")
    reason: str
    answer_due_at: AwareDatetime
    at: AwareDatetime


@event_payload("task_closed", 1)
class TaskClosed(Payload):
    """Close-out (销号): verified on site by the inspecting side."""
    task: TaskRef
    closed_at: AwareDatetime
    verified_by: str
    on_time: bool
    hours_to_fix: float
    historic: bool = Field(default=False, description="a close-out from imported history: no notice goes out")
    after_evidence: list[Evidence] = Field(default_factory=list, description="the after-photos (整改后) accepted")


@event_payload("task_relapsed", 1)
class TaskRelapsed(Payload):
    """A new finding at the same place for the same item soon after a close-out (反弹)."""
    task: TaskRef
    relapse_of: str
    closed_at: AwareDatetime = Field(description="when the earlier task was closed")


@event_payload("ledger_figures_updated", 1)
class LedgerFiguresUpdated(Payload):
    """A subject's ledger figures for a month changed; scoring may veto on them."""
    subject_id: str
    node: NodeCode
    period: str = Field(examples=["2026-11"], description="month key")
    opened: int
    closed: int
    closed_on_time: int
    overdue_open: int
    relapses: int
    close_rate: float | None = Field(description="销号率: closed / opened")
    on_time_rate: float | None = Field(description="closed on time / closed")
    mean_hours_to_fix: float | None
    computed_at: AwareDatetime


@event_payload("task_delegated", 1)
class TaskDelegated(Payload):
    """A higher tier's finding handed down to the child stack whose subtree holds the
    responsible subject (published on `chuangwei.down`). The task keeps its id at every
    tier, so each tier's ledger shows the same task; `inspection` carries the one finding.
    """
    task_id: str
    delegated_by: NodeCode = Field(description="the tier handing the task down")
    inspection: InspectionSubmitted


@event_payload("coordination_answered", 1)
class CoordinationAnswered(Payload):
    """The tier above answers an escalation (协调答复); travels down to the owning ledger."""
    task_id: str
    coordinator_node: NodeCode
    owner_node: NodeCode = Field(description="the ledger that escalated the task")
    answered_by: str
    answer: str
    new_deadline_at: AwareDatetime | None = None
    answered_at: AwareDatetime


@event_payload("coordination_requested", 1)
class CoordinationRequested(Payload):
    """A child stack escalated one of its tasks to this tier (上报协调), which now owes an
    answer; published on the tasks service's own exchange when the request is opened or reopened."""
    task: TaskRef
    from_node: NodeCode = Field(description="the child stack whose ledger escalated the task")
    reason: str
    answer_due_at: AwareDatetime
    requested_at: AwareDatetime = Field(description="when the child escalated the task")
