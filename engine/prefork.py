"""PreforkMixIn and the predefined Prefork*Server classes.

``PreforkMixIn`` turns any socketserver-style server (engine's or the stdlib's) into a
master that binds once and serves with a supervised pool of pre-forked workers::

    class Server(PreforkMixIn, TCPServer): ...          # or socketserver.TCPServer

It is a drop-in for ``ForkingMixIn``, and it is transparent: the rule, which
``docs/classic-api.md`` states and ``tests/classic/test_transparency.py`` enforces, is

* **PreforkMixIn itself defines only ForkingMixIn's names** (``active_children``,
  ``max_children``, ``block_on_close``, ``timeout``, ``collect_children``,
  ``handle_timeout``, ``service_actions``, ``process_request``, ``server_close``), with
  the same meaning;
* **everything else engine adds lives in** :class:`PreforkLayer`, which PreforkMixIn
  puts into each server class's MRO *directly above the socketserver class* (engine's or
  the stdlib's). The pool is ``serve_forever``'s loop there, where ``BaseServer``'s loop
  would be: any class between them (a framework's ``WSGIServer``) or the user's subclass
  overrides ``serve_forever``, ``shutdown``, the hooks..., and reaches the pool through
  ``super()``;
* **a setting is read only where it was set for engine**: on the instance, on
  PreforkMixIn's subclasses or on the layer (its defaults). A same-named attribute that
  another base class defines (a framework's ``threads`` or ``user``) is that class's,
  not a setting. socketserver's own names (``request_queue_size``, ``max_children``)
  mean the same to both and are read wherever they are set; PreforkMixIn sets no
  default for ``request_queue_size`` (the base's stays; the Prefork*Server classes
  use the registry's 2048).

Settings are overridable per subclass or instance, exactly like
``ForkingMixIn.max_children``; they are listed in ``docs/settings.md`` and validated
when the server is constructed and again when ``serve_forever()`` starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import ssl
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from engine import classic, listeners
from engine.config import Settings, build, class_attr_names, registry
from engine.config.settings import LogLevel, PoolMode, TlsMinVersion, TlsVerifyClient, WorkerClass
from engine.master import Master
from workers.intake import set_listener_timeout

Socket = socket.socket  # for annotations inside the class, whose `socket` is an attribute

# Modules whose classes are "socketserver's": the stdlib's, engine's own copy, and that
# copy loaded under the name socketserver (the conformance run does that).
SOCKETSERVER_MODULES = frozenset({"socketserver", classic.__name__})


def _socketserver_names() -> frozenset[str]:
    """The public names socketserver's server classes and mix-ins define."""
    owners = [classic.BaseServer, classic.TCPServer, classic.UDPServer, classic.ThreadingMixIn]
    if hasattr(classic, "ForkingMixIn"):
        owners.append(classic.ForkingMixIn)
    return frozenset(name for cls in owners for name in vars(cls) if not name.startswith("_"))


SOCKETSERVER_NAMES = _socketserver_names()

_DEFAULTS: dict[str, Any] = {f.name: f.default for f in registry() if f.metadata["class_attr"]}

# This process's pid, kept current across forks without a syscall per request.
_this_pid = os.getpid()

