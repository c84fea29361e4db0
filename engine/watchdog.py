"""Hung-worker rules: when a worker has overrun ``request_timeout`` or ``worker_timeout``.

Pure functions of a scoreboard record, so the master computes its sleep deadline and
its verdict from the same rule.

* ``request_timeout``: a BUSY worker whose current request started too long ago.
* ``worker_timeout``: a worker that is not busy (IDLE or STARTING) and has not written a
  heartbeat for too long: it is wedged outside any request. Busy workers are exempt, so
  long-lived connections are safe with the default.
"""

from __future__ import annotations

from engine.config import Settings
from workers.protocol import WorkerState
from workers.scoreboard import SlotRecord

_NOT_BUSY = (WorkerState.IDLE, WorkerState.STARTING)


def hang_deadline(record: SlotRecord, spawned: float, settings: Settings) -> float | None:
    """The moment this worker would count as hung, or None if no limit applies."""
    if record.state == WorkerState.BUSY and settings.request_timeout and record.request_start:
        return record.request_start + settings.request_timeout
    if record.state in _NOT_BUSY and settings.worker_timeout:
        return max(record.heartbeat, spawned) + settings.worker_timeout
    return None


def hang_reason(record: SlotRecord, spawned: float, settings: Settings, now: float) -> str | None:
    """Why this worker is hung (for the log line), or None if it is not."""
    deadline = hang_deadline(record, spawned, settings)
    if deadline is None or now <= deadline:
        return None
    if record.state == WorkerState.BUSY:
        return (
            f"busy on one request for {now - record.request_start:.1f}s "
            f"> request_timeout {settings.request_timeout:g}s"
        )
    return (
        f"silent for {now - max(record.heartbeat, spawned):.1f}s "
        f"> worker_timeout {settings.worker_timeout:g}s"
    )
