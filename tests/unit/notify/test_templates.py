"""Every notice renders in Chinese, HTML is escaped, nodes override templates."""
from datetime import datetime

import pytest
from markupsafe import escape

from services.contracts.periods import CST
from services.notify.domain import NoticeType, NotifyRuleViolation
from services.notify.templates import Templates, check_template

TASK = {"task_id": "t1", "inspection_id": "i1", "inspecting_node": "411502008000", "owner_node": "411502008000",
        "responsible": {"subject_id": "s1", "node": "411502008001", "name": "周家山社区<script>"},
        "place": {"place_id": "p1", "name": "周家山路公厕", "place_type": "public_toilet", "node": "411502008001",
                  "address": "周家山路12号"},
        "item_code": "PT-02", "item_text": "便池干净", "category_code": "PT", "category_name": "公厕",
        "severity": "major", "deadline_at": "2026-11-10T10:00:00+00:00", "status": "open"}
SCORE = {"subject": {"subject_id": "s1", "node": "411502008001", "name": "周家山社区", "subject_type": "child_unit"},
         "period": "2026-11", "score": 95.5, "rank": 1, "peers": 8, "grade": "优秀", "vetoed": True,
         "veto_reasons": ["被媒体曝光"], "period_kind": "month"}
CONTEXTS = {
    NoticeType.rectification: {"event": {"task": TASK, "note": "限三日内整改", "relapse_of": None}, "task": TASK},
    NoticeType.urge: {"event": {"task": TASK, "urge_count": 2, "overdue_since": "2026-11-10T10:00:00+00:00"},
                      "task": TASK},
    NoticeType.escalation: {"event": {"task": TASK, "reason": "涉及多部门", "answer_due_at": "2026-11-20T10:00:00+00:00"},
                            "task": TASK},
    NoticeType.verification: {"event": {"task": TASK, "on_time": True}, "task": TASK, "passed": True},
    NoticeType.relapse: {"event": {"task": TASK, "closed_at": "2026-10-10T10:00:00+00:00"}, "task": TASK},
    NoticeType.coordination: {"event": {"task": {**TASK, "status": "escalated"}, "from_node": "411502008000",
                                        "reason": "化粪池产权不清，社区无法协调",
                                        "answer_due_at": "2026-11-25T10:00:00+00:00",
                                        "requested_at": "2026-11-22T10:00:00+00:00"},
                              "task": {**TASK, "status": "escalated"}, "child": "金牛山街道"},
    NoticeType.commendation: {"event": SCORE},
    NoticeType.criticism: {"event": SCORE},
    NoticeType.inspection: {"event": {"subject": SCORE["subject"], "kind": "unannounced", "score": 88, "scale": 100,
                                      "inspected_at": "2026-11-10T01:00:00+00:00",
                                      "findings": [{"category_name": "公厕", "item_text": "便池干净", "deduction": 5}]}},
    NoticeType.newsletter: {"event": {"issue": 12, "title": "背街小巷整治", "content": "第一段\n\n第二段"}},
    NoticeType.missed_check: {"event": {"schedule_name": "社区每周检查", "frequency": "weekly", "period": "2026-W47",
                                        "period_start": "2026-11-15T16:00:00+00:00",
                                        "period_end": "2026-11-22T16:00:00+00:00", "target_name": "周家山社区",
                                        "subject": SCORE["subject"], "inspectors": ["王芳"], "counts": True}},
    NoticeType.bulletin: {"b": {"title": "金牛山街道2026年11月创卫工作月度通报", "ranking": [], "unranked": [],
                                "commended": [], "criticised": [], "vetoed": [], "overdue_tasks": [],
                                "relapsed_tasks": [], "top_categories": [],
                                "figures": {"tasks_opened": 0, "tasks_closed": 0, "closed_on_time": 0,
                                            "close_rate": None}}},
}
BASE = {"office": "金牛山街道", "sent_at": datetime(2026, 11, 23, 8, tzinfo=CST)}


@pytest.mark.parametrize("notice", list(NoticeType))
def test_every_notice_type_renders_a_title_markdown_and_html(notice):
    rendered = Templates().render(notice.value, {**BASE, **CONTEXTS[notice]})
    assert rendered.title and rendered.markdown.strip() and "<html" in rendered.html
    assert any("\u4e00" <= ch <= "\u9fff" for ch in rendered.title)  # Chinese by default
    assert str(escape(rendered.title)) in rendered.html  # the title is escaped in HTML


def test_urge_notice_content_and_escaping():
    rendered = Templates().render("urge", {**BASE, **CONTEXTS[NoticeType.urge]})
    assert rendered.title == "督办单（第2次）：周家山社区<script> 便池干净"
    assert "2026年11月10日 18:00" in rendered.markdown  # deadline shown in Beijing time
    assert "较重" in rendered.markdown
    assert "<script>" not in rendered.html and "周家山社区&lt;script&gt;" in rendered.html


def test_verification_result_distinguishes_pass_and_rejection():
    ctx = {**BASE, **CONTEXTS[NoticeType.verification]}
    assert "已销号" in Templates().render("verification", ctx).title
    rejected = Templates().render("verification", {**ctx, "passed": False,
                                                   "event": {"task": TASK, "reason": "照片不清晰"}})
    assert "未通过" in rejected.title and "照片不清晰" in rejected.markdown


def test_a_node_directory_and_database_overrides_win(tmp_path):
    node_dir = tmp_path / "411502008000"
    node_dir.mkdir()
    (node_dir / "urge.md").write_text('{% set title = "街道督办：" ~ task.item_text %}街道版本\n', encoding="utf-8")
    templates = Templates(tmp_path)
    ctx = {**BASE, **CONTEXTS[NoticeType.urge]}
    community_chain = ["411502008001", "411502008000", "411502000000", "411500000000", "410000000000"]
    assert templates.render("urge", ctx, community_chain).title == "街道督办：便池干净"  # inherited from the street
    assert templates.render("urge", ctx, ["411503000000"]).title.startswith("督办单")  # another district: default
    db = {"urge.md": '{% set title = "库内模板" %}库内'}
    assert templates.render("urge", ctx, community_chain, db).markdown.strip() == "库内"


def test_a_template_that_does_not_parse_or_has_no_use_is_refused():
    with pytest.raises(NotifyRuleViolation) as err:
        check_template("urge.md", "{% if %}")
    assert err.value.field == "source"
    with pytest.raises(NotifyRuleViolation) as err:
        check_template("nonsense.md", "hello")
    assert err.value.field == "name"
    check_template("urge.md", "{{ task.item_text }}")


def test_the_sandbox_refuses_unsafe_attribute_access():
    from jinja2.exceptions import SecurityError
    db = {"urge.md": "{{ task.__class__.__mro__ }}"}
    with pytest.raises(SecurityError):
        Templates().render("urge", {**BASE, **CONTEXTS[NoticeType.urge]}, [], db)


def test_coordination_notice_names_the_child_the_task_the_reason_and_the_due_time():
    rendered = Templates().render("coordination", {**BASE, **CONTEXTS[NoticeType.coordination]})
    assert rendered.title == "协调请求：金牛山街道 周家山社区<script> 便池干净"
    for text in ("金牛山街道（411502008000）", "化粪池产权不清，社区无法协调", "2026年11月25日 18:00", "周家山路公厕"):
        assert text in rendered.markdown and text in rendered.html
    assert "<script>" not in rendered.html and "已上报协调" in rendered.html
