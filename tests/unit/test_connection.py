"""workers.connection: the connections a sync worker hands its handlers behave as the
stdlib's sockets do, operation by operation.

Each hypothesis example drives two connected socket pairs with the same operations: one
whose server side is a ``socket.socket`` (the stdlib's ``makefile`` and ``SocketIO``),
one whose server side is a :class:`Connection` (or, for the kernel's timeout, a
:class:`KernelTimedSocket` with SO_RCVTIMEO set where the stdlib socket has the same
timeout in Python). Every result, exception type and message, and the descriptors'
fate must match. Reads never wait long: the sockets are non-blocking, or time out
after ``WAIT`` (after which every read fails at once, by design).
"""

from __future__ import annotations

import io
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.classic import TCPServer
from workers.connection import (
    Connection,
    ConnectionReader,
    ConnectionWriter,
    KernelTimedSocket,
    acceptor,
    kernel_timed_class,
)

WAIT = 0.03  # seconds: the timeout of the timed modes
BIG = b"x" * 2**20  # a write the socket pair's buffers cannot hold

MODES = ("blocking-timeout", "kernel-timeout", "non-blocking")


@dataclass
class Side:
    """One of the two pairs: the server-side socket, its peer, the file made from it."""

    sock: socket.socket
    peer: socket.socket
    file: Any = None  # makefile("rb")
    wfile: Any = None  # makefile("wb")


def make_side(kind: type[socket.socket], mode: str) -> Side:
    a, peer = socket.socketpair()
    cls: type[socket.socket] = kind
    if kind is not socket.socket and mode == "kernel-timeout":
        cls = kernel_timed_class(WAIT)
    sock = cls(a.family, a.type, a.proto, fileno=a.detach())
    if mode == "non-blocking":
        sock.setblocking(False)
    elif kind is socket.socket or mode == "blocking-timeout":
        sock.settimeout(WAIT)  # the stdlib side of "kernel-timeout" too: Python's timeout
    else:
        timeval = struct.pack("@ll", 0, int(WAIT * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    peer.setblocking(False)
    return Side(sock, peer)


def outcome(action: Callable[[], Any]) -> Any:
    """What *action* returned, or the type and message of what it raised."""
    try:
        result = action()
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))
    if isinstance(result, memoryview | bytearray):
        return bytes(result)
    return result


def peer_sees_close(side: Side) -> bool:
    """Has the server side's descriptor been closed (the peer reads EOF)?"""
    try:
        while side.peer.recv(4096):
            pass
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def peer_received(side: Side) -> Any:
    """What the peer can read now (it never waits)."""
    received = b""
    try:
        while chunk := side.peer.recv(4096):
            received += chunk
    except BlockingIOError:
        pass
    except OSError as exc:
        return received, type(exc).__name__
    return received


def make_file(side: Side, attr: str, mode: str, buffering: int) -> str:
    """``makefile(mode, buffering)`` into the side's *attr*, once; its type's name."""
    if getattr(side, attr) is not None:
        return "has a file"
    setattr(side, attr, side.sock.makefile(mode, buffering))
    return type(getattr(side, attr)).__name__ if buffering else "raw"


def apply_to_writer(side: Side, op: tuple[Any, ...], buffering: int) -> Any:
    name, *args = op
    if name == "wmakefile":
        return make_file(side, "wfile", "wb", buffering)
    if name == "received":
        return peer_received(side)
    if name == "peer_close":
        return outcome(side.peer.close) if side.peer.fileno() != -1 else "closed"
    if side.wfile is None:
        return "no file"
    wfile = side.wfile
    if name == "write":
        return outcome(lambda: wfile.write(args[0]))
    if name == "wstate":
        raw = wfile.raw if buffering else wfile
        return (outcome(lambda: wfile.closed), outcome(lambda: raw.closed),
                outcome(wfile.writable), outcome(wfile.readable), outcome(lambda: raw.mode))
    return outcome(getattr(wfile, name))  # flush, close


