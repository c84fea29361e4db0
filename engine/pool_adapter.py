"""Between the master's children table and the pool policy: one scoreboard read per tick.

Each tick the master takes one :class:`Tick` (every live worker's slot, read once) and
every decision of that tick reads it: boots and idle times (:meth:`PoolAdapter.observe`),
hung workers, the pool plan (:func:`engine.pool.plan`), and how long to sleep next.
The adapter also holds the pool's own numbers: the floor (``target``), the generation
and the size of a reload in progress, and the growth rate limit.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from engine import pool, unpatched, watchdog
from engine.capacity import CapacityMonitor, observe_pool
from engine.children import Child
from engine.config import Settings, connection_slots, resolved_workers
from engine.growth import GrowthGate
from workers.protocol import WorkerState
from workers.scoreboard import Scoreboard, SlotRecord

# Growth above the floor: at most one batch per this many seconds.
GROWTH_TICK = 0.1
# Ticks: short while the pool is changing; otherwise the master sleeps until a deadline.
BUSY_TICK = 0.1
# While a worker is busy, the master looks at least this often: the accept queues (a
# full pool's waiting clients, its warning) are never staler than this under load.
LOAD_TICK = 1.0
# Without signals (serve_forever in a thread) child exits are found by polling.
NO_SIGNAL_TICK = 0.05
# A hang deadline is acted on just after it passes, not just before.
HANG_SLACK = 0.001
_SERVING = (WorkerState.IDLE, WorkerState.BUSY)


@dataclass
class Tick:
    """What the master knows this tick: the time, and each live worker's slot."""

    now: float
    records: dict[int, SlotRecord] = field(default_factory=dict)  # by slot

    def state(self, child: Child) -> WorkerState:
        """The worker's state (STARTING for one forked after the read)."""
        record = self.records.get(child.slot)
        return record.state if record is not None else WorkerState.STARTING


