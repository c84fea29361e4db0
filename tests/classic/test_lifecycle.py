"""The request pipeline and the serving loop: handler lifecycle, errors, verification,
timeouts, shutdown and closing."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import engine
from tests.kit import connect, read_to_eof


class Boom(BaseException):
    """Like KeyboardInterrupt/SystemExit: not an Exception, must not be swallowed."""




class RecordingServer(engine.TCPServer):
    """Records every pipeline hook it goes through."""

    def __init__(self, handler: type[engine.BaseRequestHandler]) -> None:
        self.calls: list[str] = []
        self.errors: list[type[BaseException] | None] = []
        super().__init__(("127.0.0.1", 0), handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.calls.append("verify_request")
        return super().verify_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.calls.append("handle_error")
        self.errors.append(sys.exc_info()[0])

    def shutdown_request(self, request: Any) -> None:
        self.calls.append("shutdown_request")
        super().shutdown_request(request)

    def handle_timeout(self) -> None:
        self.calls.append("handle_timeout")


def make_handler(
    raise_in_handle: type[BaseException] | None = None,
) -> type[engine.BaseRequestHandler]:
    class Handler(engine.BaseRequestHandler):
        def setup(self) -> None:
            self.server.calls.append("setup")

        def handle(self) -> None:
            self.server.calls.append("handle")
            if raise_in_handle is not None:
                raise raise_in_handle("from handle")
            self.request.sendall(b"served\n")

        def finish(self) -> None:
            self.server.calls.append("finish")

    return Handler


@pytest.fixture
def recording(no_leaks: None) -> Iterator[Any]:
    """Make RecordingServers; closed before the no_leaks check runs."""
    servers: list[RecordingServer] = []

    def make(raise_in_handle: type[BaseException] | None = None) -> RecordingServer:
        server = RecordingServer(make_handler(raise_in_handle))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.server_close()


def test_handler_lifecycle_order(recording: Any) -> None:
    server = recording()
    with connect(server) as client:
        server.handle_request()
        assert read_to_eof(client) == b"served\n"
    assert server.calls == ["verify_request", "setup", "handle", "finish", "shutdown_request"]
    assert server.errors == []


def test_handler_gets_request_address_and_server(no_leaks: None) -> None:
    seen: dict[str, Any] = {}

    class Handler(engine.BaseRequestHandler):
        def handle(self) -> None:
            seen.update(request=self.request, address=self.client_address, server=self.server)

    with engine.TCPServer(("127.0.0.1", 0), Handler) as server, connect(server) as client:
        server.handle_request()
        assert seen["server"] is server
        assert seen["address"] == client.getsockname()
        assert isinstance(seen["request"], socket.socket)
        assert seen["request"].fileno() == -1, "the request socket is closed afterwards"


def test_finish_runs_and_handle_error_called_when_handle_raises(recording: Any) -> None:
    server = recording(ValueError)
    with connect(server) as client:
        server.handle_request()
        assert read_to_eof(client) == b"", "the failed request is closed"
    assert server.calls == [
        "verify_request",
        "setup",
        "handle",
        "finish",
        "handle_error",
        "shutdown_request",
    ]
    assert server.errors == [ValueError]


def test_base_exception_propagates_without_handle_error(recording: Any) -> None:
    server = recording(Boom)
    with connect(server) as client:
        with pytest.raises(Boom):
            server.handle_request()
        assert read_to_eof(client) == b"", "the request is still closed"
    assert "handle_error" not in server.calls
    assert server.calls[-2:] == ["finish", "shutdown_request"]


def test_base_exception_propagates_out_of_serve_forever(recording: Any) -> None:
    server = recording(Boom)
    with connect(server), pytest.raises(Boom):
        server.serve_forever(poll_interval=0.05)
    assert "handle_error" not in server.calls
    started = time.monotonic()
    server.shutdown()  # the loop is no longer running: must not wait for it
    assert time.monotonic() - started < 1


def test_server_keeps_serving_after_a_handler_error(no_leaks: None) -> None:
    errors: list[type[BaseException] | None] = []

    class FlakyHandler(engine.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            if line == b"fail\n":
                raise RuntimeError("asked to fail")
            self.wfile.write(b"ok:" + line)

    class Server(engine.TCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            errors.append(sys.exc_info()[0])

    server = Server(("127.0.0.1", 0), FlakyHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        with connect(server, b"fail\n") as client:
            assert read_to_eof(client) == b""
        with connect(server, b"again\n") as client:
            assert read_to_eof(client) == b"ok:again\n"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert not thread.is_alive()
    assert errors == [RuntimeError]


def test_default_handle_error_prints_traceback_and_continues(
    capfd: pytest.CaptureFixture[str], no_leaks: None
) -> None:
    class Handler(engine.BaseRequestHandler):
        def handle(self) -> None:
            raise ZeroDivisionError("reported")

    with engine.TCPServer(("127.0.0.1", 0), Handler) as server, connect(server) as client:
        server.handle_request()
        address = client.getsockname()
    err = capfd.readouterr().err
    assert "Exception occurred during processing of request from" in err
    assert str(address) in err
    assert "ZeroDivisionError: reported" in err


def test_verify_request_false_closes_unserved(no_leaks: None) -> None:
    handled: list[bool] = []
    shutdowns: list[Any] = []

    class Handler(engine.BaseRequestHandler):
        def handle(self) -> None:
            handled.append(True)

    class Picky(engine.TCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            return False

        def shutdown_request(self, request: Any) -> None:
            shutdowns.append(request)
            super().shutdown_request(request)

    with Picky(("127.0.0.1", 0), Handler) as server, connect(server) as client:
        server.handle_request()
        assert read_to_eof(client) == b"", "the client sees EOF"
    assert handled == []
    assert len(shutdowns) == 1
    assert shutdowns[0].fileno() == -1


def test_handle_request_timeout_calls_handle_timeout(recording: Any) -> None:
    server = recording()
    server.timeout = 0.05
    started = time.monotonic()
    server.handle_request()
    assert time.monotonic() - started >= 0.04
    assert server.calls == ["handle_timeout"]


def test_handle_request_socket_timeout_also_counts(recording: Any) -> None:
    server = recording()
    server.socket.settimeout(0.05)  # timeout stays None: the socket's timeout applies
    server.handle_request()
    assert server.calls == ["handle_timeout"]


def test_handle_request_with_timeout_serves_a_waiting_request(recording: Any) -> None:
    server = recording()
    server.timeout = 5
    with connect(server) as client:
        server.handle_request()
        assert read_to_eof(client) == b"served\n"
    assert "handle_timeout" not in server.calls


class EchoLine(engine.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def test_shutdown_from_another_thread_stops_serve_forever(no_leaks: None) -> None:
    server = engine.TCPServer(("127.0.0.1", 0), EchoLine)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5})
    thread.start()
    try:
        # One request served proves the loop is running before we stop it.
        with connect(server, b"ping\n") as client:
            assert read_to_eof(client) == b"ping\n"
        started = time.monotonic()
        server.shutdown()
        elapsed = time.monotonic() - started
        assert not thread.is_alive(), "shutdown() returned before serve_forever ended"
        assert elapsed < 5
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def test_shutdown_when_not_serving_returns_at_once(no_leaks: None) -> None:
    with engine.TCPServer(("127.0.0.1", 0), EchoLine) as server:
        started = time.monotonic()
        server.shutdown()
        assert time.monotonic() - started < 0.5
        # As in the stdlib, a pending shutdown makes the next serve_forever return at once...
        started = time.monotonic()
        server.serve_forever(poll_interval=5)
        assert time.monotonic() - started < 2
        # ...and is consumed by it: the loop can be run (and stopped) again afterwards.
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        with connect(server, b"again\n") as client:
            assert read_to_eof(client) == b"again\n"
        server.shutdown()
        thread.join(10)
        assert not thread.is_alive()


@pytest.mark.parametrize(
    "server_class", [engine.TCPServer, engine.ThreadingTCPServer], ids=["sync", "threading"]
)
def test_shutdown_from_inside_a_handler_does_not_deadlock(
    server_class: type[engine.TCPServer], no_leaks: None
) -> None:
    class StopHandler(engine.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            self.server.shutdown()
            self.wfile.write(b"stopping\n")

    server = server_class(("127.0.0.1", 0), StopHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        with connect(server, b"stop\n") as client:
            assert read_to_eof(client) == b"stopping\n"
        thread.join(5)
        assert not thread.is_alive(), "serve_forever did not stop after shutdown from a handler"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def test_service_actions_called_by_serve_forever(no_leaks: None) -> None:
    class Server(engine.TCPServer):
        actions = 0

        def service_actions(self) -> None:
            self.actions += 1
            if self.actions == 3:
                self.shutdown()  # from the serving thread: requests a stop, returns

    with Server(("127.0.0.1", 0), EchoLine) as server:
        server.serve_forever(poll_interval=0.01)
    assert server.actions == 3


def test_context_manager_closes_the_socket(no_leaks: None) -> None:
    with engine.TCPServer(("127.0.0.1", 0), EchoLine) as server:
        assert server.fileno() >= 0
        assert server.fileno() == server.socket.fileno()
    assert server.socket.fileno() == -1
    assert server.fileno() == -1


def test_context_manager_closes_on_error(no_leaks: None) -> None:
    with pytest.raises(KeyError), engine.UDPServer(("127.0.0.1", 0), EchoLine) as server:
        raise KeyError("inside")
    assert server.fileno() == -1


@pytest.mark.parametrize(
    "server_class", [engine.TCPServer, engine.UDPServer, engine.ThreadingTCPServer]
)
@pytest.mark.parametrize("method", ["serve_forever", "handle_request"])
def test_serving_a_closed_server_raises_value_error(
    server_class: type[engine.TCPServer], method: str, no_leaks: None
) -> None:
    server = server_class(("127.0.0.1", 0), EchoLine)
    address = server.server_address
    server.server_close()
    with pytest.raises(ValueError, match=rf"^{method}\(\) called on a closed server") as info:
        getattr(server, method)()
    assert str(address) in str(info.value), "the message names the server"
