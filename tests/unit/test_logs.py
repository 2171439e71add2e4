"""JSON log lines carry the worker's context; events staged without a correlation id carry it on."""
import json
import logging
from types import SimpleNamespace

from services.plumbing import logs


def ctx(first_arg, service="scoring", method="on_inspection_submitted"):
    return SimpleNamespace(entrypoint=SimpleNamespace(method_name=method), args=(first_arg,),
                           container=SimpleNamespace(service_name=service))


def record(message="hello %s", args=("世界",)):
    return logging.LogRecord("services.x", logging.INFO, __file__, 1, message, args, None)


def test_a_request_worker_carries_the_request_id_and_passes_it_on():
    provider = logs.LogContext()
    worker = ctx(SimpleNamespace(request_id="req-1"), service="inspection", method="submit")
    provider.worker_setup(worker)
    try:
        line = json.loads(logs.JsonFormatter().format(record()))
        assert line["message"] == "hello 世界" and line["level"] == "INFO" and line["logger"] == "services.x"
        assert (line["service"], line["entrypoint"], line["request_id"]) == ("inspection", "submit", "req-1")
        assert logs.current_correlation_id() == "req-1"
    finally:
        provider.worker_teardown(worker)
    assert logs.current() == {} and logs.current_correlation_id() is None
    assert "request_id" not in json.loads(logs.JsonFormatter().format(record()))


def test_an_event_worker_carries_the_event_and_its_correlation_id_onward():
    provider = logs.LogContext()
    worker = ctx({"event_id": "e-1", "event_type": "inspection_submitted", "correlation_id": "INS-1", "payload": {}})
    provider.worker_setup(worker)
    try:
        fields = logs.current()
        assert fields == {"service": "scoring", "entrypoint": "on_inspection_submitted", "event_id": "e-1",
                          "event_type": "inspection_submitted", "correlation_id": "INS-1"}
        assert logs.current_correlation_id() == "INS-1"
    finally:
        provider.worker_teardown(worker)


def test_a_malformed_body_adds_nothing_and_a_traceback_stays_on_one_line():
    provider = logs.LogContext()
    worker = ctx({"event_id": 7, "correlation_id": ["x"]})
    provider.worker_setup(worker)
    try:
        assert logs.current() == {"service": "scoring", "entrypoint": "on_inspection_submitted"}
        try:
            raise ValueError("坏了\nsecond line")
        except ValueError:
            import sys
            rec = logging.LogRecord("services.x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
        text = logs.JsonFormatter().format(rec)
        assert "\n" not in text and "ValueError" in json.loads(text)["exception"]
    finally:
        provider.worker_teardown(worker)
