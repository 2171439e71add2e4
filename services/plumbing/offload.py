"""Costly parsing in a worker process, bounded in time and memory (issue 27).

A service's HTTP requests and consumers share one thread (eventlet): decoding a photo or
parsing a spreadsheet is C code that never yields, so one upload used to hold every other
request of the process for seconds (`/health/live` too). `run(fn, *args)` runs `fn` in a
separate worker process instead and waits for its answer *greenly* (the pipe is waited on
through eventlet's hub when `select` is monkey-patched, else with `select`), so the rest of
the process keeps running meanwhile.

- Workers are started lazily (a fresh `python` running `serve()`, not a fork of an eventlet
  process), reused, and at most `OFFLOAD_WORKERS` of them run at once (default 2, the
  machines are small); a call that finds them all busy waits at most `wait` seconds, then
  raises `Busy` (→ 503 with Retry-After).
- A call that takes longer than `timeout` seconds raises `TooSlow` (→ 422 naming the field):
  its worker is killed and a new one is started for the next call.
- Each worker's address space is limited (RLIMIT_AS, `OFFLOAD_MEMORY_MB`, default 1024):
  a job that tries to use more fails in the worker (MemoryError → `TooLarge`), not in the
  service; a worker left with more than `OFFLOAD_RECYCLE_MB` (default 256) resident after a
  job is replaced, so a big spreadsheet's memory does not stay taken.
- `fn` must be a module-level function; its arguments, result and the exceptions it raises
  travel pickled (the domain errors of `services.contracts.errors` do).
No nameko import: use cases may call it.
"""
from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time

DEFAULT_WORKERS = int(os.environ.get("OFFLOAD_WORKERS", "2"))
DEFAULT_MEMORY_MB = int(os.environ.get("OFFLOAD_MEMORY_MB", "1024"))
# A worker whose resident memory grew past this after a job is replaced rather than kept
# (a large decode's pages are not handed back to the machine otherwise).
RECYCLE_MB = int(os.environ.get("OFFLOAD_RECYCLE_MB", "256"))
_HEADER = struct.Struct("!Q")


class OffloadError(Exception):
    pass


class Busy(OffloadError):
    """Every worker stayed busy for as long as the caller would wait."""


class TooSlow(OffloadError):
    """The job ran past its time limit; its worker was killed."""


class TooLarge(OffloadError):
    """The job needed more memory than a worker may have."""


class WorkerFailed(OffloadError):
    """The worker died without answering."""


def _green() -> bool:
    if "eventlet" not in sys.modules:
        return False
    from eventlet import patcher
    return patcher.is_monkey_patched("select")


