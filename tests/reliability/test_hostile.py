"""Hostile clients against the demo service (the strict handler's run is the
``hostile-clients`` scenario): resets at random points, half-closes, garbage, over-long
lines. The demo answers or closes; it never reports an error for a client's
misbehaviour; workers, their fds and the master stay as they were."""

from __future__ import annotations

import contextlib
import random
import socket
import struct

from loadtests.reliability_scenarios import tracebacks
from tests.kit import (
    DeadlineExceeded,
    LoadGen,
    StartEngine,
    epoll_wait_timeout,
    exchange,
    fd_count,
    fd_targets,
    settled_fd_count,
    wait_until,
)


def reset_after(address: tuple[str, int], payload: bytes, answer_first: bool) -> None:
    """Send *payload*, then close with SO_LINGER 0 (an RST), maybe after one answer."""
    with socket.create_connection(address, timeout=20) as sock:
        if answer_first:
            sock.sendall(b"PING\n")
            assert sock.recv(5) == b"PONG\n"
        with contextlib.suppress(OSError):
            sock.sendall(payload)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_demo_shrugs_off_hostile_clients(engines: StartEngine) -> None:
    server = engines(["--workers", "2", "--pool-mode", "static", "--threads", "4"])
    workers = server.wait_workers(2)
    # Set up to the end: the title comes before the loop's own fds (failed twice in CI,
    # counted between the two under load).
    wait_until(lambda: all(epoll_wait_timeout(pid) is not None for pid in workers), 10,
               "the workers in their accept loops")
    fds = {pid: settled_fd_count(pid) for pid in workers}
    opened = {pid: set(fd_targets(pid).items()) for pid in workers}  # for the message
    master_fds = settled_fd_count(server.master)
    rng = random.Random(7)
    with LoadGen(server.address, clients=2, max_requests=100_000, max_seconds=60,
                 pace=0.002) as load:
        for _ in range(40):  # resets at random points of random requests
            payload = rng.choice([b"SLEEP 0.01\n", b"STATS\n", b"x" * 70_000, b"PI"])
            reset_after(server.address, payload[: rng.randrange(len(payload) + 1)],
                        answer_first=rng.random() < 0.5)
        for _ in range(10):
            assert exchange(server.address, b"hello\nPING") == b"hello\nPONG\n"  # half-close
            garbage = bytes(rng.randrange(256) for _ in range(300)).replace(b"\n", b"") + b"\n"
            assert exchange(server.address, garbage) == garbage  # echoed, byte for byte
            with contextlib.suppress(ConnectionResetError):  # it closes with unread input
                answer = exchange(server.address, b"y" * 100_000)
                assert answer in (b"ERR line too long\n", b"")
        stats = load.stop()
    assert stats.failed == 0 and stats.refused == 0 and stats.ok > 0, stats.failures
    try:
        wait_until(lambda: all(fd_count(pid) <= fds[pid] for pid in workers), 20,
                   "worker fds back to their baseline")
    except DeadlineExceeded:  # once in CI under load: say which fds, and what the log says
        new = {pid: sorted(set(fd_targets(pid).items()) - opened[pid]) for pid in workers}
        counts = {pid: (fds[pid], fd_count(pid)) for pid in workers}
        raise AssertionError(f"fds not closed: {new}, (baseline, now) {counts}\n"
                             f"{server.log()[-3000:]}") from None
    assert server.worker_pids() == workers
    assert settled_fd_count(server.master) == master_fds
    assert tracebacks(server.log()) == 0, server.log()[-3000:]
    assert server.stop() == 0
