"""Pure rectification rules: state machine, deadlines, lights, sweeper decisions, relapse, figures."""
from datetime import datetime, timedelta, timezone

import pytest

from services.contracts.events.tasks import Light, TaskStatus
from services.contracts.periods import CST
from services.tasks import domain
from services.tasks.domain import (Action, ClosedTask, Role, TaskFacts, TaskPermissionDenied, TaskRuleViolation,
                                   TaskStateConflict, check_transition, compute_figures, deadline_for, find_relapse,
                                   light_of, sweep_decision)

T0 = datetime(2026, 11, 20, 1, 30, tzinfo=timezone.utc)  # 09:30 in Beijing


# --- state machine ---------------------------------------------------------------------------

LEGAL = [
    (TaskStatus.open, Action.start, Role.responsible, TaskStatus.in_progress),
    (TaskStatus.in_progress, Action.submit_fix, Role.responsible, TaskStatus.fix_submitted),
    (TaskStatus.fix_submitted, Action.verify, Role.inspector, TaskStatus.closed),
    (TaskStatus.fix_submitted, Action.reject, Role.inspector, TaskStatus.in_progress),
    (TaskStatus.open, Action.escalate, Role.responsible, TaskStatus.escalated),
    (TaskStatus.in_progress, Action.escalate, Role.system, TaskStatus.escalated),
    (TaskStatus.escalated, Action.answer, Role.coordinator, TaskStatus.in_progress),
]


@pytest.mark.parametrize("status,action,role,target", LEGAL)
def test_legal_transitions(status, action, role, target):
    assert check_transition(status, action, role, "王芳", fixed_by="张伟") == target


@pytest.mark.parametrize("status", [TaskStatus.open, TaskStatus.in_progress, TaskStatus.escalated, TaskStatus.closed])
def test_closing_an_unverified_task_is_a_conflict_on_status(status):
    with pytest.raises(TaskStateConflict) as err:
        check_transition(status, Action.verify, Role.inspector, "王芳")
    assert err.value.field == "status" and err.value.status == 409
    assert "只" in err.value.reason or "only" in err.value.reason


def test_verifying_your_own_fix_is_refused_naming_the_actor():
    # Accounts, not names, are compared: the same account is refused, a namesake is not.
    with pytest.raises(TaskPermissionDenied) as err:
        check_transition(TaskStatus.fix_submitted, Action.verify, Role.inspector, "user-zw", fixed_by="user-zw")
    assert err.value.field == "actor" and err.value.status == 403
    with pytest.raises(TaskPermissionDenied):
        check_transition(TaskStatus.fix_submitted, Action.reject, Role.inspector, "user-zw", fixed_by="user-zw")
    assert check_transition(TaskStatus.fix_submitted, Action.verify, Role.inspector, "user-zw2",
                            fixed_by="user-zw") == TaskStatus.closed


STREET, COMMUNITY, OTHER_STREET, DISTRICT, CITY = (
    "411502008000", "411502008001", "411502003000", "411502000000", "411500000000")


def caller(*grants):
    from services.plumbing.auth import Grant, Principal
    return Principal(subject="u", name="某人", grants=tuple(Grant(r, n) for r, n in grants))


def test_role_names_match_the_identity_contract():
    from services.plumbing import auth
    assert (domain.ADMINISTRATOR, domain.INSPECTOR, domain.RECTIFIER, domain.VIEWER) == (
        auth.ADMINISTRATOR, auth.INSPECTOR, auth.RECTIFIER, auth.VIEWER)


