"""The test suite's process runner: a timeout kills the whole tree instead of hanging."""

from __future__ import annotations

import sys
import time

import pytest
from helpers import run_process_tree

# A child that starts a grandchild holding the inherited stdout open, prints the grandchild's
# pid, then sleeps: the situation of `sense paraview` (launcher -> Xvfb + ParaView).
TREE = (
    "import subprocess, sys, time\n"
    "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "print(grandchild.pid, flush=True)\n"
    "time.sleep(120)\n"
)


def test_timeout_kills_children_and_grandchildren_and_reports_output():
    start = time.monotonic()
    with pytest.raises(AssertionError, match="ran longer than 2 s") as failure:
        run_process_tree([sys.executable, "-c", TREE], 2)
    assert time.monotonic() - start < 30  # not the 120 s the grandchild would hold the pipe
    grandchild = int(str(failure.value).split("stdout:\n")[1].split()[0])
    deadline = time.monotonic() + 10
    while alive(grandchild):
        assert time.monotonic() < deadline, f"grandchild {grandchild} survived the timeout"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    """Running (a zombie that nobody has reaped yet counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_completed_run_returns_status_and_output():
    done = run_process_tree([sys.executable, "-c", "print('out'); raise SystemExit(3)"], 60)
    assert (done.returncode, done.stdout) == (3, "out\n")
