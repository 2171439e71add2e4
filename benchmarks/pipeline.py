"""Benchmark: what one stack takes, end to end, against the ceilings of its broker and database.

    python benchmarks/pipeline.py [--peers 8,100,500] [--inspections 300] [--concurrency 8] [--processes]
                                  [--batch-size 1]

First the ceilings, measured in the same run on the same machine: RabbitMQ publishing
with publisher confirms (awaited per batch, as the outbox relay does) and consuming
(acked one by one), and PostgreSQL committing one-row transactions. Then, for each
number of peers, a fresh stack (inspection, scoring and tasks in this process, a fresh
vhost and database) at the city (信阳市), whose communities are the peers ranked
together — the first N communities and villages of infra/divisions — and:

- submit latency p50/p99 and throughput (HTTP POST /inspections from --concurrency clients, or
  POST /inspection-batches of --batch-size: latency per batch);
- end to end: inspections/s until every submitted inspection is scored (rows in
  scoring_inputs, not events consumed) and every finding has its task;
- events published per inspection (rows in every outbox once the stack is quiet) and
  SQL round trips per inspection on scoring's connections (an executemany in pages of 100);
- GET /rankings (the month's community ranking) p50/p99, asked continuously while the
  stack works;
- peak RSS of the process (the three services, the clients and this script);
- the most PostgreSQL connections the stack held.

With --processes each service runs in a process of its own, as docker-compose deploys them
(benchmarks/processes.py): scoring's SQL is then not counted, RSS is the largest service's.
The table is printed at the end, then a verdict on each of issue 11's targets it measures. Figures, not pass/fail: compare runs on the same machine.
Inspections per size: max(--inspections, --per-peer x peers), spread over October 2026; with
--per-peer 2 (the default) each community has two in the month and is ranked (the street
scheme's minimum sample).
"""
from __future__ import annotations

import eventlet

eventlet.monkey_patch()  # noqa: E402

import argparse
import contextlib
import csv
import resource
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402
import requests  # noqa: E402
from kombu import Connection, Exchange, Producer, Queue  # noqa: E402
from sqlalchemy import event  # noqa: E402

from benchmarks.processes import SERVICES, rss_mib, serving  # noqa: E402
from services.inspection.service import InspectionService  # noqa: E402
from services.plumbing.db import Database  # noqa: E402
from services.plumbing.outbox import BatchConfirms  # noqa: E402
from services.scoring.service import ScoringService  # noqa: E402
from services.tasks.service import TasksService  # noqa: E402
from tests import support  # noqa: E402

CITY = "411500000000"
MONTH = "2026-10"


def communities(count: int) -> list[str]:
    with open(ROOT / "infra" / "divisions" / "xinyang-4115.csv", encoding="utf-8") as handle:
        codes = [row["code"] for row in csv.DictReader(handle) if len(row["code"]) == 12]
    if count > len(codes):
        raise SystemExit(f"only {len(codes)} communities and villages in infra/divisions")
    return codes[:count]


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


# --- ceilings --------------------------------------------------------------------------------


def broker_ceiling(messages: int = 3000) -> tuple[float, float]:
    """Messages/s published with confirms awaited per batch of 200, and consumed (acked each)."""
    rabbit = support.RabbitAdmin()
    vhost = support.unique_name("bench-ceiling")
    rabbit.create_vhost(vhost)
    body = {"payload": "x" * 600}  # about the size of an inspection_submitted event
    try:
        uri = support.with_vhost(support.DEFAULT_AMQP_URI, vhost)
        with Connection(uri) as conn:
            channel = conn.default_channel
            exchange = Exchange("ceiling", type="topic", durable=True)
            queue = Queue("ceiling", exchange=exchange, routing_key="#", durable=True)
            exchange(channel).declare()
            queue(channel).declare()
            confirms, producer = BatchConfirms(channel), Producer(channel)
            began = time.perf_counter()
            for i in range(messages):
                producer.publish(body, exchange="ceiling", routing_key="k", serializer="json", delivery_mode=2)
                confirms.published_one()
                if i % 200 == 199:
                    confirms.wait()
            confirms.wait()
            published = messages / (time.perf_counter() - began)
        with Connection(uri) as conn:
            received = []
            consumer = conn.Consumer(queue, callbacks=[lambda b, m: (received.append(1), m.ack())],
                                     accept=["json"])
            consumer.qos(prefetch_count=200)
            began = time.perf_counter()
            with consumer:
                while len(received) < messages:
                    conn.drain_events(timeout=10)
            consumed = messages / (time.perf_counter() - began)
        return published, consumed
    finally:
        rabbit.delete_vhost(vhost)


