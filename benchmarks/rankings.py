"""Benchmark: GET /rankings on a city stack holding a year of weekly inspections, idle and under load.

    python benchmarks/rankings.py [--peers 3474] [--seconds 30] [--clients 2] [--skip-load]
                                  [--submitters 4] [--rate 20] [--periods 2026-11,2026-Q4,2026] [--explain]

Issue 11's target: `GET /rankings` for the city's communities with a year of weekly
inspections, p99 ≤ 50 ms while the stack is under load. Feeding that year through the
pipeline (3,474 × 52 inspections at ≈ 3/s end to end) would take most of a week, so the year
is written straight into scoring's tables with COPY: one routine inspection per community
and week (8 December 2025 – 6 December 2026) as inputs, the last 30 days' claims, subjects and
aliases, every period's figure of every community, street, district and of the city
(computed by `services.scoring.domain` as the scorer does, explanation included), the roll-up
inputs and the rankings. The scorer's own `rank_group` then re-ranks every seeded group and
must move nothing, and the API must show the seeded ranks.

信阳市's stack (inspection, scoring and tasks, each in a process of its own as docker-compose
runs them, on a PostgreSQL cluster of its own and a fresh vhost) then answers
`GET /rankings?tier=community` for each of --periods in turn, asked continuously by --clients
(in a process of their own) for --seconds: idle, then while --submitters clients post --rate
live inspections a second (0: as fast as they can), dated Monday 7 December 2026, so that the
current week, month, quarter, half year and year are re-scored and re-ranked meanwhile. The
scoring service keeps answers and serialised figures (operations/ranking_cache.py): how many
came from it is printed too. Figures, not pass/fail.
"""
from __future__ import annotations

import eventlet

eventlet.monkey_patch()  # noqa: E402

import argparse
import contextlib
import io
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402
import psycopg2.extensions  # noqa: E402
from sqlalchemy import create_engine, select  # noqa: E402
from sqlalchemy.dialects import postgresql  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from benchmarks.pipeline import communities, percentile  # noqa: E402
from benchmarks.processes import SERVICES, rss_mib, serving  # noqa: E402
from services.contracts.nodes import ancestors_of, is_within, load_division_rows, parent_of, tier_of  # noqa: E402
from services.contracts.periods import Period  # noqa: E402
from services.scoring import domain  # noqa: E402
from services.scoring.models import PeriodScore  # noqa: E402
from services.scoring.operations.scorer import rank_group  # noqa: E402
from services.scoring.service import ScoringService  # noqa: E402
from tests import support  # noqa: E402
from tests.nodes import PostgresCluster  # noqa: E402

CITY, CHILD = "411500000000", "child_unit"
FIRST_MONDAY, WEEKS = date(2025, 12, 8), 52  # the 52 weeks before Monday 7 December 2026
LIVE_AT = datetime(2026, 12, 7, 1, 0, tzinfo=timezone.utc)  # 09:00 CST that Monday
LOAD_SUBJECTS = 100  # communities registered with the inspection service for the live load
TARGET_MS = 50.0
COLUMNS = {
    "subjects": "subject_id, node, name, subject_type, tier, created_at",
    "subject_aliases": "alias, subject_id",
    "inputs": "inspection_id, event_id, subject_id, inspection_subject_id, inspecting_node, kind, score, scale, "
              "inspected_at, inspectors, week, month, quarter, half_year, year, created_at, revision",
    "processed_events": "event_id, consumer, event_type, processed_at",
    "period_scores": "subject_id, period_kind, period, node, name, tier, subject_type, score, scale, routine, "
                     "appraisal, inputs, vetoed, veto_reasons, grade, rank, peers, ranked, movement, position, "
                     "rank_min_inputs, policy_id, policy_version, explain, published, revision, computed_at",
    "child_scores": "parent_node, child_node, period_kind, period, name, score, scale, inputs, source, revision, "
                    "updated_at",
    "rankings": "period_kind, period, tier, subject_type, version, peers, published_at"}


