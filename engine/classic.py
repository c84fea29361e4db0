"""The classic socketserver API, implemented by engine.

This module is a faithful, self-contained implementation of the standard library's
``socketserver`` interface (the newest Python 3 behaviour), so that programs and
standard-library modules written against ``socketserver`` run unchanged on it.
It imports nothing from the rest of ``engine``: the prefork machinery builds on it,
never the reverse, and the conformance tests load this very file as ``socketserver``.

Request servers are split along two axes, as in the stdlib:

* the transport, by inheritance: :class:`BaseServer` → :class:`TCPServer` →
  :class:`UDPServer`, :class:`UnixStreamServer`, :class:`UnixDatagramServer`;
* the concurrency, by mix-ins placed first in the bases: :class:`ForkingMixIn`
  (a process per request) and :class:`ThreadingMixIn` (a thread per request).

A request handler class (:class:`BaseRequestHandler` and its stream/datagram
variants) is instantiated once per request and runs ``setup``/``handle``/``finish``.

Deliberate improvements over the stdlib, none of which changes documented behaviour:
type hints, a ``__repr__`` that shows the bound address, :meth:`BaseServer.shutdown`
that never deadlocks (it returns at once when ``serve_forever`` is not running, or when
called from the serving thread itself), and a clear ``ValueError`` when a closed server
is asked to serve.
"""

from __future__ import annotations

import io
import os
import selectors
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from workers.connection import acceptor

__all__ = [
    "BaseRequestHandler",
    "BaseServer",
    "DatagramRequestHandler",
    "StreamRequestHandler",
    "TCPServer",
    "ThreadingMixIn",
    "ThreadingTCPServer",
    "ThreadingUDPServer",
    "UDPServer",
]
if hasattr(os, "fork"):
    __all__ += ["ForkingMixIn", "ForkingTCPServer", "ForkingUDPServer"]
if hasattr(socket, "AF_UNIX"):
    __all__ += [
        "ThreadingUnixDatagramServer",
        "ThreadingUnixStreamServer",
        "UnixDatagramServer",
        "UnixStreamServer",
    ]
    if hasattr(os, "fork"):
        __all__ += ["ForkingUnixDatagramServer", "ForkingUnixStreamServer"]

# A request is a connected socket for stream servers and (data, socket) for datagram ones.
_Request = Any
# IPv4/IPv6 tuples, Unix paths (str or bytes), or whatever a custom family uses.
_Address = Any

# poll() has no limit on descriptor numbers, unlike select(); prefer it where it exists.
if hasattr(selectors, "PollSelector"):
    _ServerSelector: type[selectors.BaseSelector] = selectors.PollSelector
else:  # pragma: no cover - every Unix has poll
    _ServerSelector = selectors.SelectSelector


# The type of a server inside its own methods, so ``with TCPServer(...) as s`` is a TCPServer.
_ServerT = TypeVar("_ServerT", bound="BaseServer")


def _closed_error(server: BaseServer, what: str) -> ValueError:
    return ValueError(f"{what}() called on a closed server: {server!r}")


