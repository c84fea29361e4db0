"""The connection intake under the gevent worker: TLS sockets that yield, and the
access lists, through ``engine serve`` in a subprocess."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.kit import CLI, READY, recv_line, wait_until

trustme = pytest.importorskip("trustme")
pytest.importorskip("gevent")

COMMANDS = "tests.apps.worker_apps:Commands"
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