# (grants, action, task (inspecting, owner, responsible, escalated_to), expected role or None = refused)
LOCAL = (STREET, STREET, COMMUNITY, None)
FROM_CITY = (CITY, COMMUNITY, COMMUNITY, None)     # a city finding handed down to the community's ledger
ESCALATED = (STREET, STREET, COMMUNITY, DISTRICT)
PERMISSIONS = [
    ([("rectifier", COMMUNITY)], Action.start, LOCAL, "rectifier"),
    ([("rectifier", STREET)], Action.submit_fix, LOCAL, "rectifier"),      # a grant covers the subtree
    ([("administrator", STREET)], Action.start, LOCAL, None),              # offices do not fix for subjects
    ([("inspector", COMMUNITY)], Action.escalate, LOCAL, None),
    ([("rectifier", OTHER_STREET)], Action.start, LOCAL, None),
    ([("inspector", STREET)], Action.verify, LOCAL, "inspector"),
    ([("inspector", COMMUNITY)], Action.verify, LOCAL, None),              # the subject's own node
    ([("administrator", STREET)], Action.verify, LOCAL, None),
    ([("rectifier", STREET)], Action.reject, LOCAL, None),
    ([("inspector", CITY)], Action.verify, FROM_CITY, "inspector"),
    ([("inspector", COMMUNITY)], Action.verify, FROM_CITY, None),          # owner == subject: not inspecting side
    ([("inspector", STREET)], Action.verify, (CITY, STREET, COMMUNITY, None), "inspector"),  # the ledger's office
    ([("inspector", DISTRICT)], Action.answer, ESCALATED, "inspector"),
    ([("administrator", DISTRICT)], Action.answer, ESCALATED, "administrator"),
    ([("administrator", STREET)], Action.answer, ESCALATED, None),         # not the tier asked
    ([("viewer", DISTRICT)], Action.answer, ESCALATED, None),
]


@pytest.mark.parametrize("grants,action,task,expected", PERMISSIONS)
def test_who_may_act_on_a_task(grants, action, task, expected):
    inspecting, owner, responsible, escalated_to = task
    decide = lambda: domain.acting_role(caller(*grants), action, inspecting_node=inspecting, owner_node=owner,
                                        responsible_node=responsible, escalated_to=escalated_to)
    if expected is None:
        with pytest.raises(TaskPermissionDenied) as err:
            decide()
        assert err.value.field == "role" and err.value.status == 403
    else:
        assert decide() == expected


def test_the_inspecting_side_is_an_office_role_on_the_inspecting_node():
    assert domain.on_inspecting_side(caller(("viewer", STREET)), STREET)
    assert domain.on_inspecting_side(caller(("inspector", DISTRICT)), STREET)
    assert not domain.on_inspecting_side(caller(("rectifier", STREET)), STREET)
    assert not domain.on_inspecting_side(caller(("administrator", COMMUNITY)), STREET)
    assert domain.subtree_prefix(STREET) == "411502008" and domain.subtree_prefix(CITY) == "4115"


@pytest.mark.parametrize("action,role", [
    (Action.verify, Role.responsible), (Action.verify, Role.coordinator), (Action.start, Role.inspector),
    (Action.submit_fix, Role.coordinator), (Action.answer, Role.responsible), (Action.escalate, Role.inspector),
])
def test_the_wrong_side_is_refused_naming_the_role(action, role):
    status = domain.TRANSITIONS[action].sources[0]
    with pytest.raises(TaskPermissionDenied) as err:
        check_transition(status, action, role, "某人")
    assert err.value.field == "role" and err.value.status == 403


@pytest.mark.parametrize("status,action", [
    (TaskStatus.closed, Action.start), (TaskStatus.closed, Action.reject), (TaskStatus.closed, Action.escalate),
    (TaskStatus.open, Action.submit_fix), (TaskStatus.fix_submitted, Action.escalate),
    (TaskStatus.escalated, Action.escalate), (TaskStatus.in_progress, Action.answer),
])
def test_illegal_transitions_conflict(status, action):
    role = domain.TRANSITIONS[action].roles[0]
    with pytest.raises(TaskStateConflict) as err:
        check_transition(status, action, role, "某人")
    assert err.value.field == "status"


# Escalation adds pressure, it never locks (issue 25): the subject works on, the inspecting side
# closes out, and the answer stays possible while the coordination is pending.
WORKABLE_WHILE_ESCALATED = [
    (TaskStatus.escalated, Action.start, Role.responsible, True, TaskStatus.in_progress),
    (TaskStatus.escalated, Action.submit_fix, Role.responsible, True, TaskStatus.fix_submitted),
    (TaskStatus.in_progress, Action.submit_fix, Role.responsible, True, TaskStatus.fix_submitted),
    (TaskStatus.fix_submitted, Action.verify, Role.inspector, True, TaskStatus.closed),
    (TaskStatus.fix_submitted, Action.reject, Role.inspector, True, TaskStatus.in_progress),
    (TaskStatus.escalated, Action.answer, Role.coordinator, True, TaskStatus.in_progress),
    (TaskStatus.in_progress, Action.answer, Role.coordinator, True, TaskStatus.in_progress),
    (TaskStatus.fix_submitted, Action.answer, Role.coordinator, True, TaskStatus.fix_submitted),
]