class BaseServer:
    """Base class for request servers: the serving loop and the request pipeline.

    Subclasses provide the transport (``get_request``, ``fileno``, ``server_bind``...);
    the pipeline for one request is ``get_request`` → ``verify_request`` →
    ``process_request`` → ``finish_request`` → ``shutdown_request``, with
    ``handle_error`` called for exceptions raised while processing.
    """

    timeout: float | None = None

    def __init__(
        self, server_address: _Address, RequestHandlerClass: Callable[..., Any]
    ) -> None:
        """Store the address and handler class. May be extended, do not override."""
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        # Set while serve_forever() is not running, so shutdown() never blocks then.
        self.__is_shut_down = threading.Event()
        self.__is_shut_down.set()
        self.__shutdown_request = False
        self._serving_thread: threading.Thread | None = None
        self._serve_lock = threading.Lock()

    def server_activate(self) -> None:
        """Called by the constructor to activate the server. May be overridden."""

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle requests until :meth:`shutdown` is called.

        Polls for shutdown every *poll_interval* seconds and calls
        :meth:`service_actions` once per loop iteration.

        A :meth:`shutdown` requested while the loop was not running makes it return at
        once, even when the server has been closed meanwhile: ``shutdown()`` then
        ``server_close()`` before the serving thread got here is the usual teardown.

        Raises:
            ValueError: the server's socket is already closed.
        """
        with self._serve_lock:
            if self.__shutdown_request:  # shutdown() came first: consume it, return
                self.__shutdown_request = False
                return
        if self.fileno() < 0:
            raise _closed_error(self, "serve_forever")
        with self._serve_lock:
            self.__is_shut_down.clear()
            self._serving_thread = threading.current_thread()
        try:
            with _ServerSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                while not self.__shutdown_request:
                    ready = selector.select(poll_interval)
                    # A shutdown requested during select() wins over a ready socket.
                    if self.__shutdown_request:
                        break
                    if ready:
                        self._handle_request_noblock()
                    self.service_actions()
        finally:
            with self._serve_lock:
                self.__shutdown_request = False
                self._serving_thread = None
                self.__is_shut_down.set()

    def shutdown(self) -> None:
        """Stop the :meth:`serve_forever` loop and wait until it has stopped.

        Unlike the stdlib, this never deadlocks: when ``serve_forever`` is not running
        it only records the request (a ``serve_forever`` that starts afterwards returns
        at once), and when called from the serving thread itself (from a handler) it
        asks the loop to stop after the current request and returns without waiting.
        """
        with self._serve_lock:
            self.__shutdown_request = True
            serving = self._serving_thread
        if serving is None or serving is threading.current_thread():
            return
        self.__is_shut_down.wait()

    def service_actions(self) -> None:
        """Called once per :meth:`serve_forever` iteration. May be overridden."""

    def handle_request(self) -> None:
        """Wait for and handle one request, honouring :attr:`timeout`.

        When no request arrives within the timeout (the smaller of the socket's
        timeout and :attr:`timeout`), :meth:`handle_timeout` is called instead.
        """
        if self.fileno() < 0:
            raise _closed_error(self, "handle_request")
        timeout = self.socket.gettimeout()  # type: ignore[attr-defined]
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        deadline = None if timeout is None else time.monotonic() + timeout

        with _ServerSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            while True:
                if selector.select(timeout):
                    return self._handle_request_noblock()
                if deadline is not None:
                    timeout = deadline - time.monotonic()
                    if timeout < 0:
                        return self.handle_timeout()

    def _handle_request_noblock(self) -> None:
        """Handle one request, assuming the socket is readable (get_request won't block)."""
        try:
            request, client_address = self.get_request()
        except OSError:
            return
        if not self.verify_request(request, client_address):
            self.shutdown_request(request)
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException:
            self.shutdown_request(request)
            raise

    def handle_timeout(self) -> None:
        """Called when :meth:`handle_request` times out. May be overridden."""

    def verify_request(self, request: _Request, client_address: _Address) -> bool:
        """Return True to process the request, False to close it unserved. May be overridden."""
        return True

    def process_request(self, request: _Request, client_address: _Address) -> None:
        """Process one request: finish it, then shut it down. Overridden by the mix-ins."""
        self.finish_request(request, client_address)
        self.shutdown_request(request)

    def server_close(self) -> None:
        """Clean up the server. May be overridden."""

    def finish_request(self, request: _Request, client_address: _Address) -> None:
        """Finish one request by instantiating :attr:`RequestHandlerClass`."""
        handler_class = self.RequestHandlerClass
        if type(handler_class) is not type or handler_class.__new__ is not object.__new__:
            handler_class(request, client_address, self)
            return
        # What calling the class does, minus its C recursion (before Python 3.13): a
        # handler that waits in a greenlet keeps its C stack saved, 1 KB less this way.
        handler: Any = object.__new__(handler_class)
        returned = handler.__init__(request, client_address, self)
        if returned is not None:
            raise TypeError(f"__init__() should return None, not {type(returned).__name__!r}")

    def shutdown_request(self, request: _Request) -> None:
        """Shut down and close one request. May be overridden."""
        self.close_request(request)

    def close_request(self, request: _Request) -> None:
        """Close one request. May be overridden."""

    def handle_error(self, request: _Request, client_address: _Address) -> None:
        """Report an ``Exception`` raised while processing a request. May be overridden.

        The default prints the traceback to ``sys.stderr`` and lets the server continue.
        """
        print("-" * 40, file=sys.stderr)
        print(
            "Exception occurred during processing of request from",
            client_address,
            file=sys.stderr,
        )
        traceback.print_exc()
        print("-" * 40, file=sys.stderr)

    def fileno(self) -> int:
        """Return the file descriptor the server waits on (for ``selectors``)."""
        raise NotImplementedError

    def get_request(self) -> tuple[_Request, _Address]:
        """Receive one request; return ``(request, client_address)``."""
        raise NotImplementedError

    def __enter__(self: _ServerT) -> _ServerT:
        return self

    def __exit__(self, *args: object) -> None:
        self.server_close()

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.server_address!r}>"


