"""The connection intake under the gevent worker: TLS sockets that yield, and the
access lists, through ``engine serve`` in a subprocess."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.kit import CLI, READY, exchange, recv_line, wait_until

trustme = pytest.importorskip("trustme")
pytest.importorskip("gevent")

COMMANDS = "tests.apps.worker_apps:Commands"
ADDRESS_HANDLER = "tests.apps.intake_apps:AddressHandler"
TIMEOUT_HANDLER = "tests.apps.security_apps:Timeout"
ONE_GEVENT_WORKER = ["--worker-class", "gevent", "--workers", "1", "--pool-mode", "static",
                     "--bind", "127.0.0.1:0"]


def test_tls_connections_yield_to_each_other(engine_proc, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    engine = engine_proc(CLI, env=READY, args=[
        "serve", COMMANDS, *ONE_GEVENT_WORKER,
        "--certfile", str(cert_file), "--keyfile", str(key_file),
    ])
    worker = wait_until(lambda: len(engine.workers()) == 1 and engine.workers(), 10, "pool")
    pid = worker[0].pid
    context = ssl.create_default_context()
    ca.configure_trust(context)

    def tls_client() -> ssl.SSLSocket:
        raw = socket.create_connection(engine.address, timeout=10)
        return context.wrap_socket(raw, server_hostname="127.0.0.1")

    with tls_client() as slow, tls_client() as quick:
        slow.sendall(b"SLEEP 1\n")
        start = time.monotonic()
        quick.sendall(b"quick\n")
        # Answered while the other connection's greenlet sleeps on its TLS socket.
        assert recv_line(quick) == b"%d quick\n" % pid
        assert time.monotonic() - start < 0.9
        assert recv_line(slow) == b"%d SLEEP 1\n" % pid


def test_deny_from_applies(engine_proc) -> None:
    engine = engine_proc(CLI, env=READY, args=[
        "serve", COMMANDS, *ONE_GEVENT_WORKER, "--deny-from", "127.0.0.0/8",
    ])
    with socket.create_connection(engine.address, timeout=10) as client:
        assert client.recv(100) == b""  # closed before the handler saw it
    wait_until(lambda: "in deny_from" in engine.log(), 10, "the refusal line")


# client_timeout: plain TCP connections get no socket timeout (a timer around every
# wait: ~20 µs per line with thousands of clients); the worker's idle sweep bounds them.

def test_tcp_connections_carry_no_socket_timeout_but_unix_ones_do(engine_proc, tmp_path) -> None:
    tcp = engine_proc(CLI, env=READY, args=["serve", TIMEOUT_HANDLER, *ONE_GEVENT_WORKER])
    # gettimeout(), SO_RCVTIMEO, SO_SNDTIMEO: the default 30 s is the sweep's doing.
    assert exchange(tcp.address, b"x\n") == b"None 0.0 0.0\n"
    path = str(tmp_path / "s.sock")
    unix = engine_proc(CLI, env=READY, args=[
        "serve", TIMEOUT_HANDLER, *ONE_GEVENT_WORKER[:-2], "--bind", f"unix:{path}",
    ])
    assert exchange(unix.address, b"x\n") == b"30.0 0.0 0.0\n"


def test_client_timeout_ends_an_idle_tcp_connection(engine_proc) -> None:
    timeout = 0.5
    engine = engine_proc(CLI, env=READY, args=[
        "serve", ADDRESS_HANDLER, *ONE_GEVENT_WORKER, "--client-timeout", str(timeout),
    ])
    with socket.create_connection(engine.address, timeout=10) as idle, \
            idle.makefile("rb") as replies:
        assert replies.readline()  # its address: the handler runs
        started = time.monotonic()
        # Its next read waits for a line that never comes: TimeoutError where it waits.
        assert replies.readline() == b"TIMEOUT\n"
        waited = time.monotonic() - started
        assert replies.read() == b""
    assert timeout * 0.8 <= waited < timeout + 5


def test_a_client_that_keeps_talking_is_not_timed_out(engine_proc) -> None:
    engine = engine_proc(CLI, env=READY, args=[
        "serve", ADDRESS_HANDLER, *ONE_GEVENT_WORKER, "--client-timeout", "0.5",
    ])
    with socket.create_connection(engine.address, timeout=10) as client, \
            client.makefile("rb") as replies:
        assert replies.readline()
        # A line every 0.2 s for 2 s: four times the timeout in all, never 0.5 s silent.
        deadline = time.monotonic() + 2.0
        sent = 0
        while time.monotonic() < deadline:
            client.sendall(b"line %d\n" % sent)
            assert replies.readline() == b"line %d\n" % sent
            sent += 1
            # Paced by the reply's own wait on a socket timeout: not a synchronisation.
            client.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                assert client.recv(1) == b"", "nothing else may come"
            client.settimeout(10)
        assert sent >= 5


def test_a_handlers_own_socket_timeout_still_applies_under_the_sweep(engine_proc) -> None:
    # The sweep's sockets wait without gevent's timer; one with a timeout must keep it.
    engine = engine_proc(CLI, env=READY, args=[
        "serve", "tests.apps.intake_apps:OwnTimeoutHandler", *ONE_GEVENT_WORKER,
        "--client-timeout", "30",
    ])
    with socket.create_connection(engine.address, timeout=10) as idle, \
            idle.makefile("rb") as replies:
        assert replies.readline()
        started = time.monotonic()
        assert replies.readline() == b"TIMEOUT\n"  # the handler's 0.5 s, not the 30 s sweep
        assert time.monotonic() - started < 5
