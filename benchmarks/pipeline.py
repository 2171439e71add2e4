"""Benchmark: how fast one tier's stack takes inspections and turns them into scores and tasks.

    python benchmarks/pipeline.py [--inspections 200] [--concurrency 8]

Runs the inspection, scoring and tasks services in this process against the local
RabbitMQ (a fresh vhost) and PostgreSQL (a fresh database), submits inspections over HTTP
from several green threads, and prints: submit latency (p50/p95/max), submit throughput,
the time until scoring and tasks have consumed every event, and the process's peak memory.
Figures, not pass/fail: compare runs on the same machine.
"""
from __future__ import annotations

import eventlet

eventlet.monkey_patch()  # noqa: E402

import argparse
import resource
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from services.inspection.service import InspectionService  # noqa: E402
from services.scoring.service import ScoringService  # noqa: E402
from services.tasks.service import TasksService  # noqa: E402
from tests import support  # noqa: E402

COMMUNITIES = ["411502008001", "411502008002", "411502008003", "411502008004", "411502008005",
               "411502008006", "411502008007", "411502008008"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inspections", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    rabbit, pg = support.RabbitAdmin(), support.PostgresAdmin()
    vhost, dbname = support.unique_name("bench"), support.unique_name("chuangwei_bench")
    rabbit.create_vhost(vhost)
    database_url = pg.create_database(dbname)
    ports = {svc: support.free_port() for svc in ("inspection", "scoring", "tasks")}
    config = support.base_config(support.with_vhost(support.DEFAULT_AMQP_URI, vhost), database_url,
                                 WEB_ADDRESSES={s: f"127.0.0.1:{p}" for s, p in ports.items()},
                                 TASKS_SWEEP_INTERVAL=0, OUTBOX_POLL_INTERVAL=0.2)
    try:
        with support.running_services(config, InspectionService, ScoringService, TasksService):
            api = support.ApiClient(f"http://127.0.0.1:{ports['inspection']}")
            subjects = [api.post("/subjects", {"subject_type": "child_unit", "node": code, "name": f"社区{code[-3:]}"})
                        .json()["subject_id"] for code in COMMUNITIES]
            start_day = datetime(2026, 11, 2, 2, 0, tzinfo=timezone.utc)

            def submit(i: int) -> float:
                body = {"kind": "routine", "subject_id": subjects[i % len(subjects)],
                        "checklist": {"version": "2010.1", "code": "national-ten-areas"}, "inspectors": ["基准"],
                        "inspected_at": (start_day + timedelta(hours=i)).isoformat(),
                        "results": [{"item_code": "CITY-01", "findings": 1, "deduction": i % 4}]}
                started = time.perf_counter()
                response = support.ApiClient(api.base_url).post("/inspections", body)
                assert response.status_code == 201, response.text
                return time.perf_counter() - started

            began = time.perf_counter()
            pool = eventlet.GreenPool(args.concurrency)
            latencies = list(pool.imap(submit, range(args.inspections)))
            submitted = time.perf_counter() - began
            findings = sum(1 for i in range(args.inspections) if i % 4)
            support.wait_until(lambda: support.scalar(database_url, "select count(*) from scoring_processed_events")
                               >= args.inspections, timeout=600, interval=0.2, message="scoring consumed all")
            support.wait_until(lambda: support.scalar(database_url, "select count(*) from tasks_tasks") >= findings,
                               timeout=600, interval=0.2, message="tasks opened")
            settled = time.perf_counter() - began
    finally:
        rabbit.delete_vhost(vhost)
        pg.drop_database(dbname)

    latencies.sort()
    print(f"inspections submitted      {args.inspections} ({args.concurrency} concurrent clients)")
    print(f"submit latency p50         {statistics.median(latencies) * 1000:.1f} ms")
    print(f"submit latency p95         {latencies[int(len(latencies) * 0.95) - 1] * 1000:.1f} ms")
    print(f"submit latency max         {latencies[-1] * 1000:.1f} ms")
    print(f"submit throughput          {args.inspections / submitted:.1f} inspections/s")
    print(f"all scored and tasked in   {settled:.1f} s ({args.inspections / settled:.1f} inspections/s end to end)")
    print(f"peak memory (RSS)          {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
