"""The master's per-tick decisions on a real scoreboard (no process): one read per tick,
how long to sleep, boots and retirements seen, hung workers, reloads and scaling."""

from __future__ import annotations

import socket

import pytest

from engine.children import Child
from engine.config import build
from engine.growth import GrowthGate
from engine.health import HealthSampler
from engine.pool_adapter import BUSY_TICK, GROWTH_TICK, LOAD_TICK, PoolAdapter
from workers.protocol import WorkerState
from workers.scoreboard import Scoreboard, SlotRecord


class CountingScoreboard(Scoreboard):
    """The real shared-memory scoreboard, counting the master's slot reads."""

    reads = 0

    def read(self, slot: int) -> SlotRecord:
        self.reads += 1
        return super().read(slot)

    def state(self, slot: int) -> WorkerState:
        self.reads += 1
        return super().state(slot)

    def is_retiring(self, slot: int) -> bool:
        self.reads += 1
        return super().is_retiring(slot)


class FixedGate(GrowthGate):
    """The CPU-bound growth gate with a verdict given by the test (its measurements
    have their own tests, tests/unit/test_growth_gate.py)."""

    def __init__(self, verdict: bool) -> None:
        super().__init__(HealthSampler(60.0, 0), cpus=1)
        self.verdict = verdict

    def saturated(self, *args: object, **kwargs: object) -> bool:
        return self.verdict


def adapter(
    growth: GrowthGate | None = None, **settings: object
) -> tuple[PoolAdapter, CountingScoreboard]:
    values = {"workers": 2, "max_children": 8, "health_interval": 60.0, **settings}
    parsed = build(values)
    board = CountingScoreboard(parsed.max_children)
    growth = growth or GrowthGate(HealthSampler(parsed.health_interval, 0))
    return PoolAdapter(parsed, board, growth), board


def idle_pool(board: Scoreboard, now: float, count: int = 2) -> list[Child]:
    """*count* booted, idle workers, as the workers themselves would write them."""
    children = []
    for slot in range(count):
        board.worker_started(slot, 1000 + slot, now)
        board.worker_booted(slot)
        board.idle(slot, now, 0)
        children.append(Child(slot, 1000 + slot, 0, now, booted=True))
    return children


@pytest.fixture
def closing() -> list[Scoreboard]:
    boards: list[Scoreboard] = []
    yield boards
    for board in boards:
        board.close()


@pytest.mark.parametrize("mode", ["static", "dynamic", "ondemand"])
def test_one_scoreboard_read_per_worker_per_tick(mode: str, closing) -> None:
    pool, board = adapter(pool_mode=mode, request_timeout=5.0)
    closing.append(board)
    children = idle_pool(board, 10.0, 3)
    board.busy(1, 10.0, 0, 1, ("127.0.0.1", 5000))
    board.reads = 0
    tick = pool.snapshot(children, 11.0)
    pool.observe(tick, children)
    pool.hung(tick, children)
    pool.plan(tick, children, can_spawn=True)
    pool.sleep(tick, children, running=True, ready=True, spawn_at=0.0, signals=True,
               health_due=70.0)
    assert board.reads == len(children)


def test_quiet_pool_sleeps_until_the_next_health_sample(closing) -> None:
    pool, board = adapter(pool_mode="dynamic", worker_timeout=None)
    closing.append(board)
    children = idle_pool(board, 0.0)
    tick = pool.snapshot(children, 5.0)
    pool.observe(tick, children)
    timeout, watch = pool.sleep(tick, children, running=True, ready=True, spawn_at=0.0,
                                signals=True, health_due=65.0)
    assert timeout == pytest.approx(60.0)  # no 1 s tick: nothing is due before
    assert watch  # a quiet dynamic pool wakes on a new connection instead


def test_changing_pool_ticks_fast_and_backoff_and_hang_deadlines_count(closing) -> None:
    pool, board = adapter(pool_mode="static", worker_timeout=30.0)
    closing.append(board)
    children = idle_pool(board, 0.0, 1)  # one worker short of the floor of 2
    tick = pool.snapshot(children, 1.0)
    timeout, watch = pool.sleep(tick, children, running=True, ready=True, spawn_at=0.0,
                                signals=True, health_due=60.0)
    assert timeout == pytest.approx(BUSY_TICK) and not watch  # static: never the listener
    children = idle_pool(board, 0.0, 2)
    tick = pool.snapshot(children, 1.0)
    timeout, _ = pool.sleep(tick, children, running=True, ready=True, spawn_at=0.0,
                            signals=True, health_due=60.0)
    assert timeout == pytest.approx(29.0, abs=0.01)  # the idle worker's heartbeat + 30 s


