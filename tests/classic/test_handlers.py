"""StreamRequestHandler and DatagramRequestHandler: their attributes and file objects."""

from __future__ import annotations

import io
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import engine
from tests.kit import read_to_eof

FOUR_MIB = 4 * 1024 * 1024



class Server(engine.TCPServer):
    """Records what handlers saw and the exceptions handle_error got."""

    timeout = 10  # a failed test must not leave handle_request() waiting forever

    def __init__(self, handler: type[engine.BaseRequestHandler]) -> None:
        self.seen: dict[str, Any] = {}
        self.errors: list[BaseException | None] = []
        self.serving: threading.Thread | None = None
        super().__init__(("127.0.0.1", 0), handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.errors.append(sys.exc_info()[1])


@pytest.fixture
def handle_one(no_leaks: None) -> Iterator[Any]:
    """Serve one request of *handler* in a background thread while the test is the client."""
    started: list[tuple[Server, threading.Thread]] = []

    def start(handler: type[engine.BaseRequestHandler]) -> Server:
        server = Server(handler)
        thread = threading.Thread(target=server.handle_request)
        server.serving = thread
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        thread.join(10)
        server.server_close()
        assert not thread.is_alive()


def handled(server: Server) -> Server:
    """Wait for the background handle_request() to return; then *server.seen* is final."""
    assert server.serving is not None
    server.serving.join(10)
    assert not server.serving.is_alive()
    return server


def exchange(server: Server, payload: bytes = b"") -> bytes:
    """Send *payload*, half-close, read the reply to EOF and wait for the handler to end."""
    with socket.create_connection(server.server_address, timeout=10) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        reply = read_to_eof(client)
    handled(server)
    return reply


def test_stream_defaults() -> None:
    handler = engine.StreamRequestHandler
    assert handler.rbufsize == -1
    assert handler.wbufsize == 0
    assert handler.timeout is None
    assert handler.disable_nagle_algorithm is False


def test_stream_handler_files_and_connection(handle_one: Any) -> None:
    class Handler(engine.StreamRequestHandler):
        def handle(self) -> None:
            self.server.seen.update(
                connection_is_request=self.connection is self.request,
                rfile_buffered=isinstance(self.rfile, io.BufferedReader),
                wfile_is_buffered_io=isinstance(self.wfile, io.BufferedIOBase),
                wfile_fileno=self.wfile.fileno(),
                request_fileno=self.request.fileno(),
                timeout=self.connection.gettimeout(),
                nodelay=self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                line=self.rfile.readline(),
                sent=self.wfile.write(b"reply\n"),
            )
            self.server.seen["files"] = (self.rfile, self.wfile)

    server = handle_one(Handler)
    assert exchange(server, b"line one\nrest") == b"reply\n"
    seen = server.seen
    assert seen["connection_is_request"]
    assert seen["rfile_buffered"], "rbufsize=-1 means a default-buffered rfile"
    assert seen["wfile_is_buffered_io"]
    assert seen["wfile_fileno"] == seen["request_fileno"]
    assert seen["timeout"] is None
    assert seen["nodelay"] == 0
    assert seen["line"] == b"line one\n"
    assert seen["sent"] == len(b"reply\n")
    rfile, wfile = seen["files"]
    assert rfile.closed and wfile.closed, "finish() closes both files"


def test_rbufsize_zero_gives_unbuffered_rfile(handle_one: Any) -> None:
    class Handler(engine.StreamRequestHandler):
        rbufsize = 0

        def handle(self) -> None:
            self.server.seen["rfile_type"] = type(self.rfile)
            self.server.seen["data"] = self.rfile.read(5)

    server = handle_one(Handler)
    exchange(server, b"abcde")
    assert not issubclass(server.seen["rfile_type"], io.BufferedReader)
    assert server.seen["data"] == b"abcde"


def test_unbuffered_wfile_sends_a_big_write_fully(handle_one: Any) -> None:
    class Handler(engine.StreamRequestHandler):
        def handle(self) -> None:
            self.server.seen["first"] = self.wfile.write(b"first\n")
            # No flush: the client must see the line before it answers.
            self.server.seen["answer"] = self.rfile.readline()
            self.server.seen["sent"] = self.wfile.write(b"\xab" * FOUR_MIB)

    server = handle_one(Handler)
    with socket.create_connection(server.server_address, timeout=10) as client:
        first = b""
        while not first.endswith(b"\n"):
            first += client.recv(100)
        assert first == b"first\n"
        client.sendall(b"answer\n")
        data = read_to_eof(client)
    handled(server)
    assert server.seen["first"] == 6
    assert server.seen["answer"] == b"answer\n"
    assert server.seen["sent"] == FOUR_MIB
    assert len(data) == FOUR_MIB and data == b"\xab" * FOUR_MIB


def test_buffered_wfile_is_flushed_in_finish(handle_one: Any) -> None:
    class Handler(engine.StreamRequestHandler):
        wbufsize = 1 << 16

        def handle(self) -> None:
            self.server.seen["wfile_type"] = type(self.wfile)
            self.wfile.write(b"buffered reply")

    server = handle_one(Handler)
    assert exchange(server) == b"buffered reply"
    assert issubclass(server.seen["wfile_type"], io.BufferedWriter)


def test_timeout_is_applied_to_the_connection(handle_one: Any) -> None:
    class Handler(engine.StreamRequestHandler):
        timeout = 0.1

        def handle(self) -> None:
            self.server.seen["timeout"] = self.connection.gettimeout()
            self.rfile.readline()  # the client never sends: this times out

    server = handle_one(Handler)
    with socket.create_connection(server.server_address, timeout=10) as client:
        assert read_to_eof(client) == b""
    handled(server)
    assert server.seen["timeout"] == 0.1
    assert len(server.errors) == 1
    assert isinstance(server.errors[0], TimeoutError)


def test_disable_nagle_algorithm_sets_tcp_nodelay(handle_one: Any) -> None:
    class Handler(engine.StreamRequestHandler):
        disable_nagle_algorithm = True

        def handle(self) -> None:
            self.server.seen["nodelay"] = self.connection.getsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY
            )

    server = handle_one(Handler)
    exchange(server)
    assert server.seen["nodelay"] != 0


