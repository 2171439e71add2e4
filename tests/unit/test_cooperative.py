"""breathe(): a long computation gives the other green threads of its process a turn."""
import time

import eventlet

from services.plumbing import cooperative


def test_a_loop_that_breathes_lets_another_green_thread_run_and_one_that_does_not_starves_it():
    def ticks_during(work) -> int:
        ticks = []
        ticker = eventlet.spawn(lambda: [ticks.append(1) or eventlet.sleep(0) for _ in iter(int, 1)])
        eventlet.sleep(0)  # started
        ticks.clear()
        work()
        seen = len(ticks)
        ticker.kill()
        return seen

    def busy(breathing: bool):
        end = time.perf_counter() + 0.1
        while time.perf_counter() < end:
            if breathing:
                cooperative.breathe(every=0.005)

    eventlet.monkey_patch(time=True)  # as nameko runs services: time.sleep(0) is a green yield
    assert ticks_during(lambda: busy(False)) == 0
    assert ticks_during(lambda: busy(True)) >= 5


def test_a_password_check_runs_off_the_hub_so_the_other_green_threads_go_on():
    """argon2 holds the CPU ~0.1 s per sign-in by design; in the hub's thread every service of
    the process stood still meanwhile (issue 25)."""
    from argon2 import PasswordHasher
    eventlet.monkey_patch(thread=True, time=True)
    hasher = PasswordHasher(time_cost=6, memory_cost=65536, parallelism=1)
    stored = hasher.hash("金牛山街道2026创卫")
    ticks = []
    ticker = eventlet.spawn(lambda: [ticks.append(1) or eventlet.sleep(0.001) for _ in iter(int, 1)])
    eventlet.sleep(0)
    ticks.clear()
    assert cooperative.off_hub(hasher.verify, stored, "金牛山街道2026创卫")
    off = len(ticks)
    ticks.clear()
    hasher.verify(stored, "金牛山街道2026创卫")
    on = len(ticks)
    ticker.kill()
    assert on == 0 and off >= 10
