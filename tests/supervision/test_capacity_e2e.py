"""End to end: a full pool shows on the status endpoint and in the master's log.

A static pool of one single-threaded worker holds one keep-alive client; the next
clients wait in the listener's accept queue. The status endpoint must say so
("listen queue", "max children reached", as PHP-FPM's page does) and the master must
log the warning that names the setting to raise.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest

from engine.config import Settings
from tests.apps.prefork_apps import program
from tests.kit import EngineProcess, epoll_wait_timeout, open_clients, recv_line, wait_until
from tests.kit import exchange as tcp_exchange


def status(path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(tcp_exchange(path, b"json\n", timeout=5.0))
    return data


HAS_GEVENT_WORKER = (
    "worker_class" in {f.name for f in dataclasses.fields(Settings)}
    and importlib.util.find_spec("gevent") is not None
)
SYNC = ("", "raise workers (now 1, static pool), or set threads for handlers that wait "
        "on I/O; for many mostly idle connections, --worker-class gevent.")
GEVENT = ("worker_class = 'gevent'\nworker_connections = 1\n",
          "raise worker_connections (now 1) or raise workers (now 1, static pool)")


@pytest.mark.parametrize("worker_class,advice", [
    pytest.param(*SYNC, id="sync"),
    pytest.param(*GEVENT, id="gevent", marks=pytest.mark.skipif(
        not HAS_GEVENT_WORKER, reason="no gevent worker class in this engine yet")),
])
def test_full_pool_shows_queue_and_warns(
    engine_proc: Callable[..., EngineProcess], worker_class: str, advice: str
) -> None:
    sock_path = f"/tmp/engine-capacity-{os.getpid()}.sock"
    attrs = (f"workers = 1\npool_mode = 'static'\nstatus_bind = 'unix:{sock_path}'\n"
             f"health_interval = 0.2\nrequest_queue_size = 16\n{worker_class}")
    engine = engine_proc(program(attrs=attrs))
    wait_until(lambda: os.path.exists(sock_path), 10, "status socket")
    # null until the master's first look at its listeners, then 0: nobody waits yet.
    before = wait_until(
        lambda: (m := status(sock_path)["master"])["listen_queue"] is not None and m,
        10, "a first reading of the accept queue",
    )
    assert before["max_children_reached"] == 0 and before["listen_queue"] == 0

    with socket.create_connection(engine.address, timeout=5) as held:
        held.sendall(b"hold\n")
        assert recv_line(held).endswith(b"hold\n")  # the only worker is busy with us now
        with open_clients(engine.address, 3, timeout=5) as waiting:
            for client in waiting:
                client.sendall(b"wait\n")

            def queued() -> dict[str, Any] | None:
                data = status(sock_path)
                master = data["master"]
                ok = master["listen_queue"] >= 1 and master["max_children_reached"] >= 1
                return data if ok else None

            data = wait_until(queued, 10, "the queue and max children reached in status")
            listener = data["listeners"][0]
            assert listener["address"] == f"127.0.0.1:{engine.address[1]}"
            assert listener["backlog"] == 16 and listener["max_queued"] >= 1
            assert data["master"]["pool_full"] and data["master"]["clients_waiting"]
            wait_until(lambda: "pool full" in engine.log(), 10, "the warning in the log")
            line = next(ln for ln in engine.log().splitlines() if "pool full" in ln)
            assert "WARNING" in line and "waiting on 127.0.0.1:" in line
            assert advice in line
            # Nobody waiting was refused: they are served once the slot frees up.
            held.close()
            for client in waiting:
                assert recv_line(client, timeout=10).endswith(b"wait\n")
                client.close()

    # Served and gone: the pool is no longer full, the counter stays, and the
    # Prometheus text carries it.
    wait_until(lambda: not status(sock_path)["master"]["pool_full"], 10, "pool not full")
    after = status(sock_path)
    assert after["master"]["listen_queue"] == 0
    assert after["master"]["max_children_reached"] >= 1
    assert engine.log().count("pool full") == 1, "rate-limited to one warning a minute"
    metrics = tcp_exchange(sock_path, b"prometheus\n", timeout=5.0).decode()
    assert "engine_max_children_reached_total " in metrics
    assert 'engine_listen_backlog{listener="127.0.0.1:' in metrics
    engine.signal(15)
    assert engine.wait() == 0


def test_the_status_shows_waiting_clients_at_once_while_the_master_sleeps(
    engine_proc: Callable[..., EngineProcess], tmp_path
) -> None:
    """A quiet static pool sleeps until health_interval; the status endpoint answered
    with the queues as of the master's last turn, so a full pool read as not full for
    up to that long (found probing: 19 s with health_interval 20). It reads them now."""
    sock_path = str(tmp_path / "status.sock")
    engine = engine_proc(program(attrs=(
        f"workers = 1\npool_mode = 'static'\nstatus_bind = 'unix:{sock_path}'\n"
        "health_interval = 20\n"
    )))
    wait_until(lambda: os.path.exists(sock_path), 10, "status socket")
    assert status(sock_path)["master"]["listen_queue"] == 0
    wait_until(lambda: (epoll_wait_timeout(engine.pid) or 0) >= 5000, 10, "the master asleep")
    with socket.create_connection(engine.address, timeout=5) as held:
        held.sendall(b"hold\n")
        assert recv_line(held).endswith(b"hold\n")  # the only worker is busy with us now
        with open_clients(engine.address, 2, timeout=5) as waiting:
            master = status(sock_path)["master"]  # the first read: no waiting for a turn
            assert master["listen_queue"] == 2 and master["pool_full"], master
            assert master["clients_waiting"] and master["max_children_reached"] == 1, master
            held.close()
            for client in waiting:  # one worker: one client at a time
                client.sendall(b"served\n")
                assert recv_line(client, timeout=10).endswith(b"served\n")
                client.close()
    engine.signal(15)
    assert engine.wait() == 0
