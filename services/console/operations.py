"""The console's pages: which services each page asks, as the signed-in person, and what it
makes of the answers (through `views`). No nameko: takes an `Upstreams` client and the
caller's token; every rule is applied by the service asked, with the caller's own grants.
"""
from __future__ import annotations

from dataclasses import dataclass

from eventlet.greenpool import GreenPool
from datetime import datetime

from services.console import views
from services.contracts.identity import Principal
from services.plumbing.upstream import Upstreams

PROXIED = frozenset({"inspection", "tasks", "scoring", "notify", "photos", "accounts"})
# What the relay never passes, whatever the service: signing in and renewing (the console's own
# /login and /session/refresh do that, with the cookies) and the issuer's keys.
RELAY_BLOCKED = frozenset({"auth", ".well-known"})


class RelayRefused(ValueError):
    """A path the relay does not pass: `status` 404 (nothing to relay to) or 400 (a path that
    does not normalise cleanly), the field and a Chinese-first reason."""

    def __init__(self, status: int, field: str, reason: str):
        super().__init__(reason)
        self.status, self.field, self.reason = status, field, reason


def relay_path(service: str, rest: str) -> str:
    """The path the relay asks `service` for. The server has percent-decoded the request path
    once; a path that is not already in normal form — a '%' left (double encoding), a
    backslash, an empty, '.' or '..' segment (double slashes, dot segments) — is refused
    rather than normalised, so that what is checked here is exactly what the service sees."""
    if service not in PROXIED:
        raise RelayRefused(404, "service", f"控制台后面没有服务 {service!r}; no service {service!r} behind the console")
    segments = rest.split("/")
    if "%" in rest or "\\" in rest or any(s in ("", ".", "..") for s in segments):
        raise RelayRefused(400, "path", "路径不规范（含编码字符、反斜杠、空段或 . / .. 段）; the path must be in "
                                        "normal form: no percent-encoding left, backslashes, empty, '.' or '..' "
                                        "segments")
    if segments[0].lower() in RELAY_BLOCKED:
        raise RelayRefused(404, "path", f"控制台不转发 /{segments[0]}/; the console does not relay "
                                        f"/{segments[0]}/ (sign in through the console itself)")
    return "/" + rest
LEDGER_FILTERS = ("subject_id", "status", "light", "category", "period", "severity")
# The dashboard draws a trend for at most this many children (a district has ~10–20 streets).
TREND_LIMIT = 30
HISTORY_CONCURRENCY = 6


