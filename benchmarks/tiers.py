"""Benchmark: how long an inspection at a community's stack takes to reach the city's figure.

    python benchmarks/tiers.py [--trickle 30] [--burst-seconds 20] [--burst-rate 100] [--skip-burst]

Issue 11's tier target: four hops over federation, p99 ≤ 1 s at a trickle and ≤ 5 s while a
street takes a burst of 100 inspections/s. Four stacks run in this process (inspection,
scoring and tasks each), one per tier of the system tests' chain 信阳市 → 浉河区 → 金牛山街道 →
周家山社区: each on fresh vhosts of the machine's RabbitMQ wired by services.tools.federation,
each with its own database in a PostgreSQL cluster this script starts (initdb on a free port),
so the shared server's 100 connections are left alone.

Every measured inspection is a self-check (自查) of 周家山社区 posted at the community's stack.
From its 201 the script polls four figures for the month: the community's own, the street's
for 周家山, the district's for 金牛山 and the city's for 浉河 (the city inspects nothing there,
so its figure is the district's report), until each equals the value the inspection makes it.
Values are computed rather than "differs from before": no figure passes through them, and a
late figure of an earlier inspection is never taken for this one's. A hop's time is the
difference between the first reads showing the value at either end: reads every --poll s,
each taking its own time, so a short hop can show as about 0 s after a slow read below it.

1. trickle: --trickle inspections, each posted once the previous one has reached the city;
2. burst: the same while the street's stack takes street inspections of its seven other
   communities at --burst-rate/s (POST /inspection-batches) for --burst-seconds; then the rate
   achieved, the street's backlog as the burst ends (unsent outbox rows, inspections not yet
   scored, queued messages), and how long the chain then took to catch up.

Figures, not pass/fail: compare runs on the same machine.
"""
from __future__ import annotations

import eventlet

eventlet.monkey_patch()  # noqa: E402

import argparse
import math
import signal
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from eventlet.queue import LightQueue  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from benchmarks.pipeline import percentile  # noqa: E402
from services.inspection.service import InspectionService  # noqa: E402
from services.scoring.service import ScoringService  # noqa: E402
from services.tasks.service import TasksService  # noqa: E402
from services.tools import federation  # noqa: E402
from tests import support  # noqa: E402
from tests.nodes import PostgresCluster  # noqa: E402
from tests.tiers import CITY, JINNIUSHAN, MONTH, SHIHE, TIERS, ZHOUJIASHAN, deductions, subject  # noqa: E402

OTHERS = [f"41150200800{i}" for i in range(2, 9)]  # 金牛山街道's other communities in infra/divisions
# The burst's inspections all score what each other community's seed did, so they move no
# figure (only counts, which still sends the street's report up): the watched values move
# with the community's self-checks alone. 70 and 100 in turn after a seed of 90 keep the
# month's mean moving at every tier, never back to an earlier value.
SEED_SELF, SELF_SCORES, BURST_SCORE = 90, (70, 100), 96
TOLERANCE = 0.006  # every tier rounds to two decimals
# (hop, the stack whose scoring answers, tier, node): the community's own figure, then each tier's.
WATCHED = [("community", ZHOUJIASHAN, "community", ZHOUJIASHAN), ("street", JINNIUSHAN, "community", ZHOUJIASHAN),
           ("district", SHIHE, "street", JINNIUSHAN), ("city", CITY, "district", SHIHE)]


def expected(self_scores: list[int]) -> dict[str, float]:
    # The street scores 周家山 by its report alone (no inspections of its own there); the street's
    # figure is the mean of its eight communities, and the district and the city pass it on.
    community = round(sum(self_scores) / len(self_scores), 2)
    street = round((community + BURST_SCORE * len(OTHERS)) / (1 + len(OTHERS)), 2)
    return {"community": community, "street": community, "district": street, "city": street}


