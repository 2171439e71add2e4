"""Routing rules as data: validation, matching, recipients, webhook payloads, backoff."""
from datetime import datetime, timedelta, timezone

import pytest

from services.contracts.nodes import parent_of
from services.notify.domain import (Channel, ContactInfo, NoticeType, NotifyRuleViolation, Owner, RetryPolicy,
                                    Role, load_default_rules, owners_for, parse_rule_set, plan_notices,
                                    rule_matches, webhook_accepted, webhook_payload)

STREET = "411502008000"
COMMUNITY = "411502008001"


def task_facts(**extra):
    facts = {"subject_id": "subj-1", "subject_node": COMMUNITY, "inspecting_node": STREET,
             "owner_node": STREET, "severity": "major", "place_type": "public_toilet", "status": "open"}
    facts.update(extra)
    return facts


def test_the_packaged_default_covers_every_notice_type():
    doc = load_default_rules()
    assert {r.notice for r in doc.rules} == set(NoticeType)
    assert doc.bulletin.commend_top == 3 and doc.bulletin.criticise_bottom == 3


@pytest.mark.parametrize("document,field", [
    ({"rules": [{"id": "x", "event": "task_exploded", "notice": "urge", "to": ["responsible"],
                 "channels": ["inbox"]}]}, "rules.0.event"),
    ({"rules": [{"id": "x", "event": "task_overdue", "notice": "urge", "to": ["the_mayor"],
                 "channels": ["inbox"]}]}, "rules.0.to.0"),
    ({"rules": [{"id": "x", "event": "task_overdue", "notice": "urge", "to": ["responsible"],
                 "channels": ["sms_pigeon"]}]}, "rules.0.channels.0"),
    ({"rules": [{"id": "x", "event": "task_overdue", "notice": "urge", "to": ["responsible"],
                 "channels": ["inbox"], "when": {"colour": "red"}}]}, "rules.0.when"),
    ({"rules": [{"id": "x", "event": "task_overdue", "notice": "urge", "to": ["responsible"], "channels": ["inbox"]},
                {"id": "x", "event": "task_opened", "notice": "rectification", "to": ["responsible"],
                 "channels": ["inbox"]}]}, "rules"),
    ({"rules": [], "bulletin": {"commend_top": -1}}, "bulletin.commend_top"),
    ({"rules": [{"id": "x", "on": "task_overdue", "notice": "urge", "to": ["responsible"],
                 "channels": ["inbox"]}]}, "rules.0.event"),
])
def test_a_bad_rule_set_is_refused_naming_the_field(document, field):
    with pytest.raises(NotifyRuleViolation) as err:
        parse_rule_set(document)
    assert err.value.field == field


def test_conditions_all_have_to_hold():
    doc = parse_rule_set({"rules": [{"id": "second-urge-major", "event": "task_overdue", "notice": "urge",
                                     "to": ["tier_above"], "channels": ["email"],
                                     "when": {"severity": ["major", "critical"], "urge_count_at_least": 2}}]})
    rule = doc.rules[0]
    assert rule_matches(rule, "task_overdue", task_facts(urge_count=2))
    assert not rule_matches(rule, "task_overdue", task_facts(urge_count=1))
    assert not rule_matches(rule, "task_overdue", task_facts(urge_count=3, severity="minor"))
    assert not rule_matches(rule, "task_opened", task_facts(urge_count=3))


def test_default_verification_rule_fires_only_for_a_rejected_fix():
    doc = load_default_rules()
    [rejected] = [r for r in doc.rules if r.id == "verification-rejected"]
    assert rule_matches(rejected, "task_status_changed", task_facts(from_status="fix_submitted", to_status="open"))
    assert not rule_matches(rejected, "task_status_changed", task_facts(from_status="open", to_status="in_progress"))


def test_default_score_rules_commend_the_top_and_criticise_the_bottom_and_the_vetoed():
    doc = load_default_rules()
    def notices(**facts):
        base = {"subject_id": "s", "period_kind": "month", "period": "2026-11", "ranked": True, "vetoed": False}
        return {r.notice for r in doc.rules if rule_matches(r, "score_published", {**base, **facts})}
    assert notices(rank=1, rank_from_bottom=10) == {NoticeType.commendation}
    assert notices(rank=5, rank_from_bottom=6) == set()
    assert notices(rank=10, rank_from_bottom=1) == {NoticeType.criticism}
    assert notices(rank=1, rank_from_bottom=10, vetoed=True) == {NoticeType.criticism}  # a veto is never commended
    assert notices(rank=None, rank_from_bottom=None, ranked=False) == set()
    assert notices(rank=1, rank_from_bottom=10, period_kind="week") == set()
    # Last month's figures still commend and criticise; a month of imported history does not.
    assert notices(rank=1, rank_from_bottom=10, periods_ago=1) == {NoticeType.commendation}
    assert notices(rank=1, rank_from_bottom=10, periods_ago=2) == set()
    assert notices(rank=10, rank_from_bottom=1, vetoed=True, periods_ago=6) == set()


def test_periods_ago_counts_whole_periods_back_from_the_computation():
    from services.notify.operations.events import periods_ago
    at = datetime(2026, 11, 23, 4, tzinfo=timezone.utc)
    assert [periods_ago("month", key, at) for key in ("2026-11", "2026-10", "2026-05", "2025-11")] == [0, 1, 6, 12]
    assert periods_ago("week", "2026-W47", at) == 1 and periods_ago("month", "2026-13", at) is None


