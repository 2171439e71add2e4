"""Per-entrypoint metrics: each worker is counted once, by its service, kind and method name."""
from types import SimpleNamespace

from nameko.rpc import Rpc
from nameko.timer import Timer
from prometheus_client import REGISTRY

from services.plumbing.auth import PUBLIC
from services.plumbing.consumer import ReliableEventHandler
from services.plumbing.http import JsonApi
from services.plumbing.instrumentation import EntrypointMetrics, entrypoint_kind


def sample(service, kind, entrypoint, outcome):
    return REGISTRY.get_sample_value("chuangwei_entrypoint_seconds_count", {
        "service": service, "kind": kind, "entrypoint": entrypoint, "outcome": outcome}) or 0.0


def bound(entrypoint, method_name):
    entrypoint.method_name = method_name
    return entrypoint


def test_each_kind_of_entrypoint_is_named():
    assert entrypoint_kind(JsonApi("GET", "/x", access=PUBLIC)) == "http"
    assert entrypoint_kind(Rpc()) == "rpc"
    assert entrypoint_kind(ReliableEventHandler("inspection", "inspection_submitted")) == "event"
    assert entrypoint_kind(Timer(interval=60)) == "timer"
    assert entrypoint_kind(object()) == "other"


def test_a_worker_is_timed_once_with_its_outcome():
    provider = EntrypointMetrics()
    provider.container = SimpleNamespace(service_name="unit_test_service")
    provider.setup()
    timer = bound(Timer(interval=60), "sweep")
    handler = bound(ReliableEventHandler("inspection", "inspection_submitted"), "on_inspection_submitted")
    before_ok = sample("unit_test_service", "timer", "sweep", "ok")
    before_error = sample("unit_test_service", "event", "on_inspection_submitted", "error")

    ok = SimpleNamespace(entrypoint=timer)
    provider.worker_setup(ok)
    provider.worker_result(ok, result=None)
    provider.worker_teardown(ok)
    failed = SimpleNamespace(entrypoint=handler)
    provider.worker_setup(failed)
    provider.worker_result(failed, exc_info=(ValueError, ValueError("bad"), None))
    provider.worker_teardown(failed)
    provider.worker_result(failed)  # a second result for the same worker is not counted again

    assert sample("unit_test_service", "timer", "sweep", "ok") == before_ok + 1
    assert sample("unit_test_service", "event", "on_inspection_submitted", "error") == before_error + 1
    assert sample("unit_test_service", "event", "on_inspection_submitted", "ok") == 0
    assert provider._started == {}  # noqa: SLF001 - nothing left behind per worker