def test_datagram_handler_replies_in_finish(no_leaks: None) -> None:
    events: list[Any] = []

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.1", 0))

        class Handler(engine.DatagramRequestHandler):
            def handle(self) -> None:
                events.append(("packet", self.packet, self.rfile.read()))
                events.append(("socket is server's", self.socket is self.server.socket))
                self.wfile.write(b"reply to ")
                self.wfile.write(self.packet)

            def finish(self) -> None:
                events.append(("before finish, client has data", pending(client)))
                super().finish()
                events.append(("after finish, client has data", pending(client)))

        with engine.UDPServer(("127.0.0.1", 0), Handler) as server:
            client.sendto(b"ping", server.server_address)
            server.handle_request()
        client.settimeout(10)
        reply, address = client.recvfrom(100)

    assert reply == b"reply to ping"
    assert address == server.server_address
    assert events == [
        ("packet", b"ping", b"ping"),
        ("socket is server's", True),
        ("before finish, client has data", False),
        ("after finish, client has data", True),
    ]


def pending(sock: socket.socket) -> bool:
    """Whether a datagram waits on *sock*, without consuming it."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    return True


def test_base_handler_runs_in_constructor(no_leaks: None) -> None:
    order: list[str] = []

    class Handler(engine.BaseRequestHandler):
        def setup(self) -> None:
            order.append(f"setup {self.request} {self.client_address} {self.server}")

        def handle(self) -> None:
            order.append("handle")
            raise LookupError("x")

        def finish(self) -> None:
            order.append("finish")

    with pytest.raises(LookupError):
        Handler("req", "addr", "srv")  # type: ignore[arg-type]
    assert order == ["setup req addr srv", "handle", "finish"]


def test_finish_request_makes_the_handler_as_calling_its_class_would() -> None:
    # finish_request skips type.__call__ for plain classes (a greenlet's C stack is
    # smaller); whatever the class customises must still take effect.
    made: list[Any] = []

    class Plain(engine.BaseRequestHandler):
        def handle(self) -> None:
            made.append(("plain", self.request, self.client_address, self.server))

    class Meta(type):
        def __call__(cls, *args: Any) -> Any:
            made.append(("metaclass", *args))
            return None

    class ViaMeta(engine.BaseRequestHandler, metaclass=Meta):
        pass

    class OwnNew(engine.BaseRequestHandler):
        def __new__(cls, *args: Any) -> Any:
            made.append(("new", *args))
            return object.__new__(cls)

        def handle(self) -> None:
            made.append(("handled",))

    class ReturnsValue(engine.BaseRequestHandler):
        def __init__(self, *args: Any) -> None:  # type: ignore[misc]
            return 1  # type: ignore[return-value]

    def factory(*args: Any) -> None:
        made.append(("factory", *args))

    server = type("S", (), {})()
    for handler in (Plain, ViaMeta, OwnNew, factory):
        server.RequestHandlerClass = handler  # type: ignore[attr-defined]
        engine.BaseServer.finish_request(server, "req", "addr")  # type: ignore[arg-type]
    assert made == [("plain", "req", "addr", server), ("metaclass", "req", "addr", server),
                    ("new", "req", "addr", server), ("handled",),
                    ("factory", "req", "addr", server)]
    server.RequestHandlerClass = ReturnsValue  # type: ignore[attr-defined]
    with pytest.raises(TypeError) as ours:
        engine.BaseServer.finish_request(server, "req", "addr")  # type: ignore[arg-type]
    with pytest.raises(TypeError) as calling:
        ReturnsValue("req", "addr", server)  # type: ignore[arg-type]
    assert str(ours.value) == str(calling.value)
