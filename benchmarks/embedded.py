"""Benchmark: the README's default stack on its embedded database serving a small office.

    python benchmarks/embedded.py [--seconds 60] [--rate 6] [--inspectors 4] [--readers 2]

Runs `chuangwei-stack` exactly as the README does (its three processes, or --one-process; the SQLite
file it defaults to — here in a temporary directory — a fresh vhost of the local RabbitMQ,
free ports), makes the office's administrator with the README's `create-admin`, and signs in
as the office's staff would. Then for --seconds:

- --inspectors clients submit inspections with findings (`POST /inspections`, each with a
  photo-less public-toilet checklist and one to three findings) at --rate inspections/s in all;
- --readers clients ask, every half second each, for a subject's month score, the month's
  ranking and every service's `/health`.

It prints p50 / p99 / max latency per kind of request, the number of `database is locked`
lines in the stack's log, and the time from the last submission until every inspection is
scored (rows in scoring_inputs) and every finding has its task. Figures, not pass/fail;
issue 25's targets are printed with a verdict: no request over 1 s, zero lock errors,
everything scored within 30 s of the last submission.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests import support  # noqa: E402

NODE = "411502008000"  # 金牛山街道, the README's office
COMMUNITIES = ["411502008001", "411502008002", "411502008003", "411502008004", "411502008005",
               "411502008006"]
PASSWORD = "金牛山街道2026创卫"
SERVICES = ("inspection", "scoring", "tasks", "notify", "accounts", "indicators", "photos", "intake", "console")


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


@contextlib.contextmanager
def default_stack(workdir: Path, one_process: bool = False):
    """`chuangwei-stack` on a SQLite file in `workdir`, its own vhost and free ports."""
    rabbit = support.RabbitAdmin()
    vhost = support.unique_name("bench-embedded")
    rabbit.create_vhost(vhost)
    ports = {name: support.free_port() for name in SERVICES}
    env = dict(os.environ, AMQP_URI=support.with_vhost(support.DEFAULT_AMQP_URI, vhost),
               DATABASE_URL=f"sqlite:///{workdir / 'chuangwei.db'}", PHOTOS_DIR=str(workdir / "photos"),
               PYTHONPATH=str(ROOT), NODE_CODE=NODE,
               AUTH_JWKS_URL=f"http://127.0.0.1:{ports['accounts']}/.well-known/jwks.json",
               **{f"{name.upper()}_ADDRESS": f"127.0.0.1:{port}" for name, port in ports.items()})
    admin = subprocess.run([sys.executable, "-m", "services.tools.accounts", "create-admin", "--node", NODE,
                            "--username", "admin", "--name", "张伟", "--password-stdin"],
                           input=PASSWORD + "\n", text=True, env=env, cwd=ROOT, capture_output=True)
    if admin.returncode != 0:
        raise SystemExit(f"create-admin failed: {admin.stderr}")
    log_path = workdir / "stack.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.tools.stack",
                                 *(["--one-process"] if one_process else [])], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}

        def up() -> bool:
            if proc.poll() is not None:
                raise SystemExit(f"the stack exited with {proc.returncode}: see {log_path}")
            try:
                return all(requests.get(f"{url}/health", timeout=2).status_code == 200 for url in urls.values())
            except requests.RequestException:
                return False
        support.wait_until(up, timeout=180, interval=0.5, message="the stack healthy")
        yield urls, log_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        rabbit.delete_vhost(vhost)


class Session:
    """A signed-in person: renews its access token before it expires, as the console does."""

    def __init__(self, accounts: str, username: str, password: str):
        self.accounts, self.http = accounts, requests.Session()
        answer = self.http.post(f"{accounts}/auth/login", json={"username": username, "password": password},
                                timeout=30)
        answer.raise_for_status()
        self._take(answer.json())

    def _take(self, body: dict) -> None:
        self.access, self.refresh_token = body["access_token"], body.get("refresh_token", getattr(self, "refresh_token", None))
        self.renew_at = time.monotonic() + body.get("expires_in", 300) * 0.6

    def headers(self) -> dict:
        if time.monotonic() > self.renew_at:
            answer = self.http.post(f"{self.accounts}/auth/refresh", json={"refresh_token": self.refresh_token},
                                    timeout=30)
            answer.raise_for_status()
            self._take(answer.json())
        return {"Authorization": f"Bearer {self.access}"}


def prepare(urls: dict, inspectors: int) -> tuple[list[Session], Session, list[dict]]:
    admin = Session(urls["accounts"], "admin", PASSWORD)
    for i in range(inspectors):
        answer = admin.http.post(f"{urls['accounts']}/users", headers=admin.headers(), timeout=30, json={
            "username": f"inspector{i}", "display_name": f"检查员{i}", "node": NODE, "password": PASSWORD,
            "grants": [{"role": "inspector", "node": NODE}]})
        assert answer.status_code == 201, answer.text
    answer = admin.http.post(f"{urls['accounts']}/users", headers=admin.headers(), timeout=30, json={
        "username": "reader", "display_name": "查看员", "node": NODE, "password": PASSWORD,
        "grants": [{"role": "viewer", "node": NODE}]})
    assert answer.status_code == 201, answer.text
    places = []
    for code in COMMUNITIES:
        subject = admin.http.post(f"{urls['inspection']}/subjects", headers=admin.headers(), timeout=30, json={
            "subject_type": "child_unit", "node": code, "name": f"社区{code[-3:]}"})
        assert subject.status_code == 201, subject.text
        place = admin.http.post(f"{urls['inspection']}/places", headers=admin.headers(), timeout=30, json={
            "place_type": "public_toilet", "name": f"公厕{code[-3:]}", "node": code, "address": "浉河区",
            "responsible_subject_id": subject.json()["subject_id"]})
        assert place.status_code == 201, place.text
        places.append({"subject_id": subject.json()["subject_id"], "place_id": place.json()["place_id"],
                       "node": code})
    people = [Session(urls["accounts"], f"inspector{i}", PASSWORD) for i in range(inspectors)]
    return people, Session(urls["accounts"], "reader", PASSWORD), places


def run(seconds: float, rate: float, inspectors: int, readers: int, keep: str | None = None,
        one_process: bool = False) -> dict:
    with contextlib.ExitStack() as stack:
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            tmp = keep
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="cw-embedded-"))
        urls, log_path = stack.enter_context(default_stack(Path(tmp), one_process))
        people, reader, places = prepare(urls, inspectors)
        latencies: dict[str, list[float]] = {}
        failures: dict[str, list[str]] = {}
        lock = threading.Lock()

        def timed(kind: str, call) -> None:
            started = time.perf_counter()
            try:
                answer = call()
                ok = answer.status_code < 400
                why = f"{answer.status_code} {answer.text[:200]}"
            except requests.RequestException as exc:
                ok, why = False, repr(exc)
            with lock:
                latencies.setdefault(kind, []).append(time.perf_counter() - started)
                if not ok:
                    failures.setdefault(kind, []).append(why)

        now = datetime.now(timezone.utc)
        submitted, findings = [0], [0]
        stop_at = time.monotonic() + seconds

        def inspector(index: int) -> None:
            person, interval = people[index], inspectors / rate
            next_at, n = time.monotonic() + index * interval / inspectors, 0
            while time.monotonic() < stop_at:
                place = places[(index + n * inspectors) % len(places)]
                count = 1 + n % 3
                body = {"idempotency_key": f"bench-{index}-{n}", "kind": "routine",
                        "subject_id": place["subject_id"], "place_id": place["place_id"],
                        "checklist": {"version": "2010.1", "code": "public-toilet"},
                        "inspectors": [f"检查员{index}"],
                        "inspected_at": (now - timedelta(minutes=5 + n % 60)).isoformat(),
                        "results": [{"item_code": "PT-02", "findings": count, "note": "便池有积粪"}]}
                timed("POST /inspections", lambda: person.http.post(
                    f"{urls['inspection']}/inspections", json=body, headers=person.headers(), timeout=120))
                with lock:
                    submitted[0] += 1
                    findings[0] += count
                n += 1
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))

        month = now.astimezone(timezone(timedelta(hours=8))).strftime("%Y-%m")

        rounds = [index for index in range(readers)]

        def read(index: int) -> None:
            while time.monotonic() < stop_at:
                code = COMMUNITIES[index % len(COMMUNITIES)]
                timed("GET score", lambda: reader.http.get(
                    f"{urls['scoring']}/subjects/{code}/scores/{month}", headers=reader.headers(), timeout=120))
                timed("GET /rankings", lambda: reader.http.get(
                    f"{urls['scoring']}/rankings", params={"period": month, "tier": "community"},
                    headers=reader.headers(), timeout=120))
                name = SERVICES[rounds[index] % len(SERVICES)]  # one service's health a round, in turn
                rounds[index] += 1
                timed("GET /health", lambda: reader.http.get(f"{urls[name]}/health", timeout=120))
                time.sleep(0.5)

        with ThreadPoolExecutor(inspectors + readers) as pool:
            futures = [pool.submit(inspector, i) for i in range(inspectors)]
            futures += [pool.submit(read, i) for i in range(readers)]
            for future in futures:
                future.result()
        last_submission = time.perf_counter()
        db = Path(tmp) / "chuangwei.db"

        def count(sql: str) -> int:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
                return conn.execute(sql).fetchone()[0]
        accepted = count("select count(*) from inspection_inspections")
        support.wait_until(lambda: count("select count(*) from scoring_inputs") >= accepted,
                           timeout=600, interval=0.2, message="every inspection scored")
        scored_after = time.perf_counter() - last_submission
        support.wait_until(lambda: count("select count(*) from tasks_tasks") >= findings_of(count),
                           timeout=600, interval=0.2, message="every finding tasked")
        tasked_after = time.perf_counter() - last_submission
        locked = sum(line.count("database is locked") for line in
                     log_path.read_text(encoding="utf-8", errors="replace").splitlines())
        return {"latencies": latencies, "failures": failures, "submitted": submitted[0], "accepted": accepted,
                "scored_after_s": scored_after, "tasked_after_s": tasked_after, "locked": locked}


def findings_of(count) -> int:
    """Tasks expected: one per finding item of every stored inspection (PT-02 once each)."""
    return count("select count(*) from inspection_inspections")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=6, help="inspections per second, all inspectors together")
    parser.add_argument("--inspectors", type=int, default=4)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--keep", metavar="DIR", help="keep the stack's database and log in DIR (a new directory)")
    parser.add_argument("--one-process", action="store_true", help="chuangwei-stack --one-process")
    args = parser.parse_args()
    result = run(args.seconds, args.rate, args.inspectors, args.readers, args.keep, args.one_process)
    print(f"\n{result['submitted']} inspections submitted in {args.seconds:.0f} s by {args.inspectors} inspectors "
          f"({result['accepted']} stored), {args.readers} readers every 0.5 s\n")
    print("| request | count | p50 (ms) | p99 (ms) | max (ms) | failed |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for kind, values in sorted(result["latencies"].items()):
        worst = max(worst, max(values))
        print(f"| {kind} | {len(values)} | {percentile(values, 0.5) * 1000:.0f} | "
              f"{percentile(values, 0.99) * 1000:.0f} | {max(values) * 1000:.0f} | "
              f"{len(result['failures'].get(kind, []))} |")
    print(f"\n`database is locked` in the stack's log: {result['locked']}")
    print(f"every inspection scored {result['scored_after_s']:.1f} s after the last submission; "
          f"every finding tasked after {result['tasked_after_s']:.1f} s")
    for kind, whys in result["failures"].items():
        print(f"failed {kind}: {whys[:3]}")
    print("\nissue 25's targets:")
    print(f"- no request over 1 s: slowest {worst * 1000:.0f} ms, {'met' if worst <= 1 else 'short'}")
    print(f"- zero lock errors: {result['locked']}, {'met' if result['locked'] == 0 else 'short'}")
    print(f"- everything scored within 30 s of the last submission: {result['scored_after_s']:.1f} s, "
          f"{'met' if result['scored_after_s'] <= 30 else 'short'}")


if __name__ == "__main__":
    main()