def _wait(fd: int, *, read: bool, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TooSlow("deadline passed")
    if _green():
        from eventlet.hubs import trampoline
        from eventlet.timeout import Timeout
        try:
            trampoline(fd, read=read, write=not read, timeout=remaining, timeout_exc=TooSlow)
        except Timeout:  # pragma: no cover - timeout_exc makes it TooSlow
            raise TooSlow("deadline passed") from None
        return
    ready = select.select([fd] if read else [], [] if read else [fd], [], remaining)
    if not any(ready):
        raise TooSlow("deadline passed")


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    # Waited for first, with the deadline: under monkey patching os.read/os.write wait greenly
    # themselves, but for ever.
    view = memoryview(data)
    while view:
        _wait(fd, read=False, deadline=deadline)
        try:
            written = os.write(fd, view[:1 << 16])
        except BlockingIOError:
            continue
        view = view[written:]


def _read_exactly(fd: int, count: int, deadline: float) -> bytes:
    chunks, left = [], count
    while left:
        _wait(fd, read=True, deadline=deadline)
        try:
            chunk = os.read(fd, min(left, 1 << 20))
        except BlockingIOError:
            continue
        if not chunk:
            raise WorkerFailed("the worker closed its pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class _Worker:
    def __init__(self, memory_mb: int):
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        env = dict(os.environ, OFFLOAD_MEMORY_MB=str(memory_mb))
        env.setdefault("PYTHONWARNINGS", "ignore")
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from services.plumbing.offload import serve; serve()"],
            stdin=to_child_r, stdout=from_child_w, env=env, close_fds=True)
        os.close(to_child_r)
        os.close(from_child_w)
        os.set_blocking(self.to_child, False)
        os.set_blocking(self.from_child, False)

    def call(self, payload: bytes, deadline: float):
        _write_all(self.to_child, _HEADER.pack(len(payload)) + payload, deadline)
        (length,) = _HEADER.unpack(_read_exactly(self.from_child, _HEADER.size, deadline))
        return pickle.loads(_read_exactly(self.from_child, length, deadline))

    def kill(self) -> None:
        for fd in (self.to_child, self.from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.process.kill()
            self.process.wait(timeout=5)
        except Exception:  # noqa: BLE001 - already gone
            pass


class Pool:
    def __init__(self, workers: int = DEFAULT_WORKERS, memory_mb: int = DEFAULT_MEMORY_MB):
        self.size = workers
        self.memory_mb = memory_mb
        self._idle: list[_Worker] = []
        self._slots = None
        self._lock = None
        self.started = 0  # workers started, for tests and metrics

    def _ensure(self):
        # Created on first use, in the (possibly monkey-patched) world of the caller.
        if self._slots is None:
            self._slots = threading.BoundedSemaphore(self.size)
            self._lock = threading.Lock()

    def run(self, fn, *args, timeout: float = 10.0, wait: float = 5.0):
        self._ensure()
        if not self._slots.acquire(timeout=wait):
            raise Busy(f"all {self.size} workers stayed busy for {wait}s")
        try:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None or worker.process.poll() is not None:
                worker = _Worker(self.memory_mb)
                self.started += 1
            deadline = time.monotonic() + timeout
            payload = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
            try:
                ok, value, retiring = worker.call(payload, deadline)
            except BaseException:
                worker.kill()  # too slow, dead or interrupted: never reused
                raise
            if retiring:  # it grew past RECYCLE_MB: its memory goes back to the machine
                worker.kill()
            else:
                with self._lock:
                    self._idle.append(worker)
        finally:
            self._slots.release()
        if ok:
            return value
        raise value

    def close(self) -> None:
        if self._lock is None:
            return
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


_pool: Pool | None = None


def pool() -> Pool:
    global _pool
    if _pool is None:
        _pool = Pool()
    return _pool


def run(fn, *args, timeout: float = 10.0, wait: float = 5.0):
    """fn(*args) in a worker process; raises what fn raised, or Busy / TooSlow / TooLarge."""
    return pool().run(fn, *args, timeout=timeout, wait=wait)


def _resident_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):  # not Linux: peak instead of current
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve() -> None:  # pragma: no cover - runs in the worker process
    """The worker's loop: read a job from stdin, answer on stdout, until stdin closes."""
    try:
        import resource
        limit = int(os.environ.get("OFFLOAD_MEMORY_MB", DEFAULT_MEMORY_MB)) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    stdin = sys.stdin.buffer
    # The answers own the original stdout; anything the job prints goes to stderr.
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    while True:
        header = stdin.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        (length,) = _HEADER.unpack(header)
        try:
            fn, args = pickle.loads(stdin.read(length))
            answer = (True, fn(*args))
        except MemoryError:
            answer = (False, TooLarge("the job needed more memory than a worker may use"))
        except Exception as exc:  # noqa: BLE001 - sent back to the caller
            answer = (False, exc)
        retiring = _resident_mb() > RECYCLE_MB
        try:
            data = pickle.dumps((*answer, retiring), protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(data)  # an exception that cannot travel is sent as one that can
        except Exception:  # noqa: BLE001
            data = pickle.dumps((False, WorkerFailed(f"{answer[1]!r}"), retiring), protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(_HEADER.pack(len(data)) + data)
        stdout.flush()
