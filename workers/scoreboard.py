"""The scoreboard: one fixed-size record per possible worker, in shared memory.

The master creates it (an anonymous ``MAP_SHARED`` mmap) before forking, so every
worker writes its own slot and the master reads them all without any system call.
Writes on a worker's hot path are one or two ``struct.pack_into`` calls into memory.

Layout of a slot (little endian, 128 bytes, hot fields first and contiguous)::

    0  pid            i32     48 started        f64 (time.monotonic())
    4  state          u8      56 active         u16 (connections being served)
    5  retiring       u8      (1: serving its last request, then it exits)
    8  request_start  f64     64 client         64s (current client, UTF-8)
    16 heartbeat      f64
    24 requests       u64
    32 bytes_in       u64
    40 bytes_out      u64

All times are ``time.monotonic()`` values, which are comparable across processes on
the same machine (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

from workers.protocol import WorkerState, format_address

SLOT_SIZE = 128
_PID = struct.Struct("<i")
_BUSY = struct.Struct("<B3xdd")  # state, request_start, heartbeat
_IDLE = struct.Struct("<B3xddQ")  # state, request_start, heartbeat, requests
_STATE = struct.Struct("<B")
_HEARTBEAT = struct.Struct("<d")
_BYTES = struct.Struct("<QQ")
_START = struct.Struct("<dH")  # started, active
_ACTIVE = struct.Struct("<H")
_CLIENT = struct.Struct("64s")
_WHOLE = struct.Struct("<iB3xddQQQdH6x64s")
assert _WHOLE.size == SLOT_SIZE


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
        _BUSY.pack_into(self._map, base + 4, WorkerState.STARTING, 0.0, now)
        _START.pack_into(self._map, base + 48, now, 0)

    def busy(self, slot: int, now: float, client: bytes, active: int = 1) -> None:
        """The worker took a connection from *client*; it now serves *active* ones."""
        base = slot * SLOT_SIZE
        _BUSY.pack_into(self._map, base + 4, WorkerState.BUSY, now, now)
        _CLIENT.pack_into(self._map, base + 64, client)
        _ACTIVE.pack_into(self._map, base + 56, active)

    def retiring(self, slot: int) -> None:
        """The worker serves its last request (max_requests), then exits."""
        _STATE.pack_into(self._map, slot * SLOT_SIZE + 5, 1)

    def is_retiring(self, slot: int) -> bool:
        """Has the worker in *slot* announced that it is serving its last request?"""
        return bool(self._map[slot * SLOT_SIZE + 5])

    def client(self, slot: int, client: bytes) -> None:
        """The real client of the current connection (after a PROXY header)."""
        _CLIENT.pack_into(self._map, slot * SLOT_SIZE + 64, client)

    def idle(self, slot: int, now: float, requests: int) -> None:
        """The worker finished its connections and has served *requests* in all."""
        base = slot * SLOT_SIZE
        _IDLE.pack_into(self._map, base + 4, WorkerState.IDLE, 0.0, now, requests)
        _ACTIVE.pack_into(self._map, base + 56, 0)

    def progress(self, slot: int, now: float, requests: int, active: int) -> None:
        """A threaded worker finished one connection and still serves *active* ones."""
        base = slot * SLOT_SIZE
        _HEARTBEAT.pack_into(self._map, base + 16, now)
        struct.pack_into("<Q", self._map, base + 24, requests)
        _ACTIVE.pack_into(self._map, base + 56, active)

    def heartbeat(self, slot: int, now: float) -> None:
        """The worker is alive (written on idle wake-ups)."""
        _HEARTBEAT.pack_into(self._map, slot * SLOT_SIZE + 16, now)

    def add_bytes(self, slot: int, bytes_in: int, bytes_out: int) -> None:
        """Add one connection's traffic to the slot's totals."""
        base = slot * SLOT_SIZE + 32
        total_in, total_out = _BYTES.unpack_from(self._map, base)
        _BYTES.pack_into(self._map, base, total_in + bytes_in, total_out + bytes_out)

    def draining(self, slot: int) -> None:
        """The worker is finishing up before it exits."""
        _STATE.pack_into(self._map, slot * SLOT_SIZE + 4, WorkerState.DRAINING)

    # --- read by the master ---

    def state(self, slot: int) -> WorkerState:
        """The state of one slot (a single byte read)."""
        return WorkerState(self._map[slot * SLOT_SIZE + 4])

    def read(self, slot: int) -> SlotRecord:
        """A copy of one slot."""
        (pid, state, start, beat, requests, b_in, b_out, started, active, client) = (
            _WHOLE.unpack_from(self._map, slot * SLOT_SIZE)
        )
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
            client=client.rstrip(b"\0").decode("utf-8", "replace"),
        )


def format_client(address: object) -> bytes:
    """A client address for the scoreboard: :func:`format_address`, at most 64 bytes."""
    return format_address(address).encode("utf-8", "replace")[:64]
