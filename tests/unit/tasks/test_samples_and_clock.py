"""The tasks service's golden event samples, and the controllable clock."""
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from services.contracts.events import EventEnvelope, parse_event
from services.contracts.events.tasks import (LedgerFiguresUpdated, TaskClosed, TaskEscalated, TaskOpened, TaskOverdue,
                                             TaskRelapsed, TaskStatusChanged)
from services.plumbing import clock

SAMPLES = Path(__file__).resolve().parents[3] / "services" / "contracts" / "events" / "samples"

EXPECTED = {
    "task_opened": TaskOpened, "task_status_changed": TaskStatusChanged, "task_overdue": TaskOverdue,
    "task_escalated": TaskEscalated, "task_closed": TaskClosed, "task_relapsed": TaskRelapsed,
    "ledger_figures_updated": LedgerFiguresUpdated,
}


@pytest.mark.parametrize("event_type,model", EXPECTED.items(), ids=list(EXPECTED))
def test_each_task_event_has_a_golden_sample_that_parses(event_type, model):
    body = json.loads((SAMPLES / f"{event_type}.v1.json").read_text(encoding="utf-8"))
    envelope, payload = parse_event(body, event_type)
    assert type(payload) is model
    assert envelope.producer.service == "tasks"
    assert EventEnvelope.model_validate(envelope.to_message()) == envelope


def test_sample_contents_are_consistent():
    def load(name):
        return parse_event(json.loads((SAMPLES / f"{name}.v1.json").read_text(encoding="utf-8")))[1]
    opened, closed, relapsed = load("task_opened"), load("task_closed"), load("task_relapsed")
    assert relapsed.relapse_of == opened.task.task_id == closed.task.task_id
    assert relapsed.closed_at == closed.closed_at and closed.task.status == "closed"
    escalated = load("task_escalated")
    assert escalated.to_node == "411502000000" and escalated.answer_due_at > escalated.at
    figures = load("ledger_figures_updated")
    assert figures.close_rate == round(figures.closed / figures.opened, 4)
    assert figures.on_time_rate == round(figures.closed_on_time / figures.closed, 4)


@pytest.fixture
def reset_clock():
    clock.reset()
    yield
    clock.reset()


def test_clock_offsets(reset_clock):
    before = datetime.now(timezone.utc)
    assert abs(clock.now() - before) < timedelta(seconds=5) and clock.now().tzinfo is not None
    clock.set_offset(timedelta(days=3))
    assert timedelta(days=3) - timedelta(seconds=5) < clock.now() - before < timedelta(days=3, seconds=5)
    clock.advance(timedelta(hours=1))
    assert clock.offset() == timedelta(days=3, hours=1)
    clock.reset()
    assert clock.offset() == timedelta(0)


def test_clock_provider_adds_the_configured_offset(reset_clock):
    from unittest.mock import MagicMock
    provider = clock.Clock()
    provider.container = MagicMock(config={"CLOCK_OFFSET_SECONDS": 3600})
    provider.setup()
    clock.set_offset(timedelta(days=1))
    worker_now = provider.get_dependency(None).now()
    assert timedelta(hours=25) - timedelta(seconds=5) < worker_now - datetime.now(timezone.utc) \
        < timedelta(hours=25, seconds=5)