class TCPServer(BaseServer):
    """A server for stream sockets, by default TCP over IPv4.

    Set :attr:`address_family` to ``socket.AF_INET6`` for IPv6. With
    ``bind_and_activate=False`` the caller binds and activates the socket itself
    (after setting socket options, for example).
    """

    address_family: int = socket.AF_INET
    socket_type: int = socket.SOCK_STREAM
    request_queue_size: int = 5
    allow_reuse_address: bool = False
    allow_reuse_port: bool = False

    def __init__(
        self,
        server_address: _Address,
        RequestHandlerClass: Callable[..., Any],
        bind_and_activate: bool = True,
    ) -> None:
        """Create the socket and, unless told not to, bind and activate it."""
        BaseServer.__init__(self, server_address, RequestHandlerClass)
        self.socket = socket.socket(self.address_family, self.socket_type)
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise

    def server_bind(self) -> None:
        """Set the reuse options and bind the socket. May be overridden."""
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # SO_REUSEPORT is only meaningful (and on some kernels only accepted) for IP.
        if (
            self.allow_reuse_port
            and hasattr(socket, "SO_REUSEPORT")
            and self.address_family in (socket.AF_INET, socket.AF_INET6)
        ):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Start listening with a backlog of :attr:`request_queue_size`. May be overridden."""
        self.socket.listen(self.request_queue_size)

    def server_close(self) -> None:
        """Close the listening socket. May be overridden."""
        self.socket.close()

    def fileno(self) -> int:
        """Return the listening socket's file descriptor (-1 once closed)."""
        return self.socket.fileno()

    # (listening socket, its accept function) for get_request(); see there. A prefork
    # worker sets one that builds its own class (workers.connection.acceptor).
    _accept_as: tuple[socket.socket, Callable[[], tuple[Any, Any]]] | None = None

    def get_request(self) -> tuple[_Request, _Address]:
        """Accept one connection. May be overridden.

        Returns what ``self.socket.accept()`` returns. For a plain ``socket.socket``
        it accepts through :func:`workers.connection.acceptor`, which looks the
        listener's family, type and protocol up once rather than on every connection.
        """
        sock = self.socket
        if type(sock) is not socket.socket:
            return sock.accept()  # an SSLSocket or another wrapper: its own accept()
        kind = self._accept_as
        if kind is None or kind[0] is not sock:
            kind = self._accept_as = (sock, acceptor(sock, socket.socket))
        return kind[1]()

    def shutdown_request(self, request: _Request) -> None:
        """Half-close the connection for writing, then close it."""
        try:
            # Tell the peer we are done so it sees EOF even if a forked child
            # still holds a duplicate of this socket.
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer may already have gone away
        self.close_request(request)

    def close_request(self, request: _Request) -> None:
        """Close the connection."""
        request.close()


class UDPServer(TCPServer):
    """A server for datagram sockets, by default UDP over IPv4.

    A request is ``(data, socket)``: one datagram of at most :attr:`max_packet_size`
    bytes and the server socket to answer on.
    """

    allow_reuse_address = False
    allow_reuse_port = False
    socket_type = socket.SOCK_DGRAM
    max_packet_size: int = 8192

    def get_request(self) -> tuple[_Request, _Address]:
        """Receive one datagram."""
        data, client_addr = self.socket.recvfrom(self.max_packet_size)
        return (data, self.socket), client_addr

    def server_activate(self) -> None:
        """Datagram sockets do not listen: nothing to do."""

    def shutdown_request(self, request: _Request) -> None:
        """Nothing to shut down for a datagram; just close the request."""
        self.close_request(request)

    def close_request(self, request: _Request) -> None:
        """Nothing to close: the socket belongs to the server."""


