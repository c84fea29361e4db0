"""The connection intake (workers.intake.Intake) and its builder (engine.intake).

Every test drives ``admit()`` with a connection accepted from a real loopback listener
(or a real socket pair), as a worker would, and checks what the client and the log see.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trustme

from engine.config import build
from engine.errors import ConfigError
from engine.intake import build_intake
from workers.connection import Connection, KernelTimedSocket
from workers.intake import Intake, set_listener_timeout

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1 = b"PROXY TCP4 10.1.2.3 192.0.2.1 5555 80\r\n"


def v2_tcp6(source: str, port: int) -> bytes:
    block = (
        socket.inet_pton(socket.AF_INET6, source) + socket.inet_pton(socket.AF_INET6, "::1")
        + struct.pack("!HH", port, 443)
    )
    return SIGNATURE + b"\x21\x21" + struct.pack("!H", len(block)) + block


V2_LOCAL = SIGNATURE + b"\x20\x00\x00\x00"


@pytest.fixture
def intake_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog attached to engine.intake itself: the engine logger may not propagate."""
    logger = logging.getLogger("engine.intake")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # caplog's handler is on the root logger too: count once
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)
        logger.propagate = propagate


class Loopback:
    """A TCP listener on 127.0.0.1 whose accepted connections are fed to an intake."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.sockets: list[Any] = []

    def connect(self, source: str = "127.0.0.1") -> tuple[socket.socket, socket.socket, Any]:
        """(client, accepted server side, peer address); *source*: the client's address."""
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sockets.append(client)
        client.settimeout(10)
        client.bind((source, 0))  # Linux routes all of 127/8 to lo
        client.connect(self.listener.getsockname())
        conn, peer = self.listener.accept()
        self.sockets.append(conn)
        return client, conn, peer

    def keep(self, sock: Any) -> Any:
        """Close *sock* at teardown too (a socket admit() returned)."""
        self.sockets.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.listener.close()


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    net = Loopback()
    try:
        yield net
    finally:
        net.close()


def assert_closed(client: socket.socket) -> None:
    """The server side is gone: the client reads EOF (or a reset), never data."""
    client.settimeout(10)
    try:
        assert client.recv(100) == b""
    except ConnectionResetError:
        pass


def records(log: pytest.LogCaptureFixture, level: int | None = None) -> list[str]:
    return [
        r.getMessage() for r in log.records
        if r.name == "engine.intake" and (level is None or r.levelno == level)
    ]


# --- PROXY protocol ---


def test_trusted_proxy_v1_gives_the_header_address_and_keeps_the_payload(
    loopback: Loopback, intake_log: pytest.LogCaptureFixture
) -> None:
    client, conn, peer = loopback.connect()
    client.sendall(V1 + b"payload")
    admitted = Intake(proxy_protocol=True).admit(conn, peer)
    assert admitted is not None
    request, address = admitted
    assert request is conn and address == ("10.1.2.3", 5555)
    request.settimeout(10)
    assert request.recv(100) == b"payload"
    assert request.gettimeout() == 10  # blocking again, not left non-blocking
    assert records(intake_log) == []


def test_trusted_proxy_v2_ipv6_address_has_the_accept_shape(loopback: Loopback) -> None:
    client, conn, peer = loopback.connect()
    client.sendall(v2_tcp6("2001:db8::5", 6000) + b"x")
    admitted = Intake(proxy_protocol=True).admit(conn, peer)
    assert admitted is not None
    assert admitted[1] == ("2001:db8::5", 6000, 0, 0)
    assert admitted[0].gettimeout() is None


@pytest.mark.parametrize("header", [V2_LOCAL, b"PROXY UNKNOWN\r\n"], ids=["LOCAL", "UNKNOWN"])
def test_local_and_unknown_keep_the_peer_address(loopback: Loopback, header: bytes) -> None:
    client, conn, peer = loopback.connect()
    client.sendall(header + b"ping")
    admitted = Intake(proxy_protocol=True).admit(conn, peer)
    assert admitted is not None and admitted[1] == peer
    assert admitted[0].recv(10) == b"ping"