class Copy:
    """Rows into one table through COPY, a few MB at a time (a year of explanations is
    hundreds of MB of text)."""

    def __init__(self, cur, table: str):
        self.cur, self.table, self.rows, self.buffer = cur, f"scoring_{table}", 0, io.StringIO()
        self.sql = f"COPY {self.table} ({COLUMNS[table]}) FROM STDIN"

    @staticmethod
    def text(value) -> str:
        if value is None:
            return r"\N"
        if isinstance(value, bool):
            return "t" if value else "f"
        value = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else (
            value.isoformat() if isinstance(value, datetime) else str(value))
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")

    def add(self, *values) -> None:
        self.buffer.write("\t".join(map(self.text, values)) + "\n")
        self.rows += 1
        if self.buffer.tell() > 8 << 20:
            self.flush()

    def flush(self) -> None:
        self.buffer.seek(0)
        self.cur.copy_expert(self.sql, self.buffer)
        self.buffer = io.StringIO()


def seed(dsn: str, codes: list[str], names: dict[str, str], rng: random.Random) -> tuple[dict, dict]:
    """Write a year of scoring's state; returns rows per table and each group's ranks."""
    conn = psycopg2.connect(dsn)
    cur = conn.cursor()
    cur.execute("SELECT node, version, policy_id, document FROM scoring_policies ORDER BY version DESC LIMIT 1")
    policy_node, version, policy_id, document = cur.fetchone()  # stored by the stack's first start
    policy, ref = domain.Policy.model_validate(document), {"policy_id": policy_id, "version": version,
                                                           "node": policy_node}
    t = {table: Copy(cur, table) for table in COLUMNS}
    new_id = lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4))  # noqa: E731 - the same every run
    created = datetime(2025, 12, 1, tzinfo=timezone.utc)
    for code in sorted(set(codes) | {a for c in codes for a in ancestors_of(c) if is_within(a, CITY)}):
        t["subjects"].add(code, code, names[code], CHILD, str(tier_of(code)), created)

    by_period: dict[Period, dict[str, list]] = defaultdict(dict)
    for code in codes:
        # Each community is inspected on a weekday of its own and keeps roughly its level
        # through the year (a clean community stays clean): ranks move, but not wildly.
        alias, level, weekday = new_id(), rng.uniform(66, 95), rng.randrange(5)
        t["subject_aliases"].add(alias, code)  # the inspection service's id for it
        for week in range(WEEKS):
            day = FIRST_MONDAY + timedelta(days=7 * week + weekday)
            at = datetime(day.year, day.month, day.day, 2, 0, tzinfo=timezone.utc)  # 10:00 CST
            score = min(100.0, max(60.0, round(rng.gauss(level, 5) * 2) / 2))
            item, event_id = domain.ScoreInput(new_id(), "routine", score, 100, at), new_id()
            periods = domain.periods_of(at)  # week, month, quarter, half year, year: the columns' order
            t["inputs"].add(item.inspection_id, event_id, code, alias, CITY, "routine", score, 100, at, ["基准"],
                            *(p.key for p in periods), at + timedelta(minutes=2), None)
            if at >= LIVE_AT - timedelta(days=30):  # older claims are pruned (PROCESSED_EVENTS_RETENTION_DAYS)
                t["processed_events"].add(event_id, "scoring.on_inspection_submitted", "inspection_submitted",
                                          at + timedelta(minutes=2))
            for period in periods:
                by_period[period].setdefault(code, []).append(item)

    ranks: dict[tuple[str, str, str], dict[str, int]] = {}
    for period in sorted(by_period, key=lambda p: (domain.KIND_ORDER[p.kind], p.bounds()[0])):
        kind, key = str(period.kind), period.key
        # As the scorer goes: the communities, then each tier's parents from their children.
        # A level maps subject → (its figure, its revision, when it was last computed).
        level = {c: (domain.subject_score(period, policy, items), len(items), items[-1].inspected_at
                     + timedelta(minutes=2)) for c, items in by_period[period].items()}
        while level:
            tier = tier_of(next(iter(level)))
            rule = policy.ranking.tiers.get(tier)
            min_inputs = rule.min_inspections if rule and period.kind in policy.ranking.periods else None
            placed = domain.rank_peers([domain.RankEntry(s, names[s], r.score, r.inputs, min_inputs)
                                        for s, (r, _, _) in level.items()],
                                       ranks.get((kind, period.previous().key, str(tier)), {}))
            ranks[(kind, key, str(tier))] = {p.subject_id: p.rank for p in placed if p.ranked}
            children = defaultdict(list)
            for p in placed:
                (r, revision, at), name = level[p.subject_id], names[p.subject_id]
                published = {"score": r.score, "scale": policy.scale, "grade": r.grade, "vetoed": r.vetoed,
                             "veto_reasons": r.veto_reasons, "inputs": r.inputs, "name": name,
                             "policy": [policy_id, version]}
                t["period_scores"].add(p.subject_id, kind, key, p.subject_id, name, str(tier), CHILD, r.score,
                                       policy.scale, r.routine, r.appraisal, r.inputs, r.vetoed, r.veto_reasons,
                                       r.grade, p.rank, p.peers, p.ranked, p.movement, p.position, min_inputs,
                                       policy_id, version, {**r.explain, "policy": ref}, published, revision, at)
                if p.subject_id != CITY:
                    parent = parent_of(p.subject_id)
                    t["child_scores"].add(parent, p.subject_id, kind, key, name, r.score, policy.scale, r.inputs,
                                          "stack", revision, at)
                    children[parent].append((domain.ChildInput(p.subject_id, name, r.score, policy.scale, r.inputs),
                                             revision, at))
            t["rankings"].add(kind, key, str(tier), CHILD, max(v[1] for v in level.values()), placed[0].peers,
                              max(v[2] for v in level.values()))
            level = {parent: (domain.subject_score(period, policy, [], sorted((c for c, _, _ in kids),
                                                                              key=lambda c: c.node)),
                              sum(r for _, r, _ in kids), max(a for _, _, a in kids))
                     for parent, kids in children.items()}
    for copy in t.values():
        copy.flush()
    conn.commit()
    conn.autocommit = True
    for copy in t.values():  # a year-old database has its statistics and visibility map
        cur.execute(f"VACUUM ANALYZE {copy.table}")
    conn.close()
    return {c.table: c.rows for c in t.values()}, ranks


