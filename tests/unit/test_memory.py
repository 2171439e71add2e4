"""Freezing start-up objects out of the collector's full passes (services/plumbing/memory.py)."""
import gc
import weakref

import pytest

from services.plumbing import memory


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()  # this test process starts many stacks: keep nothing of theirs for ever


def test_what_is_alive_after_start_up_is_frozen_and_garbage_is_not(unfrozen):
    class Cycle:
        pass
    garbage = Cycle()
    garbage.me = garbage  # a cycle only a collection frees
    alive, gone = [Cycle() for _ in range(100)], weakref.ref(garbage)
    del garbage
    frozen = memory.freeze_startup_objects()
    assert frozen == gc.get_freeze_count() >= len(alive)
    assert gone() is None  # collected first, not frozen alive


@pytest.mark.parametrize("value,expected", [
    (None, False), ("", False), ("false", False), ("0", False), (True, True), ("true", True), ("on", True), ("1", True),
])
def test_only_an_explicit_yes_turns_it_on(value, expected):
    assert memory.enabled({} if value is None else {"GC_FREEZE_AT_START": value}) is expected


def test_every_service_freezes_its_start_up_objects_when_configured(unfrozen):
    from types import SimpleNamespace

    from services.plumbing.operator_endpoints import OperatorEndpoints
    from services.scoring.service import ScoringService
    assert isinstance(ScoringService.frozen_startup, memory.FrozenStartup)  # inherited by every service
    assert isinstance(OperatorEndpoints.frozen_startup, memory.FrozenStartup)
    provider = memory.FrozenStartup()
    provider.container = SimpleNamespace(config={})
    provider.start()
    assert gc.get_freeze_count() == 0
    provider.container = SimpleNamespace(config={"GC_FREEZE_AT_START": "true"})
    provider.start()
    assert gc.get_freeze_count() > 0