@pytest.mark.parametrize("status,action,role,pending,target", WORKABLE_WHILE_ESCALATED)
def test_an_escalated_task_stays_workable(status, action, role, pending, target):
    assert check_transition(status, action, role, "王芳", fixed_by="张伟", pending=pending) == target


def test_an_escalated_task_goes_the_whole_way_to_close_out_and_the_answer_may_still_come():
    status = TaskStatus.escalated
    status = check_transition(status, Action.start, Role.responsible, "张伟", pending=True)
    # Taken up again, it is urged while overdue but never escalated a second time.
    assert not decide(status, now=T0 + GRACE * 2, overdue_since=T0, last_urged_at=T0 + GRACE * 2,
                      escalated_at=T0 + GRACE).escalate
    status = check_transition(status, Action.answer, Role.coordinator, "区爱卫办", pending=True)
    assert status == TaskStatus.in_progress
    status = check_transition(status, Action.submit_fix, Role.responsible, "张伟", pending=False)
    assert check_transition(status, Action.verify, Role.inspector, "王芳", fixed_by="张伟",
                            pending=False) == TaskStatus.closed


@pytest.mark.parametrize("status", [TaskStatus.open, TaskStatus.in_progress, TaskStatus.fix_submitted,
                                    TaskStatus.escalated])
def test_an_answer_needs_a_pending_escalation(status):
    with pytest.raises(TaskStateConflict) as err:
        check_transition(status, Action.answer, Role.coordinator, "区爱卫办", pending=False)
    assert err.value.field == "status" and "协调" in err.value.reason


def test_a_task_is_not_escalated_again_while_its_escalation_awaits_the_answer():
    with pytest.raises(TaskStateConflict) as err:
        check_transition(TaskStatus.in_progress, Action.escalate, Role.responsible, "张伟", pending=True)
    assert err.value.field == "status" and "上报协调" in err.value.reason
    assert check_transition(TaskStatus.in_progress, Action.escalate, Role.responsible, "张伟",
                            pending=False) == TaskStatus.escalated   # answered: may ask again


def test_a_closed_task_is_never_answered():
    with pytest.raises(TaskStateConflict):
        check_transition(TaskStatus.closed, Action.answer, Role.coordinator, "区爱卫办", pending=True)
    assert not domain.coordination_pending(TaskStatus.closed, T0, None)


def test_coordination_is_pending_from_the_escalation_until_its_answer():
    assert not domain.coordination_pending("open", None, None)
    assert domain.coordination_pending("escalated", T0, None)
    assert domain.coordination_pending("in_progress", T0, None)        # the subject took it up again
    assert not domain.coordination_pending("in_progress", T0, T0 + timedelta(hours=1))
    assert domain.coordination_pending("in_progress", T0 + timedelta(days=2), T0 + timedelta(hours=1))  # asked again


def test_closed_is_terminal():
    for action, rule in domain.TRANSITIONS.items():
        assert TaskStatus.closed not in rule.sources


# --- deadlines ---------------------------------------------------------------------------------


def test_item_deadline_in_hours():
    assert deadline_for(T0, 24) == (T0 + timedelta(hours=24), "item")


def test_inspector_deadline_wins_and_must_follow_the_inspection():
    own = T0 + timedelta(days=3)
    assert deadline_for(T0, 24, own) == (own, "inspector")
    with pytest.raises(TaskRuleViolation) as err:
        deadline_for(T0, 24, T0 - timedelta(minutes=1))
    assert err.value.field == "deadline_at"


def test_immediately_means_the_end_of_the_day_in_beijing():
    deadline, source = deadline_for(T0, 0)
    assert source == "immediate"
    assert deadline == datetime(2026, 11, 21, 0, 0, tzinfo=CST)


def test_immediately_late_at_night_still_leaves_two_hours():
    late = datetime(2026, 11, 20, 23, 30, tzinfo=CST)
    assert deadline_for(late, 0)[0] == late + timedelta(hours=2)
    # 01:00 UTC on the 20th is 09:00 in Beijing: still the 20th's end, not UTC's.
    after_utc_midnight = datetime(2026, 11, 20, 16, 30, tzinfo=timezone.utc)  # 00:30 CST on the 21st
    assert deadline_for(after_utc_midnight, 0)[0] == datetime(2026, 11, 22, 0, 0, tzinfo=CST)