def apply(side: Side, op: tuple[Any, ...], buffering: int) -> Any:
    name, *args = op
    if name in WRITER_OPS:
        return apply_to_writer(side, op, buffering)
    if name == "send":
        return outcome(lambda: side.peer.send(args[0]))
    if name == "eof":
        return outcome(lambda: side.peer.shutdown(socket.SHUT_WR))
    if name == "makefile":
        return make_file(side, "file", "rb", buffering)
    if name == "close_sock":
        return outcome(side.sock.close)
    if name == "state":
        file = side.file
        return (
            side.sock.fileno() == -1,
            None if file is None else outcome(lambda: file.closed),
            None if file is None else outcome(lambda: (file.raw if buffering else file).closed),
            None if file is None else outcome(file.readable),
            None if file is None else outcome(file.writable),
            None if file is None else outcome(file.seekable),
            None if file is None else outcome(lambda: file.mode),
            None if file is None else outcome(lambda: file.name == side.sock.fileno()),
            peer_sees_close(side) if name == "state" and args and args[0] else None,
        )
    if side.file is None:
        return "no file"
    file = side.file
    if name == "close_file":
        return outcome(file.close)
    if name == "readinto":
        buffer = bytearray(args[0])
        return outcome(lambda: (file.readinto(buffer), bytes(buffer)))
    method = getattr(file, name)
    return outcome(lambda: method(*args))


WRITER_OPS = {"wmakefile", "write", "flush", "close", "wstate", "received", "peer_close"}
WRITES = st.one_of(
    st.tuples(st.just("wmakefile")),
    st.tuples(st.just("write"), st.binary(min_size=0, max_size=30)),
    st.tuples(st.just("write"), st.just(BIG)),  # more than the socket buffers hold
    st.tuples(st.just("flush")),
    st.tuples(st.just("close")),
    st.tuples(st.just("wstate")),
    st.tuples(st.just("received")),
    st.tuples(st.just("peer_close")),
)
READS = st.one_of(
    st.tuples(st.just("readline"), st.integers(-1, 40)),
    st.tuples(st.just("read"), st.integers(-1, 40)),
    st.tuples(st.just("readinto"), st.integers(0, 40)),
)
BUFFERED_READS = st.one_of(
    READS,
    st.tuples(st.just("read1"), st.integers(-1, 40)),
    st.tuples(st.just("peek"), st.integers(0, 40)),
)
OPS = st.one_of(
    st.tuples(st.just("send"), st.binary(min_size=1, max_size=30).map(
        lambda b: b.replace(b"z", b"\n"))),
    st.tuples(st.just("eof")),
    st.tuples(st.just("makefile")),
    st.tuples(st.just("close_file")),
    st.tuples(st.just("close_sock")),
    st.tuples(st.just("state")),
)


@contextmanager
def sides(mode: str) -> Iterator[tuple[Side, Side]]:
    stdlib, ours = make_side(socket.socket, mode), make_side(Connection, mode)
    try:
        yield stdlib, ours
    finally:
        for side in (stdlib, ours):
            for file in (side.file, side.wfile):
                if file is not None:
                    with suppress(OSError):  # a buffered write to a closed peer
                        file.close()
            side.sock.close()
            side.peer.close()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(MODES),
    buffering=st.sampled_from([-1, 0, 7]),
    ops=st.data(),
)
def test_a_connection_reads_writes_and_closes_as_a_stdlib_socket(
    mode: str, buffering: int, ops: st.DataObject
) -> None:
    reads = BUFFERED_READS if buffering else READS
    steps = ops.draw(st.lists(st.one_of(OPS, reads, WRITES), max_size=16))
    steps = [("makefile",), *steps, ("state", True)]
    with sides(mode) as (stdlib, ours):
        for step in steps:
            expected = apply(stdlib, step, buffering)
            got = apply(ours, step, buffering)
            assert got == expected, (step, mode, buffering)


def test_the_reader_is_the_connections_own_class_and_other_modes_are_the_stdlibs() -> None:
    with sides("non-blocking") as (_, ours):
        conn = ours.sock
        with conn.makefile("rb") as rfile:
            assert type(rfile) is io.BufferedReader
            assert type(rfile.raw) is ConnectionReader
            assert isinstance(rfile.raw, socket.SocketIO)
            assert rfile.raw.mode == "rb"
        with conn.makefile("wb", 0) as raw:
            assert type(raw) is ConnectionWriter
        with conn.makefile("rwb", 0) as raw:
            assert type(raw) is socket.SocketIO
        with conn.makefile("r", encoding="ascii") as text:
            assert isinstance(text, io.TextIOWrapper)