if hasattr(os, "fork"):

    class ForkingMixIn:
        """Mix-in that handles each request in a new child process.

        At most :attr:`max_children` children run at once; finished ones are reaped in
        :meth:`service_actions` and :meth:`handle_timeout`, and :meth:`server_close`
        waits for them all unless :attr:`block_on_close` is false.
        """

        timeout: float | None = 300
        active_children: set[int] | None = None
        max_children: int = 40
        block_on_close: bool = True

        def collect_children(self, *, blocking: bool = False) -> None:
            """Reap finished children; block while :attr:`max_children` are running."""
            if self.active_children is None:
                return
            # Hold off until a slot frees up, so the count never exceeds the limit.
            while len(self.active_children) >= self.max_children:
                try:
                    pid, _ = os.waitpid(-1, 0)
                except ChildProcessError:
                    self.active_children.clear()  # none of ours is left
                except OSError:
                    break
                else:
                    self.active_children.discard(pid)

            flags = 0 if blocking else os.WNOHANG
            for pid in list(self.active_children):
                try:
                    reaped, _ = os.waitpid(pid, flags)
                except ChildProcessError:
                    self.active_children.discard(pid)  # already reaped elsewhere
                except OSError:
                    pass
                else:
                    if reaped:
                        self.active_children.discard(reaped)

        def handle_timeout(self) -> None:
            """Reap children when :meth:`handle_request` times out."""
            self.collect_children()

        def service_actions(self) -> None:
            """Reap children once per :meth:`serve_forever` iteration."""
            self.collect_children()

        def process_request(self, request: _Request, client_address: _Address) -> None:
            """Fork a child that finishes the request and exits."""
            pid = os.fork()
            if pid:
                if self.active_children is None:
                    self.active_children = set()
                self.active_children.add(pid)
                self.close_request(request)  # type: ignore[attr-defined]
                return
            # In the child: this frame must never return into the caller's stack.
            status = 1
            try:
                self.finish_request(request, client_address)  # type: ignore[attr-defined]
                status = 0
            except Exception:
                self.handle_error(request, client_address)  # type: ignore[attr-defined]
            finally:
                try:
                    self.shutdown_request(request)  # type: ignore[attr-defined]
                finally:
                    os._exit(status)

        def server_close(self) -> None:
            """Close the server, then reap children (waiting if :attr:`block_on_close`)."""
            super().server_close()  # type: ignore[misc]
            self.collect_children(blocking=self.block_on_close)


class _Threads(list["threading.Thread"]):
    """The request threads still worth joining; finished ones are dropped on append."""

    def append(self, thread: threading.Thread) -> None:
        self.reap()
        if thread.daemon:
            return
        super().append(thread)

    def pop_all(self) -> list[threading.Thread]:
        self[:], result = [], self[:]
        return result

    def join(self) -> None:
        for thread in self.pop_all():
            thread.join()

    def reap(self) -> None:
        self[:] = [thread for thread in self if thread.is_alive()]


class _NoThreads:
    """Stand-in for :class:`_Threads` when threads are not to be joined."""

    def append(self, thread: threading.Thread) -> None:
        pass

    def join(self) -> None:
        pass


class ThreadingMixIn:
    """Mix-in that handles each request in a new thread.

    :meth:`server_close` joins the request threads unless :attr:`daemon_threads` is
    true or :attr:`block_on_close` is false.
    """

    daemon_threads: bool = False
    block_on_close: bool = True
    # Replaced by a per-instance _Threads in process_request when threads are joined.
    _threads: Any = _NoThreads()

    def process_request_thread(self, request: _Request, client_address: _Address) -> None:
        """Run one request in its thread, like ``BaseServer.process_request`` plus errors."""
        try:
            self.finish_request(request, client_address)  # type: ignore[attr-defined]
        except Exception:
            self.handle_error(request, client_address)  # type: ignore[attr-defined]
        finally:
            self.shutdown_request(request)  # type: ignore[attr-defined]

    def process_request(self, request: _Request, client_address: _Address) -> None:
        """Start a thread to process the request."""
        if self.block_on_close:
            vars(self).setdefault("_threads", _Threads())
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address)
        )
        thread.daemon = self.daemon_threads
        self._threads.append(thread)
        thread.start()

    def server_close(self) -> None:
        """Close the server, then join the non-daemon request threads."""
        super().server_close()  # type: ignore[misc]
        self._threads.join()