# How many pools this process is the master of: while one runs, its workers are this
# process's children too, and waitpid(-1) (collect_children) would steal them.
_pools_here = 0
_pools_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _this_pid, _pools_here
    _this_pid = os.getpid()
    _pools_here = 0  # a child is the master of none of its parent's pools


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclasses.dataclass
class _ServeState:
    """What serve_forever and shutdown share, per server (created on first use)."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    stopped: threading.Event = dataclasses.field(default_factory=threading.Event)
    shutdown_pending: bool = False
    thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.stopped.set()


class _EngineState:
    """A read-only attribute showing engine's state, kept under a private name.

    It has no ``__set__``: a user's ``self.<name> = ...`` (in a server's ``__init__``,
    say) sets an instance attribute that hides it, instead of failing as assigning a
    property without a setter does; engine goes on using the private name.
    """

    def __init__(self, private: str, doc: str) -> None:
        self.private = private
        self.__doc__ = doc

    def __get__(self, server: object, owner: type | None = None) -> Any:
        return self if server is None else getattr(server, self.private)


class PreforkLayer:
    """The pool, and every name PreforkMixIn adds beyond ForkingMixIn's.

    Not used directly: PreforkMixIn places a subclass of this and of the socketserver
    class it finds (``TCPServer``...) right above that class in the server's MRO, so
    that a base class's or the user's overrides of these names take precedence.
    """

    # Settings (defaults filled in from engine.config's registry below the class).
    proc_name: str | None
    pidfile: str | None
    user: str | None
    group: str | None
    certfile: str | None
    keyfile: str | None
    ca_certs: str | None
    tls_verify_client: TlsVerifyClient
    tls_min_version: TlsMinVersion
    tls_ciphers: str | None
    handshake_timeout: float
    proxy_protocol: bool
    proxy_allow_from: tuple[str, ...]
    allow_from: tuple[str, ...]
    deny_from: tuple[str, ...]
    client_timeout: float | None
    request_queue_size: int
    pool_mode: PoolMode
    workers: int | None
    max_children: int
    min_spare: int
    max_spare: int
    idle_timeout: float
    max_spawn_batch: int
    gc_freeze: bool
    ksm: bool
    threads: int
    worker_class: WorkerClass
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
    log_level: LogLevel
    log_file: str | None
    access_log: str | None

    # Provided by the socketserver base class this is mixed into.
    socket: Socket
    server_address: Any

    # A ready TLS context (Python API): overrides certfile/keyfile/ca_certs & co.
    # Never applied to a listener that is already TLS (the server wrapped it itself).
    ssl_context: ssl.SSLContext | None = None
    # Listening sockets besides ``socket`` (adopt_listeners); workers accept from all.
    extra_listeners: Sequence[Socket] = ()

    _prefork_master: Master | None = None
    _prefork_pool_pid: int | None = None  # the master's pid while its pool serves
    _prefork_adopted = False  # serving a socket handed in rather than one we bound
    _prefork_handed_off = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Validate before the base class binds, so a bad setting leaks no socket.
        self.prefork_settings()
        super().__init__(*args, **kwargs)

    def prefork_settings(self) -> Settings:
        """The validated settings, read from this server's attributes.

        Only attributes set for engine count (see the module's docstring): a name that
        a base class other than socketserver's defines keeps its default here.

        Raises:
            engine.errors.ConfigError: a setting is invalid (the message names it).
        """
        return build({name: _setting(self, name) for name in class_attr_names()})

    def _prefork_state(self) -> _ServeState:
        state = vars(self).get("_prefork_serve_state")
        if state is None:  # setdefault is atomic: racing threads agree on one
            state = vars(self).setdefault("_prefork_serve_state", _ServeState())
        return state  # type: ignore[no-any-return]

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

    if TYPE_CHECKING:
        handed_off: bool
    else:
        handed_off = _EngineState(
            "_prefork_handed_off",
            "True once a SIGUSR2 upgrade has passed the sockets on to a new master.",
        )

    # --- the serving loop: the pool, where BaseServer's loop would be ---

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Run the master until :meth:`shutdown` or a stop signal.

        ``poll_interval`` is accepted for compatibility and unused: the master is
        woken by events, it does not poll.

        A :meth:`shutdown` requested while it was not running makes it return at once,
        even on a server closed since (``shutdown(); server_close()`` before the serving
        thread got here).

        Raises:
            ValueError: the server is closed.
            KeyboardInterrupt: SIGINT (Ctrl-C) stopped it, as it stops BaseServer's.
            Exception: what :meth:`service_actions` raised, as from BaseServer's loop:
                the pool stops gracefully first (in-flight requests finish).
            engine.errors.ConfigError: a setting is invalid.
            engine.errors.MasterFatalError: no worker could boot.
        """
        global _pools_here
        state = self._prefork_state()
        with state.lock:
            if state.shutdown_pending:  # shutdown() came first (the server may be closed
                state.shutdown_pending = False  # since): return at once
                return
        if self.fileno() < 0:  # type: ignore[attr-defined]
            raise ValueError(f"serve_forever() called on a closed server: {self!r}")
        settings = self.prefork_settings()
        sock = self.socket
        with state.lock:
            if state.shutdown_pending:  # shutdown() came meanwhile
                state.shutdown_pending = False
                return
            master = self._prefork_master = Master(self, settings)
            self._prefork_pool_pid = os.getpid()
            state.thread = threading.current_thread()
            state.stopped.clear()
            with _pools_lock:
                _pools_here += 1
        socks = [sock, *self.extra_listeners]
        # The mode to give back: blocking (None), non-blocking (0.0) or a timeout the
        # program set on the listener (handle_request() waits that long).
        was_timeout = [each.gettimeout() for each in socks]
        # Workers poll before accepting, but a sibling may win the race: never block.
        for each in socks:
            each.setblocking(False)
        try:
            master.run()
        finally:
            self._prefork_handed_off = master.handed_off
            # O_NONBLOCK belongs to the open file, which a new master now shares after
            # an upgrade: making it blocking again would hang that master's workers.
            # Nor for sockets handed in: their old mode is not known (gettimeout()
            # reports the Python object's view, not the shared file's flag).
            restore = [] if self._prefork_handed_off or self._prefork_adopted else socks
            for each, timeout in zip(restore, was_timeout, strict=False):
                with contextlib.suppress(OSError):  # closed meanwhile by server_close()
                    each.settimeout(timeout)
            # Nor its client_timeout (SO_RCVTIMEO/SO_SNDTIMEO, for the connections to
            # inherit): a blocking accept() on the caller's socket must not time out.
            set_listener_timeout(restore, None)
            with state.lock:
                self._prefork_master = None
                self._prefork_pool_pid = None
                state.thread = None
                state.shutdown_pending = False
                state.stopped.set()
                with _pools_lock:
                    _pools_here -= 1
        error, master.service_error = master.service_error, None
        if error is not None:  # as BaseServer.serve_forever: service_actions raised
            raise error

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` gracefully and wait until it has returned.

        In-flight requests finish first (up to ``graceful_timeout``). Never deadlocks:
        it returns at once when ``serve_forever`` is not running (a later one then
        returns immediately) or when called from the master's own thread.
        """
        state = self._prefork_state()
        with state.lock:
            master = self._prefork_master
            if master is None:
                state.shutdown_pending = True
                return
            master.request_stop()
            same_thread = state.thread is threading.current_thread()
        if not same_thread:
            state.stopped.wait()

    # --- hooks ---

    def worker_init(self) -> None:
        """Called in each worker right after fork, before it serves. May be overridden.

        Open per-process resources here (database connections...). An exception makes
        the worker exit as failed to boot; the master backs off and retries.
        """

    def worker_exit(self) -> None:
        """Called in each worker before it exits normally. May be overridden."""

    def worker_spawned(self, slot: int, pid: int) -> None:
        """Called in the master after forking worker *slot* as *pid*. May be overridden.

        When the master forks several workers at once (at start, or to refill the pool),
        it calls this for each after the last of them is forked.
        """

    def worker_exited(self, slot: int, pid: int, exitcode: int) -> None:
        """Called in the master after reaping a worker. May be overridden.

        *exitcode* is as ``subprocess`` reports it: the exit status, or minus the
        number of the signal that killed the worker.
        """


for _name, _default in _DEFAULTS.items():
    if _name not in SOCKETSERVER_NAMES:  # those: the mix-in's, or the base class's
        setattr(PreforkLayer, _name, _default)
del _name, _default


def _is_engines(klass: type) -> bool:
    """Is *klass* one whose attributes are set for engine?"""
    return issubclass(klass, (PreforkMixIn, PreforkLayer))


# request_queue_size as the registry accepts it. For a PreforkMixIn server it is the
# base class's server_activate() that listens, with the attribute itself: listen()
# takes any int (Python makes a negative one 0, the kernel caps it at somaxconn).
_BACKLOG_RANGE = (1, 1 << 20)


def _setting(server: Any, name: str) -> Any:
    """The value of setting *name* for *server*, by the rule in the module docstring."""
    if name == "request_queue_size":
        value = getattr(server, name)
        if isinstance(value, int) and not isinstance(value, bool):
            return min(max(value, _BACKLOG_RANGE[0]), _BACKLOG_RANGE[1])
        return value
    if name in SOCKETSERVER_NAMES:
        return getattr(server, name)
    for klass in type(server).__mro__:
        if name in vars(klass):
            return getattr(server, name) if _is_engines(klass) else _DEFAULTS[name]
    return _DEFAULTS[name]


_layers: dict[type, type] = {}


def _layer_for(base: type) -> type:
    """The PreforkLayer subclass that sits directly above socketserver class *base*."""
    layer = _layers.get(base)
    if layer is None:
        name = f"PreforkLayer[{base.__module__}.{base.__qualname__}]"
        layer = _layers[base] = type(name, (PreforkLayer, base), {"__module__": __name__})
    return layer


def _insert_layer(cls: type) -> None:
    """Put the PreforkLayer into *cls*'s MRO directly above its socketserver class."""
    if issubclass(cls, PreforkLayer):
        return  # a subclass of a server that has it already
    base = next(
        (
            klass
            for klass in cls.__mro__
            if klass.__module__ in SOCKETSERVER_MODULES and hasattr(klass, "serve_forever")
        ),
        None,
    )
    if base is None:
        if hasattr(cls, "fileno"):  # a server (a mix-in has no socket), not socketserver's
            raise TypeError(
                f"{cls.__qualname__}: PreforkMixIn needs a socketserver server class "
                "(TCPServer, UDPServer... from socketserver or engine) among its bases"
            )
        return  # a mix-in built on PreforkMixIn: the layer goes in where it meets a server
    layer = _layer_for(base)
    bases = cls.__bases__
    if base in bases:
        cls.__bases__ = tuple(layer if each is base else each for each in bases)
    else:
        cls.__bases__ = (*bases, layer)


if TYPE_CHECKING:
    # Type checkers see the layer's names on the mix-in; at run time they are found in
    # the layer, below the base classes (see _insert_layer).
    _MixInSurface = PreforkLayer
else:
    _MixInSurface = object


class PreforkMixIn(_MixInSurface):
    """Mix-in that serves requests from a pool of pre-forked worker processes.

    ``serve_forever()`` runs the master in the calling thread: it forks the workers,
    supervises them and returns after ``shutdown()`` (or SIGTERM), once in-flight
    requests have finished.

    ForkingMixIn's names keep their meaning: a request handled outside the pool
    (``handle_request()``) is served in a child process of its own, tracked in
    :attr:`active_children`, bounded by :attr:`max_children`, reaped by
    :meth:`collect_children`, and waited for by :meth:`server_close` unless
    :attr:`block_on_close` is false.

    Hooks (all may be overridden):

    * :meth:`worker_init` / :meth:`worker_exit`: in each worker, after fork / before exit;
    * :meth:`worker_spawned` / :meth:`worker_exited`: in the master.
    """

    timeout: float | None = 300
    active_children: set[int] | None = None
    max_children: int = _DEFAULTS["max_children"]
    block_on_close: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _insert_layer(cls)

    def collect_children(self, *, blocking: bool = False) -> None:
        """Reap finished request children; block while :attr:`max_children` run.

        While :attr:`max_children` run, it waits as ForkingMixIn does, for whichever
        child of the process finishes first (``waitpid(-1)``); but while a pool runs in
        this process (its workers are children too, and the master reaps them), for the
        request child with the lowest pid. Then it reaps only :attr:`active_children`.
        """
        children = self.active_children
        if not children:
            return
        while len(children) >= self.max_children:
            if _pools_here:  # a pool's workers are our children too: wait for one of ours
                pid = min(children)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            else:  # as ForkingMixIn: whichever child finishes first
                try:
                    pid, _ = os.waitpid(-1, 0)
                except ChildProcessError:
                    children.clear()  # none of ours is left
                    break
            children.discard(pid)
        flags = 0 if blocking else os.WNOHANG
        for pid in list(children):
            try:
                reaped, _ = os.waitpid(pid, flags)
            except ChildProcessError:
                children.discard(pid)  # already reaped elsewhere
            else:
                if reaped:
                    children.discard(pid)

    def handle_timeout(self) -> None:
        """Reap request children when :meth:`handle_request` times out."""
        self.collect_children()

    def service_actions(self) -> None:
        """Reap request children; the master calls this once per loop iteration."""
        self.collect_children()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve one request: in a pool worker, right here; anywhere else (a
        ``handle_request()`` call), in a child process forked for it, as ForkingMixIn
        does, so that nothing the handler raises reaches the caller."""
        pool_pid = self._prefork_pool_pid
        if pool_pid is not None and pool_pid != _this_pid:  # in a worker of the pool
            # On an exception the worker calls handle_error, the connection still open,
            # then shutdown_request: the order of ForkingMixIn's child, each once.
            self.finish_request(request, client_address)  # type: ignore[attr-defined]
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        classic.ForkingMixIn.process_request(self, request, client_address)  # type: ignore[arg-type]

    def server_close(self) -> None:
        """Close the listening sockets; no worker outlives this call. Then reap the
        request children, waiting for them unless :attr:`block_on_close` is false.

        While :meth:`serve_forever` runs in another thread (a ``with`` block left by an
        exception), its pool stops at once, as on SIGQUIT: nothing is left to accept
        on. This call returns once it has, and ``serve_forever`` returns.
        """
        super().server_close()  # type: ignore[misc]
        for extra in self.extra_listeners:
            extra.close()
        state = self._prefork_state()
        with state.lock:
            master = self._prefork_master
            if master is not None:
                master.request_stop(quick=True)  # nothing is left to accept on
            elsewhere = master is not None and state.thread is not threading.current_thread()
        if elsewhere:
            state.stopped.wait()
        elif master is not None and master.workers:  # from the master's own thread
            master.children.kill_all()
        self.collect_children(blocking=self.block_on_close)


class PreforkTCPServer(PreforkMixIn, classic.TCPServer):
    """TCP server with a pre-forked, supervised pool of workers."""

    request_queue_size = _DEFAULTS["request_queue_size"]  # the mix-in leaves it to the base


class PreforkUDPServer(PreforkMixIn, classic.UDPServer):
    """UDP server with a pre-forked, supervised pool of workers."""

    request_queue_size = _DEFAULTS["request_queue_size"]  # the mix-in leaves it to the base


class PreforkUnixStreamServer(PreforkMixIn, classic.UnixStreamServer):
    """Unix stream server with a pre-forked, supervised pool of workers."""

    request_queue_size = _DEFAULTS["request_queue_size"]  # the mix-in leaves it to the base


class PreforkUnixDatagramServer(PreforkMixIn, classic.UnixDatagramServer):
    """Unix datagram server with a pre-forked, supervised pool of workers."""

    request_queue_size = _DEFAULTS["request_queue_size"]  # the mix-in leaves it to the base
