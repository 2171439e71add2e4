"""The reconciliation command (issue 12) against a real stack's database: exact counts when
everything arrived, and the ids of what was lost, counted without cause or not sent up."""
from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import create_engine, delete, insert, select, update

from services.inspection.service import InspectionService
from services.scoring import models as scoring_models
from services.scoring.service import ScoringService
from services.tasks import models as tasks_models
from services.tasks.service import TasksService
from services.tools import reconcile
from tests import support
from tests.integration.test_inspection_service import inspection_body, register

pytestmark = pytest.mark.integration

STREET = "411502008000"


@pytest.fixture
def settled_stack(amqp_uri, database_url):
    """Three accepted inspections (one without findings), scored and tasked; then stopped."""
    port = support.free_port()
    config = support.base_config(amqp_uri, database_url, WEB_ADDRESSES={"inspection": f"127.0.0.1:{port}"},
                                 TASKS_SWEEP_INTERVAL=0)
    with support.running_services(config, InspectionService, ScoringService, TasksService):
        api = support.ApiClient(f"http://127.0.0.1:{port}")
        subject, place = register(api)
        ids = []
        for results in ([{"item_code": "PT-02", "findings": 2}, {"item_code": "PT-03", "findings": 1, "deduction": 3}],
                        [{"item_code": "PT-02", "findings": 1}],
                        [{"item_code": "PT-01", "findings": 0}]):
            response = api.post("/inspections", inspection_body(subject, place, results=results))
            assert response.status_code == 201, response.text
            ids.append(response.json()["inspection_id"])
        engine = create_engine(database_url)
        try:
            engines = {"inspection": engine, "scoring": engine, "tasks": engine}
            report, _ = reconcile.reconcile_until_settled(engines, STREET, settle=30, interval=0.2)
        finally:
            engine.dispose()
        assert report.consistent, report.lines()
    return ids


def run(database_url, *extra) -> tuple[int, dict]:
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = reconcile.main(["--node", STREET, "--database-url", database_url, "--json", *extra])
    return code, json.loads(out.getvalue())


def test_a_settled_stack_reconciles_with_exact_counts(settled_stack, database_url):
    code, report = run(database_url)
    assert code == 0
    assert (report["accepted"], report["scored"], report["findings_with_deduction"], report["tasks"],
            report["tasked_inspections"]) == (3, 3, 3, 3, 2)
    assert report["in_flight"] == {"inspection": 0, "scoring": 0, "tasks": 0}
    assert report["published_upward"] >= 1 and report["consistent"] is True
    for difference in ("not_scored", "scored_unknown", "tasks_missing", "tasks_unknown", "upward_behind"):
        assert report[difference] == [], difference


def test_lost_forged_and_unreported_figures_are_named(settled_stack, database_url):
    lost_score, lost_task, _ = settled_stack
    forged = str(uuid.uuid4())
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            Input, Task, PeriodScore = scoring_models.ScoreInputRow, tasks_models.Task, scoring_models.PeriodScore
            row = conn.execute(select(Input.__table__).where(Input.inspection_id == lost_score)).mappings().one()
            conn.execute(delete(Input).where(Input.inspection_id == lost_score))
            conn.execute(insert(Input).values({**row, "inspection_id": forged, "event_id": str(uuid.uuid4())}))
            task = conn.execute(select(Task.__table__).where(Task.inspection_id == lost_task)).mappings().one()
            conn.execute(delete(Task).where(Task.inspection_id == lost_task))
            conn.execute(insert(Task).values({**task, "id": str(uuid.uuid4()), "inspection_id": forged}))
            # A recomputed street score the parent was never sent.
            month = conn.execute(select(PeriodScore.period).where(
                PeriodScore.node == STREET, PeriodScore.period_kind == "month")).scalar_one()
            conn.execute(update(PeriodScore).where(PeriodScore.node == STREET, PeriodScore.period_kind == "month")
                         .values(revision=PeriodScore.revision + 1))
    finally:
        engine.dispose()
    code, report = run(database_url)
    assert code == 1 and report["consistent"] is False
    assert report["not_scored"] == [lost_score]
    assert report["scored_unknown"] == [forged]
    assert report["tasks_missing"] == [f"{lost_task}:PT-02"]
    assert report["tasks_unknown"] == [f"{forged}:PT-02"]
    assert report["upward_behind"] == [f"month:{month}"]
    assert (report["accepted"], report["scored"], report["tasks"]) == (3, 2, 2)


def test_the_command_prints_lines_for_an_operator(settled_stack, database_url, capsys):
    assert reconcile.main(["--node", STREET, "--database-url", database_url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"stack {STREET}"
    assert out[1].split() == ["accepted", "inspections", "3"]
    assert out[2].split() == ["scored", "3"]
    assert out[-1] == "  reconciled"