def postgres_ceiling(commits: int = 1500) -> float:
    """One-row INSERT + COMMIT transactions per second, one connection."""
    pg = support.PostgresAdmin()
    name = support.unique_name("chuangwei_bench_pg")
    url = pg.create_database(name)
    try:
        conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
        try:
            with conn.cursor() as cur:
                cur.execute("create table t (id serial primary key, body text)")
            conn.commit()
            began = time.perf_counter()
            for i in range(commits):
                with conn.cursor() as cur:
                    cur.execute("insert into t (body) values (%s)", ("x" * 200,))
                conn.commit()
            return commits / (time.perf_counter() - began)
        finally:
            conn.close()
    finally:
        pg.drop_database(name)


# --- one stack -------------------------------------------------------------------------------


def engine_of(runner, service_name: str):
    container = next(c for c in runner.containers if c.service_name == service_name)
    return next(d for d in container.dependencies if isinstance(d, Database)).engine


@contextlib.contextmanager
def running(config: dict, separate: bool):
    """The stack's three services: in this process (a ServiceRunner; scoring's SQL can be
    counted), or each in a process of its own as docker-compose runs them (--processes)."""
    if not separate:
        with support.running_services(config, InspectionService, ScoringService, TasksService) as runner:
            yield runner, {}
        return
    with contextlib.ExitStack() as stack:
        yield None, {name: stack.enter_context(serving(config, name)) for name in SERVICES}


