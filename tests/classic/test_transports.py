"""Every classic server class serves real requests over its real transport.

TCP over IPv4 and IPv6, UDP over both, Unix stream and Unix datagram sockets, each
plain, threading and forking. Requests are made over real sockets; the forking servers
are driven with ``handle_request`` from the test's only thread, so no fork happens while
another thread runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import engine
from tests.kit import read_to_eof

AF_UNIX = getattr(socket, "AF_UNIX", None)


def _ipv6_unavailable_reason() -> str | None:
    if not socket.has_ipv6:
        return "Python was built without IPv6 support"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        return f"cannot bind ::1 on this host ({exc})"
    return None


IPV6_SKIP_REASON = _ipv6_unavailable_reason()
needs_ipv6 = pytest.mark.skipif(IPV6_SKIP_REASON is not None, reason=str(IPV6_SKIP_REASON))
needs_unix = pytest.mark.skipif(AF_UNIX is None, reason="no AF_UNIX sockets on this platform")


class TCP6Server(engine.TCPServer):
    address_family = socket.AF_INET6


class UDP6Server(engine.UDPServer):
    address_family = socket.AF_INET6


class ThreadingTCP6Server(engine.ThreadingMixIn, TCP6Server):
    pass


class StreamEcho(engine.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        self.wfile.write(b"echo:" + line)


class DgramEcho(engine.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"echo:" + self.rfile.read())


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for Unix socket paths (sun_path is limited to ~108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="eng-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _case(name: str, kind: str, family: Any, *marks: pytest.MarkDecorator) -> Any:
    cls = getattr(engine, name, None) or globals()[name]
    return pytest.param(cls, kind, family, id=name, marks=marks)


INET = socket.AF_INET
INET6 = socket.AF_INET6
CASES = [
    _case("TCPServer", "stream", INET),
    _case("ThreadingTCPServer", "stream", INET),
    _case("TCP6Server", "stream", INET6, needs_ipv6),
    _case("ThreadingTCP6Server", "stream", INET6, needs_ipv6),
    _case("UDPServer", "dgram", INET),
    _case("ThreadingUDPServer", "dgram", INET),
    _case("UDP6Server", "dgram", INET6, needs_ipv6),
]
if hasattr(os, "fork"):
    CASES += [
        _case("ForkingTCPServer", "stream", INET),
        _case("ForkingUDPServer", "dgram", INET),
    ]
if AF_UNIX is not None:
    CASES += [
        _case("UnixStreamServer", "stream", AF_UNIX),
        _case("ThreadingUnixStreamServer", "stream", AF_UNIX),
        _case("UnixDatagramServer", "dgram", AF_UNIX),
        _case("ThreadingUnixDatagramServer", "dgram", AF_UNIX),
    ]
    if hasattr(os, "fork"):
        CASES += [
            _case("ForkingUnixStreamServer", "stream", AF_UNIX),
            _case("ForkingUnixDatagramServer", "dgram", AF_UNIX),
        ]


def server_address(family: Any, sock_dir: Path, name: str = "srv") -> Any:
    if family == socket.AF_INET:
        return ("127.0.0.1", 0)
    if family == socket.AF_INET6:
        return ("::1", 0)
    return str(sock_dir / name)



def one_exchange(
    server: engine.BaseServer, kind: str, family: Any, payload: bytes, client_path: str
) -> bytes:
    """Send *payload* as one request, let the server handle exactly it, return the reply."""
    if kind == "stream":
        with socket.socket(family, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(server.server_address)
            client.sendall(payload)
            server.handle_request()
            return read_to_eof(client)
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        if family == AF_UNIX:
            client.bind(client_path)  # a datagram reply needs an address to go to
        client.sendto(payload, server.server_address)
        server.handle_request()
        reply, _ = client.recvfrom(65536)
        return reply


@pytest.mark.parametrize(("server_class", "kind", "family"), CASES)
def test_echo_with_handle_request(
    server_class: type[engine.TCPServer], kind: str, family: Any, sock_dir: Path, no_leaks: None
) -> None:
    handler = StreamEcho if kind == "stream" else DgramEcho
    with server_class(server_address(family, sock_dir), handler) as server:
        assert server.server_address == server.socket.getsockname()
        assert server.socket.family == family
        if family != AF_UNIX:
            assert server.server_address[1] != 0, "the real port replaces port 0"
        for i in range(3):
            payload = b"hello %d\n" % i
            reply = one_exchange(server, kind, family, payload, str(sock_dir / f"cli{i}"))
            assert reply == b"echo:" + payload
    assert server.fileno() == -1
    if isinstance(server, getattr(engine, "ForkingMixIn", ())):
        assert not server.active_children


@contextlib.contextmanager
def serving(server: engine.BaseServer) -> Iterator[threading.Thread]:
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="serve_forever"
    )
    thread.start()
    try:
        yield thread
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert not thread.is_alive()


NO_FORK_CASES = [case for case in CASES if "Forking" not in str(case.id)]


@pytest.mark.parametrize(("server_class", "kind", "family"), NO_FORK_CASES)
def test_echo_with_serve_forever(
    server_class: type[engine.TCPServer], kind: str, family: Any, sock_dir: Path, no_leaks: None
) -> None:
    handler = StreamEcho if kind == "stream" else DgramEcho
    server = server_class(server_address(family, sock_dir), handler)
    with serving(server):
        for i in range(3):
            payload = b"forever %d\n" % i
            if kind == "stream":
                with socket.socket(family, socket.SOCK_STREAM) as client:
                    client.settimeout(10)
                    client.connect(server.server_address)
                    client.sendall(payload)
                    reply = read_to_eof(client)
            else:
                with socket.socket(family, socket.SOCK_DGRAM) as client:
                    client.settimeout(10)
                    if family == AF_UNIX:
                        client.bind(str(sock_dir / f"cli{i}"))
                    client.sendto(payload, server.server_address)
                    reply = client.recv(65536)
            assert reply == b"echo:" + payload
    assert server.fileno() == -1


def test_udp_max_packet_size_truncates(no_leaks: None) -> None:
    seen: list[bytes] = []

    class Recorder(engine.DatagramRequestHandler):
        def handle(self) -> None:
            seen.append(self.packet)
            self.wfile.write(b"%d" % len(self.rfile.read()))

    class SmallUDPServer(engine.UDPServer):
        max_packet_size = 16

    with SmallUDPServer(("127.0.0.1", 0), Recorder) as server:
        reply = one_exchange(server, "dgram", socket.AF_INET, bytes(range(100)), "")
    assert seen == [bytes(range(16))]
    assert reply == b"16"


def test_udp_default_max_packet_size_is_8192() -> None:
    assert engine.UDPServer.max_packet_size == 8192


def test_reuse_options_default_off(no_leaks: None) -> None:
    with engine.TCPServer(("127.0.0.1", 0), StreamEcho) as server:
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        if hasattr(socket, "SO_REUSEPORT"):
            assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0


def test_allow_reuse_address_sets_so_reuseaddr(no_leaks: None) -> None:
    class ReuseServer(engine.TCPServer):
        allow_reuse_address = True

    with ReuseServer(("127.0.0.1", 0), StreamEcho) as server:
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT here")
@pytest.mark.parametrize("base", [engine.TCPServer, engine.UDPServer], ids=["tcp", "udp"])
def test_allow_reuse_port_sets_so_reuseport(base: type[engine.TCPServer], no_leaks: None) -> None:
    class ReusePortServer(base):  # type: ignore[valid-type,misc]
        allow_reuse_port = True

    with ReusePortServer(("127.0.0.1", 0), StreamEcho) as first:
        assert first.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
        # The point of the option: a second socket can bind the very same port.
        with ReusePortServer(first.server_address, StreamEcho) as second:
            assert second.server_address == first.server_address


@needs_unix
@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT here")
def test_allow_reuse_port_ignored_for_unix_sockets(sock_dir: Path, no_leaks: None) -> None:
    class ReusePortUnixServer(engine.UnixStreamServer):
        allow_reuse_port = True

    with ReusePortUnixServer(str(sock_dir / "reuse"), StreamEcho) as server:
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        reply = one_exchange(server, "stream", socket.AF_UNIX, b"unix\n", "")
    assert reply == b"echo:unix\n"


def test_bind_and_activate_false_then_manual(no_leaks: None) -> None:
    server = engine.TCPServer(("127.0.0.1", 0), StreamEcho, bind_and_activate=False)
    with server:
        assert server.server_address == ("127.0.0.1", 0)
        assert server.socket.getsockname() == ("0.0.0.0", 0), "not bound yet"
        # The reason to defer: options can be set before bind.
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.server_bind()
        host, port = server.server_address
        assert host == "127.0.0.1" and port != 0
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
        server.server_activate()
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 0
        assert one_exchange(server, "stream", socket.AF_INET, b"late\n", "") == b"echo:late\n"


def test_failed_bind_closes_the_socket(no_leaks: None) -> None:
    with engine.TCPServer(("127.0.0.1", 0), StreamEcho) as taken, pytest.raises(OSError):
        engine.TCPServer(taken.server_address, StreamEcho)
    # no_leaks checks the half-built server's socket was closed rather than leaked


def test_repr_shows_bound_address(sock_dir: Path, no_leaks: None) -> None:
    with engine.TCPServer(("127.0.0.1", 0), StreamEcho) as server:
        port = server.server_address[1]
        assert repr(server) == f"<TCPServer ('127.0.0.1', {port})>"

    class MyThreadingServer(engine.ThreadingUDPServer):
        pass

    with MyThreadingServer(("127.0.0.1", 0), DgramEcho) as server:
        port = server.server_address[1]
        assert f"('127.0.0.1', {port})" in repr(server)
        assert "MyThreadingServer" in repr(server)

    if AF_UNIX is not None:
        path = str(sock_dir / "repr")
        with engine.UnixStreamServer(path, StreamEcho) as server:
            assert repr(server) == f"<UnixStreamServer {path!r}>"
