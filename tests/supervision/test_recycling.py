"""max_requests recycling forks the replacement while the last request is still served."""

from __future__ import annotations

import socket

from tests.apps.prefork_apps import program
from tests.kit import recv_line, wait_until


def test_replacement_is_forked_during_the_last_request(engine_proc) -> None:
    engine = engine_proc(program(attrs="workers = 1\npool_mode = 'static'\nmax_requests = 1"))
    wait_until(lambda: len(engine.workers()) == 1, 10, "the one worker")
    (retiring,) = engine.workers()
    with socket.create_connection(engine.address, timeout=10) as client:
        client.sendall(b"SLEEP 1\n")
        # While the last request sleeps, its successor is already forked and serving.
        wait_until(lambda: len(engine.workers()) == 2, 5, "the replacement during the request")
        successor = next(w for w in engine.workers() if w.pid != retiring.pid)
        with socket.create_connection(engine.address, timeout=10) as other:
            other.sendall(b"now\n")
            assert recv_line(other) == b"%d now\n" % successor.pid
        assert recv_line(client).startswith(b"%d " % retiring.pid)
    wait_until(lambda: f"pid {retiring.pid} recycled" in engine.log(), 10, "the recycle logged")
    wait_until(lambda: retiring.pid not in {w.pid for w in engine.workers()}, 10, "it left")
