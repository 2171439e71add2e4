"""Long computations that let the rest of their process run.

A service's HTTP requests and its consumers share one thread (eventlet's green threads switch
only when one waits). A scoring batch at city scale computes for seconds between its
statements' waits, in stretches of up to 150 ms, and every `GET /rankings` arriving meanwhile
waited that long (issue 11). `breathe()`, called in such loops, gives the others a turn once
`every` seconds of computing have passed: under nameko's monkey patching `time.sleep(0)` is a
green yield; unpatched it only releases the GIL. No nameko import: use cases may call it.
"""
from __future__ import annotations

import time

from services.plumbing import embedded

EVERY = 0.01
WRITING_EVERY = 0.1
_last = time.perf_counter()


def breathe(every: float = EVERY) -> None:
    global _last
    if embedded.writing():
        # Inside a write transaction on the embedded database every other writer of the
        # process waits for it: turns given away lengthen it (and their wait), so they come
        # less often — readers still get one every WRITING_EVERY seconds.
        every = max(every, WRITING_EVERY)
    now = time.perf_counter()
    if now - _last >= every:
        time.sleep(0)
        _last = time.perf_counter()


def off_hub(function, *args, **kwargs):
    """Run a CPU-heavy call that releases the GIL (argon2's hashing, a C library's work) in
    eventlet's thread pool, so the process's other green threads go on meanwhile; a plain call
    where eventlet has not patched the process (tools, unit tests)."""
    try:
        import eventlet.patcher
        if eventlet.patcher.is_monkey_patched("thread"):
            from eventlet import tpool
            return tpool.execute(function, *args, **kwargs)
    except ImportError:  # pragma: no cover - eventlet always present with nameko
        pass
    return function(*args, **kwargs)
