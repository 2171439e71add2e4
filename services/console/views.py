"""What the console's pages show, from the documents the services return (pure: no
nameko, no HTTP). Labels are Chinese; the rules stay with the services, which refuse what
a caller may not do: the console only decides which buttons are worth showing.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from services.contracts.identity import ADMINISTRATOR, INSPECTOR, RECTIFIER, Principal
from services.contracts.periods import CST, Period, PeriodKind
from services.contracts.vocab import movement_text

STATUS_LABELS = {"open": "待整改", "in_progress": "整改中", "fix_submitted": "待核实", "closed": "已销号",
                 "escalated": "已上报协调"}
LIGHT_LABELS = {"red": "红灯（超期）", "yellow": "黄灯（临期）", "green": "绿灯"}
KIND_LABELS = {"routine": "日常检查", "announced": "明查", "unannounced": "暗访", "special": "专项整治",
               "reinspection": "复查", "self_check": "自查", "higher_tier": "上级检查", "citizen_report": "群众举报"}
ROLE_LABELS = {"administrator": "管理员", "inspector": "检查员", "rectifier": "整改责任人", "viewer": "查看者"}
# A task's history as the tasks service records it (transition names), in Chinese.
HISTORY_LABELS = {"open": "立案交办", "release": "暗访公开", "urge": "督办", "child_update": "下级台账更新",
                  "start": "开始整改", "submit_fix": "提交整改", "verify": "核实销号", "reject": "退回重改",
                  "escalate": "上报协调", "answer": "协调答复", "retarget": "改由本级督办"}
ACTION_LABELS = {"start": "开始整改", "fix": "提交整改", "escalate": "上报协调", "verify": "核实销号",
                 "reject": "退回重改", "answer": "协调答复"}


@dataclass(frozen=True)
class UserView:
    name: str
    subject: str
    roles: frozenset[str]
    grants: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, principal: Principal) -> "UserView":
        return cls(principal.name, principal.subject, frozenset(g.role for g in principal.grants),
                   tuple((g.role, g.node) for g in principal.grants))

    def can(self, *roles: str) -> bool:
        return bool(self.roles & set(roles))

    @property
    def grant_labels(self) -> list[str]:
        return [f"{ROLE_LABELS.get(role, role)}@{node}" for role, node in self.grants]


def this_month(now: datetime) -> str:
    return Period.containing(PeriodKind.month, now.astimezone(CST)).key


def last_closed_month(now: datetime) -> str:
    """The month a bulletin is issued for by default: the last one that has ended (Beijing
    time) — a bulletin for the month still running is refused (issue 27)."""
    first_of_month = now.astimezone(CST).replace(day=1, hour=12)
    return Period.containing(PeriodKind.month, first_of_month - timedelta(days=1)).key


def light_counts(tasks: list[dict]) -> dict[str, int]:
    counts = Counter(t["light"] for t in tasks if t.get("status") != "closed" and t.get("light"))
    return {light: counts.get(light, 0) for light in ("red", "yellow", "green")}


def dashboard(ranking: dict | None, tasks: list[dict], freshness: list[dict] | None,
              histories: dict[str, list[dict]]) -> dict:
    """The office's dashboard: ranking with movement and vetoes, a monthly trend per child,
    the ledger's lights, overdue and escalated tasks, child tiers' freshness."""
    rows = []
    for figure in (ranking or {}).get("ranking", []):
        rows.append({"rank": figure.get("rank"), "name": figure["name"], "subject_id": figure["subject_id"],
                     "score": figure.get("score"), "scale": figure.get("scale"), "grade": figure.get("grade"),
                     "movement": movement_text(figure.get("movement")), "vetoed": figure.get("vetoed", False),
                     "veto_reasons": figure.get("veto_reasons", []), "inputs": figure.get("inputs", 0)})
    unranked = [{"name": f["name"], "score": f.get("score"), "why": f.get("why_unranked", "")}
                for f in (ranking or {}).get("below_minimum_sample", [])]
    periods = sorted({s["period"] for history in histories.values() for s in history})
    trend = {"labels": periods, "series": []}
    for row in rows + [{"subject_id": sid, "name": sid} for sid in histories if sid not in {r["subject_id"] for r in rows}]:
        history = {s["period"]: s.get("score") for s in histories.get(row["subject_id"], [])}
        if history:
            trend["series"].append({"name": row["name"], "data": [history.get(p) for p in periods]})
    open_tasks = [t for t in tasks if t.get("status") != "closed"]
    return {
        "ranking": rows, "unranked": unranked, "period": (ranking or {}).get("period"), "trend": trend,
        "lights": light_counts(tasks),
        "overdue": sorted((t for t in open_tasks if t.get("overdue")), key=lambda t: t.get("deadline_at") or ""),
        # Awaiting an answer, also once the subject took the task up again (escalation never locks it).
        "escalated": [t for t in open_tasks if t.get("status") == "escalated" or t.get("coordination_pending")],
        "freshness": [{**f, "age": age_text(f.get("seconds_since"))} for f in (freshness or [])],
        "freshness_visible": freshness is not None,
    }


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "从未收到"
    if seconds < 120:
        return f"{int(seconds)} 秒前"
    if seconds < 7200:
        return f"{int(seconds // 60)} 分钟前"
    if seconds < 172800:
        return f"{int(seconds // 3600)} 小时前"
    return f"{int(seconds // 86400)} 天前"


def task_actions(task: dict, user: Principal) -> list[str]:
    """The actions worth offering this user on this task (the tasks service decides).

    An escalated task stays workable (issue 25): its subject may still start and fix it, and
    the office asked — the parent stack's, or this office itself when there is none (escalated_to
    is then the ledger's own node) — may answer while the coordination is pending, even after the
    subject took the task up again."""
    status = task.get("status")
    if task.get("delegated_to"):
        return []  # the child stack's ledger owns it
    pending = bool(task.get("coordination_pending")) or status == "escalated"
    actions = []
    responsible = (task.get("responsible") or {}).get("node", "")
    if user.holds(RECTIFIER, responsible):
        if status in ("open", "escalated"):
            actions.append("start")
        if status in ("open", "in_progress", "escalated"):
            actions.append("fix")
        if status in ("open", "in_progress") and not pending:
            actions.append("escalate")
    if status == "fix_submitted" and user.holds(INSPECTOR, task.get("inspecting_node", "")):
        actions += ["verify", "reject"]
    if pending and status != "closed" and task.get("escalated_to") and (
            user.holds(INSPECTOR, task["escalated_to"]) or user.holds(ADMINISTRATOR, task["escalated_to"])):
        actions.append("answer")
    return actions


def photo_refs(evidence: list[dict] | None, shown_in: str) -> list[dict]:
    """Evidence entries as console image links (the photo service checks who may see them)."""
    out = []
    for e in evidence or []:
        sha = e.get("sha256")
        if sha:
            out.append({"sha256": sha, "full": f"/api/photos/photos/{sha}?{shown_in}",
                        "thumb": f"/api/photos/photos/{sha}/thumbnail?{shown_in}", "taken_at": e.get("taken_at"),
                        "gps": e.get("gps")})
    return out


def explain_rows(explain: dict) -> list[tuple[str, str]]:
    """A score's explanation as label/value lines (the service's own keys, shown as they are)."""
    labels = {"inspections": "检查记录", "weights": "权重", "months": "各月", "children": "下级", "appraisal": "综合评议",
              "vetoes": "一票否决", "policy": "考评办法", "held_back": "待发布"}
    rows = []
    for key, value in explain.items():
        rows.append((labels.get(key, key), value))
    return rows


def local_time(value: str | None) -> str:
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(CST).strftime("%Y-%m-%d %H:%M")
