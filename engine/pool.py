"""Pool policy: pure decisions about how many workers to fork or retire.

:func:`plan` looks at a snapshot of the pool and returns a :class:`Plan`; the master
carries it out. No I/O happens here, so the invariants (never more than
``max_children`` live processes, draining ones included) are tested on plain data.

Modes (PHP-FPM's names):

* ``static``: exactly ``target`` workers.
* ``dynamic``: at least ``target``; fork while fewer than ``min_spare`` are idle,
  retire idle ones above ``max_spare`` once idle for ``idle_timeout``.
* ``ondemand``: fork when connections wait and nobody is idle; retire any worker
  idle for ``idle_timeout`` (down to ``target``, which defaults to 0).

Growth above ``target`` stops while the CPUs have no idle time left and at least one
worker per CPU is busy (``cpu_saturated``): a CPU-bound load gains nothing from more
processes, only context switches and memory. Apache and PHP-FPM keep forking to their
spare targets here; an I/O-bound load (workers asleep in their handlers, CPUs idle)
still grows the pool as they do.

Growth above ``target`` is rate-limited like Apache's prefork MPM: the batch forked per
tick doubles (1, 2, 4 ... ``max_spawn_batch``) while more are needed and falls back to 1
when the need is met. Replacing workers below ``target`` is never rate-limited (crash
loops are handled by the master's backoff instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from workers.protocol import WorkerState


@dataclass(frozen=True)
class WorkerView:
    """What the policy needs to know about one live worker process."""

    slot: int
    generation: int
    state: WorkerState  # from the scoreboard
    draining: bool  # the master already told it to stop
    idle_since: float | None  # when it was last seen becoming idle
    free_threads: bool = False  # busy, but with a thread free for one more connection


@dataclass(frozen=True)
class PoolParams:
    """The settings the policy reads."""

    mode: str
    target: int  # the floor: `workers`, changed by SIGTTIN/SIGTTOU
    max_children: int
    min_spare: int
    max_spare: int
    idle_timeout: float
    max_spawn_batch: int


@dataclass
class Plan:
    """What to do this tick."""

    spawn: int = 0
    drain: list[int] = field(default_factory=list)  # slots to send SIGTERM
    next_batch: int = 1
    grew: bool = False  # some of the spawns are growth above the floor


def is_spare(view: WorkerView) -> bool:
    """Can this worker take one more connection right now (or very soon)?"""
    return view.state in (WorkerState.IDLE, WorkerState.STARTING) or view.free_threads


def plan(
    workers: Sequence[WorkerView],
    params: PoolParams,
    *,
    generation: int,
    reload_size: int | None,
    connections_waiting: bool,
    batch: int,
    now: float,
    can_spawn: bool = True,
    can_grow: bool = True,
    cpu_saturated: bool = False,
) -> Plan:
    """Decide this tick's forks and drains.

    Args:
        workers: every live worker process, draining ones included.
        generation: the current generation; older ones are being replaced (SIGHUP).
        reload_size: serving workers at the time of the reload, while old ones remain.
        connections_waiting: the listen socket has a connection nobody took yet.
        batch: the spawn batch size reached so far (growth rate limit).
        can_spawn: false while the master backs off after failed boots.
        can_grow: false until a tick has passed since the last growth: the batch limit
            is per tick, however often the master wakes up.
        cpu_saturated: the CPUs have no idle time while a worker per CPU is busy:
            another process would add context switches and memory, not throughput, so
            there is no growth above the floor (I/O-bound workers sleep, CPUs idle, and
            the pool still grows).
    """
    result = Plan(next_batch=batch)
    free = params.max_children - len(workers)
    serving = [w for w in workers if not w.draining]
    current = [w for w in serving if w.generation == generation]
    old = [w for w in serving if w.generation != generation]
    spare = sum(1 for w in current if is_spare(w))

    floor = max(params.target, reload_size or 0) if old else params.target
    floor_deficit = max(0, floor - len(current))
    growth = 0
    if params.mode == "dynamic":
        growth = max(0, params.min_spare - spare)
    if params.mode in ("dynamic", "ondemand") and connections_waiting and spare == 0:
        # Connections queue and nobody is free: grow by the whole (doubling) batch.
        growth = max(growth, batch)
    growth = max(0, growth - floor_deficit)
    if cpu_saturated:
        growth = 0

    wanted_growth = min(growth, batch) if can_grow else 0
    if can_spawn:
        result.spawn = max(0, min(free, floor_deficit + wanted_growth))
        result.grew = result.spawn > floor_deficit
    if growth == 0:
        result.next_batch = 1
    elif result.grew:
        result.next_batch = min(batch * 2, params.max_spawn_batch) if growth >= batch else 1

    result.drain.extend(_old_to_drain(old, current, floor, free - result.spawn))
    if not old:
        result.drain.extend(_surplus_to_retire(current, params, spare, now))
    return result


def _old_to_drain(
    old: list[WorkerView], current: list[WorkerView], floor: int, free_after: int
) -> list[int]:
    """Drain old-generation workers as new ones boot, so capacity never dips."""
    if not old:
        return []
    booted = sum(1 for w in current if w.state in (WorkerState.IDLE, WorkerState.BUSY))
    excess = len(old) + booted - floor
    # At max_children no new worker can be forked: make room by draining one old one.
    if excess <= 0 and free_after <= 0 and len(current) < floor:
        excess = 1
    if excess <= 0:
        return []
    # Idle ones first: they drain at once, busy ones finish their connection first.
    ordered = sorted(old, key=lambda w: w.state != WorkerState.IDLE)
    return [w.slot for w in ordered[:excess]]


def _surplus_to_retire(
    current: list[WorkerView], params: PoolParams, spare: int, now: float
) -> list[int]:
    """Retire surplus workers, never going below the floor.

    static: the surplus at once (after SIGTTOU), idle ones first; otherwise at most one
    long-idle worker per tick, as Apache does, so the pool does not oscillate.
    """
    if len(current) <= params.target:
        return []
    if params.mode == "static":
        ordered = sorted(current, key=lambda w: w.state != WorkerState.IDLE)
        return [w.slot for w in ordered[: len(current) - params.target]]
    if params.mode == "dynamic" and spare <= params.max_spare:
        return []
    idle = [
        w
        for w in current
        if w.state == WorkerState.IDLE
        and w.idle_since is not None
        and now - w.idle_since >= params.idle_timeout
    ]
    if not idle:
        return []
    longest = min(idle, key=lambda w: w.idle_since or now)
    return [longest.slot]
