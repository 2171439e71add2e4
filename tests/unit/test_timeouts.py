"""pytest-timeout under eventlet (tests/timeouts.py): a hung test fails on its own, with the
stacks of the waiting greenlets, and the run goes on. pytest-timeout's own fallback ends the
whole process at the first hang, and a CI run loses every later result."""
from __future__ import annotations

import subprocess
import sys

from tests import support


def test_a_hung_test_fails_alone_and_the_run_goes_on():
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
         "tests/unit/timeout_probe/hangs.py"],
        cwd=support.ROOT, capture_output=True, text=True, timeout=120)
    summary = [line for line in run.stdout.splitlines()
               if line.startswith(("PASSED", "FAILED", "ERROR"))]
    assert sorted(line.split(" - ")[0] for line in summary) == [
        "ERROR tests/unit/timeout_probe/hangs.py::test_waits_for_ever_in_its_teardown",
        "FAILED tests/unit/timeout_probe/hangs.py::test_keeps_the_cpu",
        "FAILED tests/unit/timeout_probe/hangs.py::test_waits_for_ever_on_the_hub",
        "PASSED tests/unit/timeout_probe/hangs.py::test_after_them",
        "PASSED tests/unit/timeout_probe/hangs.py::test_waits_for_ever_in_its_teardown",
    ], run.stdout[-3000:]
    assert "Timeout (>2s) from pytest-timeout, as a failure of this test" in run.stdout
    # The hung greenlet's own frame is named, which the OS-thread dump never showed.
    assert 'hangs.py", line 9, in test_waits_for_ever_on_the_hub' in run.stdout