def run_stack(peers: int, inspections: int, concurrency: int, separate: bool = False, batch_size: int = 1) -> dict:
    rabbit, pg = support.RabbitAdmin(), support.PostgresAdmin()
    vhost, dbname = support.unique_name("bench"), support.unique_name("chuangwei_bench")
    rabbit.create_vhost(vhost)
    database_url = pg.create_database(dbname)
    ports = {svc: support.free_port() for svc in ("inspection", "scoring", "tasks")}
    config = support.base_config(support.with_vhost(support.DEFAULT_AMQP_URI, vhost), database_url, node=CITY, GC_FREEZE_AT_START=True,
                                 WEB_ADDRESSES={s: f"127.0.0.1:{p}" for s, p in ports.items()},
                                 TASKS_SWEEP_INTERVAL=0, OUTBOX_POLL_INTERVAL=0.2, SCORING_POLICY="street",
                                 DB_POOL_SIZE=2, DB_MAX_OVERFLOW=2)
    out: dict = {"peers": peers, "inspections": inspections}
    try:
        with running(config, separate) as (runner, processes):
            statements = {"n": 0}

            def count(conn, cursor, statement, parameters, context, executemany):
                # A round trip each; an executemany goes in pages of 100 (values_plus_batch).
                statements["n"] += -(-len(parameters) // 100) if executemany and parameters else 1
            if runner is not None:  # scoring's engine is in this process to count on
                event.listen(engine_of(runner, "scoring"), "before_cursor_execute", count)

            api = support.ApiClient(f"http://127.0.0.1:{ports['inspection']}")
            codes = communities(peers)
            began = time.perf_counter()
            pool = eventlet.GreenPool(concurrency)

            def register(code: str) -> str:
                response = support.ApiClient(api.base_url).post(
                    "/subjects", {"subject_type": "child_unit", "node": code, "name": f"社区{code[-6:]}"})
                assert response.status_code == 201, response.text
                return response.json()["subject_id"]
            subjects = list(pool.imap(register, codes))
            out["seed_s"] = time.perf_counter() - began
            start_day = datetime(2026, 9, 30, 18, 0, tzinfo=timezone.utc)  # 1 October, 02:00 CST

            def body(i: int) -> dict:
                return {"kind": "routine", "subject_id": subjects[i % len(subjects)],
                        "checklist": {"version": "2010.1", "code": "national-ten-areas"}, "inspectors": ["基准"],
                        "inspected_at": (start_day + timedelta(days=(i // len(subjects)) % 28,
                                                               minutes=i % 600)).isoformat(),
                        "results": [{"item_code": "CITY-01", "findings": 1, "deduction": i % 4}]}

            def submit(first: int) -> float:
                """One request: an inspection, or with --batch-size a batch of them (a phone's sync)."""
                started = time.perf_counter()
                if batch_size == 1:
                    response = support.ApiClient(api.base_url).post("/inspections", body(first))
                else:
                    response = support.ApiClient(api.base_url).post("/inspection-batches", {"inspections": [
                        body(i) for i in range(first, min(first + batch_size, inspections))]})
                assert response.status_code == 201, response.text
                return time.perf_counter() - started

            ranking_latencies: list[float] = []
            reading = {"on": True}
            # A token that outlives a long run (the default one expires after ten minutes).
            scoring_api = support.ApiClient(f"http://127.0.0.1:{ports['scoring']}", token=support.token(ttl=7200))

            def read_rankings():
                while reading["on"]:
                    started = time.perf_counter()
                    response = scoring_api.get("/rankings", params={"period": MONTH, "tier": "community"})
                    assert response.status_code == 200, response.text
                    ranking_latencies.append(time.perf_counter() - started)
                    eventlet.sleep(0.05)
            reader = eventlet.spawn(read_rankings)
            connections = {"peak": 0}

            def watch_connections():  # the stack's own, not this watcher's
                while reading["on"]:
                    held = support.scalar(database_url, "select count(*) - 1 from pg_stat_activity "
                                                        "where datname = current_database()")
                    connections["peak"] = max(connections["peak"], held)
                    eventlet.sleep(0.5)
            watcher = eventlet.spawn(watch_connections)

            statements["n"] = 0
            began = time.perf_counter()
            latencies = list(pool.imap(submit, range(0, inspections, batch_size)))
            submitted = time.perf_counter() - began
            findings = sum(1 for i in range(inspections) if i % 4)
            support.wait_until(lambda: support.scalar(database_url, "select count(*) from scoring_inputs")
                               >= inspections, timeout=1800, interval=0.2, message="every inspection scored")
            scored = time.perf_counter() - began
            support.wait_until(lambda: support.scalar(database_url, "select count(*) from tasks_tasks") >= findings,
                               timeout=1800, interval=0.2, message="every finding tasked")
            settled = time.perf_counter() - began
            reading["on"] = False
            reader.wait()
            watcher.wait()

            def quiet():
                unsent = sum(support.scalar(database_url, f"select count(*) from {svc}_outbox "
                                                          "where published_at is null")
                             for svc in ("inspection", "scoring", "tasks"))
                queues = requests.get(f"{rabbit.base}/queues/{vhost}", auth=rabbit.auth, timeout=10).json()
                return unsent == 0 and sum(q.get("messages", 0) for q in queues) == 0
            support.wait_until(quiet, timeout=1800, interval=1.0, message="the stack quiet")
            out["rss_mib"] = max(rss_mib(p.pid) for p in processes.values()) if processes else rss_mib()
            events = {svc: support.scalar(database_url, f"select count(*) from {svc}_outbox")
                      for svc in ("inspection", "scoring", "tasks")}
            out.update(
                submit_p50_ms=percentile(latencies, 0.5) * 1000, submit_p99_ms=percentile(latencies, 0.99) * 1000,
                submit_per_s=inspections / submitted, scored_per_s=inspections / scored,
                e2e_per_s=inspections / settled, events_per_inspection=sum(events.values()) / inspections,
                scoring_events_per_inspection=events["scoring"] / inspections,
                statements_per_inspection=statements["n"] / inspections if runner is not None else None,
                rankings_p50_ms=percentile(ranking_latencies, 0.5) * 1000,
                rankings_p99_ms=percentile(ranking_latencies, 0.99) * 1000, rankings_reads=len(ranking_latencies),
                db_connections_peak=connections["peak"],
                ranked=support.scalar(database_url, "select count(*) from scoring_period_scores where ranked "
                                                    f"and period = '{MONTH}' and tier = 'community'"))
    finally:
        rabbit.delete_vhost(vhost)
        pg.drop_database(dbname)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="8,100,500", help="comma-separated numbers of ranked communities")
    parser.add_argument("--inspections", type=int, default=300, help="at least this many per size")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1, choices=range(1, 201), metavar="1-200",
                        help="inspections per request: 1 posts /inspections, more post /inspection-batches "
                             "(a phone syncing its day, an import); submit latency is then per batch")
    parser.add_argument("--processes", action="store_true",
                        help="each service in a process of its own, as deployed (scoring's SQL is not counted)")
    parser.add_argument("--per-peer", type=int, default=2,
                        help="inspections per community at least (2 ranks each in the month; 1 is quicker)")
    args = parser.parse_args()

    publish, consume = broker_ceiling()
    commits = postgres_ceiling()
    print(f"ceilings: RabbitMQ publish (confirmed per batch) {publish:.0f} msg/s, consume {consume:.0f} msg/s; "
          f"PostgreSQL insert+commit {commits:.0f} tx/s", flush=True)
    rows = []
    for peers in [int(p) for p in args.peers.split(",") if p]:
        result = run_stack(peers, max(args.inspections, args.per_peer * peers), args.concurrency, args.processes,
                           args.batch_size)
        rows.append(result)
        print(f"  {peers} peers done: {result}", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print()
    for r in rows:
        r["submit_latency"] = f"{r['submit_p50_ms']:.0f} / {r['submit_p99_ms']:.0f}"
        r["rankings"] = f"{r['rankings_p50_ms']:.0f} / {r['rankings_p99_ms']:.0f}"
        r["broker_share"] = f"{100 * r['e2e_per_s'] * r['events_per_inspection'] / publish:.1f} %"
    print("| figure | " + " | ".join(f"{r['peers']} peers" for r in rows) + " |")
    print(f"|---|{'---|' * len(rows)}")

    def line(label, fmt, key):
        print(f"| {label} | {' | '.join('n/a' if r[key] is None else fmt.format(r[key]) for r in rows)} |")
    line("inspections submitted", "{}", "inspections")
    line("submit throughput (inspections/s)", "{:.1f}", "submit_per_s")
    line("submit latency p50 / p99 (ms)", "{}", "submit_latency")
    line("end to end: scored (inspections/s)", "{:.1f}", "scored_per_s")
    line("end to end: scored and tasked (inspections/s)", "{:.1f}", "e2e_per_s")
    line("events published per inspection (all services)", "{:.2f}", "events_per_inspection")
    line("… of which scoring", "{:.2f}", "scoring_events_per_inspection")
    line("SQL round trips per inspection (scoring)", "{:.1f}", "statements_per_inspection")
    line("GET /rankings p50 / p99 (ms), while working", "{}", "rankings")
    line("communities ranked in the month", "{}", "ranked")
    line("events/s as % of the broker's publish ceiling", "{}", "broker_share")
    line("RSS after the run (MiB; with --processes the largest service's)", "{:.0f}", "rss_mib")
    line("PostgreSQL connections held at most (three services)", "{}", "db_connections_peak")
    print(f"\nceilings: RabbitMQ publish {publish:.0f} msg/s (confirms per batch), consume {consume:.0f} msg/s; "
          f"PostgreSQL insert+commit {commits:.0f} tx/s; peak RSS of the process {peak:.0f} MiB")
    print("\nissue 11's targets:")
    for verdict in targets(rows, max(r["rss_mib"] for r in rows) if args.processes else peak, args.processes):
        print(f"- {verdict}")


def targets(rows: list[dict], peak_rss_mib: float, separate: bool = False) -> list[str]:
    """Each of issue 11's targets this benchmark measures: met, or short by how much. (GET
    /rankings with a year of data and the four hops: benchmarks/rankings.py and tiers.py.)"""
    def verdict(value: float, target: float, unit: str, most: bool = False) -> str:
        ok = value <= target if most else value >= target
        return "met" if ok else f"short by {abs(value - target):,.2f}{unit}"
    out = []
    smallest, largest = min(rows, key=lambda r: r["peers"]), max(rows, key=lambda r: r["peers"])
    if smallest["peers"] <= 8:
        out.append(f"end to end ≥ 100 inspections/s at {smallest['peers']} peers: {smallest['e2e_per_s']:.1f}/s, "
                   + verdict(smallest["e2e_per_s"], 100, "/s"))
    if largest["peers"] >= 3000:
        out.append(f"within 2× of that at {largest['peers']:,} peers (≥ 50/s): {largest['e2e_per_s']:.1f}/s, "
                   + verdict(largest["e2e_per_s"], 50, "/s"))
    out += [f"events published per inspection ≤ 8 at {r['peers']:,} peers: {r['events_per_inspection']:.2f}, "
            + verdict(r["events_per_inspection"], 8, "", most=True) for r in rows]
    held = max(r["db_connections_peak"] for r in rows)
    out.append(f"≤ 20 database connections per stack: at most {held} held by these three services "
               f"(a whole stack's configured maximum is 18: README, 'Database connections'), "
               + verdict(held, 20, "", most=True))
    whose = "the largest service's process" if separate else "this process (three services, the clients, this script)"
    out.append(f"RSS ≤ 300 MB under load: {peak_rss_mib:.0f} MiB at most for {whose}, "
               + verdict(peak_rss_mib * 1.048576, 300, " MB", most=True))
    return out


if __name__ == "__main__":
    main()
