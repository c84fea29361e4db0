"""The socket objects a sync worker hands its handlers, and their ``makefile``.

A worker's connections are :class:`Connection` objects (a ``socket.socket`` subclass),
or :class:`KernelTimedSocket` ones where the kernel enforces ``client_timeout``. They
behave as ``socket.socket`` does; what differs is the cost of the calls on every
connection's path:

* ``makefile("rb")``, which every ``StreamRequestHandler`` calls for its ``rfile``
  (and ``makefile("wb")``, its ``wfile`` unless ``wbufsize`` is 0), returns the same
  ``io.BufferedReader`` (``BufferedWriter``) over a ``socket.SocketIO``, here the
  subclass :class:`ConnectionReader` (:class:`ConnectionWriter`). The stdlib's makefile
  and SocketIO are Python code that validates the mode, stores five attributes in the
  raw stream's ``__dict__``, checks that the stream is open and readable (writable) on
  every call, and closes through ``IOBase.close``: a ``makefile("rb")``, one
  ``readline()`` and the closes take 37,300 user-space instructions that way and 24,500
  here (callgrind, CPython 3.11), where a whole echo connection takes about 87,000.
  Other modes (text, ``"rwb"``) go to the stdlib unchanged.
* ``close()`` calls the C close directly instead of through ``_real_close``.

The differences a handler can see: ``type(rfile.raw)`` is :class:`ConnectionReader`
(still a ``socket.SocketIO``), and the raw stream keeps its mode and flags on its class
rather than in its ``__dict__``. Everything else (EOF, non-blocking reads and writes
returning None, a timeout ending every later read with "cannot read from timed out
object", closing the socket only once every file made from it is closed) is the
stdlib's, and tests/unit/test_connection.py checks it operation by operation against
the stdlib.
"""

from __future__ import annotations

import _socket
import io
import socket
import struct
from collections.abc import Callable
from typing import Any

_SOCKET = socket.socket
_C_SOCKET = _socket.socket
_C_RECV_INTO = _C_SOCKET.recv_into
_C_GETTIMEOUT = _C_SOCKET.gettimeout
_C_CLOSE = _C_SOCKET.close
_C_SEND = _C_SOCKET.send
_SOCKET_RECV = _SOCKET.recv
_SOCKET_RECV_INTO = _SOCKET.recv_into
_SOCKET_SEND = _SOCKET.send
_SOCKET_SENDALL = _SOCKET.sendall
_SOCKET_MAKEFILE: Any = _SOCKET.makefile  # Any: typeshed's overloads want literal modes
_BUFFERED_READER = io.BufferedReader
_BUFFERED_WRITER = io.BufferedWriter
TIMEVAL = struct.Struct("@ll")  # struct timeval: seconds, microseconds (SO_RCVTIMEO)


class Connection(socket.socket):
    """A connected stream socket, as a worker hands it to a handler (see the module)."""

    __slots__ = ()
    # Seconds of SO_RCVTIMEO/SO_SNDTIMEO the kernel enforces (KernelTimedSocket); 0: none.
    kernel_timeout: float = 0.0

    def makefile(
        self, mode: str = "r", buffering: int | None = None, *,
        encoding: str | None = None, errors: str | None = None, newline: str | None = None,
    ) -> Any:
        """``socket.makefile``; ``"rb"`` and ``"wb"`` (a handler's ``rfile``, and its
        ``wfile`` when ``wbufsize`` is not 0) by a shorter path."""
        if mode == "rb":
            raw: _ConnectionIO = ConnectionReader(self)
            buffered: Any = _BUFFERED_READER
        elif mode == "wb":
            raw, buffered = ConnectionWriter(self), _BUFFERED_WRITER
        else:
            return _SOCKET_MAKEFILE(self, mode, buffering, encoding=encoding,
                                    errors=errors, newline=newline)
        self._io_refs += 1  # type: ignore[attr-defined]
        if buffering is None or buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            return raw
        return buffered(raw, buffering)

    def close(self) -> None:
        """``socket.close``: the descriptor closes once no file made from it is open."""
        self._closed = True
        if self._io_refs <= 0:  # type: ignore[attr-defined]
            _C_CLOSE(self)


