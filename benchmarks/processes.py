"""Services of a benchmark's stack each in a process of its own, as docker-compose runs them
(`nameko run`, one service per container): a service's answers then do not wait for another
service's work in the same thread, and each one's RSS is its own.

    python benchmarks/processes.py SERVICE CONFIG_JSON [--gaps FILE]   (what `serving` starts)
"""
from __future__ import annotations

import eventlet

eventlet.monkey_patch()  # noqa: E402

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.inspection.service import InspectionService  # noqa: E402
from services.scoring.service import ScoringService  # noqa: E402
from services.tasks.service import TasksService  # noqa: E402
from tests import support  # noqa: E402

SERVICES = {"inspection": InspectionService, "scoring": ScoringService, "tasks": TasksService}


@contextlib.contextmanager
def serving(config: dict, name: str, gaps_file: str | None = None):
    """One service in a process of its own, as docker-compose runs each (`nameko run`): the
    scoring service's answers do not wait for the inspection service's work in the same thread."""
    command = [sys.executable, __file__, name, json.dumps(config)]
    if gaps_file:
        command += ["--gaps", gaps_file]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        health = support.ApiClient(f"http://{config['WEB_ADDRESSES'][name]}")

        def up() -> bool:
            try:
                return proc.poll() is not None or health.get("/health/live").status_code == 200
            except OSError:  # requests' ConnectionError: not listening yet
                return False
        support.wait_until(up, timeout=120, message=f"{name} started")
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode} while starting")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve(name: str, config: dict, gaps_file: str | None = None) -> None:
    """The --serve process: run one service until SIGTERM (with --gaps, watching its stalls)."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    with support.running_services(config, SERVICES[name]):
        stalls = watch_stalls() if gaps_file else None
        while not stopping:
            eventlet.sleep(0.2)
    if stalls is not None:
        Path(gaps_file).write_text(json.dumps(stalls()))


def watch_stalls(threshold: float = 0.03, tick: float = 0.005):
    """Diagnostics (--gaps): how long this process's green threads waited for a turn, and
    where the code was whenever a wait passed `threshold` (a SIGALRM armed before each turn
    samples the stack then). Returns a function giving the summary."""
    import collections
    import traceback
    where, waits = collections.Counter(), []

    def on_alarm(_sig, frame):
        where[" <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                          for f in reversed(traceback.extract_stack(frame)[-6:]))] += 1
    signal.signal(signal.SIGALRM, on_alarm)

    def ticker():
        last = time.perf_counter()
        while True:
            signal.setitimer(signal.ITIMER_REAL, threshold)
            eventlet.sleep(tick)
            now = time.perf_counter()
            waits.append(now - last - tick)
            last = now
    eventlet.spawn(ticker)

    def summary() -> dict:
        signal.setitimer(signal.ITIMER_REAL, 0)
        return {"turns": len(waits), "over_ms": {ms: sum(1 for w in waits if w * 1000 > ms) for ms in (30, 50, 100, 200)},
                "longest_ms": sorted(round(w * 1000) for w in waits)[-10:], "where": where.most_common(15)}
    return summary


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a process (this one by default), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=sorted(SERVICES))
    parser.add_argument("config_json")
    parser.add_argument("--gaps", metavar="FILE", help="write how long its green threads waited for a turn")
    args = parser.parse_args()
    serve(args.service, json.loads(args.config_json), args.gaps)


if __name__ == "__main__":
    main()