def test_untrusted_peer_is_closed_without_reading(
    loopback: Loopback, intake_log: pytest.LogCaptureFixture
) -> None:
    client, conn, peer = loopback.connect()
    client.sendall(V1)
    assert Intake(proxy_protocol=True, proxy_allow_from=["10.0.0.0/8"]).admit(conn, peer) is None
    assert conn.fileno() == -1
    assert_closed(client)
    (line,) = records(intake_log)
    assert records(intake_log, logging.WARNING) == [line]
    assert "127.0.0.1" in line and "proxy_allow_from" in line


def test_unix_socket_peers_are_trusted_proxies(intake_log: pytest.LogCaptureFixture) -> None:
    server, client = socket.socketpair()
    with server, client:
        client.sendall(V1)
        admitted = Intake(proxy_protocol=True, proxy_allow_from=["10.0.0.0/8"]).admit(server, "")
        assert admitted is not None and admitted[1] == ("10.1.2.3", 5555)


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PROXY TCP4 10.1.2.3 192.0.2.1 05555 80\r\n",
    SIGNATURE + b"\x31\x11\x00\x0c" + b"\0" * 12,
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
])
def test_malformed_header_closes_and_logs_once(
    loopback: Loopback, intake_log: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    client, conn, peer = loopback.connect()
    client.sendall(garbage)
    started = time.monotonic()
    assert Intake(proxy_protocol=True, handshake_timeout=30).admit(conn, peer) is None
    assert time.monotonic() - started < 5  # at once, not at the deadline
    assert_closed(client)
    (line,) = records(intake_log)
    assert records(intake_log, logging.WARNING) == [line]
    assert "bad PROXY header" in line


def test_silent_client_is_closed_after_handshake_timeout(
    loopback: Loopback, intake_log: pytest.LogCaptureFixture
) -> None:
    client, conn, peer = loopback.connect()
    started = time.monotonic()
    assert Intake(proxy_protocol=True, handshake_timeout=0.3).admit(conn, peer) is None
    assert 0.3 <= time.monotonic() - started < 2
    assert_closed(client)
    (line,) = records(intake_log, logging.INFO)
    assert "no complete PROXY header within 0.3s" in line


def test_dribbling_client_cannot_stretch_the_deadline(loopback: Loopback) -> None:
    client, conn, peer = loopback.connect()
    stop = threading.Event()

    def dribble() -> None:
        # A slow client: one byte of a valid beginning every 50 ms (the pace is the
        # behaviour under test, not synchronisation).
        for byte in V1[:30]:
            if stop.wait(0.05):
                return
            with contextlib.suppress(OSError):
                client.send(bytes([byte]))

    sender = threading.Thread(target=dribble)
    sender.start()
    try:
        started = time.monotonic()
        assert Intake(proxy_protocol=True, handshake_timeout=0.3).admit(conn, peer) is None
        assert 0.3 <= time.monotonic() - started < 1.5
    finally:
        stop.set()
        sender.join(10)


def test_connect_and_close_logs_at_debug_only(
    loopback: Loopback, intake_log: pytest.LogCaptureFixture
) -> None:
    client, conn, peer = loopback.connect()
    client.close()  # a TCP health check
    assert Intake(proxy_protocol=True).admit(conn, peer) is None
    assert [r.levelno for r in intake_log.records] == [logging.DEBUG]


# --- access lists ---


@pytest.mark.parametrize(("allow", "deny", "source", "admitted"), [
    (["127.0.0.1/32"], [], "127.0.0.1", True),
    (["127.0.0.1/32"], [], "127.0.0.2", False),
    ([], ["127.0.0.2/32"], "127.0.0.1", True),
    ([], ["127.0.0.2/32"], "127.0.0.2", False),
    (["127.0.0.0/8"], ["127.0.0.2"], "127.0.0.2", False),  # deny wins inside allow
    (["127.0.0.0/8"], ["127.0.0.2"], "127.0.0.3", True),
    (["::1/128"], [], "127.0.0.1", False),  # other family: not in the list
])
def test_allow_and_deny_lists(
    loopback: Loopback, intake_log: pytest.LogCaptureFixture,
    allow: list[str], deny: list[str], source: str, admitted: bool,
) -> None:
    client, conn, peer = loopback.connect(source)
    result = Intake(allow_from=allow, deny_from=deny).admit(conn, peer)
    assert (result is not None) is admitted
    if admitted:
        assert result == (conn, (source, peer[1]))
        assert records(intake_log) == []
    else:
        assert_closed(client)
        (line,) = records(intake_log, logging.INFO)
        assert line.startswith(f"refused {source}:")


def test_access_lists_check_the_address_from_the_proxy_header(loopback: Loopback) -> None:
    client, conn, peer = loopback.connect()
    client.sendall(V1)
    intake = Intake(proxy_protocol=True, allow_from=["10.0.0.0/8"])
    assert intake.admit(conn, peer) == (conn, ("10.1.2.3", 5555))
    client2, conn2, peer2 = loopback.connect()
    client2.sendall(V1.replace(b"10.1.2.3", b"11.1.2.3"))
    assert intake.admit(conn2, peer2) is None
    assert_closed(client2)


def test_ipv4_mapped_clients_match_ipv4_networks() -> None:
    intake = Intake(allow_from=["192.0.2.0/24"])
    assert intake.refusal(("::ffff:192.0.2.9", 1, 0, 0)) is None
    assert intake.refusal(("::ffff:198.51.100.1", 1, 0, 0)) == "not in allow_from"


def test_unix_peers_are_outside_every_network() -> None:
    assert Intake(allow_from=["0.0.0.0/0", "::/0"]).refusal("") == "not in allow_from"
    assert Intake(deny_from=["0.0.0.0/0", "::/0"]).refusal("/run/client.sock") is None


def test_datagrams_are_filtered_but_the_shared_socket_stays_open(
    intake_log: pytest.LogCaptureFixture,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as shared:
        intake = Intake(deny_from=["127.0.0.2/32"])
        assert intake.admit((b"data", shared), ("127.0.0.2", 9)) is None
        assert shared.fileno() != -1
        assert intake.admit((b"data", shared), ("127.0.0.1", 9)) == ((b"data", shared),
                                                                     ("127.0.0.1", 9))
        assert [r.levelno for r in intake_log.records] == [logging.DEBUG]


# --- client_timeout ---


def test_client_timeout_is_set_on_the_connection(loopback: Loopback) -> None:
    _, conn, peer = loopback.connect()
    admitted = Intake(client_timeout=0.25).admit(conn, peer)
    assert admitted is not None
    request = admitted[0]
    assert request.gettimeout() == 0.25
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        request.recv(10)  # the idle client does not hold the reader forever
    assert time.monotonic() - started < 2


def kernel_timeouts(sock: Any) -> tuple[float, float]:
    """A socket's SO_RCVTIMEO and SO_SNDTIMEO, in seconds (0.0: none)."""
    return tuple(  # type: ignore[return-value]
        sec + usec / 1e6
        for sec, usec in (
            struct.unpack("@ll", sock.getsockopt(socket.SOL_SOCKET, option, 16))
            for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO)
        )
    )


def test_tcp_connections_inherit_client_timeout_from_the_listener(loopback: Loopback) -> None:
    intake = Intake(client_timeout=0.3)
    intake.inherit_timeout([loopback.listener], blocking=True)  # a sync worker's boot
    assert kernel_timeouts(loopback.listener) == (0.3, 0.3)
    client, conn, peer = loopback.connect()
    assert intake.admit(conn, peer) == (conn, peer)
    # No settimeout: a blocking socket, no poll() before each recv; the kernel's timeout,
    # which gettimeout() reports and which ends a wait with TimeoutError, as Python's does.
    assert isinstance(conn, KernelTimedSocket)
    assert conn.gettimeout() == 0.3
    assert kernel_timeouts(conn) == (0.3, 0.3)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        conn.recv(10)  # EAGAIN once the idle client has said nothing for 0.3 s
    assert 0.25 < time.monotonic() - started < 2
    client.sendall(b"partial")
    with conn.makefile("rb") as rfile:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            rfile.readline()  # never half a line: the bytes stay buffered
        assert 0.25 < time.monotonic() - started < 2
    # The handler turns it off: blocking with no timeout at all, in Python or the kernel.
    conn.settimeout(None)
    assert type(conn) is Connection  # the worker's plain connection class
    assert kernel_timeouts(conn) == (0.0, 0.0)


def test_a_kernel_timed_socket_in_non_blocking_mode_says_blocking_io(loopback: Loopback) -> None:
    intake = Intake(client_timeout=0.3)
    intake.inherit_timeout([loopback.listener], blocking=True)
    _client, conn, peer = loopback.connect()
    intake.admit(conn, peer)
    conn.setblocking(False)  # the handler's choice: EAGAIN means "nothing yet" again
    with pytest.raises(BlockingIOError):
        conn.recv(10)
    conn.settimeout(0.05)  # a Python timeout of its own: Python's TimeoutError
    with pytest.raises(TimeoutError):
        conn.recv(10)


def test_a_proxied_tcp_connection_keeps_the_inherited_timeout(loopback: Loopback) -> None:
    intake = Intake(client_timeout=0.3, proxy_protocol=True)
    intake.inherit_timeout([loopback.listener], blocking=True)
    client, conn, peer = loopback.connect()
    client.sendall(V1)
    assert intake.admit(conn, peer) == (conn, ("10.1.2.3", 5555))
    assert conn.gettimeout() == 0.3  # blocking again after the header, the kernel's
    assert kernel_timeouts(conn) == (0.3, 0.3)


def test_unix_socket_connections_keep_a_python_timeout(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        listener.bind(str(tmp_path / "s"))
        listener.listen()
        intake = Intake(client_timeout=0.3)
        intake.inherit_timeout([listener], blocking=True)
        client.connect(str(tmp_path / "s"))
        conn, peer = listener.accept()
        with conn:
            assert kernel_timeouts(conn) == (0.0, 0.0)  # Unix sockets do not inherit it
            assert intake.admit(conn, peer) == (conn, peer)
            assert conn.gettimeout() == 0.3
            with pytest.raises(TimeoutError):
                conn.recv(10)


@pytest.mark.parametrize(("client_timeout", "blocking"), [
    pytest.param(0.3, False, id="non-blocking sockets (gevent)"),
    pytest.param(None, True, id="client_timeout off"),
])
def test_listener_timeout_cleared_where_the_kernel_does_not_enforce_it(
    loopback: Loopback, client_timeout: float | None, blocking: bool
) -> None:
    intake = Intake(client_timeout=client_timeout, allow_from=["127.0.0.1/32"])
    set_listener_timeout([loopback.listener], 1.0)  # an earlier generation's
    intake.inherit_timeout([loopback.listener], blocking=blocking)
    assert kernel_timeouts(loopback.listener) == (0.0, 0.0)
    _, conn, peer = loopback.connect()
    assert intake.admit(conn, peer) == (conn, peer)
    assert kernel_timeouts(conn) == (0.0, 0.0)
    assert conn.gettimeout() == client_timeout  # 0.3 in Python, or none at all


def test_a_default_socket_timeout_keeps_client_timeout_in_python(loopback: Loopback) -> None:
    intake = Intake(client_timeout=0.3)
    socket.setdefaulttimeout(5)
    try:
        intake.inherit_timeout([loopback.listener], blocking=True)
    finally:
        socket.setdefaulttimeout(None)
    assert kernel_timeouts(loopback.listener) == (0.0, 0.0)
    _, conn, peer = loopback.connect()
    intake.admit(conn, peer)
    assert conn.gettimeout() == 0.3


def test_listener_timeout_leaves_datagram_sockets_alone() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
            socket.create_server(("127.0.0.1", 0)) as tcp:
        assert set_listener_timeout([udp, tcp], 2.5)
        assert kernel_timeouts(udp) == (0.0, 0.0)
        assert kernel_timeouts(tcp) == (2.5, 2.5)
        assert set_listener_timeout([udp, tcp], None)
        assert kernel_timeouts(tcp) == (0.0, 0.0)


# --- TLS ---


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def tls_client(
    client: socket.socket, context: ssl.SSLContext, prefix: bytes = b""
) -> tuple[threading.Thread, list[Any]]:
    """Handshake (after sending *prefix* in clear) and send b"ping" from a thread."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            client.sendall(prefix)
            tls = context.wrap_socket(client, server_hostname="localhost")
            tls.sendall(b"ping")
            outcome.append(tls)
        except (OSError, ssl.SSLError) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_tls_handshake_then_the_handler_reads_plaintext(
    loopback: Loopback, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    client, conn, peer = loopback.connect()
    thread, outcome = tls_client(client, client_context, prefix=V1)
    admitted = Intake(proxy_protocol=True, ssl_context=server_context,
                      client_timeout=5).admit(conn, peer)
    thread.join(10)
    assert admitted is not None
    request = loopback.keep(admitted[0])
    assert isinstance(request, ssl.SSLSocket)
    assert admitted[1] == ("10.1.2.3", 5555)
    assert request.gettimeout() == 5
    assert request.recv(10) == b"ping"
    assert isinstance(outcome[0], ssl.SSLSocket)
    loopback.keep(outcome[0])


def test_tls_connections_keep_a_python_timeout(
    loopback: Loopback, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    intake = Intake(ssl_context=server_context, client_timeout=0.3)
    set_listener_timeout([loopback.listener], 1.0)  # an earlier generation's
    intake.inherit_timeout([loopback.listener], blocking=True)
    assert kernel_timeouts(loopback.listener) == (0.0, 0.0)
    client, conn, peer = loopback.connect()
    thread, outcome = tls_client(client, client_context)
    admitted = intake.admit(conn, peer)
    thread.join(10)
    assert admitted is not None
    request = loopback.keep(admitted[0])
    loopback.keep(outcome[0])
    assert request.gettimeout() == 0.3
    assert request.recv(10) == b"ping"
    with pytest.raises(TimeoutError):
        request.recv(10)


def test_tls_handshake_failure_is_closed_and_logged(
    loopback: Loopback, server_context: ssl.SSLContext, client_context: ssl.SSLContext,
    intake_log: pytest.LogCaptureFixture,
) -> None:
    server_context.minimum_version = ssl.TLSVersion.TLSv1_3
    client_context.maximum_version = ssl.TLSVersion.TLSv1_2
    client, conn, peer = loopback.connect()
    thread, outcome = tls_client(client, client_context)
    assert Intake(ssl_context=server_context).admit(conn, peer) is None
    thread.join(10)
    assert isinstance(outcome[0], ssl.SSLError)
    (line,) = records(intake_log, logging.INFO)
    assert "TLS handshake failed" in line


def test_tls_silent_client_is_closed_after_handshake_timeout(
    loopback: Loopback, server_context: ssl.SSLContext, intake_log: pytest.LogCaptureFixture
) -> None:
    client, conn, peer = loopback.connect()
    started = time.monotonic()
    assert Intake(ssl_context=server_context, handshake_timeout=0.3).admit(conn, peer) is None
    assert 0.3 <= time.monotonic() - started < 2
    assert_closed(client)
    (line,) = records(intake_log, logging.INFO)
    assert "TLS handshake not done within 0.3s" in line


def test_proxy_header_and_handshake_share_one_deadline(
    loopback: Loopback, server_context: ssl.SSLContext
) -> None:
    client, conn, peer = loopback.connect()
    stop = threading.Event()

    def slow_header() -> None:
        # Most of the budget goes on the header; the (absent) ClientHello gets the rest.
        if not stop.wait(0.7):
            client.sendall(V1)

    sender = threading.Thread(target=slow_header)
    sender.start()
    try:
        started = time.monotonic()
        intake = Intake(proxy_protocol=True, ssl_context=server_context, handshake_timeout=1)
        assert intake.admit(conn, peer) is None
        # 1 s in all; a fresh timeout for the handshake would make it 1.7 s.
        assert 1 <= time.monotonic() - started < 1.5
    finally:
        stop.set()
        sender.join(10)


# --- build_intake ---


def stream_server(**attributes: Any) -> Any:
    return SimpleNamespace(socket_type=socket.SOCK_STREAM, **attributes)


def test_nothing_enabled_means_no_intake() -> None:
    assert build_intake(build({"client_timeout": None}), stream_server()) is None
    udp = SimpleNamespace(socket_type=socket.SOCK_DGRAM)
    assert build_intake(build({"client_timeout": 5}), udp) is None


@pytest.mark.parametrize("values", [
    {"proxy_protocol": True}, {"allow_from": "10.0.0.0/8"}, {"deny_from": "10.0.0.0/8"},
    {"client_timeout": 5},
])
def test_any_setting_enables_the_intake(values: dict[str, Any]) -> None:
    assert isinstance(build_intake(build(values), stream_server()), Intake)


@pytest.fixture
def pem_files(tmp_path: Path, ca: trustme.CA) -> dict[str, str]:
    cert = ca.issue_cert("127.0.0.1")
    paths = {name: str(tmp_path / f"{name}.pem") for name in ("cert", "key", "ca", "junk")}
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    ca.cert_pem.write_to_path(paths["ca"])
    Path(paths["junk"]).write_text("not PEM\n")
    return paths


def test_tls_settings_build_the_context(pem_files: dict[str, str]) -> None:
    settings = build({
        "certfile": pem_files["cert"], "keyfile": pem_files["key"],
        "ca_certs": pem_files["ca"], "tls_verify_client": "required",
        "tls_min_version": "1.3", "tls_ciphers": "ECDHE+AESGCM",
    })
    intake = build_intake(settings, stream_server())
    assert intake is not None and intake.ssl_context is not None
    assert intake.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert intake.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert {c["name"] for c in intake.ssl_context.get_ciphers()} >= {
        "ECDHE-RSA-AES128-GCM-SHA256", "TLS_AES_256_GCM_SHA384"
    }


def test_a_ready_ssl_context_overrides_the_cert_settings(
    server_context: ssl.SSLContext, pem_files: dict[str, str]
) -> None:
    settings = build({"certfile": "/nonexistent.pem"})  # ignored: the context wins
    intake = build_intake(settings, stream_server(ssl_context=server_context))
    assert intake is not None and intake.ssl_context is server_context
    with pytest.raises(ConfigError, match="ssl_context"):
        build_intake(build({}), stream_server(ssl_context="yes please"))


BadFiles = Callable[[dict[str, str]], dict[str, Any]]


@pytest.mark.parametrize(("setting", "values"), [
    ("certfile", lambda p: {"certfile": "/nonexistent/cert.pem", "keyfile": p["key"]}),
    ("certfile", lambda p: {"certfile": p["junk"], "keyfile": p["key"]}),
    ("certfile", lambda p: {"certfile": p["cert"]}),  # no key in it, no keyfile
    ("keyfile", lambda p: {"certfile": p["cert"], "keyfile": "/nonexistent/key.pem"}),
    ("keyfile", lambda p: {"certfile": p["cert"], "keyfile": p["junk"]}),
    ("keyfile", lambda p: {"certfile": p["cert"], "keyfile": p["ca"]}),
    ("ca_certs", lambda p: {"certfile": p["cert"], "keyfile": p["key"], "ca_certs": p["junk"]}),
    ("ca_certs", lambda p: {"certfile": p["cert"], "keyfile": p["key"],
                            "ca_certs": "/nonexistent/ca.pem"}),
    ("tls_ciphers", lambda p: {"certfile": p["cert"], "keyfile": p["key"],
                               "tls_ciphers": "NO-SUCH-CIPHER"}),
])
def test_bad_tls_files_name_their_setting(
    pem_files: dict[str, str], setting: str, values: BadFiles
) -> None:
    settings = values(pem_files)
    with pytest.raises(ConfigError) as caught:
        build_intake(build(settings), stream_server())
    assert caught.value.setting == setting
    assert caught.value.value == settings[setting]
    assert str(caught.value).startswith(f"invalid setting {setting}=")


def test_stream_only_features_refused_for_datagram_servers(
    server_context: ssl.SSLContext,
) -> None:
    udp = SimpleNamespace(socket_type=socket.SOCK_DGRAM)
    with pytest.raises(ConfigError, match="proxy_protocol"):
        build_intake(build({"proxy_protocol": True}), udp)
    udp.ssl_context = server_context
    with pytest.raises(ConfigError, match="ssl_context"):
        build_intake(build({}), udp)
    del udp.ssl_context
    intake = build_intake(build({"deny_from": "10.0.0.0/8"}), udp)
    assert intake is not None and intake.deny_from