def test_roles_name_the_right_owners():
    facts = task_facts(to_node="411502000000")
    assert owners_for(Role.responsible, facts, STREET, parent_of) == [Owner("subject", "subj-1")]
    assert owners_for(Role.inspecting_office, facts, STREET, parent_of) == [Owner("node", STREET)]
    assert owners_for(Role.tier_above, facts, STREET, parent_of) == [Owner("node", "411502000000")]
    # Without an escalation target, the tier above is this stack's parent (the district).
    assert owners_for(Role.tier_above, task_facts(), STREET, parent_of) == [Owner("node", "411502000000")]
    assert owners_for(Role.responsible_office, facts, STREET, parent_of) == [Owner("node", COMMUNITY)]
    assert owners_for(Role.ranked_subjects, {"ranked_subject_ids": ["a", "b"]}, STREET, parent_of) == [
        Owner("subject", "a"), Owner("subject", "b")]
    assert owners_for(Role.responsible, {}, STREET, parent_of) == []


def test_planning_gives_one_notice_per_contact_and_channel():
    doc = parse_rule_set({"rules": [
        {"id": "urge", "event": "task_overdue", "notice": "urge", "to": ["responsible", "inspecting_office"],
         "channels": ["inbox", "email", "webhook"]},
        {"id": "urge-again", "event": "task_overdue", "notice": "urge", "to": ["responsible"], "channels": ["inbox"]},
    ]})
    directory = {
        Owner("subject", "subj-1"): [ContactInfo("c1", "zhang", "zjs@example.cn", "http://127.0.0.1:1/bot")],
        Owner("node", STREET): [ContactInfo("c2", "office", None, None)],
    }
    plans = plan_notices(doc, "task_overdue", "evt-1", task_facts(), STREET, parent_of,
                         lambda owner: directory.get(owner, []))
    assert sorted((p.contact.contact_id, p.channel.value) for p in plans) == [
        ("c1", "email"), ("c1", "inbox"), ("c1", "webhook"), ("c2", "inbox")]
    assert {p.dedupe_key for p in plans} == {"urge:evt-1"}
    assert next(p for p in plans if p.channel == Channel.email).target == "zjs@example.cn"
    assert plan_notices(doc, "task_opened", "evt-2", task_facts(), STREET, parent_of,
                        lambda owner: directory.get(owner, [])) == []


def test_subject_period_dedupe_folds_revisions_of_a_score():
    doc = load_default_rules()
    contact = ContactInfo("c1", "zhang", None, None)
    facts = {"subject_id": "s", "period_kind": "month", "period": "2026-11", "ranked": True, "vetoed": True,
             "rank": 10, "rank_from_bottom": 1}
    first = plan_notices(doc, "score_published", "evt-rev1", facts, STREET, parent_of, lambda o: [contact])
    second = plan_notices(doc, "score_published", "evt-rev2", facts, STREET, parent_of, lambda o: [contact])
    # Two criticism rules matched (bottom and veto), one notice; a later revision keeps the same key.
    assert len(first) == 1 and first[0].dedupe_key == second[0].dedupe_key == "criticism:s:2026-11"


def test_backoff_grows_exponentially_up_to_the_cap_then_dead():
    policy = RetryPolicy(max_attempts=5, base_seconds=30, factor=2, max_seconds=100)
    assert [policy.delay_after(n) for n in (1, 2, 3, 4)] == [timedelta(seconds=s) for s in (30, 60, 100, 100)]
    assert policy.schedule() == [timedelta(seconds=s) for s in (30, 60, 100, 100)]
    assert not policy.exhausted(4) and policy.exhausted(5)
    with pytest.raises(ValueError, match=r"^max_attempts must be at least 1$"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match=r"^backoff must be non-negative and non-decreasing$"):
        RetryPolicy(factor=0.5)


def test_webhook_payloads_fit_the_bots():
    assert webhook_payload("wecom", "督办单", "### 督办单") == {"msgtype": "markdown",
                                                                "markdown": {"content": "### 督办单"}}
    assert webhook_payload("dingtalk", "督办单", "### 督办单") == {
        "msgtype": "markdown", "markdown": {"title": "督办单", "text": "### 督办单"}}
    assert webhook_payload("text", "督办单", "请整改") == {"msgtype": "text", "text": {"content": "督办单\n请整改"}}
    long = webhook_payload("wecom", "t", "问" * 3000)["markdown"]["content"]
    assert len(long.encode("utf-8")) <= 4096 and long.endswith("…")
    with pytest.raises(ValueError, match=r"^unknown webhook format 'telegram'; one of \('wecom', 'dingtalk', 'text'\)$"):
        webhook_payload("telegram", "t", "x")


def test_a_bot_that_answers_an_error_code_has_not_accepted():
    assert webhook_accepted(200, {"errcode": 0, "errmsg": "ok"}) == (True, None)
    assert webhook_accepted(200, None) == (True, None)
    assert webhook_accepted(200, {"errcode": 93000, "errmsg": "invalid webhook url"})[0] is False
    assert webhook_accepted(500, {"errcode": 0}) == (False, "HTTP 500")
