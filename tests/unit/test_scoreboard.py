"""The scoreboard's slot layout: what a worker writes is what the master reads back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.protocol import WorkerState, format_address
from workers.scoreboard import Scoreboard


@pytest.fixture
def board() -> Iterator[Scoreboard]:
    board = Scoreboard(3)
    yield board
    board.close()


def test_a_slot_round_trips_through_a_connection_and_leaves_neighbours_alone(
    board: Scoreboard,
) -> None:
    board.worker_started(1, 4242, 10.0)
    board.busy(1, 11.0, 7, 1, ("127.0.0.1", 50123))
    board.add_bytes(1, 10, 20)
    board.retiring(1)

    busy = board.read(1)
    assert (busy.pid, busy.state, busy.active, busy.requests) == (4242, WorkerState.BUSY, 1, 7)
    assert (busy.request_start, busy.heartbeat, busy.started) == (11.0, 11.0, 10.0)
    assert (busy.bytes_in, busy.bytes_out, busy.client) == (10, 20, "127.0.0.1:50123")
    assert board.is_retiring(1)

    board.idle(1, 12.5, 8)
    idle = board.read(1)
    assert (idle.state, idle.active, idle.request_start, idle.heartbeat) == (
        WorkerState.IDLE, 0, 0.0, 12.5,
    )
    assert (idle.requests, idle.started, idle.bytes_in) == (8, 10.0, 10)
    assert board.is_retiring(1), "the per-connection writes must not clear the retiring flag"

    for neighbour in (0, 2):
        assert board.read(neighbour).pid == 0
        assert board.state(neighbour) == WorkerState.EMPTY


def test_threaded_progress_keeps_the_request_start(board: Scoreboard) -> None:
    board.worker_started(0, 1, 1.0)
    board.busy(0, 2.0, 0, 1, ("10.0.0.1", 1))
    board.busy(0, 3.0, 0, 2, ("10.0.0.2", 2))
    board.progress(0, 4.0, 1, 1)
    record = board.read(0)
    assert (record.state, record.active, record.requests) == (WorkerState.BUSY, 1, 1)
    assert (record.request_start, record.heartbeat) == (3.0, 4.0)


@pytest.mark.parametrize(
    "address",
    [
        ("127.0.0.1", 1),
        ("::1", 65535, 0, 0),
        ("fe80::1%eth0", 80, 0, 2),
        "",  # an unnamed Unix socket peer
        "/run/engine.sock",
        b"\0abstract",
        None,
        (1, 2),  # what a user's get_request() might hand back
        ("host", -1),  # a port no slot field can hold
        ("x" * 200, 80),  # longer than the slot: cut, not refused
    ],
)
def test_any_client_address_is_stored_without_raising(board: Scoreboard, address: Any) -> None:
    board.busy(0, 1.0, 0, 1, address)
    board.client(2, address)
    expected = format_address(address)
    for slot in (0, 2):
        stored = board.read(slot).client
        if len(expected) <= 62:
            assert stored == expected
        else:  # the host is cut to the slot's 62 bytes, the port kept
            assert stored == expected[:62] + ":80"


@given(
    host=st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)),
    port=st.integers(1, 65535),
)
def test_an_ip_client_reads_back_exactly_as_format_address_writes_it(host: str, port: int) -> None:
    board = Scoreboard(1)
    try:
        address = (host, port) if ":" not in host else (host, port, 0, 0)
        board.busy(0, 1.0, 0, 1, address)
        assert board.read(0).client == format_address(address)
    finally:
        board.close()
