"""When a dynamic pool should stop growing: the CPU-bound load check.

The pool policy (:mod:`engine.pool`) grows a busy pool to keep spare workers. Under a
CPU-bound load that only adds context switches and memory: another process cannot run
sooner than the busy ones. :class:`GrowthGate` tells the master when that is the case,
from three measurements over spans of :data:`GATE_SPAN` seconds:

* busy workers finish connections (short ones: a waiting client will get a worker
  soon; busy workers holding keep-alive connections finish none, and the pool must
  grow for the others, CPU or not);
* the machine had no idle CPU time (:class:`~engine.health.IdleMeter`);
* busy workers are running, not asleep in their handlers (an I/O-bound load next to a
  CPU-hungry neighbour still grows the pool).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from engine.config.settings import usable_cpus as cpu_count  # the one CPU count
from engine.health import HealthSampler, IdleMeter

# Below this share of idle CPU time the machine counts as saturated.
SATURATED_IDLE_SHARE = 0.05
# The span over which idle time and finished connections are counted.
GATE_SPAN = 0.2


class GrowthGate:
    """Answers "is the load CPU-bound, with no CPU left for another worker?"."""

    def __init__(self, health: HealthSampler) -> None:
        self.health = health
        self.cpus = cpu_count()
        self.idle_meter = IdleMeter()
        self._checked = 0.0  # when the last measurement was taken
        self._saturated = False
        self._requests: dict[int, int] = {}  # pid -> request count at that measurement

    def saturated(self, busy: Collection[int], requests: Mapping[int, int], now: float) -> bool:
        """Measure (at most once per span) and return the verdict.

        Args:
            busy: the pids of the busy workers that are not draining.
            requests: pid -> connections served so far, for every live worker.
        """
        if now - self._checked < GATE_SPAN:
            return self._saturated  # counts over shorter spans are mostly noise
        fresh = now - self._checked < 3 * GATE_SPAN
        self._checked = now
        measured = self._measure(busy, requests, now)
        # A first look only takes the baseline: hold growth for one span rather than
        # fork blind (a CPU-bound burst would otherwise double the pool meanwhile).
        self._saturated = measured if fresh else True
        return self._saturated

    def _measure(self, busy: Collection[int], requests: Mapping[int, int], now: float) -> bool:
        finished = sum(
            max(0, requests.get(pid, 0) - self._requests.get(pid, 0)) for pid in busy
        )
        self._requests = dict(requests)  # every worker, so the next delta is fresh
        if finished * 4 < len(busy):  # fewer than one per busy worker per 4 looks
            return False
        idle = self.idle_meter.idle_share(now)
        if idle is None or idle >= SATURATED_IDLE_SHARE:
            return False
        running_needed = (self.cpus + 1) // 2
        return self.health.count_running(busy, running_needed) >= running_needed