def seed_and_check(dsn: str, database_url: str, codes: list[str], names: dict, month: str) -> tuple[dict, dict]:
    psycopg2.extensions.set_wait_callback(None)  # COPY refuses a green connection
    seeded, ranks = seed(dsn, codes, names, random.Random(11))
    engine = create_engine(database_url)
    with Session(engine) as session:  # rolled back: only whether the scorer would move anyone
        moved = [group for group in ranks if rank_group(session, *group, CHILD)]
    engine.dispose()
    if moved:
        raise RuntimeError(f"the scorer re-ranks {len(moved)} seeded groups differently, e.g. {moved[:3]}")
    return seeded, ranks.get(("month", month, "community"), {})


def in_child(fn, *args):
    """fn(*args) in a forked process, its result pickled back through a file: the seeding's
    hundreds of MB stay out of the RSS measured here, which is the stack's and its clients'.
    (A file, not a pipe: green pipes would register with the eventlet hub both share.)"""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.pickle"
        pid = os.fork()
        if pid == 0:
            try:  # whatever happens, never on into the parent's cleanup
                try:
                    outcome = (True, fn(*args))
                except BaseException as exc:  # noqa: BLE001 - reported by the parent
                    outcome = (False, f"{type(exc).__name__}: {exc}")
                result.write_bytes(pickle.dumps(outcome))
            finally:
                os._exit(0)
        try:
            os.waitpid(pid, 0)
        except BaseException:  # Ctrl-C, SIGTERM: the cluster goes, and the child with it
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        ok, value = pickle.loads(result.read_bytes()) if result.exists() else (False, "the seeding process died")
    if not ok:
        raise SystemExit(f"seeding failed: {value}")
    return value