class PoolAdapter:
    """The pool's numbers and the per-tick decisions that read the scoreboard."""

    def __init__(self, settings: Settings, scoreboard: Scoreboard, growth: GrowthGate) -> None:
        self.settings = settings
        self.scoreboard = scoreboard
        self.growth = growth
        self.target = resolved_workers(settings)
        self.generation = 0
        self.reload_size: int | None = None  # serving workers when a reload began
        self.batch = 1
        self.next_growth = 0.0
        self.cpu_saturated = False  # the last plan's verdict (growth held for the CPUs)
        self.probe = unpatched.new_poll()  # zero-timeout readiness check of the listeners
        self.capacity = CapacityMonitor()  # listen queue, max children reached
        self.listeners: list[socket.socket] = []

    def watch(self, listeners: Sequence[socket.socket]) -> None:
        """Listeners whose pending connections count as "waiting" (ondemand, bursts),
        and whose accept queues the capacity counters read."""
        self.listeners = list(listeners)
        for listener in self.listeners:
            self.probe.register(listener.fileno(), select.POLLIN)

    # --- commands ---

    def reload(self, serving: int) -> int:
        """SIGHUP: a new generation replaces *serving* workers; returns the generation.

        During a reload, it replaces the pool that reload is building: *serving* then
        counts that pool twice, its new workers and the old ones still beside them (a
        SIGHUP storm doubled the pool at each SIGHUP, up to max_children).
        """
        self.generation += 1
        size = serving if self.reload_size is None else self.reload_size
        self.reload_size = max(size, self.target)
        return self.generation

    def scale_by(self, delta: int) -> tuple[int, int]:
        """SIGTTIN/SIGTTOU: move the floor within [1, max_children]; (before, after)."""
        before = self.target
        self.target = min(max(self.target + delta, 1), self.settings.max_children)
        return before, self.target

    # --- one tick ---

    def snapshot(self, children: Iterable[Child], now: float) -> Tick:
        """Read every live worker's slot, once."""
        return Tick(now, {c.slot: self.scoreboard.read(c.slot) for c in children})

    def look(self, children: Iterable[Child], now: float, running: bool) -> list[SlotRecord]:
        """Every worker's slot in slot order and, while the pool runs, the accept queues,
        read as of *now*, between turns (a status request): the master may have slept
        since its last turn (up to ``health_interval`` in a quiet pool)."""
        children = sorted(children, key=lambda child: child.slot)
        tick = self.snapshot(children, now)
        if running:
            self._observe_capacity(tick, children, self.listeners)
        return list(tick.records.values())

    def observe(self, tick: Tick, children: Iterable[Child], running: bool = True) -> list[Child]:
        """Update retiring flags, idle times and (while the pool runs) the capacity
        counters; return the workers that booted since."""
        children = list(children)
        if running:
            self._observe_capacity(tick, children, self.listeners)
        booted = []
        for child in children:
            record = tick.records.get(child.slot)
            if record is None:
                continue
            # The worker's own word; IDLE or BUSY also mean it is past worker_init (a
            # worker class that does not write the flag is still judged right).
            if not child.booted and (record.booted or record.state in _SERVING):
                booted.append(child)
            if not child.draining and record.retiring:
                # Serving its last request (max_requests): count it as leaving now, so
                # its replacement is forked while it finishes, not after it is reaped.
                child.draining = child.retiring = True
            if record.state == WorkerState.IDLE:
                if child.idle_since is None or record.requests != child.last_requests:
                    child.idle_since = tick.now
                    child.last_requests = record.requests
            else:
                child.idle_since = None
        return booted

    def _observe_capacity(
        self, tick: Tick, children: Iterable[Child], listeners: Iterable[socket.socket]
    ) -> None:
        """Feed this tick's records and the listeners' accept queues to the monitor."""
        rows = [
            (record.state, record.active, child.draining)
            for child in children
            if (record := tick.records.get(child.slot)) is not None
        ]
        observe_pool(self.capacity, self.settings, self.target, rows, listeners, tick.now)

    def hung(self, tick: Tick, children: Iterable[Child]) -> list[tuple[Child, str, str]]:
        """Workers past request_timeout or worker_timeout: (child, why, client)."""
        found = []
        for child in children:
            record = tick.records.get(child.slot)
            if child.kill_at is not None or record is None:
                continue
            why = watchdog.hang_reason(record, child.spawned, self.settings, tick.now)
            if why is not None:  # an idle slot still holds the last client it served
                found.append((child, why, record.client if record.active else ""))
        return found

    def views(self, tick: Tick, children: Iterable[Child]) -> list[pool.WorkerView]:
        """What the pool policy sees of each live worker."""
        threads = connection_slots(self.settings)  # threads, or gevent's connections
        views = []
        for child in children:
            record = tick.records.get(child.slot)
            state = record.state if record is not None else WorkerState.STARTING
            views.append(pool.WorkerView(
                slot=child.slot,
                generation=child.generation,
                state=state,
                draining=child.draining,
                idle_since=child.idle_since,
                free_threads=(
                    record is not None and state == WorkerState.BUSY and record.active < threads
                ),
            ))
        return views

    def plan(self, tick: Tick, children: Sequence[Child], can_spawn: bool) -> pool.Plan:
        """This tick's forks and drains (:func:`engine.pool.plan`)."""
        # server_close() from another thread: a worker forked now could accept nothing.
        can_spawn = can_spawn and all(sock.fileno() >= 0 for sock in self.listeners)
        views = self.views(tick, children)
        settings = self.settings
        self.cpu_saturated = self._cpu_saturated(tick, children, views)
        decision = pool.plan(
            views,
            pool.PoolParams(
                mode=settings.pool_mode,
                target=self.target,
                max_children=settings.max_children,
                min_spare=settings.min_spare,
                max_spare=settings.max_spare,
                idle_timeout=settings.idle_timeout,
                max_spawn_batch=settings.max_spawn_batch,
            ),
            generation=self.generation,
            reload_size=self.reload_size,
            connections_waiting=self._connections_waiting(views),
            batch=self.batch,
            now=tick.now,
            can_spawn=can_spawn,
            can_grow=tick.now >= self.next_growth,
            cpu_saturated=self.cpu_saturated,
        )
        self.batch = decision.next_batch
        if decision.grew:
            self.next_growth = tick.now + GROWTH_TICK
        return decision

    def reload_finished(self, children: Iterable[Child]) -> bool:
        """Once every serving worker is of the current generation, the reload is over."""
        if self.reload_size is not None and all(
            c.generation == self.generation for c in children if not c.draining
        ):
            self.reload_size = None
        return self.reload_size is None

    # --- how long to sleep ---

    def sleep(
        self, tick: Tick, children: Sequence[Child], *, running: bool, ready: bool,
        spawn_at: float, signals: bool, health_due: float,
    ) -> tuple[float, bool]:
        """The master's timeout until its next turn, and whether a connection wakes it."""
        backing_off = tick.now < spawn_at
        changing = self.is_changing(tick, children, running=running, ready=ready,
                                    backing_off=backing_off)
        # A queued connection wakes the master only if the wake-up can fork: while growth
        # is held (a CPU-bound load, or the growth rate limit) the listener stays readable,
        # and watching it would turn the sleep into a polling loop that takes CPU from the
        # busy workers. The rate limit's end is a deadline instead; the saturation verdict
        # is measured again on the next (short) tick.
        growth_held = self.cpu_saturated or tick.now < self.next_growth
        watch = self.wants_listener(tick, children, running=running,
                                    can_spawn=not backing_off and not growth_held,
                                    changing=changing)
        deadlines = [health_due, *([spawn_at] if backing_off else [])]
        if tick.now < self.next_growth:
            deadlines.append(self.next_growth)
        timeout = self.next_timeout(tick, children, changing=changing, signals=signals,
                                    other_deadlines=deadlines)
        return timeout, watch

    def is_changing(self, tick: Tick, children: Sequence[Child], *, running: bool,
                    ready: bool, backing_off: bool) -> bool:
        """Is the pool moving (a short tick), or quiet (sleep until the next deadline)?"""
        if not running or self.reload_size is not None or not ready:
            return True  # first boot: READY (and an upgrade's hand-over) waits on it
        if len(children) < self.target or backing_off:
            return True
        if any(not c.booted for c in children):
            return True  # its boot ends a crash loop's streak: look soon, not at a deadline
        if self.settings.pool_mode == "static":
            return len(children) != self.target
        return any(tick.state(c) != WorkerState.IDLE for c in children)

    def next_timeout(
        self, tick: Tick, children: Sequence[Child], *, changing: bool, signals: bool,
        other_deadlines: Iterable[float],
    ) -> float:
        """Seconds until the next thing the master must do (or the busy tick)."""
        deadlines = list(other_deadlines)
        if changing:
            deadlines.append(tick.now + BUSY_TICK)
        if not signals:
            deadlines.append(tick.now + NO_SIGNAL_TICK)
        if any(record.state == WorkerState.BUSY for record in tick.records.values()):
            deadlines.append(tick.now + LOAD_TICK)
        surplus = len(children) > self.target and self.settings.pool_mode != "static"
        for child in children:
            if child.kill_at is not None:
                deadlines.append(child.kill_at)
                continue
            record = tick.records.get(child.slot)
            hang = None
            if record is not None:
                hang = watchdog.next_look(record, child.spawned, self.settings, tick.now)
            elif self.settings.worker_timeout:  # forked after the read: STARTING
                hang = child.spawned + self.settings.worker_timeout
            if hang is not None:
                deadlines.append(hang + HANG_SLACK)
            if surplus and child.idle_since is not None:
                retire_at = child.idle_since + self.settings.idle_timeout
                # Past due and still here: the plan keeps it (the spares it needs).
                # Waking for it again would be at once, every turn: a spinning master.
                if retire_at > tick.now:
                    deadlines.append(retire_at)
        return max(0.0, min(deadlines) - tick.now)

    def wants_listener(self, tick: Tick, children: Sequence[Child], *, running: bool,
                       can_spawn: bool, changing: bool) -> bool:
        """Should a new connection wake the master?

        With no free worker, that is how ondemand forks its first worker at once. While
        the pool is quiet the master sleeps until a deadline, and a burst that takes
        every spare would otherwise wait for it. Under load (short ticks, spares
        available) the listener stays out of the selector: workers take connections,
        the master must not wake for each one.
        """
        return (
            running
            and self.settings.pool_mode != "static"
            and len(children) < self.settings.max_children
            and can_spawn
            and (not changing or not any(pool.is_spare(v) for v in self.views(tick, children)))
        )

    # --- helpers ---

    def _cpu_saturated(
        self, tick: Tick, children: Sequence[Child], views: list[pool.WorkerView]
    ) -> bool:
        """Should growth pause for a CPU-bound load (see :mod:`engine.growth`)?

        Only asked when some worker is busy and the pool is short of spare workers, so
        a quiet pool reads nothing from /proc.
        """
        if self.settings.pool_mode == "static":
            return False
        pids = {c.slot: c.pid for c in children}
        serving = [pids[v.slot] for v in views if not v.draining]
        busy = [pids[v.slot] for v in views if v.state == WorkerState.BUSY and not v.draining]
        spare = sum(1 for v in views if not v.draining and pool.is_spare(v))
        if not busy or spare >= self.settings.min_spare:
            return False
        requests = {
            c.pid: record.requests
            for c in children
            if (record := tick.records.get(c.slot)) is not None
        }
        return self.growth.saturated(busy, requests, time.monotonic(), serving)

    def _connections_waiting(self, views: list[pool.WorkerView]) -> bool:
        """Is a connection (or datagram) waiting that no idle worker will take?"""
        if self.settings.pool_mode == "static":
            return False
        if any(pool.is_spare(v) for v in views):
            return False
        return bool(self.probe.poll(0))
