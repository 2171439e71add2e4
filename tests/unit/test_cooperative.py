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
