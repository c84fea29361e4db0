"""engine.capacity: the kernel's accept queue read from real listening sockets, and the
pure CapacityMonitor (counters, rate-limited warning) driven with plain data and a
fake clock; its figures in the status JSON, Prometheus text and ``engine status``."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine import capacity
from engine.capacity import (
    UNKNOWN,
    CapacityMonitor,
    ListenerSample,
    PoolLoad,
    QueueReading,
    accept_queue,
    advice,
    pool_load,
    sample_listener,
)
from engine.status import build_snapshot, render_json, render_prometheus
from engine.status_client import format_status
from tests.kit import wait_until
from workers.protocol import WorkerState

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

ADVICE = "raise max_children (now 4)"
FULL = PoolLoad(workers=4, limit=4, free_slots=0)
NOT_FULL = PoolLoad(workers=4, limit=4, free_slots=1)


def waiting(queued: int | None, *, readable: bool = False) -> ListenerSample:
    return ListenerSample("127.0.0.1:8000", queued, 2048,
                          readable if queued is None else bool(queued))


# --- the kernel's accept queue, on real sockets ---


@contextlib.contextmanager
def connected_clients(
    family: int, address: object, count: int
) -> Iterator[list[socket.socket]]:
    clients: list[socket.socket] = []
    try:
        for _ in range(count):
            client = socket.socket(family, socket.SOCK_STREAM)
            clients.append(client)
            client.settimeout(5)
            client.connect(address)
        yield clients
    finally:
        for client in clients:
            client.close()


@linux_only
@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"),
                                         (socket.AF_INET6, "::1")])
def test_tcp_accept_queue_counts_unaccepted_connections(family: int, host: str) -> None:
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        try:
            listener.bind((host, 0))
        except OSError:
            pytest.skip(f"cannot bind {host}")
        listener.listen(7)
        assert accept_queue(listener) == QueueReading(0, 7)
        with connected_clients(family, listener.getsockname(), 5):
            wait_until(lambda: accept_queue(listener).queued == 5, 5, "5 queued")
            assert accept_queue(listener).backlog == 7
            conn, _ = listener.accept()
            conn.close()
            assert accept_queue(listener) == QueueReading(4, 7)
            sample = sample_listener(listener)
            assert sample.queued == 4 and sample.waiting
            assert sample.name.endswith(f":{listener.getsockname()[1]}")


@linux_only
def test_unix_accept_queue_counts_unaccepted_connections() -> None:
    with tempfile.TemporaryDirectory() as tmp, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        path = os.path.join(tmp, "s.sock")
        listener.bind(path)
        listener.listen(9)
        assert accept_queue(listener) == QueueReading(0, 9)
        with connected_clients(socket.AF_UNIX, path, 3):
            assert accept_queue(listener) == QueueReading(3, 9)
            conn, _ = listener.accept()
            conn.close()
            assert accept_queue(listener) == QueueReading(2, 9)
            assert sample_listener(listener).name == f"unix:{path}"


def test_sockets_without_an_accept_queue_are_unknown() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        assert accept_queue(udp) == UNKNOWN
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"x", udp.getsockname())
            # Unknown queue: readability says whether something waits.
            wait_until(lambda: sample_listener(udp).waiting, 5, "the datagram")
        assert sample_listener(udp).queued is None
    with socket.socket() as not_listening:
        not_listening.bind(("127.0.0.1", 0))
        assert accept_queue(not_listening) == UNKNOWN
    closed = socket.socket()
    closed.close()
    assert accept_queue(closed) == UNKNOWN


def test_malformed_netlink_replies_are_unknown() -> None:
    parse = capacity._parse_unix_diag
    assert parse(b"") == UNKNOWN
    error = capacity._NLMSG_HEADER.pack(36, capacity._NLMSG_ERROR, 0, 1, 0) + bytes(20)
    assert parse(error) == UNKNOWN
    no_attrs = capacity._NLMSG_HEADER.pack(32, capacity._SOCK_DIAG_BY_FAMILY, 0, 1, 0)
    assert parse(no_attrs + bytes(16)) == UNKNOWN
    zero_len_attr = no_attrs + bytes(16) + capacity._NLATTR.pack(0, 4)
    assert parse(zero_len_attr) == UNKNOWN
    good = (capacity._NLMSG_HEADER.pack(44, capacity._SOCK_DIAG_BY_FAMILY, 0, 1, 0)
            + bytes(16) + capacity._NLATTR.pack(12, 4) + capacity._RQLEN.pack(3, 128))
    assert parse(good) == QueueReading(3, 128)


# --- the pool's load from scoreboard rows ---


def test_pool_load_counts_free_connection_slots() -> None:
    busy, idle = WorkerState.BUSY, WorkerState.IDLE
    assert pool_load([(busy, 1, False)], 1, 1).full
    assert not pool_load([(idle, 0, False)], 1, 1).full
    assert not pool_load([(WorkerState.STARTING, 0, False)], 1, 1).full
    # Threads: a busy worker with a free thread is not full.
    assert pool_load([(busy, 3, False), (busy, 4, False)], 4, 2) == PoolLoad(2, 2, 1)
    assert pool_load([(busy, 4, False), (busy, 4, False)], 4, 2).full
    # Below the limit the pool can still grow: not full, even with every slot busy.
    assert not pool_load([(busy, 1, False)], 1, 2).full
    # Draining workers take no connection but count against the limit.
    rows = [(busy, 1, False), (idle, 0, True), (WorkerState.DRAINING, 0, False)]
    assert pool_load(rows, 1, 3) == PoolLoad(3, 3, 0) and pool_load(rows, 1, 3).full
    assert not pool_load(rows, 1, 4).full
    assert pool_load([(WorkerState.EMPTY, 0, False)], 1, 1) == PoolLoad(0, 1, 0)


# --- the monitor: counters and the warning, with a fake clock ---


def test_max_children_reached_counts_episodes_not_observations() -> None:
    monitor = CapacityMonitor(warn_interval=60)
    for now in (0.0, 1.0, 2.0):
        monitor.observe(now, [waiting(0)], FULL, ADVICE)
    assert monitor.max_children_reached == 1 and monitor.pool_full
    monitor.observe(3.0, [waiting(0)], NOT_FULL, ADVICE)
    assert not monitor.pool_full
    monitor.observe(4.0, [waiting(0)], FULL, ADVICE)
    assert monitor.max_children_reached == 2


def test_queue_length_and_its_maximum_per_listener() -> None:
    monitor = CapacityMonitor()
    other = ListenerSample("unix:/run/a.sock", 1, 64, True)
    monitor.observe(0.0, [waiting(5), other], NOT_FULL, ADVICE)
    monitor.observe(1.0, [waiting(2), other], NOT_FULL, ADVICE)
    snap = monitor.snapshot()
    assert snap["listeners"] == [
        {"address": "127.0.0.1:8000", "queued": 2, "max_queued": 5, "backlog": 2048},
        {"address": "unix:/run/a.sock", "queued": 1, "max_queued": 1, "backlog": 64},
    ]
    assert snap["max_children_reached"] == 0 and not snap["clients_waiting"]


def test_no_warning_unless_the_pool_is_full_and_clients_wait() -> None:
    monitor = CapacityMonitor()
    assert monitor.observe(0.0, [waiting(3)], NOT_FULL, ADVICE) is None  # pool can take them
    assert monitor.observe(1.0, [waiting(0)], FULL, ADVICE) is None  # full, nobody waits
    assert monitor.warnings == 0
    line = monitor.observe(2.0, [waiting(3)], FULL, ADVICE)
    assert line is not None and monitor.clients_waiting
    assert "4 workers (the limit) and no free connection slot" in line
    assert "3 waiting on 127.0.0.1:8000 (backlog 2048)" in line
    assert ADVICE in line


def test_unknown_queue_falls_back_to_readability() -> None:
    monitor = CapacityMonitor()
    assert monitor.observe(0.0, [waiting(None, readable=False)], FULL, ADVICE) is None
    line = monitor.observe(1.0, [waiting(None, readable=True)], FULL, ADVICE)
    assert line is not None and "clients waiting on 127.0.0.1:8000" in line
    assert monitor.snapshot()["listeners"][0]["max_queued"] is None


def test_warning_is_rate_limited_and_counts_what_it_held_back() -> None:
    monitor = CapacityMonitor(warn_interval=60)
    assert monitor.observe(0.0, [waiting(2)], FULL, ADVICE) is not None
    # The same episode goes on, then two new episodes: none logged within 60 s.
    assert monitor.observe(10.0, [waiting(2)], FULL, ADVICE) is None
    monitor.observe(20.0, [waiting(0)], FULL, ADVICE)
    assert monitor.observe(21.0, [waiting(1)], FULL, ADVICE) is None
    monitor.observe(30.0, [waiting(0)], NOT_FULL, ADVICE)
    assert monitor.observe(31.0, [waiting(1)], FULL, ADVICE) is None
    assert monitor.suppressed == 2 and monitor.warnings == 1
    line = monitor.observe(60.0, [waiting(4)], FULL, ADVICE)
    assert line is not None and "2 more such episodes in the last 60s not logged" in line
    assert monitor.suppressed == 0 and monitor.warnings == 2
    # Still waiting a minute later: warned again (a long episode is not silent).
    assert monitor.observe(119.9, [waiting(4)], FULL, ADVICE) is None
    line = monitor.observe(120.0, [waiting(4)], FULL, ADVICE)
    assert line is not None and "not logged" not in line


def test_advice_names_the_setting_to_raise() -> None:
    sync = advice("dynamic", 2, 40, 1)
    assert "max_children (now 40)" in sync and "threads" in sync and "gevent" in sync
    assert "raise workers (now 3, static pool)" in advice("static", 3, 40, 1)
    threads = advice("static", 3, 40, 4096)
    assert "raise threads (now 4096)" in threads and "--worker-class gevent" in threads
    gevent = advice("dynamic", 2, 8, 1, "gevent", 1000)
    assert "worker_connections (now 1000)" in gevent and "max_children (now 8)" in gevent


# --- the figures in the status documents ---


def capacity_snapshot() -> dict[str, object]:
    monitor = CapacityMonitor()
    monitor.observe(0.0, [waiting(7), ListenerSample('unix:/run/"a".sock', None, None, False)],
                    FULL, ADVICE)
    monitor.observe(1.0, [waiting(3), ListenerSample('unix:/run/"a".sock', None, None, False)],
                    FULL, ADVICE)
    return build_snapshot({"pid": 1, "name": "demo"}, [], {}, 0.0,
                          capacity=monitor.snapshot())


def test_status_json_has_queue_and_max_children_reached() -> None:
    import json

    data = json.loads(render_json(capacity_snapshot()))
    master = data["master"]
    assert master["listen_queue"] == 3 and master["max_children_reached"] == 1
    assert master["pool_full"] is True and master["clients_waiting"] is True
    assert data["listeners"][0] == {"address": "127.0.0.1:8000", "queued": 3,
                                    "max_queued": 7, "backlog": 2048}
    assert data["listeners"][1]["queued"] is None
    # Without the monitor (older callers) the document is as before.
    assert "listeners" not in build_snapshot({"pid": 1}, [], {}, 0.0)


def test_prometheus_has_queue_families() -> None:
    text = render_prometheus(capacity_snapshot())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    queue = families["engine_listen_queue"].samples
    assert [(s.labels, s.value) for s in queue] == [({"listener": "127.0.0.1:8000"}, 3)]
    assert families["engine_listen_queue_max"].samples[0].value == 7
    assert families["engine_listen_backlog"].samples[0].value == 2048
    reached = families["engine_max_children_reached"]  # the parser drops "_total"
    assert reached.type == "counter" and reached.samples[0].value == 1
    assert families["engine_pool_full"].samples[0].value == 1


def test_engine_status_prints_queue_on_the_workers_line() -> None:
    text = format_status(capacity_snapshot())
    line = text.splitlines()[2]  # the table stays where it was: scripts read it by line
    assert line.startswith("0 workers; POOL FULL, clients waiting; max children reached 1; "
                           "listen queue 127.0.0.1:8000 3 (max 7, backlog 2048), "
                           'unix:/run/"a".sock not reported'), line
    one = build_snapshot({"max_children_reached": 0}, [], {}, 0.0, capacity={
        "listeners": [{"address": "a:1", "queued": 0, "max_queued": 2, "backlog": 64}]})
    assert format_status(one).splitlines()[2] == (
        "0 workers; max children reached 0; listen queue 0 (max 2, backlog 64)")
    assert "max children reached" not in format_status({"master": {"pid": 1}})