def explain_reads(dsn: str, periods: list[str]) -> None:
    """EXPLAIN ANALYZE of the read's own statement, and how much JSON it drags along."""
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        for key in periods:
            period = Period.parse(key)
            stmt = select(PeriodScore).where(
                PeriodScore.period_kind == str(period.kind), PeriodScore.period == period.key,
                PeriodScore.tier == "community", PeriodScore.subject_type == CHILD,
            ).order_by(PeriodScore.position, PeriodScore.subject_id)  # as operations/reads.py::ranking
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + str(stmt.compile(
                dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})))
            plan = [r[0] for r in cur.fetchall()]
            cur.execute("SELECT count(*), sum(octet_length(explain::text)), sum(octet_length(published::text)) "
                        "FROM scoring_period_scores WHERE period_kind = %s AND period = %s AND tier = 'community'",
                        (str(period.kind), period.key))
            rows, explained, published = cur.fetchone()
            print(f"\nEXPLAIN ANALYZE, {key}: {rows} rows carrying {explained / 2**20:.1f} MiB of `explain` and "
                  f"{published / 2**20:.1f} MiB of `published` JSON (loaded by the read, not shown)")
            print("\n".join("    " + line for line in plan), flush=True)


def measure(scoring_url: str, token: str, periods: list[str], clients: int, seconds: float,
            inspection_url: str | None = None, subjects: list[str] = (), submitters: int = 0,
            rate: float = 0) -> dict:
    """Ask the rankings from `clients` for `seconds`; with `inspection_url`, submit meanwhile."""
    out = {"latencies": {p: [] for p in periods}, "bytes": {}, "errors": 0, "submitted": [], "refused": 0}
    deadline = time.perf_counter() + seconds

    def read(i: int) -> None:
        api = support.ApiClient(scoring_url, token=token)
        while time.perf_counter() < deadline:
            period, i, began = periods[i % len(periods)], i + 1, time.perf_counter()
            try:
                response = api.get("/rankings", params={"period": period, "tier": "community"})
                response.raise_for_status()
            except Exception:  # noqa: BLE001 - a timeout (30 s) under load is a figure, not a crash
                out["errors"] += 1
                continue
            out["latencies"][period].append(time.perf_counter() - began)
            out["bytes"][period] = len(response.content)

    def submit(i: int) -> None:
        api = support.ApiClient(inspection_url, token=token)
        pause = submitters / rate if rate else 0  # each submitter's share of --rate
        next_at = time.perf_counter()
        while time.perf_counter() < deadline:
            body = {"kind": "routine", "subject_id": subjects[i % len(subjects)], "inspectors": ["基准"],
                    "checklist": {"version": "2010.1", "code": "national-ten-areas"},
                    "inspected_at": (LIVE_AT + timedelta(seconds=i)).isoformat(),
                    "results": [{"item_code": "CITY-01", "findings": 1, "deduction": i % 4}]}
            began = time.perf_counter()
            if api.post("/inspections", body).status_code == 201:
                out["submitted"].append(time.perf_counter() - began)
            else:
                out["refused"] += 1
            i += submitters
            next_at += pause
            eventlet.sleep(max(0.0, next_at - time.perf_counter()))

    threads = [eventlet.spawn(read, n) for n in range(clients)]
    threads += [eventlet.spawn(submit, n) for n in range(submitters if inspection_url else 0)]
    for thread in threads:
        thread.wait()
    out["elapsed"] = time.perf_counter() - deadline + seconds
    return out


