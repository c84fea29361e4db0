"""Hung-worker rules: when a worker has overrun ``request_timeout`` or ``worker_timeout``.

Pure functions of a scoreboard record, so the master computes its sleep deadline and
its verdict from the same rule.

* ``request_timeout``: a BUSY worker whose current request started too long ago.
* ``worker_timeout``: a worker that is not busy (IDLE or STARTING) and has not written a
  heartbeat for too long: it is wedged outside any request. Busy workers are exempt, so
  long-lived connections are safe with the default.

A gevent worker writes its heartbeat from its hub, busy or not, so ``worker_timeout``
applies to it in every state: a silent hub means a greenlet hogs the CPU. It enforces
``request_timeout`` itself, per connection; the master only steps in when the oldest
connection outlives it by :data:`COOPERATIVE_GRACE` (a handler that swallowed the
timeout).
"""

from __future__ import annotations

from engine.config import Settings
from workers.protocol import WorkerState
from workers.scoreboard import SlotRecord

_NOT_BUSY = (WorkerState.IDLE, WorkerState.STARTING)
_ALIVE = (WorkerState.IDLE, WorkerState.STARTING, WorkerState.BUSY)
# gevent: how long past request_timeout the master waits for the worker's own timeout.
COOPERATIVE_GRACE = 5.0


def hang_deadline(record: SlotRecord, spawned: float, settings: Settings) -> float | None:
    """The moment this worker would count as hung, or None if no limit applies."""
    if settings.worker_class == "gevent":
        return _cooperative_deadline(record, spawned, settings)
    if record.state == WorkerState.BUSY and settings.request_timeout and record.request_start:
        return record.request_start + settings.request_timeout
    if record.state in _NOT_BUSY and settings.worker_timeout:
        return max(record.heartbeat, spawned) + settings.worker_timeout
    return None


def next_look(record: SlotRecord, spawned: float, settings: Settings, now: float) -> float | None:
    """When the master must read this worker again (*now*: when this record was read).

    Its hang deadline; and, with ``request_timeout`` set, within ``request_timeout`` for
    a worker that was not busy: a request it begins just after the read (the worker
    wakes nobody) is then seen by its own deadline, however long the master would
    sleep otherwise (until ``health_interval``, in a quiet static pool).
    """
    deadline = hang_deadline(record, spawned, settings)
    if settings.request_timeout and record.state in _NOT_BUSY:
        look = now + settings.request_timeout
        deadline = look if deadline is None else min(deadline, look)
    return deadline


def _cooperative_deadline(record: SlotRecord, spawned: float, settings: Settings) -> float | None:
    deadlines = []
    if record.state in _ALIVE and settings.worker_timeout:
        deadlines.append(max(record.heartbeat, spawned) + settings.worker_timeout)
    if record.state == WorkerState.BUSY and settings.request_timeout and record.request_start:
        deadlines.append(record.request_start + settings.request_timeout + COOPERATIVE_GRACE)
    return min(deadlines) if deadlines else None


def hang_reason(record: SlotRecord, spawned: float, settings: Settings, now: float) -> str | None:
    """Why this worker is hung (for the log line), or None if it is not."""
    deadline = hang_deadline(record, spawned, settings)
    if deadline is None or now <= deadline:
        return None
    silent = now - max(record.heartbeat, spawned)
    if settings.worker_class == "gevent" and settings.worker_timeout and (
        silent > settings.worker_timeout
    ):
        return (
            f"hub silent for {silent:.1f}s > worker_timeout {settings.worker_timeout:g}s "
            "(a greenlet that does not yield?)"
        )
    if record.state == WorkerState.BUSY:
        return (
            f"busy on one request for {now - record.request_start:.1f}s "
            f"> request_timeout {settings.request_timeout:g}s"
        )
    return (
        f"silent for {now - max(record.heartbeat, spawned):.1f}s "
        f"> worker_timeout {settings.worker_timeout:g}s"
    )
