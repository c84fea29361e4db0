"""PreforkMixIn and the predefined Prefork*Server classes.

``PreforkMixIn`` turns any socketserver-style server (engine's or the stdlib's) into a
master that binds once and serves with a supervised pool of pre-forked workers::

    class Server(PreforkMixIn, TCPServer): ...          # or socketserver.TCPServer

Settings are class attributes, overridable per subclass or instance, exactly like
``ForkingMixIn.max_children``; they are listed in ``docs/settings.md`` and validated
when the server is constructed and again when ``serve_forever()`` starts.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Sequence
from typing import Any

from engine import classic, listeners
from engine.config import Settings, build, class_attr_names, registry
from engine.master import Master

Socket = socket.socket  # for annotations inside the class, whose `socket` is an attribute


class PreforkMixIn:
    """Mix-in that serves requests from a pool of pre-forked worker processes.

    ``serve_forever()`` runs the master in the calling thread: it forks the workers,
    supervises them and returns after ``shutdown()`` (or SIGTERM), once in-flight
    requests have finished. ``poll_interval`` is accepted for compatibility and unused:
    the master is woken by events, it does not poll.

    Hooks (all may be overridden):

    * :meth:`worker_init` / :meth:`worker_exit`: in each worker, after fork / before exit;
    * :meth:`worker_spawned` / :meth:`worker_exited`: in the master.
    """

    # Settings (defaults filled in from engine.config's registry below the class).
    proc_name: str | None
    pidfile: str | None
    user: str | None
    group: str | None
    certfile: str | None
    keyfile: str | None
    ca_certs: str | None
    tls_verify_client: str
    tls_min_version: str
    tls_ciphers: str | None
    handshake_timeout: float
    proxy_protocol: bool
    proxy_allow_from: tuple[str, ...]
    allow_from: tuple[str, ...]
    deny_from: tuple[str, ...]
    client_timeout: float | None
    request_queue_size: int
    pool_mode: str
    workers: int | None
    max_children: int
    min_spare: int
    max_spare: int
    idle_timeout: float
    max_spawn_batch: int
    gc_freeze: bool
    threads: int
    worker_class: str
    worker_connections: int
    graceful_timeout: float
    worker_timeout: float | None
    request_timeout: float | None
    max_requests: int
    max_requests_jitter: int
    max_worker_memory: int
    health_interval: float
    count_bytes: bool
    status_bind: str | None
    log_level: str
    log_file: str | None
    access_log: str | None

    # Provided by the socketserver base class this is mixed into.
    socket: Socket
    server_address: Any

    # A ready TLS context (Python API): overrides certfile/keyfile/ca_certs & co.
    ssl_context: ssl.SSLContext | None = None

    _master: Master | None = None
    _prefork_adopted = False  # serving a socket handed in rather than one we bound

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Validate before the base class binds, so a bad setting leaks no socket.
        self.prefork_settings()
        self._prefork_stopped = threading.Event()
        self._prefork_stopped.set()
        self._prefork_shutdown = False
        self._prefork_lock = threading.Lock()
        self._prefork_thread: threading.Thread | None = None
        self.extra_listeners: list[Socket] = []
        super().__init__(*args, **kwargs)

    def prefork_settings(self) -> Settings:
        """The validated settings, read from this server's attributes.

        Raises:
            engine.errors.ConfigError: a setting is invalid (the message names it).
        """
        return build({name: getattr(self, name) for name in class_attr_names()})

    # --- listening sockets ---

    def server_bind(self) -> None:
        """Bind, unless a socket of our kind was handed in (systemd, SIGUSR2 upgrade)."""
        handed_in = listeners.take(self.address_family, self.socket_type)  # type: ignore[attr-defined]
        if handed_in is None:
            super().server_bind()  # type: ignore[misc]
            return
        self.socket.close()
        self.socket = handed_in
        self.server_address = handed_in.getsockname()
        self._prefork_adopted = True

    def server_activate(self) -> None:
        """Listen, unless the socket was handed in already listening."""
        if not self._prefork_adopted:
            super().server_activate()  # type: ignore[misc]

    def adopt_listeners(self, sockets: Sequence[Socket]) -> None:
        """Serve these bound, listening sockets: the first becomes ``self.socket``.

        For a server built with ``bind_and_activate=False``; all must be of the
        server's socket type. Workers accept from every one of them.
        """
        if not sockets:
            raise ValueError("adopt_listeners() needs at least one socket")
        self.socket.close()
        self.socket = sockets[0]
        self.server_address = sockets[0].getsockname()
        self.extra_listeners = list(sockets[1:])
        self._prefork_adopted = True

    @property
    def handed_off(self) -> bool:
        """True once a SIGUSR2 upgrade has passed the sockets on to a new master."""
        return self._prefork_handed_off

    _prefork_handed_off = False

    # --- the classic serving API, mapped onto the master ---

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Run the master until :meth:`shutdown` or a stop signal.

        Raises:
            ValueError: the server is closed.
            engine.errors.ConfigError: a setting is invalid.
            engine.errors.MasterFatalError: no worker could boot.
        """
        if self.fileno() < 0:  # type: ignore[attr-defined]
            raise ValueError(f"serve_forever() called on a closed server: {self!r}")
        settings = self.prefork_settings()
        sock = self.socket
        with self._prefork_lock:
            if self._prefork_shutdown:  # shutdown() came first: return at once
                self._prefork_shutdown = False
                return
            self._master = Master(self, settings)
            self._prefork_thread = threading.current_thread()
            self._prefork_stopped.clear()
        socks = [sock, *self.extra_listeners]
        was_blocking = [each.getblocking() for each in socks]
        # Workers poll before accepting, but a sibling may win the race: never block.
        for each in socks:
            each.setblocking(False)
        try:
            self._master.run()
        finally:
            self._prefork_handed_off = self._master.handed_off
            # O_NONBLOCK belongs to the open file, which a new master now shares after
            # an upgrade: making it blocking again would hang that master's workers.
            # Nor for sockets handed in: their old mode is not known (getblocking()
            # reports the Python object's view, not the shared file's flag).
            restore = [] if self._prefork_handed_off or self._prefork_adopted else socks
            for each, blocking in zip(restore, was_blocking, strict=False):
                with contextlib.suppress(OSError):  # closed meanwhile by server_close()
                    each.setblocking(blocking)
            with self._prefork_lock:
                self._master = None
                self._prefork_thread = None
                self._prefork_shutdown = False
                self._prefork_stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` gracefully and wait until it has returned.

        In-flight requests finish first (up to ``graceful_timeout``). Never deadlocks:
        it returns at once when ``serve_forever`` is not running (a later one then
        returns immediately) or when called from the master's own thread.
        """
        with self._prefork_lock:
            master = self._master
            if master is None:
                self._prefork_shutdown = True
                return
            master.request_stop()
            same_thread = self._prefork_thread is threading.current_thread()
        if not same_thread:
            self._prefork_stopped.wait()

    def server_close(self) -> None:
        """Close the listening sockets; no worker outlives this call."""
        super().server_close()  # type: ignore[misc]
        for extra in self.extra_listeners:
            extra.close()
        master = self._master
        if master is not None and master.workers:
            master.kill_all()

    def process_request(self, request: Any, client_address: Any) -> None:
        """In a worker: finish the request and shut it down, in this process."""
        try:
            self.finish_request(request, client_address)  # type: ignore[attr-defined]
        finally:
            self.shutdown_request(request)  # type: ignore[attr-defined]

    # --- hooks ---

    def worker_init(self) -> None:
        """Called in each worker right after fork, before it serves. May be overridden.

        Open per-process resources here (database connections...). An exception makes
        the worker exit as failed to boot; the master backs off and retries.
        """

    def worker_exit(self) -> None:
        """Called in each worker before it exits normally. May be overridden."""

    def worker_spawned(self, slot: int, pid: int) -> None:
        """Called in the master after forking worker *slot* as *pid*. May be overridden."""

    def worker_exited(self, slot: int, pid: int, exitcode: int) -> None:
        """Called in the master after reaping a worker. May be overridden.

        *exitcode* is as ``subprocess`` reports it: the exit status, or minus the
        number of the signal that killed the worker.
        """


for _field in registry():
    if _field.metadata["class_attr"]:
        setattr(PreforkMixIn, _field.name, _field.default)
del _field


class PreforkTCPServer(PreforkMixIn, classic.TCPServer):
    """TCP server with a pre-forked, supervised pool of workers."""


class PreforkUDPServer(PreforkMixIn, classic.UDPServer):
    """UDP server with a pre-forked, supervised pool of workers."""


class PreforkUnixStreamServer(PreforkMixIn, classic.UnixStreamServer):
    """Unix stream server with a pre-forked, supervised pool of workers."""


class PreforkUnixDatagramServer(PreforkMixIn, classic.UnixDatagramServer):
    """Unix datagram server with a pre-forked, supervised pool of workers."""
