"""The master's spawn backoff on plain numbers and a fake clock: boot failures, crash
loops after the service has served, fork failures (engine.crashloop)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.crashloop import (
    CRASH_BACKOFF_CAP,
    FATAL_BOOT_FAILURES,
    FORK_BACKOFF_CAP,
    SpawnBackoff,
    backoff_delay,
)


def test_first_start_gives_up_after_five_failed_boots_with_growing_delays() -> None:
    backoff, now = SpawnBackoff(), 100.0
    delays = []
    for _ in range(FATAL_BOOT_FAILURES - 1):
        verdict = backoff.boot_failed(now)
        assert not verdict.fatal
        delays.append(round(backoff.next_spawn_at - now, 6))
        assert not backoff.can_spawn(now)
        now = backoff.next_spawn_at  # the fake clock moves to the next allowed spawn
        assert backoff.can_spawn(now)
    assert delays == [0.1, 0.2, 0.4, 0.8]
    verdict = backoff.boot_failed(now)
    assert verdict.fatal and "no worker could boot" in verdict.message


def test_after_a_boot_failures_are_never_fatal_and_the_delay_is_capped() -> None:
    backoff, now = SpawnBackoff(), 0.0
    assert backoff.booted() is None
    messages = []
    for _ in range(30):
        verdict = backoff.boot_failed(now)
        assert not verdict.fatal
        messages.append(verdict)
        now = backoff.next_spawn_at
    assert backoff.next_spawn_at - now <= CRASH_BACKOFF_CAP
    # Loud once it is a loop: from the fifth failure in a row, every step says so.
    assert [v.loud for v in messages[:4]] == [False] * 4
    assert all(v.loud and "crash loop" in v.message for v in messages[4:])
    assert "next spawn in 30.00s" in messages[-1].message
    assert backoff.status(now)["boot_failures"] == 30
    assert "crash loop over" in (backoff.booted() or "")
    assert backoff.boot_failures == 0 and backoff.can_spawn(now)


def test_a_boot_resets_the_streak_before_it_becomes_fatal() -> None:
    backoff = SpawnBackoff()
    for _ in range(FATAL_BOOT_FAILURES - 1):
        backoff.boot_failed(0.0)
    backoff.booted()
    verdict = backoff.boot_failed(0.0)
    assert not verdict.fatal and "1 in a row" in verdict.message
    assert backoff.next_spawn_at == pytest.approx(0.1)


def test_fork_failures_back_off_forever_one_message_per_step() -> None:
    backoff, now = SpawnBackoff(), 0.0
    steps = []
    for _ in range(20):
        verdict = backoff.fork_failed(now, "Resource temporarily unavailable")
        assert not verdict.fatal
        steps.append(round(backoff.next_spawn_at - now, 3))
        now = backoff.next_spawn_at
    assert steps[:4] == [0.1, 0.2, 0.4, 0.8]
    assert max(steps) == FORK_BACKOFF_CAP
    assert backoff.boot_failures == 0  # a fork failure is not a failed boot
    assert "fork works again after 20" in (backoff.fork_worked() or "")
    assert backoff.fork_worked() is None and backoff.can_spawn(now)


def test_an_exit_ends_the_fork_wait_but_not_the_streak_nor_a_boot_wait() -> None:
    backoff, now = SpawnBackoff(), 100.0
    for _ in range(8):
        backoff.fork_failed(now, "Resource temporarily unavailable")
    assert backoff.next_spawn_at - now == pytest.approx(12.8)
    backoff.process_exited()  # a slot may be free: try at once
    assert backoff.can_spawn(now)
    backoff.fork_failed(now, "Resource temporarily unavailable")  # still failing
    assert backoff.next_spawn_at - now == pytest.approx(25.6)  # the streak goes on
    backoff = SpawnBackoff()
    backoff.boot_failed(now)
    backoff.process_exited()
    assert not backoff.can_spawn(now)  # a crash loop is not shortened by its own exits


def test_status_reports_the_wait_left() -> None:
    backoff = SpawnBackoff()
    backoff.booted()
    backoff.boot_failed(10.0)
    assert backoff.status(10.05) == {
        "boot_failures": 1, "fork_failures": 0, "next_spawn_in": 0.05,
    }
    assert backoff.status(11.0)["next_spawn_in"] == 0.0


@given(st.integers(min_value=1, max_value=10_000), st.floats(min_value=0.1, max_value=60))
def test_delay_grows_and_never_exceeds_its_cap(failures: int, cap: float) -> None:
    delay = backoff_delay(failures, cap)
    assert 0 < delay <= cap
    assert backoff_delay(failures + 1, cap) >= delay
