"""Benchmark: how long the console takes to render a district office's dashboard with a
year of data.

    python benchmarks/console_dashboard.py [--months 12] [--per-month 3] [--renders 20]

Runs a district stack (浉河区, 411502000000: inspection, scoring, tasks, notify and the
console) in this process against the local RabbitMQ (a fresh vhost) and PostgreSQL (a
fresh database), submits `per-month` inspections of each of the district's streets for
each of the last `months` months (findings become tasks), waits until scoring and tasks
have consumed them all, then requests the dashboard `renders` times as the district's
administrator and prints p50 / p95 / max render time and the page size. The console asks
scoring for the ranking, freshness and each street's monthly history, and tasks for the
ledger, as the signed-in person. Figures, not pass/fail: compare runs on the same machine.
"""
from __future__ import annotations

import eventlet

eventlet.monkey_patch()  # noqa: E402

import argparse
import csv
import signal
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.console.service import ConsoleService  # noqa: E402
from services.inspection.service import InspectionService  # noqa: E402
from services.notify.service import NotifyService  # noqa: E402
from services.scoring.service import ScoringService  # noqa: E402
from services.tasks.service import TasksService  # noqa: E402
from tests import support  # noqa: E402

DISTRICT = "411502000000"


def streets() -> list[tuple[str, str]]:
    with open(ROOT / "infra" / "divisions" / "xinyang-4115.csv", encoding="utf-8") as fh:
        return [(row["code"] + "000", row["name"]) for row in csv.DictReader(fh)
                if len(row["code"]) == 9 and row["code"].startswith("411502")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--per-month", type=int, default=3)
    parser.add_argument("--renders", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    rabbit, pg = support.RabbitAdmin(), support.PostgresAdmin()
    vhost, dbname = support.unique_name("bench"), support.unique_name("chuangwei_bench")
    rabbit.create_vhost(vhost)
    database_url = pg.create_database(dbname)
    services = {"inspection": InspectionService, "scoring": ScoringService, "tasks": TasksService,
                "notify": NotifyService, "console": ConsoleService}
    ports = {name: support.free_port() for name in services}
    config = support.base_config(support.with_vhost(support.DEFAULT_AMQP_URI, vhost), database_url, node=DISTRICT,
                                 WEB_ADDRESSES={s: f"127.0.0.1:{p}" for s, p in ports.items()},
                                 TASKS_SWEEP_INTERVAL=0, NOTIFY_BULLETIN_SCHEDULE=False, OUTBOX_POLL_INTERVAL=0.2,
                                 # Five services share this process and the machine's PostgreSQL:
                                 # fewer workers than connections, so none waits for the pool.
                                 max_workers=3)
    # Stopped from outside: still remove the vhost and the database.
    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt()))
    admin = support.token("区创卫办管理员", [(role, DISTRICT) for role in ("administrator", "inspector", "viewer")],
                          ttl=6 * 3600)  # loading a year takes a while on a busy machine
    try:
        with support.running_services(config, *services.values()):
            api = support.ApiClient(f"http://127.0.0.1:{ports['inspection']}", token=admin)
            subjects = [api.post("/subjects", {"subject_type": "child_unit", "node": code, "name": name}).json()
                        ["subject_id"] for code, name in streets()]
            now = datetime.now(timezone.utc)
            visits = [(subject, now - timedelta(days=30 * month + 7 * k + 1))
                      for month in range(args.months) for k in range(args.per_month) for subject in subjects]

            def submit(i: int) -> None:
                subject, when = visits[i]
                body = {"kind": "routine", "subject_id": subject,
                        "checklist": {"version": "2010.1", "code": "national-ten-areas"}, "inspectors": ["基准"],
                        "inspected_at": when.isoformat(),
                        "results": [{"item_code": "CITY-01", "findings": i % 3}]}
                response = support.ApiClient(api.base_url, token=admin).post("/inspections", body)
                assert response.status_code == 201, response.text

            began = time.perf_counter()
            list(eventlet.GreenPool(args.concurrency).imap(submit, range(len(visits))))
            findings = sum(1 for i in range(len(visits)) if i % 3)

            def count(table: str) -> int:
                try:
                    return support.scalar(database_url, f"select count(*) from {table}")
                except Exception:  # noqa: BLE001 - the shared server is full for a moment: ask again
                    return -1
            support.wait_until(lambda: count("scoring_processed_events") >= len(visits), timeout=3600, interval=2,
                               message="scoring consumed all")
            support.wait_until(lambda: count("tasks_tasks") >= findings, timeout=3600, interval=2,
                               message="tasks opened")
            loaded = time.perf_counter() - began

            console = f"http://127.0.0.1:{ports['console']}/"
            import requests
            session = requests.Session()
            session.cookies.set("cw_access", admin)
            timings, size = [], 0
            for _ in range(args.renders + 1):
                started = time.perf_counter()
                page = session.get(console, timeout=120)
                elapsed = time.perf_counter() - started
                assert page.status_code == 200 and "本月排名" in page.text, page.text[:500]
                size = len(page.content)
                timings.append(elapsed)
            timings = timings[1:]  # the first request warms the connection pools
            timings.sort()
    finally:
        rabbit.delete_vhost(vhost)
        pg.drop_database(dbname)

    p95 = timings[max(0, int(round(0.95 * len(timings))) - 1)]
    print(f"district {DISTRICT}: {len(subjects)} streets, {len(visits)} inspections over {args.months} months "
          f"({findings} with findings → tasks), loaded and settled in {loaded:.0f} s")
    print(f"dashboard render ({args.renders} requests): p50 {statistics.median(timings) * 1000:.0f} ms, "
          f"p95 {p95 * 1000:.0f} ms, max {timings[-1] * 1000:.0f} ms; page {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
