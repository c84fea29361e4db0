"""The dynamic pool's CPU-bound growth gate (engine.growth), with plain data: fake
schedstat readings, a fixed idle share and numbers for the clock."""

from __future__ import annotations

import pytest

from engine.growth import GATE_SPAN, GrowthGate, runnable_cpus
from engine.health import HealthSampler, IdleMeter

MS = 1_000_000  # nanoseconds


class FixedIdle(IdleMeter):
    def __init__(self, share: float) -> None:
        super().__init__()
        self.share = share

    def idle_share(self, now: float) -> float | None:
        return self.share


def gate(idle: float, runnable_share: float, cpus: int = 2) -> tuple[GrowthGate, list[float]]:
    """A gate whose busy workers are runnable *runnable_share* of the time, on a
    machine *idle* of the time; returns it and its clock (a one-item list)."""
    clock = [0.0]

    def schedstat(pid: int) -> tuple[int, int]:
        # Runnable all the while: 2/3 on a CPU, 1/3 waiting for one.
        ns = int(clock[0] * 1e9 * runnable_share)
        return ns * 2 // 3, ns - ns * 2 // 3

    return GrowthGate(HealthSampler(60.0, 0), cpus=cpus, idle_meter=FixedIdle(idle),
                      schedstat=schedstat), clock


def verdicts(g: GrowthGate, clock: list[float], busy: list[int], per_look: int) -> list[bool]:
    """Four looks one span apart; every busy worker finishes *per_look* connections."""
    seen = []
    for look in range(1, 5):
        clock[0] = look * GATE_SPAN
        requests = {pid: look * per_look for pid in busy}
        seen.append(g.saturated(busy, requests, clock[0]))
    return seen


def test_runnable_cpus_is_the_busy_workers_runnable_time_per_second() -> None:
    before = {1: (0, 0), 2: (0, 0)}
    after = {1: (150 * MS, 30 * MS), 2: (120 * MS, 60 * MS)}  # 180 ms each in 200 ms
    assert runnable_cpus(before, after, busy=2, elapsed=0.2) == pytest.approx(1.8)
    # Worker 3 was not read at the start: the others' average stands for it.
    with_a_new_one = {**after, 3: (5 * MS, 0)}
    assert runnable_cpus(before, with_a_new_one, busy=3, elapsed=0.2) == pytest.approx(2.7)
    assert runnable_cpus({}, after, busy=2, elapsed=0.2) is None


def test_short_cpu_bound_connections_pause_growth_even_with_some_idle_cpu() -> None:
    # A load generator on the same machine leaves 10% idle between connections, but
    # the busy workers are runnable 90% of the time: another process would queue.
    g, clock = gate(idle=0.10, runnable_share=0.9)
    assert verdicts(g, clock, busy=[11, 12], per_look=50)[1:] == [True, True, True]


def test_an_io_bound_load_still_grows() -> None:
    # Workers asleep in their handlers most of the time: more processes serve more.
    g, clock = gate(idle=0.10, runnable_share=0.3)
    assert verdicts(g, clock, busy=[11, 12], per_look=50) == [False] * 4


def test_one_cpu_bound_worker_on_two_cpus_still_grows() -> None:
    # One CPU's worth of demand on two CPUs: a second process would run at once.
    g, clock = gate(idle=0.10, runnable_share=1.0)
    assert verdicts(g, clock, busy=[11], per_look=50) == [False] * 4


def test_keep_alive_clients_still_grow_the_pool() -> None:
    # Busy workers that finish no connection hold keep-alive clients: the others need
    # workers of their own, CPU or not.
    g, clock = gate(idle=0.0, runnable_share=1.0)
    assert verdicts(g, clock, busy=[11, 12], per_look=0) == [False] * 4


def test_a_saturated_machine_still_pauses_growth_without_schedstat() -> None:
    # No /proc/PID/schedstat (a kernel without it): the idle share decides, as before,
    # with busy workers seen running.
    class Running(HealthSampler):
        def count_running(self, pids: object, enough: int) -> int:
            return enough

    clock = [0.0]
    g = GrowthGate(Running(60.0, 0), cpus=2, idle_meter=FixedIdle(0.0),
                   schedstat=lambda pid: None)
    assert verdicts(g, clock, busy=[11, 12], per_look=50)[1:] == [True, True, True]


def test_a_worker_idle_at_the_instant_of_the_look_still_counts_its_demand() -> None:
    # Short connections: at each look one of the two workers is between connections
    # (idle on the scoreboard) though both are runnable nearly all the time.
    g, clock = gate(idle=0.03, runnable_share=0.97)
    seen = []
    for look in range(1, 5):
        clock[0] = look * GATE_SPAN
        requests = {11: look * 50, 12: look * 50}
        seen.append(g.saturated([11], requests, clock[0], serving=[11, 12]))
    assert seen[1:] == [True, True, True]


def test_one_look_below_the_threshold_does_not_release_a_cpu_bound_load() -> None:
    """A CPU-bound load near the threshold dips below it for a span now and then; the
    workers forked in that span would stay for the whole load (only idle ones retire).
    Two clear looks in a row release it; a first look never counts as measured."""
    clock, shares = [0.0], [0.9, 0.9, 0.5, 0.9, 0.5, 0.5, 0.5]  # runnable share per span
    used = [0]  # runnable nanoseconds so far, per worker

    def schedstat(pid: int) -> tuple[int, int]:
        return used[0], 0

    g = GrowthGate(HealthSampler(60.0, 0), cpus=2, idle_meter=FixedIdle(0.10),
                   schedstat=schedstat)
    seen = []
    for look, share in enumerate(shares, start=1):
        used[0] += int(GATE_SPAN * 1e9 * share)
        clock[0] = look * (GATE_SPAN + 0.01)  # a little over a span: each look measures
        seen.append(g.saturated([11, 12], {11: look * 50, 12: look * 50}, clock[0]))
    # The first look has no baseline; then 0.9 is 1.7 CPUs of 2 (saturated), 0.5 is 0.95.
    assert seen == [False, True, True, True, True, False, False]


def test_an_io_bound_burst_after_a_quiet_spell_grows_at_the_first_measurement() -> None:
    g, clock = gate(idle=0.10, runnable_share=0.3)
    clock[0] = 100.0  # long after any earlier look: this one only takes the baseline
    assert g.saturated([11, 12], {11: 0, 12: 0}, clock[0])
    clock[0] += GATE_SPAN
    assert not g.saturated([11, 12], {11: 50, 12: 50}, clock[0])
