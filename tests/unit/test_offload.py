"""offload: costly work in a worker process, waited for greenly, bounded in time (issue 27)."""
import pickle
import time

import eventlet
import pytest

from services.contracts.errors import RuleViolation
from services.inspection.imports import ImportRejected, Issue
from services.plumbing import offload


def _refuse(field):
    raise RuleViolation(field, "不行 (no)")


def test_domain_errors_travel_pickled_whatever_their_constructor():
    rejected = pickle.loads(pickle.dumps(ImportRejected([Issue("检查记录", 3, "检查时间", "必填 (required)")])))
    assert rejected.issues == [Issue("检查记录", 3, "检查时间", "必填 (required)")] and rejected.field == "检查记录!3:检查时间"
    violation = pickle.loads(pickle.dumps(RuleViolation("month", "本月尚未结束")))
    assert (violation.field, violation.reason, violation.status) == ("month", "本月尚未结束", 422)


def test_results_and_errors_come_back_and_a_slow_job_is_abandoned_and_its_worker_replaced():
    pool = offload.Pool(workers=1)
    try:
        assert pool.run(sum, [1, 2, 3]) == 6
        with pytest.raises(RuleViolation) as caught:
            pool.run(_refuse, "body")
        assert caught.value.field == "body"
        started = time.monotonic()
        with pytest.raises(offload.TooSlow):
            pool.run(time.sleep, 30, timeout=0.5)
        assert time.monotonic() - started < 5
        assert pool.run(sum, [4, 5]) == 9  # a new worker
        assert pool.started == 2
    finally:
        pool.close()


def test_the_rest_of_the_process_runs_while_a_worker_computes():
    # tests/conftest.py monkey-patches as nameko does: the wait for the worker must be green.
    pool = offload.Pool(workers=1)
    try:
        pool.run(sum, [1])  # started
        ticks = []
        ticker = eventlet.spawn(lambda: [ticks.append(1) or eventlet.sleep(0.01) for _ in iter(int, 1)])
        eventlet.sleep(0)
        pool.run(time.sleep, 1.0)
        ticker.kill()
        assert len(ticks) >= 20  # ~100 if the hub ran throughout; 0 if the wait blocked it
    finally:
        pool.close()


def test_all_workers_busy_is_busy_not_a_queue_without_end():
    pool = offload.Pool(workers=1)
    try:
        slow = eventlet.spawn(pool.run, time.sleep, 2)
        eventlet.sleep(0.2)
        with pytest.raises(offload.Busy):
            pool.run(sum, [1], wait=0.2)
        slow.wait()
    finally:
        pool.close()


def test_busy_or_dead_workers_are_an_outage_for_the_client_503_with_retry_after():
    import services.inspection.service  # noqa: F401 - registers, as photos' does
    import services.photos.service  # noqa: F401
    from services.plumbing.db import unavailable_dependency
    assert unavailable_dependency(offload.Busy("all busy")) == "worker processes"
    assert unavailable_dependency(offload.WorkerFailed("gone")) == "worker processes"
    assert unavailable_dependency(offload.TooSlow("slow")) is None  # the content's fault: 422 by the caller


def _grow(megabytes):
    global _kept
    _kept = bytearray(megabytes * 1024 * 1024)
    return len(_kept)


def test_a_worker_left_big_by_its_job_is_replaced_so_its_memory_goes_back():
    pool = offload.Pool(workers=1)
    try:
        assert pool.run(_grow, 1) == 1024 * 1024
        assert pool.run(_grow, 1) and pool.started == 1  # small: kept
        assert pool.run(_grow, offload.RECYCLE_MB + 50)
        assert pool.run(sum, [1]) == 1 and pool.started == 2  # the big one was replaced
    finally:
        pool.close()