# Every method and attribute of a raw stream, called with arguments it accepts.
RAW_CALLS: dict[str, Callable[[Any], Any]] = {
    "fileno": lambda r: r.fileno() == r._sock.fileno(), "isatty": lambda r: r.isatty(),
    "flush": lambda r: r.flush(), "readable": lambda r: r.readable(),
    "writable": lambda r: r.writable(), "seekable": lambda r: r.seekable(),
    "readline": lambda r: r.readline(), "readlines": lambda r: r.readlines(),
    "writelines": lambda r: r.writelines([b"x"]), "read": lambda r: r.read(3),
    "readall": lambda r: r.readall(), "readinto": lambda r: r.readinto(bytearray(3)),
    "write": lambda r: r.write(b"x"), "tell": lambda r: r.tell(),
    "truncate": lambda r: r.truncate(), "seek": lambda r: r.seek(0),
    "enter": lambda r: type(r.__enter__()).__mro__[-4].__name__,
    "iter": lambda r: type(iter(r)).__mro__[-4].__name__, "next": lambda r: next(r),
    "name": lambda r: r.name == r._sock.fileno(), "mode": lambda r: r.mode,
    "closed": lambda r: r.closed, "close": lambda r: r.close(),
}


def answers(raw: Any) -> dict[str, Any]:
    """What each of :data:`RAW_CALLS` gives on *raw*."""
    return {name: outcome(partial(call, raw)) for name, call in RAW_CALLS.items()}


@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed"])
@pytest.mark.parametrize("mode", ["rb", "wb"])
def test_every_method_of_a_raw_stream_answers_as_the_stdlibs(mode: str, closed: bool) -> None:
    """Non-blocking, open or closed: each call's result or exception, one by one (a
    random sequence may take long to reach a rare one, such as flush after close)."""
    with sides("non-blocking") as (stdlib, ours):
        results = []
        for side in (stdlib, ours):
            raw = side.sock.makefile(mode, 0)
            if closed:
                raw.close()
            results.append(answers(raw))
            raw.close()
        assert results[1] == results[0]


def test_a_kernel_timeout_ends_a_readline_and_every_read_after_it() -> None:
    with sides("kernel-timeout") as (_, ours):
        assert isinstance(ours.sock, KernelTimedSocket)
        ours.peer.send(b"half a line")
        rfile = ours.sock.makefile("rb")
        ours.file = rfile
        with pytest.raises(TimeoutError, match="timed out"):
            rfile.readline()
        with pytest.raises(OSError, match="cannot read from timed out object"):
            rfile.readline()
    # The same socket without the kernel's timeout, non-blocking: EAGAIN is "no data".
    with sides("non-blocking") as (_, ours):
        ours.file = ours.sock.makefile("rb", 0)
        assert ours.file.readinto(bytearray(4)) is None


@pytest.mark.parametrize("mode", MODES)
def test_a_write_that_finds_the_buffers_full(mode: str) -> None:
    """Non-blocking: None (nothing taken), as SocketIO says it; timed: TimeoutError; closed:
    ValueError, before any system call."""
    expected = {"non-blocking": None, "blocking-timeout": TimeoutError,
                "kernel-timeout": TimeoutError}[mode]
    with sides(mode) as (stdlib, ours):
        for side in (stdlib, ours):
            raw = side.sock.makefile("wb", 0)
            assert 0 < raw.write(BIG) < len(BIG)  # what the buffers took
            if expected is None:
                assert raw.write(b"more") is None
            else:
                with pytest.raises(expected, match="timed out"):
                    raw.write(b"more")
            raw.close()
            with pytest.raises(ValueError, match="I/O operation on closed file"):
                raw.write(b"more")


def test_settimeout_none_leaves_a_plain_connection() -> None:
    with sides("kernel-timeout") as (_, ours):
        ours.sock.settimeout(None)
        assert type(ours.sock) is Connection
        timeval = ours.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
        assert struct.unpack("@ll", timeval) == (0, 0)


def test_the_classic_get_request_still_gives_stdlib_sockets() -> None:
    with TCPServer(("127.0.0.1", 0), lambda *args: None) as server, \
            socket.create_connection(server.server_address):
        conn, _ = server.get_request()
        with conn:
            assert type(conn) is socket.socket


@pytest.mark.parametrize("how", ["get_request", "acceptor"])
def test_connections_are_accepted_as_the_class_asked_for(how: str) -> None:
    with TCPServer(("127.0.0.1", 0), lambda *args: None) as server, \
            socket.create_connection(server.server_address) as client:
        listener = server.socket
        if how == "get_request":  # what a sync worker's boot sets
            server._accept_as = (listener, acceptor(listener, Connection))
            conn, address = server.get_request()
        else:  # a worker's extra listeners
            conn, address = acceptor(listener, Connection)()
        with conn:
            assert type(conn) is Connection
            assert address == client.getsockname()
            assert conn.gettimeout() is None  # blocking, as accept() gives it
            client.sendall(b"hello\n")
            with conn.makefile("rb") as rfile:
                assert rfile.readline() == b"hello\n"
