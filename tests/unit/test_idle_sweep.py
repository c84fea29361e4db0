"""The gevent worker's client_timeout decision (workers.idle_sweep), with plain data:
a dict stands for the probe (waiting or not, byte counters) and numbers for the clock."""

from __future__ import annotations

import socket

from tests.kit import wait_until
from workers.idle_sweep import IdleSweep, sweep_interval, tcp_counters


def sweeps(timeout: float, states: dict[str, list]) -> list[tuple[float, list[str]]]:
    """Sweep once a second over the per-second states of each connection; returns the
    (time, expired) of every sweep that expired something."""
    idle = IdleSweep(timeout)
    for conn in states:
        idle.add(conn)
    fired = []
    for second in range(max(len(s) for s in states.values())):
        def probe(conn: object, second: int = second) -> object:
            seq = states[conn]  # type: ignore[index]
            return seq[second] if second < len(seq) else seq[-1]
        expired = idle.sweep(float(second), probe)  # type: ignore[arg-type]
        if expired:
            fired.append((float(second), sorted(expired)))
    return fired


WAIT = (True, (10, 20))  # waiting on its client, counters unchanged


def test_a_connection_waiting_with_no_byte_moving_expires_after_the_timeout() -> None:
    # First seen waiting at t=0: expires at the first sweep >= 0 + 3.
    assert sweeps(3, {"a": [WAIT] * 10}) == [(3.0, ["a"])]


def test_bytes_moving_keep_it_alive() -> None:
    # Waiting at every sweep, but a byte arrives each second: never idle for 3 s.
    moving = [(True, (0, n)) for n in range(10)]
    assert sweeps(3, {"a": moving}) == []
    # Bytes sent and acknowledged count too.
    assert sweeps(3, {"a": [(True, (n, 0)) for n in range(10)]}) == []


def test_the_wait_starts_when_it_is_first_seen_not_at_the_last_byte() -> None:
    # Busy elsewhere (not waiting on the socket) for 5 s after its last byte, then it
    # waits: the 3 s count from the first sweep that sees it waiting (t=5), not from t=0.
    busy_then_wait = [(False, (0, 0))] * 5 + [WAIT] * 10
    assert sweeps(3, {"a": busy_then_wait}) == [(8.0, ["a"])]


def test_connections_are_judged_each_on_its_own() -> None:
    fired = sweeps(3, {
        "idle": [WAIT] * 10,
        "chatty": [(True, (0, n)) for n in range(10)],
        "late": [(True, (0, 0))] * 2 + [WAIT] * 10,
    })
    assert fired == [(3.0, ["idle"]), (5.0, ["late"])]


def test_a_connection_that_is_not_ours_to_judge_never_expires() -> None:
    # None: the handler set its own timeout, or the socket was closed.
    assert sweeps(1, {"own": [None] * 10}) == []


def test_an_expired_or_discarded_connection_is_no_longer_watched() -> None:
    idle = IdleSweep(1)
    idle.add("a")
    idle.add("b")
    idle.discard("b")
    assert len(idle) == 1
    assert idle.sweep(0.0, lambda conn: WAIT) == []
    assert idle.sweep(1.0, lambda conn: WAIT) == ["a"]
    assert len(idle) == 0
    assert idle.sweep(2.0, lambda conn: WAIT) == []


def test_sweep_interval_is_a_fraction_of_the_timeout_within_bounds() -> None:
    assert sweep_interval(30) == 7.5
    assert sweep_interval(3600) == 10.0
    assert sweep_interval(0.1) == 0.05


def test_tcp_counters_are_the_kernels_byte_counts() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()) as client:
        server, _ = listener.accept()
        with server:
            server.settimeout(10)
            client.settimeout(10)
            assert tcp_counters(server) == (0, 0)
            client.sendall(b"x" * 100)
            assert server.recv(100, socket.MSG_WAITALL) == b"x" * 100
            server.sendall(b"y" * 37)
            assert client.recv(37, socket.MSG_WAITALL) == b"y" * 37
            # Acknowledged once the client's ACK is back (loopback: at once or soon).
            wait_until(lambda: tcp_counters(server) == (37, 100), 5, "the byte counts")