# --- lights --------------------------------------------------------------------------------------


def test_lights_at_the_boundaries():
    deadline = T0 + timedelta(hours=10)
    assert light_of("open", T0, deadline, T0 + timedelta(hours=7, minutes=59)) == Light.green
    assert light_of("open", T0, deadline, T0 + timedelta(hours=8)) == Light.yellow
    assert light_of("in_progress", T0, deadline, deadline - timedelta(seconds=1)) == Light.yellow
    assert light_of("fix_submitted", T0, deadline, deadline) == Light.red
    assert light_of("closed", T0, deadline, deadline + timedelta(days=1)) is None


def test_a_task_marked_overdue_stays_red_until_a_new_deadline():
    deadline = T0 + timedelta(hours=10)
    assert light_of("escalated", T0, deadline, T0, marked_overdue=True) == Light.red
    assert domain.is_overdue("open", deadline, T0, marked_overdue=True)
    assert not domain.is_overdue("closed", deadline, deadline + timedelta(days=1), marked_overdue=True)


def test_time_used():
    assert domain.time_used(T0, T0 + timedelta(hours=10), T0 + timedelta(hours=5)) == 0.5
    assert domain.time_used(T0, T0 + timedelta(hours=10), T0 - timedelta(hours=1)) == 0.0


def test_escalation_goes_to_the_parent_stack_when_there_is_one():
    assert domain.escalation_target(STREET, DISTRICT) == DISTRICT
    assert domain.escalation_target(COMMUNITY, STREET) == STREET
    assert domain.escalation_target(STREET, CITY) == CITY          # the district runs no stack: the city's does
    for wrong in (STREET, COMMUNITY, "411503000000"):               # itself, below it, another district
        with pytest.raises(TaskRuleViolation) as err:
            domain.escalation_target(STREET, wrong)
        assert err.value.field == "PARENT_STACK"


def test_without_a_parent_stack_escalation_stays_in_the_own_office():
    # Issue 25: the tier above runs no stack and would never answer; the office itself does (督办).
    assert domain.escalation_target(STREET, None) == STREET
    assert domain.escalation_target(CITY, None) == CITY
    assert domain.escalation_target("410000000000", None) == "410000000000"
    assert not domain.escalated_outside(STREET, STREET) and domain.escalated_outside(DISTRICT, STREET)


def test_the_own_office_answers_an_escalation_inside_the_office():
    inside = (STREET, STREET, COMMUNITY, STREET)
    for role in ("inspector", "administrator"):
        assert domain.acting_role(caller((role, STREET)), Action.answer, inspecting_node=STREET, owner_node=STREET,
                                  responsible_node=COMMUNITY, escalated_to=STREET) == role
    for grants in ([("rectifier", COMMUNITY)], [("viewer", STREET)], [("inspector", COMMUNITY)]):
        with pytest.raises(TaskPermissionDenied) as err:
            domain.acting_role(caller(*grants), Action.answer, inspecting_node=inside[0], owner_node=inside[1],
                               responsible_node=inside[2], escalated_to=inside[3])
        assert err.value.field == "role" and "协调答复" in err.value.reason


# --- sweeper ---------------------------------------------------------------------------------------

REPEAT, GRACE = timedelta(hours=24), timedelta(hours=72)


def decide(status="open", now=None, **state):
    state = {"overdue_since": None, "last_urged_at": None, "escalated_at": None, **state}
    return sweep_decision(status, T0, now, urge_repeat=REPEAT, grace=GRACE, **state)


def test_nothing_before_the_deadline():
    assert not decide(now=T0 - timedelta(seconds=1)).any


def test_first_sweep_after_the_deadline_marks_and_urges():
    d = decide(now=T0 + timedelta(minutes=1))
    assert (d.mark_overdue, d.urge, d.escalate) == (True, True, False)


def test_a_second_sweep_at_the_same_moment_does_nothing():
    now = T0 + timedelta(minutes=1)
    assert not decide(now=now, overdue_since=T0, last_urged_at=now).any


