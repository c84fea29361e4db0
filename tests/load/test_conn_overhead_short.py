"""``loadtests/conn_overhead.py --instructions``: the engine's per-connection path counted
in user-space instructions (valgrind), against the hand-written floor's.

A count, unlike a time, does not move with the machine's speed, so this is a guard on
the hot path that can hold a tight bound: what a worker does per connection beyond
the floor (scoreboard writes, the classic pipeline's method calls, the half-close).
The figures of a full run are in docs/benchmarks.md.
"""

from __future__ import annotations

import pytest

from loadtests import conn_overhead
from tests.kit.processes import system_command_or_skip

pytestmark = pytest.mark.slow

# The engine's default worker step was 1.07x the floor's (echo) until its connections
# got their own makefile("rb") (workers.connection), 0.84x since; a few thousand more
# instructions per connection on the hot path, or the stdlib's makefile back, fail it.
BOUND = 0.95


def test_the_engine_adds_little_to_the_floors_instructions_per_connection(
    no_leaks: None,
) -> None:
    system_command_or_skip("valgrind")
    counted = conn_overhead.count_instructions(
        30, 1, "line", ["floor", "engine (default)"]
    )
    floor, engine = counted["floor"][0], counted["engine (default)"][0]
    # The plumbing counted the connections themselves: tens of thousands of
    # instructions each (Python's accept, the handler, close), not start-up noise.
    assert 20_000 < floor < 500_000, counted
    assert engine / floor < BOUND, f"engine {engine:,.0f} vs floor {floor:,.0f} per connection"
