"""The master's health checks and status document (psutil samples, status endpoint)."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from engine.proctitle import format_address
from engine.status import build_snapshot

if TYPE_CHECKING:
    from engine.master import Master

log = logging.getLogger("engine.master")


def check_health(master: Master, now: float) -> None:
    """Sample every worker; log limits being approached; recycle memory hogs."""
    health = master.health
    health.sample([w.pid for w in master.workers.values()], now)
    deadline = now + master.settings.graceful_timeout
    for worker in list(master.workers.values()):
        warnings = health.new_warnings(worker.pid)
        # Only booted workers are recycled: one stopped while STARTING would count
        # as a failed boot (backoff, and in the end "no worker could boot").
        if (
            master.running
            and worker.booted
            and not worker.draining
            and health.over_memory(worker.pid)
        ):
            log.warning(
                "worker %d pid %d RSS %d bytes > max_worker_memory %d; recycling it",
                worker.slot, worker.pid, health.latest[worker.pid].rss,
                master.settings.max_worker_memory,
            )
            master.drain_worker(worker, deadline)
        else:
            for line in warnings:
                log.warning("%s", line)


def status_snapshot(master: Master) -> dict[str, Any]:
    """The status document served by :class:`~engine.status.StatusServer`."""
    import engine  # at call time: engine/__init__ imports the master

    info = {
        "pid": os.getpid(),
        "name": master.name,
        "address": format_address(master.server.server_address),
        "state": master.state.value,
        "pool_mode": master.settings.pool_mode,
        "generation": master.generation,
        "target": master.target,
        "max_children": master.settings.max_children,
        "version": engine.__version__,
        "started": master.started,
    }
    records = [master.scoreboard.read(slot) for slot in sorted(master.workers)]
    return build_snapshot(
        info, records, master.health.latest, time.monotonic(),
        master_health=master.health.master_latest,
        capacity=master.capacity.snapshot(),  # issue 12
    )