if hasattr(os, "fork"):

    class ForkingUDPServer(ForkingMixIn, UDPServer):
        """UDP server with a process per request."""

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        """TCP server with a process per connection."""


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    """UDP server with a thread per request."""


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    """TCP server with a thread per connection."""


if hasattr(socket, "AF_UNIX"):

    class UnixStreamServer(TCPServer):
        """Stream server on a Unix domain socket (the address is a path)."""

        address_family = socket.AF_UNIX

    class UnixDatagramServer(UDPServer):
        """Datagram server on a Unix domain socket (the address is a path)."""

        address_family = socket.AF_UNIX

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
        """Unix stream server with a thread per connection."""

    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
        """Unix datagram server with a thread per request."""

    if hasattr(os, "fork"):

        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
            """Unix stream server with a process per connection."""

        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
            """Unix datagram server with a process per request."""


class BaseRequestHandler:
    """Base class for request handlers: one instance per request.

    The constructor stores :attr:`request`, :attr:`client_address` and :attr:`server`,
    then calls :meth:`setup`, :meth:`handle` and (always) :meth:`finish`.
    """

    def __init__(self, request: _Request, client_address: _Address, server: BaseServer) -> None:
        self.request = request
        self.client_address = client_address
        self.server = server
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self) -> None:
        """Called before :meth:`handle`. May be overridden."""

    def handle(self) -> None:
        """Service the request. Override this."""

    def finish(self) -> None:
        """Called after :meth:`handle`, even when it raised. May be overridden."""


class StreamRequestHandler(BaseRequestHandler):
    """Handler for stream sockets with file-like :attr:`rfile` and :attr:`wfile`.

    ``wbufsize = 0`` (the default) makes :attr:`wfile` unbuffered: every ``write``
    sends all of its data before returning.
    """

    rbufsize: int = -1
    wbufsize: int = 0
    timeout: float | None = None
    disable_nagle_algorithm: bool = False

    connection: Any
    rfile: Any
    wfile: Any

    def setup(self) -> None:
        """Apply the timeout and Nagle settings and create the file objects."""
        self.connection = self.request
        if self.timeout is not None:
            self.connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.rfile = self.connection.makefile("rb", self.rbufsize)
        if self.wbufsize == 0:
            self.wfile = _SocketWriter(self.connection)
        else:
            self.wfile = self.connection.makefile("wb", self.wbufsize)

    def finish(self) -> None:
        """Flush and close the file objects."""
        if not self.wfile.closed:
            try:
                self.wfile.flush()
            except OSError:
                pass  # the peer closed; its loss, nothing left to deliver
        self.wfile.close()
        self.rfile.close()


class _SocketWriter(io.BufferedIOBase):
    """Unbuffered, write-only file over a socket that always writes everything."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._sock.sendall(b)
        with memoryview(b) as view:
            return view.nbytes

    def fileno(self) -> int:
        return self._sock.fileno()


class DatagramRequestHandler(BaseRequestHandler):
    """Handler for datagrams: :attr:`rfile` holds the packet, :attr:`wfile` the reply.

    The reply accumulated in :attr:`wfile` is sent back to the client in :meth:`finish`.
    """

    packet: bytes
    socket: socket.socket
    rfile: io.BytesIO
    wfile: io.BytesIO

    def setup(self) -> None:
        """Wrap the received packet and prepare an empty reply buffer."""
        self.packet, self.socket = self.request
        self.rfile = io.BytesIO(self.packet)
        self.wfile = io.BytesIO()

    def finish(self) -> None:
        """Send the reply to the client."""
        self.socket.sendto(self.wfile.getvalue(), self.client_address)

