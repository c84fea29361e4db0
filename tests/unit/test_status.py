"""engine.status: snapshots from a real scoreboard, JSON and Prometheus text, and the
StatusServer over real unix and TCP sockets, driven from this thread like the master
drives it (a selector on its listener, then handle_ready())."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from engine.errors import ConfigError
from engine.health import HealthSampler, WorkerHealth
from engine.status import (
    CLIENT_TIMEOUT,
    PROMETHEUS_CONTENT_TYPE,
    StatusServer,
    build_snapshot,
    render_json,
    render_prometheus,
)
from workers.scoreboard import Scoreboard

BASE = 1000.0  # monotonic time at which the fake pool started
NOW = 1010.0  # "now" for build_snapshot: every age below is exact

MASTER = {
    "pid": 4242,
    "name": "demo",
    "version": "0.1.0",
    "pool_mode": "dynamic",
    "state": "running",
    "generation": 2,
    "target": 3,
    "max_children": 4,
    "started": BASE - 90.0,
}
MASTER_HEALTH = WorkerHealth(rss=30 << 20, uss=10 << 20, cpu_percent=1.5, open_fds=12,
                             num_threads=1)
HEALTH = {
    101: WorkerHealth(rss=40 << 20, uss=20 << 20, cpu_percent=97.5, open_fds=9, num_threads=1,
                      ksm_merged=8 << 20),
    102: WorkerHealth(rss=35 << 20, uss=None, cpu_percent=0.0, open_fds=None, num_threads=2),
}


# --- fixtures and helpers ---


@pytest.fixture
def scoreboard() -> Iterator[Scoreboard]:
    """A real shared-memory scoreboard with four slots, as a running pool writes it:

    slot 0 busy for 2 s with a client, slot 1 idle after 5 requests (its last client
    still in the slot), slot 2 empty, slot 3 draining in the middle of a request.
    """
    board = Scoreboard(4)
    board.worker_started(0, 101, BASE)
    board.busy(0, NOW - 2.0, 0, 1, ("10.0.0.7", 51000))
    board.add_bytes(0, 100, 2000)
    board.worker_started(1, 102, BASE + 4.0)
    board.busy(1, BASE + 5.0, 4, 1, ("10.0.0.8", 52000))
    board.idle(1, BASE + 6.0, 5)
    board.worker_started(3, 103, BASE + 1.0)
    board.busy(3, NOW - 30.0, 0, 1, ("::1", 53000, 0, 0))
    board.set_draining(3)
    yield board
    board.close()


def snapshot_of(board: Scoreboard, master: dict[str, Any] | None = None) -> dict[str, Any]:
    records = [board.read(slot) for slot in range(board.size)]
    return build_snapshot(master or MASTER, records, HEALTH, NOW, master_health=MASTER_HEALTH)


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A short directory for unix socket paths (sun_path holds about 100 bytes)."""
    path = tempfile.mkdtemp(prefix="engine-st-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_server(no_leaks: None) -> Iterator[Callable[..., StatusServer]]:
    """Create StatusServers that are closed after the test; then check that the test
    left no fd open (every client and server socket closed) and no zombie."""
    servers: list[StatusServer] = []

    def make(bind: str, snapshot: Callable[[], dict[str, Any]]) -> StatusServer:
        server = StatusServer(bind, snapshot)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def connect(server: StatusServer) -> socket.socket:
    """A blocking client socket connected to *server* (5 s timeout)."""
    if isinstance(server.address, str):
        family = socket.AF_UNIX
    else:
        family = socket.AF_INET6 if ":" in server.address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    try:
        sock.connect(server.address)
    except BaseException:
        sock.close()
        raise
    return sock


def serve_once(server: StatusServer, timeout: float = 5.0) -> tuple[int, float]:
    """Wait for the listener to be readable, as the master's selector does, then run
    handle_ready(); return what it returned and how long it took."""
    with selectors.DefaultSelector() as sel:
        sel.register(server.fileno(), selectors.EVENT_READ)
        assert sel.select(timeout), "the listener never became readable"
    start = time.monotonic()
    answered = server.handle_ready()
    return answered, time.monotonic() - start


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def ask(server: StatusServer, request: bytes, *, half_close: bool = False) -> bytes:
    """Send *request*, let the server answer, return the whole answer."""
    with connect(server) as client:
        client.sendall(request)
        if half_close:
            client.shutdown(socket.SHUT_WR)
        answered, _ = serve_once(server)
        assert answered == 1
        return read_all(client)


def parse_http(raw: bytes, *, head: bool = False) -> tuple[str, dict[str, str], bytes]:
    header_block, _, body = raw.partition(b"\r\n\r\n")
    status, *header_lines = header_block.decode("ascii").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if not head:
        assert int(headers["content-length"]) == len(body)
    return status, headers, body


def parse_prometheus(text: str) -> dict[str, Any]:
    """Parse with prometheus_client; also check one typed family per metric name."""
    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), f"a family is split: {names}"
    for family in families:
        # The parser makes an untyped singleton of any sample outside its family.
        assert family.type in ("gauge", "counter"), (family.name, family.type)
        assert family.documentation, family.name
    assert text.endswith("\n")
    for name in names:
        full = name + "_total" if f"# TYPE {name}_total counter" in text else name
        assert text.count(f"# HELP {full} ") == 1
        assert text.count(f"# TYPE {full} ") == 1
    return {family.name: family for family in families}


