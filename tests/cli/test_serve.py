"""`engine serve` and `engine` (the demo) end to end: a real engine subprocess in its
own session, real sockets and signals; the engine_proc fixture kills the process group
on teardown and asserts that nothing is left."""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kit import (
    CLI,
    PYTHON_M_ENGINE,
    READY,
    EngineProcess,
    recv_line,
    run_cli,
    wait_until,
)
from tests.kit import (
    exchange as tcp_exchange,
)

ECHO = "engine.examples.echo:EchoHandler"
STATIC_2 = ["--workers", "2", "--pool-mode", "static"]

Start = Callable[..., EngineProcess]


def serve(start: Start, *args: str, env: dict[str, str] | None = None) -> EngineProcess:
    return start(CLI, args=["serve", *args], env={**READY, **(env or {})})


def stop(engine: EngineProcess, signum: int = signal.SIGTERM) -> int:
    engine.workers()  # remember the workers' pids for the leftover check
    engine.signal(signum)
    return engine.wait(timeout=30)


def test_serve_echo_and_stop_with_sigterm(engine_proc: Start) -> None:
    engine = serve(engine_proc, ECHO, "--bind", "127.0.0.1:0", *STATIC_2)
    host, port = engine.address
    assert host == "127.0.0.1" and port > 0
    assert tcp_exchange(engine.address, b"hello\nworld\n") == b"hello\nworld\n"
    wait_until(lambda: len(engine.workers()) == 2, 10, "two workers")
    assert stop(engine) == 0
    log = engine.log()
    assert f"listening on 127.0.0.1:{port}" in log
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[\d+\] \[master\] INFO ", log)
    assert "Traceback" not in log


def test_default_command_serves_the_demo(engine_proc: Start) -> None:
    engine = engine_proc(PYTHON_M_ENGINE, args=["--bind", "127.0.0.1:0"], env=READY)
    with socket.create_connection(engine.address, timeout=10) as client:
        client.sendall(b"STATS\n")
        stats = recv_line(client).decode()
        match = re.fullmatch(r"worker=(\d+) pid=(\d+) requests=1 uptime=[\d.]+\n", stats)
        assert match, stats
        assert int(match.group(2)) in {p.pid for p in engine.workers()}
        client.sendall(b"PING\n")
        assert recv_line(client) == b"PONG\n"
        client.sendall(b"some words\n")
        assert recv_line(client) == b"some words\n"
        client.sendall(b"QUIT\n")
        assert recv_line(client) == b"BYE\n"
        assert client.recv(10) == b""  # the server closed
    assert "DemoHandler" in engine.log()
    assert stop(engine) == 0


def test_ondemand_pool_announces_ready_without_a_worker(engine_proc: Start) -> None:
    # No worker is spawned at start: READY comes from the master's first loop turn.
    engine = serve(engine_proc, ECHO, "--bind", "127.0.0.1:0", "--pool-mode", "ondemand")
    assert engine.workers() == []
    assert tcp_exchange(engine.address, b"on demand\n") == b"on demand\n"
    assert stop(engine) == 0


def test_demo_line_limits(engine_proc: Start) -> None:
    engine = engine_proc(CLI, args=["demo", "--bind", "127.0.0.1:0", *STATIC_2], env=READY)
    with socket.create_connection(engine.address, timeout=10) as client, \
            client.makefile("rb") as replies:
        client.sendall(b"SLEEP 0\nSLEEP 61\n" + b"x" * (64 * 1024) + b"\n")
        assert replies.readline() == b"SLEPT 0\n"
        assert replies.readline().startswith(b"ERR usage: SLEEP")
        assert replies.readline() == b"ERR line too long\n"
        assert replies.readline() == b""  # and the server closed