@dataclass
class Pages:
    upstreams: Upstreams
    token: str
    principal: Principal
    now: datetime

    def _get(self, service: str, path: str, **params):
        return self.upstreams.get_json(service, path, self.token,
                                       params={k: v for k, v in params.items() if v not in (None, "")})

    def common(self) -> dict:
        return {"user": views.UserView.of(self.principal), "month": views.this_month(self.now)}

    def dashboard(self, period: str | None) -> dict:
        period = period or views.this_month(self.now)
        ranking = self._get("scoring", "/rankings", period=period)
        tasks = self._get("tasks", "/tasks", limit=5000) or []
        freshness = self._get("scoring", "/children/freshness")
        children = [f["subject_id"] for f in (ranking or {}).get("ranking", [])[:TREND_LIMIT]]

        def history_of(subject_id: str) -> list[dict]:
            history = self._get("scoring", f"/subjects/{subject_id}/scores", period_kind="month")
            return sorted((history or {}).get("scores", []), key=lambda s: s["period"])[-12:]
        # One request per child: asked side by side (green threads), not one after another.
        histories = dict(zip(children, GreenPool(HISTORY_CONCURRENCY).imap(history_of, children)))
        return {**self.common(), "period": period, **views.dashboard(ranking, tasks, freshness, histories)}

    def inspect_form(self) -> dict:
        subjects = self._get("inspection", "/subjects") or []
        places = self._get("inspection", "/places") or []
        catalogue = self._get("inspection", "/checklists") or {"versions": []}
        checklists = [{"version": v["version"], **c} for v in catalogue["versions"] for c in v["checklists"]]
        return {**self.common(), "subjects": subjects, "places": places, "checklists": checklists,
                "kinds": views.KIND_LABELS}

    def inspection(self, inspection_id: str) -> dict | None:
        found = self._get("inspection", f"/inspections/{inspection_id}")
        if found is None:
            return None
        subject = self._get("inspection", f"/subjects/{found['subject_id']}")
        for result in found["results"]:
            result["photos"] = views.photo_refs(result.get("evidence"), f"inspection_id={inspection_id}")
        tasks = [t for t in (self._get("tasks", "/tasks", limit=500) or []) if t["inspection_id"] == inspection_id]
        can_release = (found["kind"] == "unannounced" and found["status"] == "submitted" and not found["released_at"]
                       and self.principal.on_inspecting_side(found["inspecting_node"]))
        return {**self.common(), "inspection": found, "subject": subject, "tasks": tasks,
                "can_release": can_release, "kinds": views.KIND_LABELS}

    def ledger(self, filters: dict) -> dict:
        chosen = {k: filters.get(k) for k in LEDGER_FILTERS if filters.get(k)}
        tasks = self._get("tasks", "/tasks", limit=1000, **chosen) or []
        subjects = self._get("inspection", "/subjects") or []
        query = "&".join(f"{k}={v}" for k, v in chosen.items())
        return {**self.common(), "tasks": tasks, "filters": chosen, "subjects": subjects,
                "lights": views.light_counts(tasks), "statuses": views.STATUS_LABELS,
                "light_labels": views.LIGHT_LABELS, "export_query": query}

    def task(self, task_id: str) -> dict | None:
        task = self._get("tasks", f"/tasks/{task_id}")
        if task is None:
            return None
        shown = f"task_id={task_id}"
        task["photos_before"] = views.photo_refs(task.get("evidence"), shown)
        task["photos_after"] = views.photo_refs(task.get("after_evidence"), shown)
        for entry in task.get("history") or []:
            entry["photos"] = views.photo_refs(entry.get("evidence"), shown)
        return {**self.common(), "task": task, "actions": views.task_actions(task, self.principal),
                "action_labels": views.ACTION_LABELS, "history_labels": views.HISTORY_LABELS,
                "statuses": views.STATUS_LABELS,
                "light_labels": views.LIGHT_LABELS}

    def scores(self, subject_id: str | None, period: str | None) -> dict:
        subjects = self._get("inspection", "/subjects") or []
        history = explain = None
        if subject_id:
            history = self._get("scoring", f"/subjects/{subject_id}/scores")
            if period:
                explain = self._get("scoring", f"/subjects/{subject_id}/scores/{period}")
        return {**self.common(), "subjects": subjects, "subject_id": subject_id, "period": period,
                "history": history, "explain": explain,
                "explain_rows": views.explain_rows((explain or {}).get("explain") or {})}

    def bulletins(self) -> dict:
        return {**self.common(), "bulletins": self._get("notify", "/bulletins") or [],
                "bulletin_month": views.last_closed_month(self.now)}

    def admin(self) -> dict:
        me = self._get("accounts", "/me") or {}
        node = me.get("node") or next(iter(self.principal.nodes_with(["administrator"])), None)
        return {**self.common(), "users": self._get("accounts", "/users"),
                "contacts": self._get("notify", "/contacts"),
                "policy": self._get("scoring", f"/policies/{node}") if node else None,
                "approvals": self._get("scoring", "/approvals"), "node": node,
                "role_labels": views.ROLE_LABELS}


def board(upstreams: Upstreams) -> dict | None:
    """The public board: the notify service's released ranking, asked anonymously."""
    return upstreams.get_json("notify", "/board", None)