def measure_elsewhere(**params) -> dict:
    """measure() in a process of its own, as an office's browsers are: reading 1.6 MiB answers
    is the clients' CPU, not the stack's (all three services share this process's one thread)."""
    done = subprocess.run([sys.executable, __file__, "--measure", json.dumps(params)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the clients' process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=3474, help="communities ranked together (the first N)")
    parser.add_argument("--seconds", type=float, default=30, help="length of each measurement")
    parser.add_argument("--clients", type=int, default=2, help="clients asking GET /rankings continuously")
    parser.add_argument("--submitters", type=int, default=4, help="clients posting live inspections under load")
    parser.add_argument("--rate", type=float, default=20,
                        help="live inspections per second under load, over all submitters (0: as fast as they go)")
    parser.add_argument("--periods", default="2026-11,2026-Q4,2026", help="the rankings asked, in turn")
    parser.add_argument("--skip-load", action="store_true", help="measure the idle stack only")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of the read's statement")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the clients' process (measure_elsewhere)
    parser.add_argument("--gaps", metavar="FILE", help="diagnostics: write how long the scoring service's green "
                                                       "threads waited for a turn, and where it computed meanwhile")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(**json.loads(args.measure))), flush=True)
        return
    periods = [p for p in args.periods.split(",") if p]
    month = next((p for p in periods if Period.parse(p).kind == "month"), "2026-11")  # checked before measuring
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the cleanup below runs
    codes = communities(args.peers)
    names = dict(load_division_rows(sorted((ROOT / "infra" / "divisions").glob("*.csv"))))
    rabbit, vhost = support.RabbitAdmin(), support.unique_name("bench-rankings")
    with contextlib.ExitStack() as cleanup:
        cluster = PostgresCluster()  # the shared server's 100 connections are others' to use
        cleanup.callback(cluster.__exit__)
        cluster.start()
        rabbit.create_vhost(vhost)
        cleanup.callback(rabbit.delete_vhost, vhost)
        database_url = cluster.create_database("chuangwei_rankings")
        dsn = database_url.replace("postgresql+psycopg2://", "postgresql://")
        ports = {svc: support.free_port() for svc in ("inspection", "scoring", "tasks")}
        config = support.base_config(support.with_vhost(support.DEFAULT_AMQP_URI, vhost), database_url, node=CITY, GC_FREEZE_AT_START=True,
                                     WEB_ADDRESSES={s: f"127.0.0.1:{p}" for s, p in ports.items()},
                                     TASKS_SWEEP_INTERVAL=0, SCORING_POLICY="street",
                                     DB_POOL_SIZE=2, DB_MAX_OVERFLOW=1)  # infra/nameko.yaml's defaults
        with support.running_services(config, ScoringService):
            pass  # its migrations create scoring's tables and the policy is stored: seed into them
        began = time.perf_counter()
        seeded, expected = in_child(seed_and_check, dsn, database_url, codes, names, month)
        seconds = time.perf_counter() - began
        seeding = ", ".join(f"{table} {rows:,}" for table, rows in seeded.items()) + f" (in {seconds:.0f} s)"
        print(f"a year seeded in {seconds:.0f} s; the scorer's rank_group moves no one in it", flush=True)
        if args.explain:
            explain_reads(dsn, periods)

        processes = {name: cleanup.enter_context(serving(config, name, args.gaps if name == "scoring" else None))
                     for name in SERVICES}
        token = support.token(ttl=24 * 3600)  # the default one expires after ten minutes
        scoring_url, inspection_url = (f"http://127.0.0.1:{ports[s]}" for s in ("scoring", "inspection"))
        answer = support.ApiClient(scoring_url, token=token).get(
            "/rankings", params={"period": month, "tier": "community"}).json()
        if answer["peers"] != len(codes) or {f["subject_id"]: f["rank"] for f in answer["ranking"]} != expected:
            raise SystemExit(f"GET /rankings {month}: {answer['peers']} peers, not the {len(codes)} seeded ranks")
        print(f"GET /rankings {month}: the {len(codes)} communities ranked as seeded", flush=True)

        runs = [("idle", measure_elsewhere(scoring_url=scoring_url, token=token, periods=periods,
                                           clients=args.clients, seconds=args.seconds))]
        if not args.skip_load:
            inspection, subjects = support.ApiClient(inspection_url, token=token), []
            for code in codes[:LOAD_SUBJECTS]:  # under the names scoring already knows them by
                response = inspection.post("/subjects", {"subject_type": CHILD, "node": code, "name": names[code]})
                assert response.status_code == 201, response.text
                subjects.append(response.json()["subject_id"])
            runs.append(("under load", measure_elsewhere(
                scoring_url=scoring_url, token=token, periods=periods, clients=args.clients, seconds=args.seconds,
                inspection_url=inspection_url, subjects=subjects, submitters=args.submitters, rate=args.rate)))
            scored = support.scalar(database_url, "SELECT count(*) FROM scoring_inputs "
                                                  f"WHERE inspected_at >= '{LIVE_AT.isoformat()}'")
        rss = {name: rss_mib(proc.pid) for name, proc in processes.items()}
        figures = support.ApiClient(scoring_url).get("/metrics").text

    print(f"\nGET /rankings?tier=community&period=… with {len(codes):,} communities and a year of weekly "
          f"inspections, {args.clients} clients asking in turn for {args.seconds:.0f} s\n")
    print("| period | stack | requests | p50 | p95 | p99 | max (ms) | response | target p99 ≤ 50 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, run in runs:
        for period in periods:
            ms = [v * 1000 for v in run["latencies"][period]]
            p99 = percentile(ms, 0.99)
            print(f"| {period} | {label} | {len(ms)} | {percentile(ms, 0.5):,.0f} | {percentile(ms, 0.95):,.0f} | "
                  f"{p99:,.0f} | {max(ms, default=float('nan')):,.0f} | "
                  f"{run['bytes'].get(period, 0) / 1024:,.0f} KiB | "
                  + ("met" if p99 <= TARGET_MS else f"short by {p99 - TARGET_MS:,.0f} ms") + " |")
    for label, run in runs:
        if run["errors"]:
            print(f"{label}: {run['errors']} reads failed or timed out")
    print()
    if not args.skip_load:
        load = runs[1][1]
        done, elapsed = load["submitted"], load["elapsed"]
        print(f"load: {len(done)} live inspections posted by {args.submitters} clients in {elapsed:.0f} s, "
              f"{'at most ' + format(args.rate, 'g') + '/s' if args.rate else 'as fast as they went'} "
              f"({len(done) / elapsed:.1f}/s, p50 / p99 {percentile(done, 0.5) * 1000:,.0f} / "
              f"{percentile(done, 0.99) * 1000:,.0f} ms, {load['refused']} refused); scored meanwhile {scored} "
              f"({scored / elapsed:.1f}/s; scoring commits batches of up to 100)")
    print(f"rows seeded: {seeding}")
    served = {(m.group(1), m.group(2)): float(m.group(3)) for m in re.finditer(
        r'chuangwei_ranking_(figures|answers)_total\{source="(\w+)"\} ([0-9.e+]+)', figures)}
    print(f"answers: {served.get(('answers', 'cache'), 0):,.0f} given again (the group's rows unchanged), "
          f"{served.get(('answers', 'built'), 0):,.0f} assembled, of figures {served.get(('figures', 'cache'), 0):,.0f} "
          f"from scoring's cache and {served.get(('figures', 'database'), 0):,.0f} read and serialised for them")
    print("RSS after the runs, each service in a process of its own: "
          + ", ".join(f"{name} {mib:.0f} MiB" for name, mib in rss.items()))
    if args.gaps and Path(args.gaps).exists():
        stalls = json.loads(Path(args.gaps).read_text())
        print(f"\nscoring's green threads waited for a turn (over {stalls['turns']:,} turns, idle and loaded): "
              + ", ".join(f"{n} over {ms} ms" for ms, n in stalls["over_ms"].items())
              + f"; longest {stalls['longest_ms']} ms; computing meanwhile:")
        for stack, n in stalls["where"]:
            print(f"  {n:4d}  {stack}")


if __name__ == "__main__":
    main()
