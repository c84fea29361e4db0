"""TLS end to end: ``engine serve --certfile/--keyfile`` in a subprocess, certificates made
by trustme in the test, Python ssl clients and ``openssl s_client``.

Shows: TLS 1.3 echo; --tls-min-version 1.3 refuses a TLS 1.2-only client; required
client certificates refuse clients without one (or with one from another CA) and
accept one signed by --ca-certs; a client that never sends a ClientHello is closed at
--handshake-timeout and does not hold the only worker; a bad certfile exits 2.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.kit import CLI, READY, EngineProcess, recv_line, run_cli, wait_until

ECHO = "engine.examples.echo:EchoHandler"
ONE_WORKER = ["--workers", "1", "--pool-mode", "static"]

Start = Callable[..., EngineProcess]


@dataclass
class Pki:
    """Files and contexts made by trustme for one test module."""

    ca: trustme.CA
    ca_file: str
    cert_file: str
    key_file: str
    client: trustme.LeafCert  # signed by ca
    stranger: trustme.LeafCert  # signed by another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = {name: str(directory / f"{name}.pem") for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(files["ca"])
    server.cert_chain_pems[0].write_to_path(files["cert"])
    server.private_key_pem.write_to_path(files["key"])
    return Pki(
        ca, files["ca"], files["cert"], files["key"],
        client=ca.issue_cert("client@example.com"),
        stranger=trustme.CA().issue_cert("client@example.com"),
    )


def serve_tls(start: Start, pki: Pki, *args: str, handler: str = ECHO) -> EngineProcess:
    return start(CLI, args=[
        "serve", handler, "--bind", "127.0.0.1:0", *ONE_WORKER,
        "--certfile", pki.cert_file, "--keyfile", pki.key_file, *args,
    ], env=READY)


def client_context(
    pki: Pki, *, cert: trustme.LeafCert | None = None,
    maximum: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pki.ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    if maximum is not None:
        context.maximum_version = maximum
    return context


def tls_connect(address: tuple[str, int], context: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(address, timeout=10)
    try:
        return context.wrap_socket(sock, server_hostname="localhost")
    except BaseException:
        sock.close()
        raise


def exchange(address: tuple[str, int], context: ssl.SSLContext, line: bytes) -> bytes:
    """One TLS connection: send *line*, return the line that comes back."""
    with tls_connect(address, context) as tls:
        tls.sendall(line)
        return recv_line(tls)


def test_tls13_with_a_python_client(engine_proc: Start, pki: Pki) -> None:
    engine = serve_tls(engine_proc, pki)
    with tls_connect(engine.address, client_context(pki)) as tls:
        assert tls.version() == "TLSv1.3"
        tls.sendall(b"over tls\n")
        assert recv_line(tls) == b"over tls\n"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
def test_openssl_s_client_verifies_and_echoes(engine_proc: Start, pki: Pki) -> None:
    engine = serve_tls(engine_proc, pki)
    host, port = engine.address
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"{host}:{port}", "-servername", "localhost",
         "-CAfile", pki.ca_file, "-verify_return_error", "-brief"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.stdin.write(b"from openssl\n")
        proc.stdin.flush()
        assert _read_until(proc.stdout, b"from openssl\n", 10).endswith(b"from openssl\n")
        proc.stdin.close()  # s_client ends the session on EOF
        assert proc.wait(timeout=10) == 0
        err = proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    assert b"Protocol version: TLSv1.3" in err and b"Verification: OK" in err


def _read_until(stream: object, wanted: bytes, timeout: float) -> bytes:
    fd = stream.fileno()  # type: ignore[attr-defined]
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while wanted not in data:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {wanted!r} from openssl in {timeout}s, got {data!r}"
            if selector.select(remaining):
                chunk = os.read(fd, 4096)
                assert chunk, f"openssl closed its output; got {data!r}"
                data += chunk
    return data


def test_min_version_13_refuses_a_tls12_only_client(engine_proc: Start, pki: Pki) -> None:
    engine = serve_tls(engine_proc, pki, "--tls-min-version", "1.3")
    with pytest.raises(ssl.SSLError, match=r"(?i)version"):
        tls_connect(engine.address, client_context(pki, maximum=ssl.TLSVersion.TLSv1_2))
    # The same client, allowed to speak 1.3, is served.
    assert exchange(engine.address, client_context(pki), b"1.3 ok\n") == b"1.3 ok\n"
    wait_until(lambda: "TLS handshake failed" in engine.log(), 10, "the refusal's log line")


def test_tls12_is_served_by_default(engine_proc: Start, pki: Pki) -> None:
    # The positive control for the test above: 1.2 is refused only when asked.
    engine = serve_tls(engine_proc, pki)
    context = client_context(pki, maximum=ssl.TLSVersion.TLSv1_2)
    with tls_connect(engine.address, context) as tls:
        assert tls.version() == "TLSv1.2"


def _refused(address: tuple[str, int], context: ssl.SSLContext) -> bool:
    """True if the server ends the connection without echoing (TLS 1.3 sends its
    certificate alert after the client's handshake has completed)."""
    try:
        with tls_connect(address, context) as tls:
            tls.sendall(b"let me in\n")
            return recv_line(tls) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def test_required_client_certificates(engine_proc: Start, pki: Pki) -> None:
    engine = serve_tls(
        engine_proc, pki, "--ca-certs", pki.ca_file, "--tls-verify-client", "required"
    )
    assert _refused(engine.address, client_context(pki))
    assert _refused(engine.address, client_context(pki, cert=pki.stranger))
    context = client_context(pki, cert=pki.client)
    assert exchange(engine.address, context, b"with a cert\n") == b"with a cert\n"


def test_silent_client_is_closed_and_frees_the_only_worker(
    engine_proc: Start, pki: Pki
) -> None:
    timeout = 0.5
    engine = serve_tls(engine_proc, pki, "--handshake-timeout", str(timeout))
    wait_until(lambda: len(engine.workers()) == 1, 10, "the worker")
    with socket.create_connection(engine.address, timeout=10) as silent:
        started = time.monotonic()
        # Queued behind the silent one: the only worker is busy until it gives up.
        reply = exchange(engine.address, client_context(pki), b"served\n")
        served_after = time.monotonic() - started
        assert reply == b"served\n"
        with contextlib.suppress(ConnectionResetError):
            assert silent.recv(100) == b""  # closed by the engine, no bytes
    assert timeout * 0.8 <= served_after < timeout + 5
    wait_until(
        lambda: f"TLS handshake not done within {timeout:g}s" in engine.log(), 10,
        "the timeout's log line",
    )


def test_bad_certfile_exits_2_naming_it(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    result = run_cli(["serve", ECHO, "--bind", "127.0.0.1:0",
                      "--certfile", missing, "--keyfile", pki.key_file])
    assert result.returncode == 2, result.stderr
    assert f"certfile={missing!r}" in result.stderr
    assert "Traceback" not in result.stderr


def test_key_not_matching_the_certificate_exits_2_naming_keyfile(pki: Pki) -> None:
    result = run_cli(["serve", ECHO, "--bind", "127.0.0.1:0",
                      "--certfile", pki.cert_file, "--keyfile", pki.ca_file])
    assert result.returncode == 2, result.stderr
    assert "keyfile=" in result.stderr
