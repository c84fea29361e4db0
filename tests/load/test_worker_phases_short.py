"""``loadtests/worker_phases.py`` on a few requests: each server's worker stops at each
of its points in order, its USS is read there, and nothing is left behind.

The figures are the tool's output (docs/benchmarks.md), not asserted here. What is
checked: the points each server has (the engine's ``booted``, no ``N connections``
for a forked child), that private memory only grows from one point to the next (a
point read out of order, or a process other than the stopped worker, would break
that), and that the stopped parent and worker are gone afterwards.
"""

from __future__ import annotations

import psutil
import pytest

from loadtests import worker_phases

pytestmark = pytest.mark.slow

EXPECTED = {
    "engine": ["forked", "booted", "first reply", "1 connection", "N connections"],
    "floor": ["forked", "first reply", "1 connection", "N connections"],
    "floor-engine": ["forked", "first reply", "1 connection", "N connections"],
    "forking": ["forked", "first reply", "1 connection"],
}


@pytest.mark.parametrize("server", sorted(EXPECTED))
def test_each_point_is_read_in_order_and_nothing_is_left(server: str, no_leaks: None) -> None:
    before = {p.pid for p in psutil.process_iter()}
    found = worker_phases.measure_once(server, "http", requests=5)
    assert list(found) == EXPECTED[server]
    values = list(found.values())
    assert values[0] > 0
    assert values == sorted(values)  # USS only grows: each point after the one before
    left = [p for p in psutil.process_iter() if p.pid not in before
            and "loadtests.phase_points" in " ".join(_cmdline(p))]
    assert left == []


def test_the_line_protocol_has_no_first_reply_point(no_leaks: None) -> None:
    found = worker_phases.measure_once("floor", "line", requests=3)
    assert list(found) == ["forked", "1 connection", "N connections"]


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []
