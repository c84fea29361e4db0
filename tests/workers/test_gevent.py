"""The gevent worker class end to end: real engines, sockets, signals and faults.

Each test runs an engine subprocess whose workers serve ``tests.apps.worker_apps``
handlers with ``worker_class = 'gevent'``; the engine_proc fixture kills the process
group on teardown and checks that nothing is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import time

import pytest

from tests.apps.prefork_apps import program
from tests.kit import PoolWatcher, exchange, open_clients, recv_line, wait_until
from tests.kit.processes import raise_fd_limit

pytest.importorskip("gevent")

APPS = "from tests.apps.worker_apps import Commands, DatagramCommands\n"
GEVENT = "worker_class = 'gevent'\npool_mode = 'static'\n"


def gevent_program(attrs: str = "", **kwargs: str) -> str:
    kwargs.setdefault("handler", "Commands")
    return program(before=APPS, attrs=GEVENT + attrs, **kwargs)


def pids(engine) -> set[int]:
    return {p.pid for p in engine.workers()}


def pool_of(engine, size: int) -> set[int]:
    return wait_until(lambda: len(now := pids(engine)) == size and now, 10, f"{size} workers")


def test_handlers_run_patched_and_concurrently_in_one_worker(engine_proc) -> None:
    engine = engine_proc(gevent_program("workers = 1"))
    (worker,) = pool_of(engine, 1)
    assert exchange(engine.address, b"PATCHED\n") == b"%d yes\n" % worker
    # 20 connections sleeping 0.5 s each in one process: together, not one after another.
    with open_clients(engine.address, 20) as clients:
        start = time.monotonic()
        for client in clients:
            client.sendall(b"SLEEP 0.5\n")
        for client in clients:
            assert recv_line(client) == b"%d SLEEP 0.5\n" % worker
        assert time.monotonic() - start < 3.0


def test_request_timeout_closes_only_the_hung_connection(engine_proc) -> None:
    engine = engine_proc(gevent_program("workers = 1\nrequest_timeout = 1"))
    (worker,) = pool_of(engine, 1)
    start = time.monotonic()  # its clock starts later, when the worker accepts it
    with socket.create_connection(engine.address, timeout=10) as hung:
        hung.sendall(b"hello\n")
        assert recv_line(hung) == b"%d hello\n" % worker  # in flight from here on
        hung.sendall(b"SLEEP 600\n")
        wait_until(lambda: time.monotonic() - start > 0.5, 2, "half a second")
        sibling = socket.create_connection(engine.address, timeout=10)
        # In flight when the hung one is cut (at 1 s), it ends after that (at 1.3 s).
        sibling.sendall(b"SLEEP 0.8\n")
        assert hung.recv(100) == b""
        closed_after = time.monotonic() - start
        with sibling:
            assert recv_line(sibling) == b"%d SLEEP 0.8\n" % worker
    assert 1.0 <= closed_after < 2.5, closed_after
    assert exchange(engine.address, b"after\n") == b"%d after\n" % worker
    assert pids(engine) == {worker}  # the worker was not replaced
    log = engine.log()
    assert re.search(
        rf"worker 0 pid {worker}: connection from 127\.0\.0\.1:\d+ busy for more than "
        r"request_timeout 1s; closed it", log,
    ), log
    assert "in _answer" in log and "time.sleep" in log  # where it blocked
    assert "killed" not in log


def test_hub_hogged_by_a_greenlet_is_killed_by_worker_timeout(engine_proc) -> None:
    engine = engine_proc(gevent_program("workers = 1\nworker_timeout = 2"))
    (worker,) = pool_of(engine, 1)
    start = time.monotonic()  # taking the connection writes a heartbeat after this
    with socket.create_connection(engine.address, timeout=10) as client:
        client.sendall(b"SPIN 600\n")
        assert client.recv(100) == b""
        elapsed = time.monotonic() - start
    wait_until(lambda: (now := pids(engine)) and worker not in now, 10, "replacement")
    assert 2.0 <= elapsed < 6.0, elapsed
    log = engine.log()
    assert re.search(rf"worker 0 pid {worker} hub silent for 2\.\ds > worker_timeout 2s", log)
    assert "in _answer" in log  # faulthandler's traceback of the spinning greenlet


def test_graceful_stop_lets_greenlets_in_flight_finish(engine_proc) -> None:
    engine = engine_proc(gevent_program("workers = 1"))
    (worker,) = pool_of(engine, 1)
    with open_clients(engine.address, 30) as clients:
        for client in clients:  # each one answered: taken by the worker, in flight
            client.sendall(b"hi\n")
            assert recv_line(client) == b"%d hi\n" % worker
        for client in clients:
            client.sendall(b"SLEEP 1\n")
        engine.signal(signal.SIGTERM)
        for client in clients:
            assert recv_line(client) == b"%d SLEEP 1\n" % worker
            client.shutdown(socket.SHUT_WR)  # the handler's loop ends: connection done
    assert engine.wait(10) == 0
    assert "graceful_timeout" not in engine.log()
    assert "Traceback" not in engine.log()


def test_sigkill_of_a_worker_with_200_connections_spares_the_others(engine_proc) -> None:
    engine = engine_proc(gevent_program("workers = 2"))
    first = pool_of(engine, 2)
    with open_clients(engine.address, 200) as clients:
        served_by: dict[int, list[socket.socket]] = {}
        for client in clients:
            client.sendall(b"hi\n")
            pid = int(recv_line(client).split()[0])
            served_by.setdefault(pid, []).append(client)
        assert set(served_by) <= first
        # The kernel spreads connections over both workers, unevenly: kill the busier.
        victim = max(served_by, key=lambda pid: len(served_by[pid]))
        others = [pid for pid in served_by if pid != victim]
        assert len(served_by[victim]) >= 100
        engine.snapshot()
        os.kill(victim, signal.SIGKILL)
        for client in served_by[victim]:
            with contextlib.suppress(ConnectionResetError):
                assert client.recv(100) == b""
        for pid in others:
            for client in served_by[pid]:
                client.sendall(b"still\n")
                assert recv_line(client) == b"%d still\n" % pid
    replaced = wait_until(
        lambda: len(now := pids(engine)) == 2 and victim not in now and now, 10, "replacement"
    )
    assert len(replaced - first) == 1
    for _ in range(10):
        assert int(exchange(engine.address, b"x\n").split()[0]) in replaced


def test_udp_datagrams_each_get_a_greenlet(engine_proc) -> None:
    engine = engine_proc(gevent_program(
        "workers = 1", server="PreforkUDPServer", handler="DatagramCommands",
    ))
    (worker,) = pool_of(engine, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.sendto(b"SLEEP 0.5", engine.address)
        client.sendto(b"quick", engine.address)
        replies = [client.recvfrom(1000)[0] for _ in range(2)]
    # The quick datagram was answered while the first one's greenlet slept.
    assert replies == [b"%d quick" % worker, b"%d SLEEP 0.5" % worker]


def test_unix_stream(engine_proc, tmp_path) -> None:
    path = str(tmp_path / "g.sock")
    engine = engine_proc(gevent_program(
        "workers = 1", server="PreforkUnixStreamServer", address=repr(path),
    ))
    (worker,) = pool_of(engine, 1)
    assert exchange(path, b"unix\n") == b"%d unix\n" % worker


CAPACITY_CLIENTS = 2000  # a short capacity test: a couple of thousand, all answered


def test_2000_idle_connections_on_two_workers_are_all_answered(engine_proc) -> None:
    # The clients' fds here, and each worker's (inherited), need room above 1024.
    if raise_fd_limit(CAPACITY_CLIENTS + 500) < CAPACITY_CLIENTS + 500:
        pytest.skip(f"the hard fd limit leaves no room for {CAPACITY_CLIENTS} clients")
    engine = engine_proc(gevent_program("workers = 2\nworker_connections = 1200"))
    workers = pool_of(engine, 2)
    with open_clients(engine.address, CAPACITY_CLIENTS) as clients:
        for client in clients:  # all connected and idle at once...
            client.sendall(b"ping\n")
        answered = {int(recv_line(client).split()[0]) for client in clients}
        for client in clients:  # ...and all still served on their second line
            client.sendall(b"again\n")
        assert all(recv_line(client).endswith(b" again\n") for client in clients)
    assert answered <= workers


def test_worker_connections_caps_one_worker(engine_proc) -> None:
    engine = engine_proc(gevent_program("workers = 1\nworker_connections = 3"))
    (worker,) = pool_of(engine, 1)
    with open_clients(engine.address, 4) as clients:
        for client in clients[:3]:
            client.sendall(b"hi\n")
            assert recv_line(client) == b"%d hi\n" % worker
        clients[3].sendall(b"fourth\n")
        clients[3].settimeout(0.5)
        with pytest.raises(TimeoutError):
            clients[3].recv(100)  # waits in the backlog: every slot is taken
        clients[0].close()
        clients[3].settimeout(5)
        assert recv_line(clients[3]) == b"%d fourth\n" % worker


def test_max_requests_recycles_a_gevent_worker(engine_proc) -> None:
    engine = engine_proc(gevent_program("workers = 1\nmax_requests = 10"))
    pool_of(engine, 1)
    served: dict[bytes, int] = {}
    for n in range(35):
        pid = exchange(engine.address, b"%d\n" % n).split()[0]
        served[pid] = served.get(pid, 0) + 1
    assert sorted(served.values()) == [5, 10, 10, 10]  # each worker exactly max_requests
    wait_until(lambda: engine.log().count("recycled") >= 3, 10, "recycling lines")


def test_hup_replaces_gevent_workers_and_lets_old_connections_finish(engine_proc) -> None:
    engine = engine_proc(gevent_program("workers = 2"))
    old = pool_of(engine, 2)
    with socket.create_connection(engine.address, timeout=10) as client:
        client.sendall(b"hi\n")
        serving = int(recv_line(client).split()[0])
        client.sendall(b"SLEEP 1\n")
        engine.signal(signal.SIGHUP)
        new = wait_until(
            lambda: len(now := pids(engine) - old) == 2 and now, 10, "the new generation"
        )
        assert recv_line(client) == b"%d SLEEP 1\n" % serving  # the old one finished it
    wait_until(lambda: pids(engine) == new, 10, "the old generation gone")
    assert int(exchange(engine.address, b"new\n").split()[0]) in new


def test_dynamic_pool_counts_free_connection_slots_not_busy_processes(engine_proc) -> None:
    engine = engine_proc(program(before=APPS, handler="Commands", attrs=(
        "worker_class = 'gevent'\npool_mode = 'dynamic'\nworkers = 1\nmin_spare = 1\n"
        "max_spare = 2\nmax_children = 4\nworker_connections = 50"
    )))
    (worker,) = pool_of(engine, 1)
    with PoolWatcher(engine, interval=0) as watch, open_clients(engine.address, 10) as clients:
        for client in clients:  # ten in flight: busy, yet 40 slots free, so still spare
            client.sendall(b"hi\n")
            assert recv_line(client) == b"%d hi\n" % worker
        for n in range(30):  # the master ticks (0.1 s) while these come and go
            assert exchange(engine.address, b"%d\n" % n) == b"%d %d\n" % (worker, n)
    assert watch.peak_children == 1


def test_system_exit_in_a_greenlet_ends_the_worker_after_the_others(engine_proc) -> None:
    engine = engine_proc(gevent_program("workers = 1"))
    (worker,) = pool_of(engine, 1)
    with socket.create_connection(engine.address, timeout=10) as other:
        other.sendall(b"SLEEP 0.5\n")
        with socket.create_connection(engine.address, timeout=10) as client:
            client.sendall(b"EXIT 3\n")
            assert recv_line(client) == b"%d EXIT 3\n" % worker
            assert client.recv(100) == b""
        assert recv_line(other) == b"%d SLEEP 0.5\n" % worker  # finished, not cut
    wait_until(lambda: (now := pids(engine)) and worker not in now, 10, "replacement")
    log = wait_until(lambda: "exit code 3" in engine.log() and engine.log(), 10, "exit line")
    assert re.search(
        rf"worker 0 pid {worker}: the handler raised SystemExit\(3\) in a greenlet "
        r"\(client 127\.0\.0\.1:\d+\); the worker exits with status 3", log,
    ), log


def test_status_shows_the_connections_in_flight_of_a_gevent_worker(
    engine_proc, tmp_path
) -> None:
    sock_path = str(tmp_path / "status.sock")
    engine = engine_proc(gevent_program(f"workers = 1\nstatus_bind = 'unix:{sock_path}'"))
    (worker,) = pool_of(engine, 1)
    wait_until(lambda: os.path.exists(sock_path), 10, "status socket")

    def active() -> list[int]:
        data = json.loads(exchange(sock_path, b"json\n", 5.0))
        return [w["active"] for w in data["workers"]]

    with open_clients(engine.address, 25) as clients:
        for client in clients:
            client.sendall(b"hi\n")
            assert recv_line(client) == b"%d hi\n" % worker
        assert active() == [25]
        prometheus = exchange(sock_path, b"metrics\n", 5.0).decode()
        assert re.search(r"engine_worker_active_connections\{[^}]*\} 25(\.0)?\n", prometheus)
    wait_until(lambda: active() == [0], 10, "connections done")


def test_worker_init_runs_patched_and_the_master_is_not(engine_proc) -> None:
    engine = engine_proc(gevent_program(
        "workers = 1\n"
        "def worker_init(self):\n"
        "    import socket, sys\n"
        "    print('worker_init patched:', socket.socket.__module__ != 'socket',\n"
        "          file=sys.stderr, flush=True)\n"
        "def service_actions(self):\n"
        "    import socket, sys\n"
        "    if not getattr(self, 'said', False):\n"
        "        self.said = True\n"
        "        print('master patched:', socket.socket.__module__ != 'socket',\n"
        "              file=sys.stderr, flush=True)\n"
    ))
    pool_of(engine, 1)
    log = wait_until(
        lambda: "worker_init patched" in (text := engine.log()) and "master patched" in text
        and text, 10, "both lines",
    )
    assert "worker_init patched: True" in log and "master patched: False" in log


def test_a_burst_of_keep_alive_clients_is_shared_between_workers(engine_proc, tmp_path) -> None:
    """Every worker is woken by the same readiness; the first awake must not take the
    whole burst, or its clients share one CPU for as long as they stay connected."""
    sock_path = str(tmp_path / "status.sock")
    engine = engine_proc(gevent_program(f"workers = 2\nstatus_bind = 'unix:{sock_path}'"))
    pool = pool_of(engine, 2)
    wait_until(lambda: os.path.exists(sock_path), 10, "status socket")

    def booted() -> bool:
        data = json.loads(exchange(sock_path, b"json\n", 5.0))
        return sum(w["state"] in ("idle", "busy") for w in data["workers"]) == 2

    wait_until(booted, 10, "both workers booted")
    clients = [socket.socket() for _ in range(40)]
    try:
        for client in clients:  # a burst: all queued before any worker takes one
            client.setblocking(False)
            client.connect_ex(engine.address)
        served: dict[int, int] = {}
        for client in clients:
            client.settimeout(10)
            client.sendall(b"hi\n")
            pid = int(recv_line(client).split()[0])
            served[pid] = served.get(pid, 0) + 1
    finally:
        for client in clients:
            client.close()
    assert set(served) == pool, served
    # Shared, not split evenly: on a loaded machine the sibling may wake late (13/27 was
    # seen with a CPU burner beside the test). Without balancing one took nearly all 40.
    assert min(served.values()) >= 10, served