def body(subject_id: str, score: int, kind: str, i: int) -> dict:
    # Spread over November's days and hours: one month at every tier, never ahead of now.
    when = f"{MONTH}-{1 + i % 28:02d}T{8 + (i // 28) % 10:02d}:{(i // 280) % 60:02d}:00+08:00"
    return {"kind": kind, "subject_id": subject_id, "checklist": {"version": "2010.1", "code": "national-ten-areas"},
            "inspectors": ["基准"], "inspected_at": when, "results": deductions(100 - score)}


def count(engine, sql: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar_one()


def unsent(engine) -> dict[str, int]:
    return {svc: count(engine, f"select count(*) from {svc}_outbox where published_at is null")
            for svc in ("inspection", "scoring", "tasks")}


def street_backlog(chain: dict) -> str:
    """The street's unsent outbox rows, and what waits before them: inspections not yet
    scored, messages in its vhost's queues (the management API's figure, a few seconds old)."""
    street = chain[JINNIUSHAN]
    rabbit = support.RabbitAdmin()
    queues = requests.get(f"{rabbit.base}/queues/{quote(street['vhost'], safe='')}", auth=rabbit.auth,
                          timeout=10).json()
    unscored = (count(street["db"], "select count(*) from inspection_inspections where status = 'submitted'")
                - count(street["db"], "select count(*) from scoring_inputs"))
    return (", ".join(f"{svc}_outbox {n}" for svc, n in unsent(street["db"]).items())
            + f"; inspections not yet scored {unscored}; messages queued {sum(q.get('messages', 0) for q in queues)}")


# --- the chain --------------------------------------------------------------------------------


def start_chain(stack: ExitStack, token: str) -> dict:
    """Cluster, federation and four stacks; everything undone by `stack` (also half-done)."""
    cluster = PostgresCluster()
    stack.callback(cluster.__exit__, None, None, None)  # stop and remove even if start fails
    with open(cluster.data / "postgresql.conf", "a") as conf:
        conf.write("max_connections = 100\n")  # 4 stacks × 3 services × 5 pooled, plus ours
    cluster.start()
    run = uuid.uuid4().hex[:6]
    config = federation.TierConfig(
        management_api=support.DEFAULT_RABBIT_API, amqp_host="127.0.0.1:5672",
        tiers=[{"node": node, "name": name, "vhost": f"bench{run}-{node}", "parent": parent}
               for node, name, parent, _ in TIERS])
    stack.callback(federation.unwire, config)  # before wiring: a half-wired run is removed too
    federation.wire(config)
    links = sum(2 for t in config.tiers if t.parent)
    support.wait_until(lambda: sum(1 for l in federation.link_status(config) if l["status"] == "running") == links,
                       timeout=60, message=f"{links} running federation links")
    chain = {}
    for node, name, parent, children in TIERS:
        url = cluster.create_database(f"chuangwei_{node}")
        ports = {svc: support.free_port() for svc in ("inspection", "scoring", "tasks")}
        config_ = support.base_config(
            support.with_vhost(support.DEFAULT_AMQP_URI, f"bench{run}-{node}"), url, node=node,
            WEB_ADDRESSES={svc: f"127.0.0.1:{port}" for svc, port in ports.items()},
            CHILD_STACKS=list(children), PARENT_STACK=parent or "", TASKS_SWEEP_INTERVAL=0, SCORING_POLICY="street",
            GC_FREEZE_AT_START=True,
            # No more workers than pooled connections: on a loaded machine more would queue for one.
            DB_POOL_SIZE=2, DB_MAX_OVERFLOW=3, max_workers=4)
        stack.enter_context(support.running_services(config_, InspectionService, ScoringService, TasksService))
        engine = create_engine(url, pool_size=1, max_overflow=0)
        stack.callback(engine.dispose)
        urls = {svc: f"http://127.0.0.1:{port}" for svc, port in ports.items()}
        chain[node] = {"name": name, "db": engine, "vhost": f"bench{run}-{node}", "inspection_url": urls["inspection"],
                       "inspection": support.ApiClient(urls["inspection"], token=token),
                       "scoring": support.ApiClient(urls["scoring"], token=token)}
        print(f"  {name} ({node}) started", flush=True)
    return chain


def figure(chain: dict, node: str, tier: str, of: str) -> tuple[float | None, float]:
    """The month's figure of `of` at `node`'s stack, and when the answer came."""
    try:
        response = chain[node]["scoring"].get("/rankings", params={"period": MONTH, "tier": tier})
        rows = response.json()["ranking"] + response.json()["below_minimum_sample"] if response.ok else []
    except (requests.RequestException, ValueError):
        rows = []
    return next((r["score"] for r in rows if r["node"] == of), None), time.monotonic()


def watch(chain: dict, want: dict, began: float, timeout: float, poll: float) -> dict[str, float]:
    """Seconds from `began` until each watched figure equals `want` (inf: not within `timeout`)."""
    seen: dict[str, float] = {}
    while len(seen) < len(WATCHED) and time.monotonic() - began < timeout:
        pending = [w for w in WATCHED if w[0] not in seen]
        pile = eventlet.GreenPile(len(pending))
        for _, node, tier, of in pending:
            pile.spawn(figure, chain, node, tier, of)
        for (hop, *_), (value, at) in zip(pending, pile):
            if value is not None and abs(value - want[hop]) < TOLERANCE:
                seen[hop] = at - began
        eventlet.sleep(poll)
    return {hop: seen.get(hop, math.inf) for hop, *_ in WATCHED}


def measure(chain, self_id, scores, count_, timeout, poll, until=lambda: False) -> list[dict]:
    """Self-checks one after another (each once the previous is at the city or timed out)."""
    samples = []
    while (count_ is None or len(samples) < count_) and not until():
        score = SELF_SCORES[len(scores) % 2]
        before, want = expected(scores), expected(scores + [score])
        if any(abs(want[h] - before[h]) < 0.01 for h in want):
            print("  the month's mean no longer moves by a rounded cent: stopping here", flush=True)
            break
        response = chain[ZHOUJIASHAN]["inspection"].post("/inspections",
                                                         body(self_id, score, "self_check", len(scores)))
        began = time.monotonic()
        if response.status_code != 201:
            raise SystemExit(f"self-check refused: {response.status_code} {response.text}")
        scores.append(score)
        samples.append(watch(chain, want, began, timeout, poll))
    return samples


def burst(url, token, subjects, seconds, rate, batch, concurrency, backlog) -> dict:
    """Batches of street inspections on a fixed schedule; when every client is busy the
    schedule slips, and the rate achieved says so."""
    clients = LightQueue()
    for _ in range(concurrency):  # a requests.Session is not for two green threads at once
        clients.put(support.ApiClient(url, token=token))
    stats = {"accepted": 0, "failed": 0, "errors": []}

    def send(n: int) -> None:
        client = clients.get()
        try:
            items = [body(subjects[(n * batch + j) % len(subjects)], BURST_SCORE, "routine", n * batch + j)
                     for j in range(batch)]
            response = client.post("/inspection-batches", {"inspections": items})
            if response.status_code == 201:
                stats["accepted"] += response.json()["created"]
                return
            stats["errors"].append(f"{response.status_code} {response.text[:200]}")
        except requests.RequestException as exc:
            stats["errors"].append(repr(exc)[:200])
        finally:
            clients.put(client)
        stats["failed"] += batch

    pool, interval = eventlet.GreenPool(concurrency), batch / rate
    began, n = time.monotonic(), 0
    while n * interval < seconds:
        eventlet.sleep(max(0.0, began + n * interval - time.monotonic()))
        pool.spawn_n(send, n)  # waits here while every client is busy
        n += 1
    pool.waitall()
    stats.update(seconds=time.monotonic() - began, offered=n * batch, ended=time.monotonic(), backlog=backlog())
    return stats


def caught_up(chain: dict) -> bool:
    """Everything the street took is scored, its reports sent up, and heard at the district and the city."""
    street, district, city = (chain[n]["db"] for n in (JINNIUSHAN, SHIHE, CITY))

    def sent_up(db):
        return count(db, "select count(*) from scoring_outbox where exchange = 'chuangwei.up'")

    def heard(db):
        return count(db, "select count(*) from scoring_processed_events "
                         "where consumer = 'scoring.on_child_score_published'")
    return (count(street, "select count(*) from inspection_inspections where status = 'submitted'")
            == count(street, "select count(*) from scoring_inputs")
            and unsent(street)["inspection"] == 0 and unsent(street)["scoring"] == 0
            and heard(district) == sent_up(street) and unsent(district)["scoring"] == 0
            and heard(city) == sent_up(district))


def caught_up_at(chain: dict, sender, timeout: float) -> float:
    """When the chain had caught up with the burst (inf: not within `timeout` of its end)."""
    sender.wait()
    try:
        return support.wait_until(lambda: caught_up(chain) and time.monotonic(), timeout=timeout, interval=0.5,
                                  message="the chain caught up")
    except AssertionError:
        return math.inf


# --- report -----------------------------------------------------------------------------------


def hops(samples: list[dict]) -> dict[str, list[float]]:
    out = {"community (own figure)": [s["community"] for s in samples]}
    for lower, upper in (("community", "street"), ("street", "district"), ("district", "city")):
        out[f"{lower} → {upper}"] = [math.inf if math.isinf(s[upper]) or math.isinf(s[lower])
                                     else s[upper] - s[lower] for s in samples]
    out["community → city (total)"] = [s["city"] for s in samples]
    return out


def seconds(value: float, timeout: float) -> str:
    if math.isnan(value):
        return "—"
    return f"> {timeout:g} s" if math.isinf(value) else f"{value:.2f} s"


def print_hops(phase: str, samples: list[dict], timeout: float) -> None:
    # One after another, so a slow chain gives few samples: then p95 and p99 are the max.
    print(f"\n{phase}: {len(samples)} inspections; timed out at the city: "
          f"{sum(1 for s in samples if math.isinf(s['city']))}")
    print("| hop | p50 | p95 | p99 | max |\n|---|---|---|---|---|")
    for label, values in hops(samples).items():
        print(f"| {label} | " + " | ".join(seconds(percentile(values, f), timeout) for f in (0.5, 0.95, 0.99))
              + f" | {seconds(max(values) if values else math.nan, timeout)} |")


def verdict(measured: float, target: float, unit: str, higher_is_better: bool = False) -> str:
    if math.isnan(measured):
        return "not measured"
    if math.isinf(measured):
        return "short (timed out)"
    gap = target - measured if higher_is_better else measured - target
    return "met" if gap <= 0 else f"short by {gap:.2f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trickle", type=int, default=30, help="self-checks measured one at a time")
    parser.add_argument("--burst-seconds", type=float, default=20.0)
    parser.add_argument("--burst-rate", type=float, default=100.0, help="target street inspections/s")
    parser.add_argument("--skip-burst", action="store_true")
    parser.add_argument("--batch-size", type=int, default=20, help="inspections per POST /inspection-batches")
    parser.add_argument("--concurrency", type=int, default=4, help="burst clients at once")
    parser.add_argument("--timeout", type=float, default=120.0, help="longest wait for one inspection at the city")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between reads of the figures")
    parser.add_argument("--catch-up-timeout", type=float, default=1800.0)
    args = parser.parse_args()

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)  # clean up on kill too, as on Ctrl-C
    token = support.token(ttl=4 * 3600)  # the default expires after ten minutes
    with ExitStack() as stack:
        print("starting the chain (PostgreSQL cluster, federation, 4 stacks) …", flush=True)
        chain = start_chain(stack, token)
        street, community = chain[JINNIUSHAN]["inspection"], chain[ZHOUJIASHAN]["inspection"]
        self_id = subject(community, ZHOUJIASHAN, "周家山社区")
        others = [subject(street, code, f"社区{code[-3:]}") for code in OTHERS]
        scores = [SEED_SELF]
        for response in (community.post("/inspections", body(self_id, SEED_SELF, "self_check", 0)),
                         street.post("/inspection-batches", {"inspections": [
                             body(s, BURST_SCORE, "routine", i) for i, s in enumerate(others)]})):
            assert response.status_code == 201, response.text
        seeded = watch(chain, expected(scores), time.monotonic(), 300, 0.5)
        if any(math.isinf(t) for t in seeded.values()):
            now = {hop: figure(chain, node, tier, of)[0] for hop, node, tier, of in WATCHED}
            raise SystemExit(f"the seeded figures never matched: expected {expected(scores)}, got {now}")
        print(f"seeded: {expected(scores)} at the city after {seeded['city']:.1f} s", flush=True)

        trickle = measure(chain, self_id, scores, args.trickle, args.timeout, args.poll)
        print_hops("trickle", trickle, args.timeout)

        during, stats, catch_up = [], None, math.nan
        if not args.skip_burst:
            print(f"\nburst: {args.burst_rate:g} inspections/s for {args.burst_seconds:g} s at the street …",
                  flush=True)
            sender = eventlet.spawn(burst, chain[JINNIUSHAN]["inspection_url"], token, others, args.burst_seconds,
                                    args.burst_rate, args.batch_size, args.concurrency,
                                    lambda: street_backlog(chain))
            # Watched from the burst's end, beside the last self-check still on its way up.
            catcher = eventlet.spawn(caught_up_at, chain, sender, args.catch_up_timeout)
            try:
                during = measure(chain, self_id, scores, None, args.timeout, args.poll, until=lambda: sender.dead)
                stats = sender.wait()
                catch_up = catcher.wait() - stats["ended"]
            finally:
                sender.kill()
                catcher.kill()
            print_hops("during the burst", during, args.timeout)
            print(f"\nburst: {stats['accepted']} accepted of {stats['offered']} offered in {stats['seconds']:.1f} s "
                  f"= {stats['accepted'] / stats['seconds']:.1f} inspections/s; failed {stats['failed']}"
                  + (f" (first: {stats['errors'][0]})" if stats["errors"] else ""))
            print(f"the street when the burst's last batch was answered: unsent {stats['backlog']}")
            print(f"the chain caught up (the street scored and sent everything, the district and the city "
                  f"heard it all) {seconds(catch_up, args.catch_up_timeout)} after that")

    city = lambda samples: percentile(hops(samples)["community → city (total)"], 0.99)  # noqa: E731
    rate = stats["accepted"] / stats["seconds"] if stats else math.nan
    print("\n| figure | measured | target | |\n|---|---|---|---|")
    print(f"| trickle: community → city p99 | {seconds(city(trickle), args.timeout)} | ≤ 1 s | "
          f"{verdict(city(trickle), 1.0, ' s')} |")
    print(f"| burst: community → city p99 | {seconds(city(during), args.timeout)} | ≤ 5 s | "
          f"{verdict(city(during), 5.0, ' s')} |")
    print(f"| burst: street inspections/s achieved | {'—' if math.isnan(rate) else f'{rate:.1f}'} | "
          f"{args.burst_rate:g} | "
          f"{verdict(rate, args.burst_rate, '/s', higher_is_better=True)} |")
    print(f"| burst: catch-up after the burst | {seconds(catch_up, args.catch_up_timeout)} | — | |")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # everything was stopped and removed on the way out
        sys.exit("interrupted")