class _ConnectionIO(socket.SocketIO):
    """The raw stream of a :class:`Connection`'s ``makefile``: ``socket.SocketIO`` with
    its checks done in fewer steps.

    Open while it holds its socket; ``close()`` lets go of it. ``io.RawIOBase.__init__``
    is ``object.__init__``, so nothing is skipped by not calling it. The mode and flags,
    fixed per subclass, are class attributes rather than entries in each instance's dict.
    """

    _mode: str  # the subclasses' flags
    _reading: bool
    _writing: bool
    _timeout_occurred = False  # set on the instance by a read's timeout

    def __init__(self, sock: Connection) -> None:
        self._sock: Connection | None = sock

    @property
    def closed(self) -> bool:
        return self._sock is None

    def flush(self) -> None:
        """Nothing to flush; ``ValueError`` once closed (``IOBase.flush`` reads a flag of
        ``IOBase.close``'s, which this class's ``close`` does not set: setting it through
        ``__dict__`` measured 250-3,000 instructions more per connection than this call,
        since it turns the instance's inline attributes into a dict)."""
        if self._sock is None:
            raise ValueError("I/O operation on closed file.")

    # SocketIO's, without its two lookups of ``closed`` (the class's flags say the rest).
    def readable(self) -> bool:
        if self._sock is None:
            raise ValueError("I/O operation on closed socket.")
        return self._reading

    def writable(self) -> bool:
        if self._sock is None:
            raise ValueError("I/O operation on closed socket.")
        return self._writing

    def close(self) -> None:
        sock = self._sock
        if sock is not None:
            self._sock = None
            sock._decref_socketios()  # type: ignore[attr-defined]


def _kernel_timed_out(sock: Connection) -> bool:
    """After EAGAIN: was it the kernel's client_timeout (the socket is blocking in
    Python), rather than a non-blocking socket with nothing to do yet?"""
    return bool(sock.kernel_timeout) and _C_GETTIMEOUT(sock) is None


class ConnectionReader(_ConnectionIO):
    """The raw stream of ``makefile("rb")``."""

    _mode = "rb"
    _reading = True
    _writing = False

    def readinto(self, b: Any) -> int | None:
        """Read into *b*; 0 at EOF, None if a non-blocking socket has nothing yet."""
        sock = self._sock
        if sock is None:
            raise ValueError("I/O operation on closed file.")
        if self._timeout_occurred:
            raise OSError("cannot read from timed out object")
        try:
            return _C_RECV_INTO(sock, b)
        except TimeoutError:
            self._timeout_occurred = True
            raise
        except BlockingIOError:
            if _kernel_timed_out(sock):
                self._timeout_occurred = True
                raise TimeoutError("timed out") from None
            return None


class ConnectionWriter(_ConnectionIO):
    """The raw stream of ``makefile("wb")``."""

    _mode = "wb"
    _reading = False
    _writing = True

    # Spelled out as readinto is, not through a shared helper: that would be one more
    # Python call for every read and write of every connection.
    def write(self, b: Any) -> int | None:
        """Send what the socket takes of *b*; None if a non-blocking socket takes none."""
        sock = self._sock
        if sock is None:
            raise ValueError("I/O operation on closed file.")
        try:
            return _C_SEND(sock, b)
        except BlockingIOError:
            if _kernel_timed_out(sock):
                raise TimeoutError("timed out") from None
            return None


