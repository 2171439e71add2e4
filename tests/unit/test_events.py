import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.contracts.events import (EventEnvelope, InvalidEvent, Producer, make_event, parse_event,
                                       payload_model, registered_events)
from services.contracts.events.inspection import InspectionSubmitted

SAMPLES = Path(__file__).resolve().parents[2] / "services" / "contracts" / "events" / "samples"


def sample_files():
    return sorted(SAMPLES.glob("*.json"))


def test_every_registered_event_has_a_golden_sample():
    have = {tuple(p.name.rsplit(".", 2)[:2]) for p in sample_files()}
    missing = [(name, version) for name, version in registered_events() if (name, f"v{version}") not in have]
    assert missing == []


@pytest.mark.parametrize("path", sample_files(), ids=lambda p: p.name)
def test_golden_samples_parse(path):
    body = json.loads(path.read_text(encoding="utf-8"))
    envelope, payload = parse_event(body)
    name, version = path.name.rsplit(".", 2)[0], int(path.name.rsplit(".", 2)[1].lstrip("v"))
    assert envelope.event_type == name and envelope.schema_version == version
    assert type(payload) is payload_model(name, version)
    # Round trip: what we would publish equals what we parsed.
    assert EventEnvelope.model_validate(envelope.to_message()) == envelope


def test_inspection_sample_content():
    body = json.loads((SAMPLES / "inspection_submitted.v1.json").read_text(encoding="utf-8"))
    _, payload = parse_event(body, "inspection_submitted")
    assert isinstance(payload, InspectionSubmitted)
    assert payload.score == 100 - sum(f.deduction for f in payload.findings)
    assert payload.subject.name == "周家山社区"


def test_envelope_is_json_safe_and_utc():
    body = json.loads((SAMPLES / "inspection_submitted.v1.json").read_text(encoding="utf-8"))
    _, payload = parse_event(body)
    envelope = make_event(payload, Producer(node="411502008000", service="inspection"), correlation_id="c-1")
    message = envelope.to_message()
    json.dumps(message)  # no datetimes or UUIDs left for kombu to wrap
    assert message["occurred_at"].endswith("Z")
    assert envelope.occurred_at.tzinfo == timezone.utc
    assert message["producer"] == {"node": "411502008000", "service": "inspection"}


@pytest.mark.parametrize("body,reason", [
    ("not a dict", "JSON object"),
    ({"event_type": "inspection_submitted"}, "producer"),
    ({"event_type": "no_such_event", "producer": {"node": "411502008000", "service": "x"}, "payload": {}},
     "no payload schema"),
])
def test_poison_messages_raise_invalid_event(body, reason):
    with pytest.raises(InvalidEvent, match=reason):
        parse_event(body)


def test_naive_timestamps_are_refused():
    with pytest.raises(ValidationError) as info:
        EventEnvelope(event_type="inspection_submitted", occurred_at=datetime(2026, 1, 1),
                      producer=Producer(node="411502008000", service="inspection"), payload={})
    assert [(e["loc"], e["type"]) for e in info.value.errors()] == [(("occurred_at",), "timezone_aware")]


def test_expected_type_mismatch_is_poison():
    body = json.loads((SAMPLES / "inspection_submitted.v1.json").read_text(encoding="utf-8"))
    with pytest.raises(InvalidEvent, match="expected event"):
        parse_event(body, "task_opened")


def test_registry_lists_versions():
    assert ("inspection_submitted", 1) in registered_events()