def test_a_booting_worker_keeps_the_ticks_short_until_it_is_seen_booted(closing) -> None:
    """Its boot ends a crash loop's streak ("crash loop over", the status's
    boot_failures back to 0): a full static pool must not sleep until the next deadline
    before it looks."""
    pool, board = adapter(pool_mode="static", worker_timeout=30.0)
    closing.append(board)
    children = idle_pool(board, 0.0, 1)
    board.worker_started(1, 1001, 0.5)  # forked after a crash loop's backoff, booting
    children.append(Child(1, 1001, 0, 0.5))
    tick = pool.snapshot(children, 1.0)
    timeout, _ = pool.sleep(tick, children, running=True, ready=True, spawn_at=0.0,
                            signals=True, health_due=60.0)
    assert timeout == pytest.approx(BUSY_TICK)
    board.worker_booted(1)
    board.idle(1, 1.0, 0)
    tick = pool.snapshot(children, 1.1)
    assert pool.observe(tick, children) == [children[1]]
    children[1].booted = True
    timeout, _ = pool.sleep(tick, children, running=True, ready=True, spawn_at=0.0,
                            signals=True, health_due=60.0)
    assert timeout > 10.0  # booted and idle: quiet again


def test_surplus_idle_worker_wakes_the_master_for_its_retirement(closing) -> None:
    pool, board = adapter(pool_mode="dynamic", workers=1, min_spare=1, max_spare=1,
                          idle_timeout=10.0, worker_timeout=None)
    closing.append(board)
    children = idle_pool(board, 0.0, 3)
    tick = pool.snapshot(children, 2.0)
    pool.observe(tick, children)  # idle since 2.0
    timeout, _ = pool.sleep(tick, children, running=True, ready=True, spawn_at=0.0,
                            signals=True, health_due=60.0)
    assert timeout == pytest.approx(10.0)
    later = pool.snapshot(children, 12.0)
    assert len(pool.plan(later, children, can_spawn=True).drain) == 1


def test_a_surplus_worker_the_plan_keeps_does_not_make_the_master_spin(closing) -> None:
    """Idle past idle_timeout, but the only spare once the other worker is busy: the
    plan keeps it, and its past retirement deadline used to make every sleep 0 s (the
    master at 80-100 % CPU for as long as the other worker was busy; found probing)."""
    pool, board = adapter(pool_mode="dynamic", workers=1, min_spare=1, max_spare=1,
                          idle_timeout=10.0, worker_timeout=None)
    closing.append(board)
    children = idle_pool(board, 0.0, 2)
    pool.observe(pool.snapshot(children, 2.0), children)  # both idle since 2.0
    board.busy(0, 20.0, 0, 1, ("127.0.0.1", 5000))  # a long request arrives at 20.0
    tick = pool.snapshot(children, 20.0)
    pool.observe(tick, children)
    assert pool.plan(tick, children, can_spawn=True).drain == []  # the only spare
    timeout, _ = pool.sleep(tick, children, running=True, ready=True, spawn_at=0.0,
                            signals=True, health_due=60.0)
    assert timeout == pytest.approx(BUSY_TICK)  # a busy pool's tick, not 0 s


def test_observe_reports_boots_retirement_and_idle_time(closing) -> None:
    pool, board = adapter()
    closing.append(board)
    fresh = Child(0, 1000, 0, 0.0)
    board.worker_started(0, 1000, 0.0)
    assert pool.observe(pool.snapshot([fresh], 0.5), [fresh]) == []  # STARTING
    board.worker_booted(0)
    board.idle(0, 1.0, 0)
    assert pool.observe(pool.snapshot([fresh], 1.0), [fresh]) == [fresh]
    assert fresh.idle_since == 1.0
    board.busy(0, 2.0, 0, 1, ("127.0.0.1", 1))
    board.retiring(0)
    pool.observe(pool.snapshot([fresh], 2.0), [fresh])
    assert fresh.draining and fresh.retiring and fresh.idle_since is None


def test_hung_worker_is_found_from_the_tick(closing) -> None:
    pool, board = adapter(request_timeout=5.0)
    closing.append(board)
    (worker,) = idle_pool(board, 0.0, 1)
    board.busy(0, 1.0, 0, 1, ("10.0.0.1", 4242))
    assert pool.hung(pool.snapshot([worker], 5.9), [worker]) == []
    ((found, why, client),) = pool.hung(pool.snapshot([worker], 6.5), [worker])
    assert found is worker and "request_timeout" in why and client == "10.0.0.1:4242"
    worker.kill_at = 7.0  # already being killed: not found again
    assert pool.hung(pool.snapshot([worker], 8.0), [worker]) == []


def test_a_quiet_static_pool_looks_again_within_request_timeout(closing) -> None:
    """All idle at this read: a request begun just after it wakes nobody, so the
    master must look again by request_timeout, not sleep until health_interval."""
    pool, board = adapter(pool_mode="static", request_timeout=5.0, health_interval=60.0)
    closing.append(board)
    workers = idle_pool(board, 0.0)
    tick = pool.snapshot(workers, 0.0)
    assert pool.next_timeout(tick, workers, changing=False, signals=True,
                             other_deadlines=[60.0]) == pytest.approx(5.0, abs=0.01)
    quiet, board2 = adapter(pool_mode="static", health_interval=60.0)
    closing.append(board2)
    workers = idle_pool(board2, 0.0)
    tick = quiet.snapshot(workers, 0.0)
    # No request_timeout: until the worker_timeout deadline (30 s), not sooner.
    assert quiet.next_timeout(tick, workers, changing=False, signals=True,
                              other_deadlines=[60.0]) == pytest.approx(30.0, abs=0.01)