def test_sigint_exits_130_quietly(engine_proc: Start) -> None:
    engine = serve(engine_proc, ECHO, "--bind", "127.0.0.1:0", *STATIC_2)
    wait_until(lambda: len(engine.workers()) == 2, 10, "two workers")
    assert stop(engine, signal.SIGINT) == 130
    assert "Traceback" not in engine.log() and "KeyboardInterrupt" not in engine.log()


def test_unix_socket_replaces_a_stale_file_and_cleans_up(
    engine_proc: Start, tmp_path: Path
) -> None:
    path = tmp_path / "echo.sock"
    with socket.socket(socket.AF_UNIX) as stale:  # bound once, nobody listens now
        stale.bind(str(path))
    engine = serve(engine_proc, ECHO, "--bind", f"unix:{path}", *STATIC_2)
    assert engine.address == str(path)
    assert tcp_exchange(str(path), b"over unix\n") == b"over unix\n"

    # A second engine must not take a live socket away from the first.
    second = run_cli(["serve", ECHO, "--bind", f"unix:{path}"])
    assert second.returncode == 1
    assert "engine: error: cannot listen on unix:" in second.stderr
    assert tcp_exchange(str(path), b"still here\n") == b"still here\n"

    assert stop(engine) == 0
    assert not path.exists()


def test_a_regular_file_in_the_way_is_not_removed(tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("precious")
    result = run_cli(["serve", ECHO, "--bind", f"unix:{path}"])
    assert result.returncode == 2 and "exists and is not a socket" in result.stderr
    assert path.read_text() == "precious"


def test_udp_echo(engine_proc: Start) -> None:
    engine = serve(
        engine_proc, "engine.examples.echo:EchoDatagramHandler", "--udp",
        "--bind", "127.0.0.1:0", *STATIC_2,
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(b"datagram", engine.address)
        assert client.recvfrom(100)[0] == b"datagram"
    assert stop(engine) == 0


def test_httpdir_serves_a_directory(engine_proc: Start, tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("static content\n")
    engine = serve(
        engine_proc, "engine.examples.httpdir:HttpDirHandler", "--bind", "127.0.0.1:0",
        *STATIC_2, env={"ENGINE_HTTP_DIR": str(tmp_path)},
    )
    response = tcp_exchange(engine.address, b"GET /hello.txt HTTP/1.0\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and body == b"static content\n"
    missing = tcp_exchange(engine.address, b"GET /nope HTTP/1.0\r\n\r\n")
    assert missing.startswith(b"HTTP/1.0 404")
    wait_until(lambda: '"GET /nope HTTP/1.0" 404' in engine.log(), 10, "the request log")
    assert stop(engine) == 0


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6(engine_proc: Start) -> None:
    engine = serve(engine_proc, ECHO, "--bind", "[::1]:0", *STATIC_2)
    assert engine.address[0] == "::1"
    assert tcp_exchange(engine.address[:2], b"six\n") == b"six\n"


def test_status_command_reads_a_running_engine(engine_proc: Start, tmp_path: Path) -> None:
    status_path = tmp_path / "status.sock"
    engine = serve(
        engine_proc, ECHO, "--bind", "127.0.0.1:0", *STATIC_2,
        "--status-bind", f"unix:{status_path}", "--health-interval", "0.2",
    )
    env = {"ENGINE_STATUS_BIND": f"unix:{status_path}"}

    def table() -> str | None:
        result = run_cli(["status"], env=env)
        out = result.stdout
        return out if result.returncode == 0 and "2 workers: 2 idle" in out else None

    out = wait_until(table, 15, "a status table with two idle workers")
    assert f"pid {engine.pid} [EchoHandler]" in out
    pids = {str(p.pid) for p in engine.workers()}
    rows = [line.split() for line in out.splitlines()[5:]]
    assert {row[1] for row in rows} == pids and {row[2] for row in rows} == {"idle"}
    metrics = run_cli(["status", "--prometheus"], env=env)
    assert metrics.returncode == 0 and "engine_workers{" in metrics.stdout
    assert stop(engine) == 0