def sample(families: dict[str, Any], metric: str, /, **labels: str) -> float:
    """The value of the one sample of *metric* with exactly *labels*."""
    family_name = metric[: -len("_total")] if metric.endswith("_total") else metric
    found = [
        s for s in families[family_name].samples
        if isinstance(s, Sample) and s.name == metric and s.labels == labels
    ]
    assert len(found) == 1, (metric, labels, families[family_name].samples)
    return float(found[0].value)


# --- build_snapshot ---


def test_snapshot_fields_from_a_real_scoreboard(scoreboard: Scoreboard) -> None:
    snap = snapshot_of(scoreboard)
    master = snap["master"]
    assert master["pid"] == 4242 and master["generation"] == 2
    assert "started" not in master and master["uptime"] == 100.0
    assert master["rss"] == 30 << 20 and master["open_fds"] == 12

    workers = {w["slot"]: w for w in snap["workers"]}
    assert sorted(workers) == [0, 1, 3], "EMPTY slot 2 is left out"
    busy, idle, draining = workers[0], workers[1], workers[3]
    assert busy == {
        "slot": 0, "pid": 101, "state": "busy", "requests": 0, "bytes_in": 100,
        "bytes_out": 2000, "active": 1, "client": "10.0.0.7:51000", "request_age": 2.0,
        "age": 10.0, "heartbeat_age": 2.0, "rss": 40 << 20, "uss": 20 << 20,
        "cpu_percent": 97.5, "open_fds": 9, "num_threads": 1, "ksm_merged": 8 << 20,
    }
    assert idle["state"] == "idle" and idle["requests"] == 5
    assert idle["client"] == "" and idle["request_age"] is None, "no client when idle"
    assert idle["age"] == 6.0 and idle["heartbeat_age"] == 4.0
    assert idle["uss"] is None and idle["open_fds"] is None  # denied fields stay null
    assert idle["ksm_merged"] is None  # ksm off (or a kernel without ksm_stat)
    # A draining worker still in its request shows it; no health sample yet: nulls.
    assert draining["state"] == "draining" and draining["client"] == "[::1]:53000"
    assert draining["request_age"] == 30.0
    assert draining["rss"] is None and draining["cpu_percent"] is None


def test_master_health_falls_back_to_the_health_map_by_pid(scoreboard: Scoreboard) -> None:
    records = [scoreboard.read(slot) for slot in range(scoreboard.size)]
    snap = build_snapshot({"pid": 101}, records, HEALTH, NOW)
    assert snap["master"]["rss"] == HEALTH[101].rss
    assert build_snapshot({}, records, {}, NOW)["master"]["rss"] is None


def test_snapshot_with_real_health_samples() -> None:
    board = Scoreboard(1)
    try:
        now = time.monotonic()
        board.worker_started(0, os.getpid(), now)
        board.idle(0, now, 0)
        sampler = HealthSampler(interval=1.0, max_worker_memory=0)
        health = sampler.sample([os.getpid()], now)
        assert sampler.master_latest is not None
        snap = build_snapshot({"pid": os.getpid()}, [board.read(0)], health, now,
                              master_health=sampler.master_latest)
    finally:
        board.close()
    (worker,) = snap["workers"]
    assert worker["rss"] > 1 << 20 and worker["open_fds"] > 0 and worker["num_threads"] >= 1
    assert snap["master"]["rss"] > 1 << 20
    json.loads(render_json(snap))
    parse_prometheus(render_prometheus(snap))


# --- rendering ---


def test_json_round_trip(scoreboard: Scoreboard) -> None:
    snap = snapshot_of(scoreboard)
    raw = render_json(snap)
    assert raw.endswith(b"\n")
    assert json.loads(raw) == snap