def test_urges_repeat_at_the_interval_and_escalation_comes_after_the_grace_period():
    urged = T0 + timedelta(minutes=1)
    assert not decide(now=urged + REPEAT - timedelta(seconds=1), overdue_since=T0, last_urged_at=urged).any
    d = decide(now=urged + REPEAT, overdue_since=T0, last_urged_at=urged)
    assert (d.mark_overdue, d.urge, d.escalate) == (False, True, False)
    d = decide(now=T0 + GRACE, overdue_since=T0, last_urged_at=T0 + GRACE - timedelta(hours=1))
    assert (d.urge, d.escalate) == (False, True)


def test_escalated_and_fix_submitted_tasks_are_left_alone():
    assert not decide(now=T0 + GRACE * 2, overdue_since=T0, last_urged_at=T0 + GRACE * 2,
                      escalated_at=T0 + GRACE).any
    assert not decide("fix_submitted", now=T0 + GRACE * 2).any
    assert not decide("escalated", now=T0 + GRACE * 2).any
    assert not decide("closed", now=T0 + GRACE * 2).any


# --- relapse -------------------------------------------------------------------------------------------


def test_relapse_matches_place_item_and_window_and_picks_the_latest_close():
    key = domain.relapse_key("place-1", "subject-1")
    closed = [
        ClosedTask("old", key, "PT-02", T0 - timedelta(days=60)),
        ClosedTask("recent", key, "PT-02", T0 - timedelta(days=10)),
        ClosedTask("other-item", key, "PT-03", T0 - timedelta(days=1)),
        ClosedTask("other-place", domain.relapse_key("place-2", "subject-1"), "PT-02", T0 - timedelta(days=1)),
    ]
    assert find_relapse(closed, key, "PT-02", T0).task_id == "recent"
    assert find_relapse(closed, key, "PT-02", T0, window=timedelta(days=5)) is None
    assert find_relapse(closed, key, "PT-05", T0) is None
    assert find_relapse(closed, key, "PT-02", T0 - timedelta(days=61)) is None  # found before any close-out


def test_relapse_window_boundary_and_subject_key_without_place():
    key = domain.relapse_key(None, "subject-1")
    assert key == "subject:subject-1" and domain.relapse_key("p", "subject-1") == "place:p"
    closed = [ClosedTask("t", key, "ORG-01", T0)]
    assert find_relapse(closed, key, "ORG-01", T0 + timedelta(days=90)).task_id == "t"
    assert find_relapse(closed, key, "ORG-01", T0 + timedelta(days=90, seconds=1)) is None


# --- figures ---------------------------------------------------------------------------------------------


def facts(status, closed=False, on_time=None, hours=None, relapse=False, deadline=T0, marked=False):
    return TaskFacts(TaskStatus(status), deadline, closed, on_time, hours, relapse, marked)


def test_figures():
    now = T0 + timedelta(hours=1)
    tasks = [
        facts("closed", True, True, 10.0),
        facts("closed", True, False, 30.0, relapse=True),
        facts("open"),                                           # past its deadline
        facts("in_progress", deadline=T0 + timedelta(days=1)),    # not yet due
        facts("escalated", deadline=T0 + timedelta(days=1), marked=True),
    ]
    f = compute_figures(tasks, now)
    assert (f.opened, f.closed, f.closed_on_time, f.overdue_open, f.relapses) == (5, 2, 1, 2, 1)
    assert f.close_rate == 0.4 and f.on_time_rate == 0.5 and f.mean_hours_to_fix == 20.0


def test_figures_without_tasks_or_closures_have_no_rates():
    empty = compute_figures([], T0)
    assert (empty.opened, empty.close_rate, empty.on_time_rate, empty.mean_hours_to_fix) == (0, None, None, None)
    open_only = compute_figures([facts("open", deadline=T0 + timedelta(days=1))], T0)
    assert open_only.close_rate == 0.0 and open_only.on_time_rate is None and open_only.overdue_open == 0


def test_an_unannounced_inspections_time_limit_runs_from_its_release():
    deadline = T0 + timedelta(hours=24)
    assert domain.deadline_after_release(T0, deadline, None) == deadline
    assert domain.deadline_after_release(T0, deadline, T0 - timedelta(hours=1)) == deadline
    assert domain.deadline_after_release(T0, deadline, T0 + timedelta(days=3)) == T0 + timedelta(days=4)
