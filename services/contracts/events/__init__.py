"""The event envelope and the registry of event payloads.

Every message on the bus is an `EventEnvelope`; its `payload` validates against the model
registered for (`event_type`, `schema_version`). Events are past-tense facts.
Golden JSON samples of each event live in `samples/` and the tests parse them.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Type
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.contracts.nodes import NodeCode


class UnknownEventType(LookupError):
    pass


class InvalidEvent(ValueError):
    """A message that can never be processed (a poison message): dead-letter it."""


class Payload(BaseModel):
    """Base of every event payload and its parts: immutable facts with no unknown fields."""
    model_config = ConfigDict(extra="forbid", frozen=True)


class Producer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    node: NodeCode = Field(description="division code of the producing stack's home node")
    service: str = Field(min_length=1, max_length=64)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class EventEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: UUID = Field(default_factory=uuid4)
    event_type: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
    schema_version: int = Field(default=1, ge=1)
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    producer: Producer
    correlation_id: str | None = Field(default=None, max_length=128)
    payload: dict[str, Any]

    @field_validator("occurred_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(timezone.utc)

    def to_message(self) -> dict[str, Any]:
        """JSON-safe dict: kombu's JSON would otherwise wrap datetimes and UUIDs."""
        return self.model_dump(mode="json")

    def parsed_payload(self) -> BaseModel:
        return payload_model(self.event_type, self.schema_version).model_validate(self.payload)


_PAYLOADS: dict[tuple[str, int], Type[BaseModel]] = {}


def event_payload(event_type: str, schema_version: int = 1):
    """Class decorator registering a payload model for an event type and version."""
    def register(model: Type[BaseModel]) -> Type[BaseModel]:
        key = (event_type, schema_version)
        if key in _PAYLOADS and _PAYLOADS[key] is not model:
            raise ValueError(f"payload for {event_type} v{schema_version} registered twice")
        _PAYLOADS[key] = model
        model.EVENT_TYPE = event_type  # type: ignore[attr-defined]
        model.SCHEMA_VERSION = schema_version  # type: ignore[attr-defined]
        return model
    return register


def payload_model(event_type: str, schema_version: int = 1) -> Type[BaseModel]:
    try:
        return _PAYLOADS[(event_type, schema_version)]
    except KeyError:
        raise UnknownEventType(f"no payload schema for event {event_type!r} v{schema_version}") from None


def registered_events() -> list[tuple[str, int]]:
    return sorted(_PAYLOADS)


def make_event(payload: BaseModel, producer: Producer, correlation_id: str | None = None,
               occurred_at: datetime | None = None) -> EventEnvelope:
    event_type = getattr(payload, "EVENT_TYPE", None)
    if event_type is None:
        raise TypeError(f"{type(payload).__name__} is not a registered event payload")
    return EventEnvelope(
        event_type=event_type,
        schema_version=payload.SCHEMA_VERSION,  # type: ignore[attr-defined]
        occurred_at=occurred_at or utcnow(),
        producer=producer,
        correlation_id=correlation_id,
        payload=payload.model_dump(mode="json"),
    )


def parse_event(body: Any, expected_type: str | None = None) -> tuple[EventEnvelope, BaseModel]:
    """Validate a message body; raise InvalidEvent (poison) with the reason."""
    if not isinstance(body, dict):
        raise InvalidEvent(f"event body must be a JSON object, got {type(body).__name__}")
    try:
        envelope = EventEnvelope.model_validate(body)
        if expected_type is not None and envelope.event_type != expected_type:
            raise InvalidEvent(f"expected event {expected_type!r}, got {envelope.event_type!r}")
        return envelope, envelope.parsed_payload()
    except (ValidationError, UnknownEventType) as exc:
        raise InvalidEvent(str(exc)) from exc


# Register payload models.
from services.contracts.events import indicators, inspection, intake, scoring, tasks  # noqa: E402,F401
