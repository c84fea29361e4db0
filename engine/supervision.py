"""The master's health checks and status document, from plain data (no master object).

:func:`over_memory` says which workers to recycle after a psutil sample;
:func:`status_snapshot` builds the status document from the master's facts, the
scoreboard records and the latest samples.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from engine.children import Child
from engine.config import Settings
from engine.health import HealthSampler
from engine.proctitle import format_address
from engine.status import Snapshot, build_snapshot
from engine.version import __version__
from workers.scoreboard import SlotRecord

log = logging.getLogger("engine.master")


def over_memory(
    health: HealthSampler, children: Iterable[Child], settings: Settings, now: float
) -> list[Child]:
    """Sample every worker; log limits being approached; return the memory hogs to recycle.

    Only booted, serving workers are recycled: one stopped while STARTING would count
    as a failed boot.
    """
    children = list(children)
    health.sample([c.pid for c in children], now)
    hogs = []
    for child in children:
        warnings = health.new_warnings(child.pid)
        if child.booted and not child.draining and health.over_memory(child.pid):
            log.warning(
                "worker %d pid %d RSS %d bytes > max_worker_memory %d; recycling it",
                child.slot, child.pid, health.latest[child.pid].rss, settings.max_worker_memory,
            )
            hogs.append(child)
        else:
            for line in warnings:
                log.warning("%s", line)
    return hogs


def master_info(
    name: str, address: Any, settings: Settings, *, state: str, generation: int,
    target: int, started: float, crash_loop: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``master`` part of the status document, from plain values."""
    return {
        "pid": os.getpid(),
        "name": name,
        "address": format_address(address),
        "state": state,
        "pool_mode": settings.pool_mode,
        "generation": generation,
        "target": target,
        "max_children": settings.max_children,
        "version": __version__,
        "started": started,
        "crash_loop": dict(crash_loop),
    }


def status_snapshot(
    info: Mapping[str, Any], records: Sequence[SlotRecord], health: HealthSampler, now: float
) -> Snapshot:
    """The status document served by :class:`~engine.status.StatusServer`."""
    return build_snapshot(info, records, health.latest, now, master_health=health.master_latest)
