"""pytest-timeout under eventlet: a hung test fails alone, with every waiting greenlet's
stack, and the run goes on (registered by tests/conftest.py; proved by tests/unit/test_timeouts.py)."""
from __future__ import annotations

import os

import eventlet
import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item, settings):
    """pytest-timeout's signal method, made to work under eventlet.

    Monkey-patched, `threading.current_thread()` is not the main thread, so pytest-timeout
    falls back to its thread method, which dumps OS threads (one, here: the green greenlets
    are invisible to it) and ends the whole run with os._exit — one hung test lost every
    later result of a CI run. Here SIGALRM prints every greenlet's stack and throws the
    failure into the test's own greenlet (through the hub when another greenlet has the
    CPU), so only that test fails and the run goes on."""
    if settings.method != "signal":
        return None
    import signal

    import greenlet
    from eventlet import hubs

    test_greenlet = greenlet.getcurrent()
    message = f"Timeout (>{settings.timeout:g}s) from pytest-timeout, as a failure of this test"

    wake_hub = _hub_waker()

    def on_alarm(signum, frame):
        _print_greenlet_stacks(item.config.get_terminal_writer())
        failure = pytest.fail.Exception(message, pytrace=False)
        if greenlet.getcurrent() is test_greenlet:
            raise failure
        hubs.get_hub().schedule_call_global(0, test_greenlet.throw, failure)
        wake_hub()  # the hub's epoll wait resumes after a handler: give it an event to wake for

    def cancel():
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


_WAKER: list = []


def _hub_waker():
    """A function that makes the eventlet hub's wait return: a byte on a pipe a green reader
    waits on (safe from a signal handler: one write)."""
    if not _WAKER:
        from eventlet.hubs import trampoline
        readable, writable = os.pipe()
        os.set_blocking(readable, False)
        os.set_blocking(writable, False)

        raw_os = eventlet.patcher.original("os")  # green os calls would wait in the hub

        def drain():
            while True:
                trampoline(readable, read=True)
                try:
                    raw_os.read(readable, 64)
                except BlockingIOError:
                    pass
        eventlet.spawn(drain)
        _WAKER.append(lambda: raw_os.write(writable, b"!"))
    return _WAKER[0]


def _print_greenlet_stacks(terminal) -> None:
    import gc
    import traceback

    import greenlet
    terminal.sep("+", title="Timeout: the stack of every waiting greenlet")
    for candidate in gc.get_objects():
        if isinstance(candidate, greenlet.greenlet) and candidate.gr_frame is not None:
            terminal.write(f"~~~ {candidate!r}\n" + "".join(traceback.format_stack(candidate.gr_frame)[-12:]))
    terminal.sep("+", title="Timeout")