def test_json_refuses_nan(scoreboard: Scoreboard) -> None:
    with pytest.raises(ValueError):
        render_json(snapshot_of(scoreboard, {**MASTER, "load": float("nan")}))


def test_prometheus_text_parses_with_expected_values(scoreboard: Scoreboard) -> None:
    families = parse_prometheus(render_prometheus(snapshot_of(scoreboard)))
    assert families["engine_workers"].type == "gauge"
    assert sample(families, "engine_workers", state="busy") == 1
    assert sample(families, "engine_workers", state="idle") == 1
    assert sample(families, "engine_workers", state="draining") == 1
    assert sample(families, "engine_workers", state="starting") == 0
    assert families["engine_worker_requests"].type == "counter"
    assert sample(families, "engine_worker_requests_total", slot="1", pid="102") == 5
    assert sample(families, "engine_worker_bytes_in_total", slot="0", pid="101") == 100
    assert sample(families, "engine_worker_bytes_out_total", slot="0", pid="101") == 2000
    assert sample(families, "engine_worker_rss_bytes", slot="0", pid="101") == 40 << 20
    assert sample(families, "engine_worker_cpu_percent", slot="0", pid="101") == 97.5
    assert sample(families, "engine_worker_open_fds", slot="0", pid="101") == 9
    assert sample(families, "engine_worker_request_age_seconds", slot="3", pid="103") == 30
    assert sample(families, "engine_worker_state", slot="3", pid="103", state="draining") == 1
    assert sample(families, "engine_master_rss_bytes") == 30 << 20
    assert sample(families, "engine_uptime_seconds") == 100
    assert sample(families, "engine_generation") == 2
    assert sample(families, "engine_info", name="demo", version="0.1.0",
                  pool_mode="dynamic") == 1
    # Values not known are left out, not reported as 0.
    request_ages = families["engine_worker_request_age_seconds"].samples
    assert {s.labels["slot"] for s in request_ages} == {"0", "3"}
    assert {s.labels["slot"] for s in families["engine_worker_open_fds"].samples} == {"0"}
    merged = families["engine_worker_ksm_merged_bytes"].samples  # only where it was read
    assert [(s.labels["slot"], s.value) for s in merged] == [("0", 8 << 20)]


def test_prometheus_shows_the_crash_loop_backoff(scoreboard: Scoreboard) -> None:
    """#13.3: the crash-loop state is visible in Prometheus as in the JSON document."""
    crash = {"boot_failures": 4, "fork_failures": 0, "next_spawn_in": 1.6}
    families = parse_prometheus(render_prometheus(
        snapshot_of(scoreboard, {**MASTER, "crash_loop": crash})))
    assert sample(families, "engine_crash_loop_boot_failures") == 4
    assert sample(families, "engine_crash_loop_fork_failures") == 0
    assert sample(families, "engine_crash_loop_next_spawn_seconds") == 1.6


def test_prometheus_label_values_are_escaped(scoreboard: Scoreboard) -> None:
    name = 'we"ird\\name\nwith newline'
    families = parse_prometheus(render_prometheus(snapshot_of(scoreboard, {"name": name})))
    (info,) = families["engine_info"].samples
    assert info.labels == {"name": name}


def test_prometheus_text_is_printable_whatever_the_labels_hold(scoreboard: Scoreboard) -> None:
    """A name or a socket path may hold control characters; the format has no escape
    for them, and `engine status --prometheus` refuses text that is not printable."""
    name = "a\x1b[2Jb\x07\u202e"
    text = render_prometheus(snapshot_of(scoreboard, {"name": name}))
    assert all(line.isprintable() for line in text.split("\n")), repr(text)
    (info,) = parse_prometheus(text)["engine_info"].samples
    assert info.labels == {"name": "a\ufffd[2Jb\ufffd\ufffd"}


def test_prometheus_with_no_workers_is_still_valid() -> None:
    families = parse_prometheus(render_prometheus(build_snapshot({}, [], {}, NOW)))
    assert sample(families, "engine_workers", state="busy") == 0
    assert "engine_worker_requests" not in families


# --- StatusServer over a unix socket ---


