"""The answered_at migration (issue 25): escalations answered before it are not pending after it,
those still waiting stay pending (and workable: the state machine no longer locks them)."""
from datetime import datetime, timedelta, timezone
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Boolean, DateTime, Float, Integer, JSON, MetaData, create_engine, insert, select

from services.tasks import domain

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "tasks" / "migrations"
T0 = datetime(2026, 11, 20, 1, 30, tzinfo=timezone.utc)


def upgrade(engine, revision):
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["version_table"] = "alembic_version_tasks"
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def filler(column):
    kind = column.type
    if isinstance(kind, DateTime):
        return T0
    if isinstance(kind, Boolean):
        return False
    if isinstance(kind, (Integer, Float)):
        return 0
    if isinstance(kind, JSON):
        return []
    return "x"


def test_answered_escalations_are_marked_answered_and_waiting_ones_stay_pending(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/tasks.db")
    upgrade(engine, "5cf5793777c3")   # the schema before issue 25
    meta = MetaData()
    meta.reflect(engine)
    tasks, history = meta.tables["tasks_tasks"], meta.tables["tasks_history"]
    escalated_at, answered = T0 + timedelta(days=4), T0 + timedelta(days=5)
    rows = {"waiting": ("escalated", escalated_at), "answered": ("in_progress", escalated_at),
            "answered_then_closed": ("closed", escalated_at), "never": ("open", None)}
    with engine.begin() as conn:
        for i, (task_id, (status, at)) in enumerate(rows.items()):
            values = {c.name: filler(c) for c in tasks.columns if not c.nullable}
            values.update(id=task_id, inspection_id=f"i-{i}", status=status, escalated_at=at,
                          escalated_to="411502000000" if at else None, updated_at=answered + timedelta(hours=1))
            conn.execute(insert(tasks).values(**values))
        conn.execute(insert(history).values(task_id="answered", at=answered, actor="区爱卫办", role="inspector",
                                            action="answer", from_status="escalated", to_status="in_progress",
                                            evidence=[]))
    upgrade(engine, "head")
    with engine.connect() as conn:
        found = {r.id: r for r in conn.execute(select(tasks.c.id, tasks.c.status))}
        answered_at = dict(conn.exec_driver_sql("SELECT id, answered_at FROM tasks_tasks").fetchall())
    engine.dispose()
    assert answered_at["waiting"] is None and answered_at["never"] is None
    assert answered_at["answered"].startswith("2026-11-25 01:30")            # the answer in the history
    assert answered_at["answered_then_closed"].startswith("2026-11-25 02:30")  # no answer recorded: its last change
    pending = {k: domain.coordination_pending(found[k].status, escalated_at if rows[k][1] else None,
                                              None if answered_at[k] is None else answered)
               for k in rows}
    assert pending == {"waiting": True, "answered": False, "answered_then_closed": False, "never": False}