class KernelTimedSocket(Connection):
    """A TCP connection whose client_timeout the kernel enforces, as a socket timeout would
    look to its handler.

    The connection inherited SO_RCVTIMEO/SO_SNDTIMEO from its listener, so a read or
    write that waits longer fails with EAGAIN; here it raises ``TimeoutError("timed
    out")`` instead, as CPython's own timeout does (``rfile.readline()`` raises it too,
    rather than returning half a line). ``gettimeout()`` reports the timeout; a handler
    that sets its own (``StreamRequestHandler.timeout``) gets a Python timeout as usual,
    and ``settimeout(None)`` or ``setblocking(True)`` removes the kernel's too (the
    socket becomes a plain :class:`Connection`). Each timeout has its own subclass
    (:func:`kernel_timed_class`), which carries the seconds: a worker builds its
    connections as that class, or the intake assigns ``__class__``, which costs no
    system call, unlike ``settimeout`` and the ``poll()`` a Python timeout adds before
    every read and write.
    """

    __slots__ = ()

    def gettimeout(self) -> float | None:
        own = super().gettimeout()
        return self.kernel_timeout if own is None else own

    def settimeout(self, value: float | None) -> None:
        super().settimeout(value)
        if value is None:
            self._forget_kernel_timeout()

    def setblocking(self, flag: bool) -> None:
        super().setblocking(flag)
        if flag:
            self._forget_kernel_timeout()

    def _forget_kernel_timeout(self) -> None:
        none = TIMEVAL.pack(0, 0)
        try:
            self.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, none)
            self.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, none)
        except OSError:
            pass
        self.__class__ = Connection  # type: ignore[assignment]

    def _raise_if_timed_out(self) -> None:
        """After EAGAIN: raise ``TimeoutError`` if it was the kernel's timeout; return
        otherwise, for the caller to re-raise."""
        if _kernel_timed_out(self):
            raise TimeoutError("timed out") from None

    # The I/O methods, each spelled out: they are on every connection's path, and a
    # generic ``*args`` wrapper cost twice the instructions of a plain call (callgrind).
    # A factory of fixed-signature closures measured 1,000 instructions more per echo
    # connection than these (conn_overhead --instructions): the repetition is the price.
    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        try:
            return _SOCKET_RECV(self, bufsize, flags)
        except BlockingIOError:
            self._raise_if_timed_out()
            raise

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        try:
            return _SOCKET_RECV_INTO(self, buffer, nbytes, flags)
        except BlockingIOError:
            self._raise_if_timed_out()
            raise

    def send(self, data: Any, flags: int = 0) -> int:
        try:
            return _SOCKET_SEND(self, data, flags)
        except BlockingIOError:
            self._raise_if_timed_out()
            raise

    def sendall(self, data: Any, flags: int = 0) -> None:
        try:
            return _SOCKET_SENDALL(self, data, flags)
        except BlockingIOError:
            self._raise_if_timed_out()
            raise


def kernel_timed_class(seconds: float) -> type[KernelTimedSocket]:
    """The :class:`KernelTimedSocket` subclass whose ``gettimeout()`` reports *seconds*."""
    return type("KernelTimedSocket", (KernelTimedSocket,),
                {"__slots__": (), "kernel_timeout": seconds})


def acceptor(
    listener: socket.socket, cls: type[socket.socket]
) -> Callable[[], tuple[Any, Any]]:
    """``listener.accept``, returning connections built as *cls*, with the listener's
    family, type and protocol looked up once rather than on every connection (the
    ``family`` and ``type`` properties each convert to an enum: about a microsecond per
    connection together)."""
    family, kind, proto = listener.family, listener.type, listener.proto
    accept = listener._accept  # type: ignore[attr-defined]

    def accept_connection() -> tuple[socket.socket, Any]:
        fd, address = accept()
        conn = cls(family, kind, proto, fileno=fd)
        # As socket.accept() does: a blocking listener with a timeout gives blocking
        # connections unless a default timeout is set.
        if socket.getdefaulttimeout() is None and listener.gettimeout():
            conn.setblocking(True)
        return conn, address

    return accept_connection
