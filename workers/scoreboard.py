"""The scoreboard: one fixed-size record per possible worker, in shared memory.

The master creates it (an anonymous ``MAP_SHARED`` mmap) before forking, so every
worker writes its own slot and the master reads them all without any system call.
Writes on a worker's hot path are one or two ``struct.pack_into`` calls into memory.

Layout of a slot (little endian, 128 bytes). What a worker writes when it takes or
finishes a connection is contiguous, so that each of those is one ``pack_into``::

    0  pid            i32     32 client_port    u16 (0: client_host is the whole address)
    4  state          u8      34 client_host    62s (UTF-8)
    5  active         u16     96 bytes_in       u64
    8  request_start  f64     104 bytes_out     u64
    16 heartbeat      f64     112 started       f64 (time.monotonic())
    24 requests       u64     120 retiring      u8 (1: serving its last request, then exits)
                              121 booted        u8 (1: worker_init returned; written once)

``active`` counts the connections being served. The client is stored raw (host and
port) and formatted by the reader, which keeps the formatting off the worker's hot
path. All times are ``time.monotonic()`` values, which are comparable across processes
on the same machine (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Any

from workers.protocol import WorkerState, format_address

SLOT_SIZE = 128
_PID = struct.Struct("<i")
# state, active, request_start, heartbeat, requests, client_port, client_host
_BUSY = struct.Struct("<BHxddQH62s")
_IDLE = struct.Struct("<BHxddQ")  # state, active, request_start, heartbeat, requests
_STATE = struct.Struct("<B")
_ACTIVE = struct.Struct("<H")
_LOAD = struct.Struct("<BH")  # state, active: the start of the _IDLE and _BUSY layouts
_PROGRESS = struct.Struct("<dQ")  # heartbeat, requests
_HEARTBEAT = struct.Struct("<d")
_CLIENT = struct.Struct("<H62s")
_BYTES = struct.Struct("<QQ")
_STARTED = struct.Struct("<d")
_WHOLE = struct.Struct("<iBHxddQH62sQQdBB6x")
assert _WHOLE.size == SLOT_SIZE
# The states every connection writes, as plain ints: packing an IntEnum member costs a
# third of the write (a class attribute lookup and its conversion).
_BUSY_CODE = int(WorkerState.BUSY)
_IDLE_CODE = int(WorkerState.IDLE)
_CLIENT_OFFSET, _BYTES_OFFSET, _STARTED_OFFSET, _RETIRING_OFFSET = 32, 96, 112, 120
_BOOTED_OFFSET = 121


@dataclass(frozen=True)
class SlotRecord:
    """A copy of one slot, as read by the master."""

    slot: int
    pid: int
    state: WorkerState
    request_start: float
    heartbeat: float
    requests: int
    bytes_in: int
    bytes_out: int
    started: float
    active: int
    client: str
    booted: bool = False  # the worker said worker_init returned (it serves from now on)
    retiring: bool = False  # the worker serves its last request (max_requests)


class Scoreboard:
    """Shared-memory table of ``size`` worker slots."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._map = mmap.mmap(-1, size * SLOT_SIZE, flags=mmap.MAP_SHARED)

    def close(self) -> None:
        """Unmap the table (in the master, after the last worker is gone)."""
        self._map.close()

    # --- written by the master around a worker's life ---

    def clear(self, slot: int) -> None:
        """Reset a slot to EMPTY (before a spawn and after a reap)."""
        base = slot * SLOT_SIZE
        self._map[base : base + SLOT_SIZE] = bytes(SLOT_SIZE)

    def set_draining(self, slot: int) -> None:
        """Mark a slot DRAINING (the master told its worker to stop)."""
        _STATE.pack_into(self._map, slot * SLOT_SIZE + 4, WorkerState.DRAINING)

    # --- written by the worker in its own slot ---

    def worker_started(self, slot: int, pid: int, now: float) -> None:
        """A freshly forked worker claims its slot (state STARTING)."""
        base = slot * SLOT_SIZE
        _PID.pack_into(self._map, base, pid)
        _IDLE.pack_into(self._map, base + 4, WorkerState.STARTING, 0, 0.0, now, 0)
        _STARTED.pack_into(self._map, base + _STARTED_OFFSET, now)

    def worker_booted(self, slot: int) -> None:
        """worker_init returned: from now on an exit of this worker is not a boot failure."""
        self._map[slot * SLOT_SIZE + _BOOTED_OFFSET] = 1

    def busy(
        self, slot: int, now: float, requests: int, active: int, client: Any,
        since: float | None = None,
    ) -> None:
        """The worker took a connection from *client* (an address); it serves *active*.

        *requests* is the count of connections finished so far (unchanged). *since* is
        when the oldest connection in flight started (default *now*: the only one), so
        that request_timeout judges the oldest. One write: this is on every
        connection's path.
        """
        base = slot * SLOT_SIZE + 4
        start = now if since is None else since
        try:  # (host, port, ...) is stored raw: the common case, no formatting here
            _BUSY.pack_into(
                self._map, base, _BUSY_CODE, active, start, now, requests,
                client[1], client[0].encode(),
            )
        except Exception:  # anything else (a Unix address...) is stored formatted
            _BUSY.pack_into(
                self._map, base, _BUSY_CODE, active, start, now, requests,
                0, _formatted(client),
            )

    def retiring(self, slot: int) -> None:
        """The worker serves its last request (max_requests), then exits."""
        _STATE.pack_into(self._map, slot * SLOT_SIZE + _RETIRING_OFFSET, 1)

    def is_retiring(self, slot: int) -> bool:
        """Has the worker in *slot* announced that it is serving its last request?"""
        return bool(self._map[slot * SLOT_SIZE + _RETIRING_OFFSET])

    def client(self, slot: int, client: Any) -> None:
        """The real client of the current connection (after a PROXY header)."""
        base = slot * SLOT_SIZE + _CLIENT_OFFSET
        try:
            _CLIENT.pack_into(self._map, base, client[1], client[0].encode())
        except Exception:
            _CLIENT.pack_into(self._map, base, 0, _formatted(client))

    def idle(self, slot: int, now: float, requests: int) -> None:
        """The worker finished its connections and has served *requests* in all."""
        _IDLE.pack_into(
            self._map, slot * SLOT_SIZE + 4, _IDLE_CODE, 0, 0.0, now, requests
        )

    def progress(
        self, slot: int, now: float, requests: int, active: int, since: float | None = None
    ) -> None:
        """A worker finished one connection and still serves *active* ones.

        *since*, if given, is when the oldest connection still in flight started.
        """
        base = slot * SLOT_SIZE
        _ACTIVE.pack_into(self._map, base + 5, active)
        if since is not None:
            _HEARTBEAT.pack_into(self._map, base + 8, since)  # request_start, also an f64
        _PROGRESS.pack_into(self._map, base + 16, now, requests)

    def heartbeat(self, slot: int, now: float) -> None:
        """The worker is alive (written on idle wake-ups)."""
        _HEARTBEAT.pack_into(self._map, slot * SLOT_SIZE + 16, now)

    def add_bytes(self, slot: int, bytes_in: int, bytes_out: int) -> None:
        """Add one connection's traffic to the slot's totals."""
        base = slot * SLOT_SIZE + _BYTES_OFFSET
        total_in, total_out = _BYTES.unpack_from(self._map, base)
        _BYTES.pack_into(self._map, base, total_in + bytes_in, total_out + bytes_out)

    def draining(self, slot: int) -> None:
        """The worker is finishing up before it exits."""
        _STATE.pack_into(self._map, slot * SLOT_SIZE + 4, WorkerState.DRAINING)

    # --- read by the master ---

    def load(self, slot: int) -> tuple[int, int]:
        """``(state, connections in flight)`` of one slot: what a sibling worker reads to
        balance connections (see :mod:`workers.cooperative`)."""
        state, active = _LOAD.unpack_from(self._map, slot * SLOT_SIZE + 4)
        return state, active

    def state(self, slot: int) -> WorkerState:
        """The state of one slot (a single byte read)."""
        return WorkerState(self._map[slot * SLOT_SIZE + 4])

    def read(self, slot: int) -> SlotRecord:
        """A copy of one slot."""
        (pid, state, active, start, beat, requests, port, host, b_in, b_out, started, retiring,
         booted) = (
            _WHOLE.unpack_from(self._map, slot * SLOT_SIZE)
        )
        text = host.rstrip(b"\0").decode("utf-8", "replace")
        return SlotRecord(
            slot=slot,
            pid=pid,
            state=WorkerState(state),
            request_start=start,
            heartbeat=beat,
            requests=requests,
            bytes_in=b_in,
            bytes_out=b_out,
            started=started,
            active=active,
            client=format_address((text, port)) if port else text,
            booted=bool(booted),
            retiring=bool(retiring),
        )


def _formatted(address: object) -> bytes:
    """A client address that is not (host, port): as :func:`format_address` writes it."""
    return format_address(address).encode("utf-8", "replace")