def test_a_busy_pool_is_looked_at_every_second(closing) -> None:
    """A full static pool: its waiting clients (the accept queue, the pool-full
    warning) are read at least once a second, not at health_interval."""
    pool, board = adapter(pool_mode="static", health_interval=60.0)
    closing.append(board)
    workers = idle_pool(board, 0.0)
    board.busy(0, 1.0, 0, 1, ("10.0.0.1", 4242))
    tick = pool.snapshot(workers, 1.0)
    assert pool.next_timeout(tick, workers, changing=False, signals=True,
                             other_deadlines=[60.0]) == pytest.approx(LOAD_TICK)


def test_an_idle_worker_found_hung_names_no_client(closing) -> None:
    """An idle worker gone silent past worker_timeout: its slot still holds the last
    client it served, which the kill's log line named as if it were the culprit."""
    pool, board = adapter(worker_timeout=3.0)
    closing.append(board)
    (worker,) = idle_pool(board, 0.0, 1)
    board.busy(0, 1.0, 0, 1, ("10.0.0.1", 4242))
    board.idle(0, 1.5, 1)  # served it, then went silent
    ((found, why, client),) = pool.hung(pool.snapshot([worker], 5.0), [worker])
    assert found is worker and "worker_timeout" in why and client == ""


def test_reload_generations(closing) -> None:
    pool, board = adapter(workers=2)
    closing.append(board)
    old = idle_pool(board, 0.0, 2)
    assert pool.reload(serving=3) == 1
    assert pool.reload_size == 3  # the larger of what served and the floor
    assert not pool.reload_finished(old)
    decision = pool.plan(pool.snapshot(old, 1.0), old, can_spawn=True)
    assert decision.spawn == 3 and decision.drain == []  # new ones first, old drain later
    new = [Child(slot, 2000 + slot, 1, 1.0) for slot in range(2, 5)]
    for child in old:
        child.draining = True
    assert pool.reload_finished(old + new) and pool.reload_size is None
    assert pool.reload(serving=3) == 2


def test_a_sighup_during_a_reload_replaces_the_same_pool(closing) -> None:
    """SIGHUPs in quick succession: each one counted the reload's new workers and the
    old ones beside them as the pool to replace, so the pool doubled at each SIGHUP
    (found probing: 4 SIGHUPs 50 ms apart forked 64 workers for a pool of 4)."""
    pool, board = adapter(workers=4, pool_mode="static", max_children=40)
    closing.append(board)
    old = idle_pool(board, 0.0, 4)
    assert pool.reload(serving=4) == 1 and pool.reload_size == 4
    first = [Child(slot, 2000 + slot, 1, 1.0) for slot in range(4, 8)]  # forked, booting
    assert pool.reload(serving=len(old + first)) == 2
    assert pool.reload_size == 4
    decision = pool.plan(pool.snapshot(old + first, 2.0), old + first, can_spawn=True)
    assert decision.spawn == 4  # one pool of the newest generation, not 8


def test_scale_limits(closing) -> None:
    pool, board = adapter(workers=2, max_children=3)
    closing.append(board)
    assert pool.scale_by(+1) == (2, 3)
    assert pool.scale_by(+1) == (3, 3)  # max_children
    for _ in range(5):
        pool.scale_by(-1)
    assert pool.target == 1  # never below one


def test_a_queued_connection_wakes_the_master_only_when_it_can_fork(closing) -> None:
    """Every worker busy and a connection queued: the listener is watched only while
    the pool may grow. Held by a CPU-bound load, or by the growth rate limit after a
    fork, it would stay readable and turn the master's sleep into a polling loop."""
    gate = FixedGate(verdict=True)
    pool, board = adapter(gate, pool_mode="dynamic", worker_timeout=None)
    closing.append(board)
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()):  # queued, never accepted
        pool.watch([listener])
        children = idle_pool(board, 0.0)
        for child in children:
            board.busy(child.slot, 1.0, 0, 1, ("127.0.0.1", 5000))

        def turn(now: float, plan: bool = True) -> tuple[int, float, bool]:
            tick = pool.snapshot(children, now)
            spawned = pool.plan(tick, children, can_spawn=True).spawn if plan else 0
            timeout, watch = pool.sleep(tick, children, running=True, ready=True,
                                        spawn_at=0.0, signals=True, health_due=60.0)
            return spawned, timeout, watch

        assert turn(1.5, plan=False)[2]  # nothing holds growth: the connection wakes it
        # CPU-bound: no fork, and a short tick (the gate looks again) instead of the fd.
        assert turn(2.0) == (0, pytest.approx(BUSY_TICK), False)
        gate.verdict = False  # the CPUs free up: the queued connection forks a worker
        spawned, timeout, watch = turn(2.1)
        assert spawned >= 1
        assert (timeout, watch) == (pytest.approx(GROWTH_TICK), False)  # rate-limited
        # The limit's end is the deadline the master wakes at, and then it may grow again.
        assert turn(2.1 + GROWTH_TICK)[0] >= 1