def test_unix_plain_lines(
    scoreboard: Scoreboard, make_server: Callable[..., StatusServer], short_dir: str,
) -> None:
    path = os.path.join(short_dir, "status.sock")
    old_umask = os.umask(0)  # even with a permissive umask, the socket is 0600
    try:
        server = make_server(f"unix:{path}", lambda: snapshot_of(scoreboard))
    finally:
        os.umask(old_umask)
    assert server.address == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    assert json.loads(ask(server, b"json\n")) == snapshot_of(scoreboard)
    assert json.loads(ask(server, b"\r\n"))["master"]["pid"] == 4242  # empty line: json
    assert json.loads(ask(server, b"", half_close=True))["workers"]  # EOF: json
    text = ask(server, b"prometheus\n").decode()
    assert sample(parse_prometheus(text), "engine_workers", state="busy") == 1
    assert ask(server, b"bogus\n").startswith(b"error: unknown request")

    server.close()
    assert not os.path.exists(path), "close() removes the socket file"
    server.close()  # idempotent


def test_unix_http(
    scoreboard: Scoreboard, make_server: Callable[..., StatusServer], short_dir: str,
) -> None:
    server = make_server(f"unix:{short_dir}/s.sock", lambda: snapshot_of(scoreboard))
    status, headers, body = parse_http(ask(server, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == "HTTP/1.0 200 OK"
    assert headers["content-type"] == PROMETHEUS_CONTENT_TYPE
    assert sample(parse_prometheus(body.decode()), "engine_generation") == 2


def test_stale_socket_file_is_replaced(
    make_server: Callable[..., StatusServer], short_dir: str
) -> None:
    path = os.path.join(short_dir, "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)  # a crashed master leaves its socket file behind
    server = make_server(f"unix:{path}", lambda: {"master": {}, "workers": []})
    assert json.loads(ask(server, b"json\n")) == {"master": {}, "workers": []}


def test_socket_in_use_or_not_a_socket_is_refused(
    make_server: Callable[..., StatusServer], short_dir: str
) -> None:
    path = os.path.join(short_dir, "live.sock")
    make_server(f"unix:{path}", dict)
    with pytest.raises(ConfigError) as info:
        StatusServer(f"unix:{path}", dict)
    assert info.value.setting == "status_bind"
    assert os.path.exists(path), "the live server's socket file is left alone"

    regular = os.path.join(short_dir, "notes.txt")
    with open(regular, "w") as f:
        f.write("keep me")
    with pytest.raises(ConfigError, match="not a socket"):
        StatusServer(f"unix:{regular}", dict)
    with open(regular) as f:
        assert f.read() == "keep me"


# --- StatusServer over TCP loopback ---


def test_tcp_plain_and_http(
    scoreboard: Scoreboard, make_server: Callable[..., StatusServer]
) -> None:
    server = make_server("127.0.0.1:0", lambda: snapshot_of(scoreboard))
    host, port = server.address
    assert host == "127.0.0.1" and port > 0
    assert json.loads(ask(server, b"json\n"))["master"]["name"] == "demo"

    for path in (b"/status", b"/status.json?pretty=0"):
        status, headers, body = parse_http(ask(server, b"GET " + path + b" HTTP/1.0\r\n\r\n"))
        assert status == "HTTP/1.0 200 OK"
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == snapshot_of(scoreboard)

    status, headers, body = parse_http(
        ask(server, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    )
    assert status == "HTTP/1.0 200 OK"
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = parse_prometheus(body.decode())
    assert sample(families, "engine_worker_requests_total", slot="1", pid="102") == 5

    status, _, body = parse_http(ask(server, b"HEAD /metrics HTTP/1.1\r\n\r\n"), head=True)
    assert status == "HTTP/1.0 200 OK" and body == b""
    assert int(headers["content-length"]) > 0
    status, _, _ = parse_http(ask(server, b"GET /admin HTTP/1.1\r\n\r\n"))
    assert status == "HTTP/1.0 404 Not Found"
    status, headers, _ = parse_http(ask(server, b"POST /status HTTP/1.1\r\n\r\n"))
    assert status == "HTTP/1.0 405 Method Not Allowed" and headers["allow"] == "GET, HEAD"


def test_a_request_for_another_host_name_is_refused(
    scoreboard: Scoreboard, make_server: Callable[..., StatusServer]
) -> None:
    """DNS rebinding: a web page whose name now resolves to 127.0.0.1 could read the
    status (client addresses, pids) from a browser on this host; its Host header names
    it. Found probing the endpoint: it ignored Host."""
    server = make_server("127.0.0.1:0", lambda: snapshot_of(scoreboard))
    port = server.address[1]
    for host in (b"evil.example", b"evil.example:%d" % port, b"a", b"127.0.0.1.evil.example"):
        status, _, body = parse_http(ask(server, b"GET /status HTTP/1.1\r\nHost: " + host
                                         + b"\r\n\r\n"))
        assert status == "HTTP/1.0 403 Forbidden", host
        assert b"rebinding" in body
    for host in (b"127.0.0.1:%d" % port, b"localhost", b"LOCALHOST:%d" % port, b"[::1]:9",
                 b"::1", b"engine.localhost"):
        status, _, _ = parse_http(ask(server, b"GET /status HTTP/1.1\r\nHost: " + host
                                      + b"\r\n\r\n"))
        assert status == "HTTP/1.0 200 OK", host
    status, _, _ = parse_http(ask(server, b"GET /status HTTP/1.0\r\n\r\n"))  # no Host
    assert status == "HTTP/1.0 200 OK"
    # Unix socket: any Host (test_unix_http sends "x").


def test_ipv6_loopback(make_server: Callable[..., StatusServer]) -> None:
    try:
        server = make_server("[::1]:0", lambda: {"master": {"pid": 1}, "workers": []})
    except OSError:
        pytest.skip("no IPv6 loopback here")
    assert json.loads(ask(server, b"json\n"))["master"]["pid"] == 1


@pytest.mark.parametrize(
    "bind",
    ["0.0.0.0:9100", ":9100", "192.0.2.10:9100", "[::]:9100", "example.com:9100",
     "status:9100:1", "unix:"],
)
def test_non_loopback_or_bad_bind_is_refused(bind: str) -> None:
    with pytest.raises(ConfigError) as info:
        StatusServer(bind, dict)
    assert info.value.setting == "status_bind"


# --- misbehaving clients and snapshots ---


def test_silent_client_does_not_hold_the_master(
    scoreboard: Scoreboard, make_server: Callable[..., StatusServer], short_dir: str,
) -> None:
    server = make_server(f"unix:{short_dir}/s.sock", lambda: snapshot_of(scoreboard))
    with connect(server) as silent, connect(server) as good:
        good.sendall(b"json\n")
        answered, took = serve_once(server)
        assert answered == 1
        # The silent client costs at most the one shared deadline, then is dropped.
        assert CLIENT_TIMEOUT * 0.9 <= took < CLIENT_TIMEOUT + 0.3
        assert json.loads(read_all(good))["workers"]
        assert read_all(silent) == b"", "the silent client was disconnected"


def test_client_that_does_not_read_is_dropped(
    make_server: Callable[..., StatusServer], short_dir: str
) -> None:
    big = {"master": {"blob": "x" * (16 << 20)}, "workers": []}  # beyond socket buffers
    server = make_server(f"unix:{short_dir}/s.sock", lambda: big)
    with connect(server) as reader:
        reader.sendall(b"json\n")
        answered, took = serve_once(server)
        assert answered == 0 and took < CLIENT_TIMEOUT + 0.3
        assert len(read_all(reader)) < len(render_json(big)), "cut off, not blocked on"


def test_many_clients_in_one_call(
    scoreboard: Scoreboard, make_server: Callable[..., StatusServer], short_dir: str,
) -> None:
    calls = []

    def snapshot() -> dict[str, Any]:
        calls.append(1)
        return snapshot_of(scoreboard)

    server = make_server(f"unix:{short_dir}/s.sock", snapshot)
    clients = [connect(server) for _ in range(10)]
    try:
        for n, client in enumerate(clients):
            client.sendall(b"json\n" if n % 2 else b"GET /metrics HTTP/1.0\r\n\r\n")
        answered, _ = serve_once(server)
        assert answered == 10
        assert len(calls) == 1, "one snapshot per handle_ready(), shared by its clients"
        for n, client in enumerate(clients):
            raw = read_all(client)
            if n % 2:
                assert json.loads(raw)["master"]["pid"] == 4242
            else:
                assert parse_http(raw)[0] == "HTTP/1.0 200 OK"
    finally:
        for client in clients:
            client.close()


def test_failing_snapshot_answers_an_error(
    make_server: Callable[..., StatusServer], short_dir: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("bug in the snapshot")

    server = make_server(f"unix:{short_dir}/s.sock", broken)
    status, _, _ = parse_http(ask(server, b"GET /status HTTP/1.0\r\n\r\n"))
    assert status == "HTTP/1.0 500 Internal Server Error"
    assert ask(server, b"json\n").startswith(b"error:")
    assert "bug in the snapshot" in caplog.text


def test_handle_ready_with_nothing_pending(
    make_server: Callable[..., StatusServer], short_dir: str
) -> None:
    server = make_server(f"unix:{short_dir}/s.sock", dict)
    assert server.handle_ready() == 0  # a spurious wake-up returns at once
