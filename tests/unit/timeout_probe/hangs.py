"""Not collected by the suite (no test_ prefix): run by tests/unit/test_timeouts.py in a pytest
of its own, to show that a hung test fails alone and the run goes on."""
import eventlet
import pytest


@pytest.mark.timeout(2)
def test_waits_for_ever_on_the_hub():
    eventlet.event.Event().wait()


@pytest.mark.timeout(2)
def test_keeps_the_cpu():
    while True:
        pass


@pytest.mark.timeout(2)
def test_waits_for_ever_in_its_teardown(request):
    request.addfinalizer(lambda: eventlet.event.Event().wait())


def test_after_them():
    eventlet.sleep(0)
