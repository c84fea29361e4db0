"""The worker process: post-fork set-up, the accept/receive loop, drain and exit.

A worker serves connections from the listening socket it shares with its siblings,
running the *server's own* classic pipeline (``get_request`` → ``verify_request`` →
``process_request`` → ``shutdown_request``, ``handle_error`` on exceptions) so that
user overrides keep working. It never returns into the caller's stack: every path
ends in ``os._exit``.

This is the ``sync`` worker class: one connection at a time, or ``threads`` at once in a
thread pool. The ``gevent`` class (:mod:`workers.cooperative`) subclasses it and reuses
its per-connection code. With several connections in flight, the scoreboard's
request_start is that of the oldest one, which ``request_timeout`` judges.

Signals in a worker:

=========  =======================================================================
SIGTERM    drain: finish the connections in hand, then exit 0
SIGINT     exit at once (status 4)
SIGQUIT    exit at once (status 4)
SIGABRT    dump every thread's traceback to stderr and die (the master's
           hung-worker signal; it follows up with SIGKILL if needed)
SIGUSR1    reopen log files (``server.reopen_logs()`` if the server has it)
others     HUP, TTIN, TTOU, USR2, WINCH are the master's business: ignored
=========  =======================================================================
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import os
import random
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from workers.connection import Connection, acceptor
from workers.intake import Intake, set_listener_timeout
from workers.prctl import PR_SET_PDEATHSIG, prctl
from workers.protocol import Admitter, ExitCode, ServerLike, format_address
from workers.scoreboard import Scoreboard

# Out of file descriptors or memory: back off instead of spinning on accept().
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
CAPACITY_BACKOFF = 0.1
CAPACITY_REPORT_EVERY = 10.0  # seconds between two "accept failed" lines of one worker
# Connections served back to back from one listener before the others get a look.
WAITING_BATCH = 64
# How often an idle worker wakes to write its heartbeat and check on its master.
IDLE_WAKE = 1.0
# struct tcp_info (Linux): tcpi_bytes_acked and tcpi_bytes_received, both u64.
_TCP_INFO_LEN = 136
_TCP_BYTES = struct.Struct("<QQ")
_TCP_BYTES_OFFSET = 120
# tcpi_state values after the peer's FIN: CLOSE_WAIT, LAST_ACK, CLOSING.
_PEER_CLOSED_STATES = frozenset({8, 9, 11})
_MASTER_ONLY_SIGNALS = ("SIGHUP", "SIGTTIN", "SIGTTOU", "SIGUSR2", "SIGWINCH")


@dataclass
class WorkerSpec:
    """What the master tells a worker about itself when it forks it."""

    slot: int
    generation: int
    master_pid: int
    title: str
    threads: int = 1
    # "sync" (inline, or a pool of `threads`) or "gevent" (workers.cooperative).
    worker_class: str = "sync"
    worker_connections: int = 1000  # gevent: connections served at once
    # gevent: each connection's own limit (a sync worker is killed by the master).
    request_timeout: float | None = None
    count_bytes: bool = False  # TCP_INFO per connection: about 10 µs, so opt-in
    max_requests: int = 0  # already jittered; 0 means never recycle
    close_fds: tuple[int, ...] = ()  # the master's private descriptors
    # The mask to restore once the worker's handlers are installed (the master blocks
    # its signals across fork so that none reaches the master's handlers in the child).
    signal_mask: set[int] = field(default_factory=set)
    # Called with (client_address, seconds, bytes_in, bytes_out) after each connection.
    on_request_done: Callable[[Any, float, int, int], None] | None = None
    # Listening sockets besides server.socket (several binds, inherited sockets).
    extra_listeners: tuple[socket.socket, ...] = ()
    # PROXY header, access lists, TLS handshake: run before verify_request.
    intake: Admitter | None = None


def exit_status(exc: SystemExit) -> int:
    """The worker's exit status for a SystemExit: an int code as the kernel will report
    it (its low 8 bits: 99999 is 159, -1 is 255), else ERROR."""
    return exc.code & 0xFF if isinstance(exc.code, int) else ExitCode.ERROR


_SIGKILL = int(signal.SIGKILL)


class ReportThrottle:
    """A failure that may repeat many times a second is reported at most once per
    *every* seconds, with how many times it happened since the last report."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.count = 0
        self.next_at = 0.0

    def due(self) -> int:
        """Count one failure; return the count to report now, or 0 (not yet)."""
        self.count += 1
        now = time.monotonic()
        if now < self.next_at:
            return 0
        self.next_at = now + self.every
        count, self.count = self.count, 0
        return count


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL us when the master dies (Linux), even mid-request."""
    with contextlib.suppress(OSError):
        prctl(PR_SET_PDEATHSIG, _SIGKILL)


class Worker:
    """One worker process's state and loop."""

    # Handlers get blocking sockets, on which a kernel timeout inherited from the
    # listener applies (see _inherit_client_timeout); the gevent worker's never block.
    blocking_connections = True

    def __init__(self, server: ServerLike, scoreboard: Scoreboard, spec: WorkerSpec) -> None:
        self.server = server
        self.scoreboard = scoreboard
        self.spec = spec
        self.requests = 0
        self.active = 0
        self.draining = False
        self.serving = False  # set once worker_init is done
        self._lock = threading.Lock()
        self._wake_r = self._wake_w = -1
        self._pool: ThreadPoolExecutor | None = None
        self._backoff_until = 0.0
        self._traffic = threading.local()
        self._tcp = False  # count bytes with TCP_INFO (set up when count_bytes is on)
        # Where requests come from: one callable per listener (see _make_takers).
        self._takers = self._make_takers()
        self._next_listener = 0
        self._accept_failures = ReportThrottle(CAPACITY_REPORT_EVERY)
        self._thread_failures = ReportThrottle(CAPACITY_REPORT_EVERY)  # threads > 1
        # Start times of the connections in flight, oldest first (insertion order):
        # the oldest one is what request_timeout judges (see _track).
        self._in_flight: dict[int, float] = {}
        self._next_token = 0
        # A handler's SystemExit & co. in a pool thread or greenlet: the status to exit with.
        self._exit_status: int = ExitCode.OK
        # Error reports (handle_error) that could not be written, and why.
        self._lost_reports = 0
        self._lost_reason = ""

    # --- life cycle ---

    def run(self) -> int:
        """Set up, serve until told to drain (or recycled), clean up; return the status."""
        self._reset_process_state()
        self._install_signals()
        signal.pthread_sigmask(signal.SIG_SETMASK, self.spec.signal_mask)
        # STARTING at once: until then the slot reads EMPTY, and a dynamic pool would
        # fork more workers while this one prepares (gevent's patching takes a while).
        self.scoreboard.worker_started(self.spec.slot, os.getpid(), time.monotonic())
        try:
            self._prepare_process()
            if self.spec.count_bytes:
                self.count_bytes_on_shutdown()
            hook = getattr(self.server, "worker_init", None)
            if hook is not None:
                hook()
            self._set_up_connections()
            self._start_serving()
        except Exception:
            traceback.print_exc()
            return ExitCode.BOOT_FAILED
        self.scoreboard.worker_booted(self.spec.slot)  # a later exit is no boot failure
        self.serving = True
        try:
            self.scoreboard.idle(self.spec.slot, time.monotonic(), 0)
            self._serve()
        finally:
            self.scoreboard.draining(self.spec.slot)
            for listener in self._listeners():
                with contextlib.suppress(OSError):
                    listener.close()
            self._finish_serving()
            hook = getattr(self.server, "worker_exit", None)
            if hook is not None:
                hook()
        return self._exit_status

    def _prepare_process(self) -> None:
        """After fork and signal set-up, before worker_init: nothing for the sync worker
        (the gevent worker monkey-patches here). An exception is a failed boot."""

    def _set_up_connections(self) -> None:
        """At boot: the listeners' client_timeout, and the class of the connections."""
        self._inherit_client_timeout()
        if self.blocking_connections:
            self._build_connections_as_own_class()

    def _build_connections_as_own_class(self) -> None:
        """Accept each stream connection as a :mod:`workers.connection` class (its
        ``makefile`` takes a shorter path than the stdlib's), kernel-timed where the
        intake would make it so: the server's ``get_request`` (the engine's own) builds
        it, so no ``__class__`` is assigned per connection."""
        intake = self.spec.intake

        def class_for(listener: socket.socket) -> type[Connection]:
            if isinstance(intake, Intake):
                return intake.connection_class(listener)
            return Connection

        sock = self.server.socket
        if type(sock) is socket.socket and sock.type == socket.SOCK_STREAM:
            self.server._accept_as = (  # type: ignore[attr-defined]
                sock, acceptor(sock, class_for(sock))
            )
        self._takers = self._make_takers(class_for)

    def _inherit_client_timeout(self) -> None:
        """Put client_timeout on the TCP listeners, for the connections to inherit.

        The kernel then enforces it, and the intake skips a ``settimeout`` per connection
        (see :mod:`workers.intake`). The listeners are shared by every worker, this
        master's and a new master's after an upgrade (SIGUSR2): each worker sets them at
        boot, so an upgrade that changes or turns off client_timeout takes effect; until
        the old workers have drained, their new connections get the new value too.
        """
        intake = self.spec.intake
        if isinstance(intake, Intake):
            intake.inherit_timeout(self._listeners(), blocking=self.blocking_connections)
        else:  # no client_timeout: clear an earlier generation's
            set_listener_timeout(self._listeners(), None)

    def _start_serving(self) -> None:
        """Once worker_init is done, before the worker says it booted: the thread pool,
        if there is one, with its first thread started.

        A worker that cannot start even one (the process limit, memory) fails to boot;
        the others start when needed, and one that cannot start leaves the connection
        queued for a busy thread (:meth:`_dispatch_one`).
        """
        if self.spec.threads > 1:
            self._pool = ThreadPoolExecutor(self.spec.threads, "engine-request")
            ready = threading.Event()
            self._pool.submit(ready.set)  # RuntimeError: a boot failure
            ready.wait()

    def _finish_serving(self) -> None:
        """Listeners closed: let the connections in flight finish."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _stop_taking(self) -> None:
        """Stop taking connections; finish the ones in hand, then exit."""
        self.draining = True

    def _reset_process_state(self) -> None:
        """Undo what the worker inherited from the master that is not its own."""
        # The master's wakeup fd must not receive this process's signals.
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for fd in self.spec.close_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        _die_with_parent()
        if os.getppid() != self.spec.master_pid:
            raise SystemExit(ExitCode.QUICK)  # the master died before we asked
        with contextlib.suppress(Exception):
            import setproctitle

            setproctitle.setproctitle(self.spec.title)
        random.seed()  # do not share the master's random sequence with siblings

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, _quick_exit)
        signal.signal(signal.SIGQUIT, _quick_exit)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for name in _MASTER_ONLY_SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        # SIGABRT (the master's hung-worker signal) dumps every thread's traceback from
        # C, so it works even when the handler hogs the GIL, then the worker dies.
        faulthandler.enable(all_threads=True)

    def _on_term(self, signum: int, frame: object) -> None:
        self._stop_taking()
        if not self.serving:
            # Still in worker_init: nothing in flight to finish, so stop right here.
            raise SystemExit(ExitCode.OK)

    def _on_usr1(self, signum: int, frame: object) -> None:
        reopen = getattr(self.server, "reopen_logs", None)
        if reopen is not None:
            reopen()

    # --- the loop ---

    def _listeners(self) -> list[socket.socket]:
        return [self.server.socket, *self.spec.extra_listeners]

    def _serve(self) -> None:
        listeners = [listener.fileno() for listener in self._listeners()]
        epoll = select.epoll()
        # EXCLUSIVE: the kernel wakes one idle worker per connection, not all of them.
        # It cannot be combined with EPOLL_CTL_MOD, hence register/unregister below.
        listen_events = select.EPOLLIN | select.EPOLLEXCLUSIVE
        listening = False
        try:
            epoll.register(self._wake_r, select.EPOLLIN)
            while not self.draining:
                wanted = self._has_capacity()
                if wanted and self._take_waiting():
                    continue
                # Level-triggered: a full (or backing-off) worker must stop watching the
                # listener, or it would spin while connections wait for its siblings.
                if wanted != listening:
                    for listener in listeners:
                        if wanted:
                            epoll.register(listener, listen_events)
                        else:
                            epoll.unregister(listener)
                    listening = wanted
                events = epoll.poll(self._poll_timeout())
                if events and all(fd != self._wake_r for fd, _ in events):
                    continue  # a connection: serving it writes the slot (a heartbeat too)
                # Timed out, or woken by a signal or a finished thread.
                self.scoreboard.heartbeat(self.spec.slot, time.monotonic())
                if self._lost_reports:
                    self._say_lost_reports()
                if events:
                    drain_pipe(self._wake_r)
                if os.getppid() != self.spec.master_pid:
                    raise SystemExit(ExitCode.QUICK)
        finally:
            epoll.close()

    def _has_capacity(self) -> bool:
        if self._backoff_until:
            if time.monotonic() < self._backoff_until:
                return False
            self._backoff_until = 0.0  # over: back to the clock-free check
        return self.active < self.spec.threads

    def _poll_timeout(self) -> float:
        if not self._backoff_until:
            return IDLE_WAKE
        wait = self._backoff_until - time.monotonic()
        return min(IDLE_WAKE, wait) if wait > 0 else IDLE_WAKE

    def _take_waiting(self) -> bool:
        """Take the requests that are waiting; return whether any was taken."""
        takers = self._takers
        take_from = self._serve_waiting if self._pool is None else self._dispatch_one
        if len(takers) == 1:
            return take_from(takers[0])
        # Several listeners: start from a different one each time, so none starves.
        start = self._next_listener
        self._next_listener = (start + 1) % len(takers)
        taken = False
        for i in range(len(takers)):
            if self.draining or not self._has_capacity():
                break  # a pool thread per request: the first listeners may have filled it
            taken = take_from(takers[(start + i) % len(takers)]) or taken
        return taken

    def _make_takers(
        self, class_for: Callable[[socket.socket], type[Connection]] | None = None
    ) -> tuple[Callable[[], tuple[Any, Any]], ...]:
        """One callable per listener that returns ``(request, client_address)``; with
        *class_for*, the extra stream listeners' connections are built as its class."""
        server = self.server
        takers: list[Callable[[], tuple[Any, Any]]] = [server.get_request]  # overrides apply
        size = getattr(server, "max_packet_size", 8192)
        for listener in self.spec.extra_listeners:
            if listener.type == socket.SOCK_DGRAM:

                def receive(listener: socket.socket = listener) -> tuple[Any, Any]:
                    data, client_address = listener.recvfrom(size)
                    return (data, listener), client_address

                takers.append(receive)
            elif class_for is not None and type(listener) is socket.socket:
                takers.append(acceptor(listener, class_for(listener)))
            else:
                takers.append(listener.accept)
        return tuple(takers)

    def _accept_failed(self, exc: OSError) -> bool:
        """Handle a failed accept; return whether to try the next connection at once."""
        if exc.errno in CAPACITY_ERRNOS:
            self._backoff_until = time.monotonic() + CAPACITY_BACKOFF
            self._report_capacity(exc)
            return False
        # The client gave up before we took it: the next one may be fine.
        return exc.errno in (errno.ECONNABORTED, errno.EPROTO)

    def _serve_waiting(self, take: Callable[[], tuple[Any, Any]]) -> bool:
        """``threads == 1``: serve what waits on one listener, one at a time.

        This is the hot path of the default configuration: what it needs per connection
        is looked up once per batch, and the slot is written once on each side of the
        request. At most WAITING_BATCH connections, so that other listeners get a turn.
        Returns whether any connection was taken.
        """
        busy, idle, slot = self.scoreboard.busy, self.scoreboard.idle, self.spec.slot
        pipeline, monotonic = self._pipeline, time.monotonic
        report, last = self.spec.on_request_done, self.spec.max_requests
        taken = 0
        while taken < WAITING_BATCH and not self.draining:
            try:
                request, client_address = take()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if self._accept_failed(exc):
                    continue
                break
            taken += 1
            started = monotonic()
            busy(slot, started, self.requests, 1, client_address)
            if last and self.requests + 1 >= last:
                self._announce_retirement()
            try:
                client_address = pipeline(request, client_address)
            except BaseException as exc:
                self._report_exit(exc, client_address, "")
                raise
            finally:
                self.requests += 1
                now = monotonic()
                idle(slot, now, self.requests)
                if report is not None:
                    self._report(client_address, now - started)
                if last and self.requests >= last:
                    self.draining = True  # recycle: the master forks a replacement
        return taken > 0

    def _dispatch_one(self, take: Callable[[], tuple[Any, Any]]) -> bool:
        """``threads > 1``: hand one waiting request to a pool thread, if one waits."""
        try:
            request, client_address = take()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            return self._accept_failed(exc)
        assert self._pool is not None
        token, started = self._track(client_address)
        try:
            self._pool.submit(self._process, request, client_address, token, started)
        except RuntimeError as exc:
            # "can't start new thread": the connection was queued before the pool
            # tried to add a thread; a running one takes it once free.
            self._report_no_thread(exc)
        return True

    def _report_no_thread(self, exc: RuntimeError) -> None:
        """One line per CAPACITY_REPORT_EVERY at most, with the count since the last."""
        count = self._thread_failures.due()
        if not count:
            return
        with contextlib.suppress(Exception):  # stderr on a full disk: serve all the same
            print(
                f"engine: worker {self.spec.slot} pid {os.getpid()}: cannot start another "
                f"request thread ({exc}; {count} times); connections wait for a busy one",
                file=sys.stderr, flush=True,
            )

    def _track(self, client_address: Any) -> tuple[int, float]:
        """A connection starts (thread or greenlet): count it, note when it started.

        The scoreboard's request_start is the start of the OLDEST connection in flight,
        so a connection hung in one thread is not hidden by new ones in the others.
        Returns the connection's token (for :meth:`_finished`) and its start time.
        """
        now = time.monotonic()
        with self._lock:
            token = self._next_token
            self._next_token = token + 1
            self._in_flight[token] = now
            self.active += 1
            active, requests = self.active, self.requests
            oldest = next(iter(self._in_flight.values()))
        self.scoreboard.busy(self.spec.slot, now, requests, active, client_address, oldest)
        return token, now

    def _report_capacity(self, exc: OSError) -> None:
        """One line per CAPACITY_REPORT_EVERY at most, with the count since the last."""
        count = self._accept_failures.due()
        if not count:
            return
        with contextlib.suppress(Exception):  # stderr on a full disk: still back off
            print(
                f"engine: worker {self.spec.slot} pid {os.getpid()}: accept failed "
                f"({errno.errorcode.get(exc.errno or 0, exc.errno)}), backing off"
                + (f" ({count} times since the last report)" if count > 1 else ""),
                file=sys.stderr,
            )

    def _announce_retirement(self) -> None:
        """Before the last request: let the master fork our replacement right now.

        Otherwise the replacement is forked only once we have exited and been reaped,
        and a small pool has nobody accepting for those milliseconds.
        """
        self.scoreboard.retiring(self.spec.slot)
        with contextlib.suppress(OSError):
            os.kill(self.spec.master_pid, signal.SIGCHLD)  # a wake-up: the master reaps on it

    def _process(self, request: Any, client_address: Any, token: int, started: float) -> None:
        """One request on a pool thread: the pipeline, then the shared bookkeeping."""
        try:
            client_address = self._pipeline(request, client_address)
        except BaseException as exc:
            # Inline, SystemExit & co. end the worker; a pool's Future would swallow
            # them silently.
            self._exit_after_the_others(exc, client_address, " in a pool thread")
        finally:
            self._finished(client_address, started, token)

    def _exit_after_the_others(self, exc: BaseException, client_address: Any, where: str) -> None:
        """A handler's BaseException beside other connections (a pool thread, a
        greenlet): report it, take no more, and exit with its status once the others
        finish."""
        self._exit_status = self._report_exit(exc, client_address, where)
        self._stop_taking()
        # The others may take up to graceful_timeout: the master forks our
        # replacement now, not once we have exited, or nobody takes new connections.
        self._announce_retirement()

    def _report_exit(self, exc: BaseException, client_address: Any, where: str) -> int:
        """One line (and the traceback unless SystemExit) for a handler's BaseException;
        returns the status the worker exits with."""
        if isinstance(exc, SystemExit):
            status = exit_status(exc)
            what = f"the handler raised SystemExit({exc.code!r}){where}"
        else:
            status = ExitCode.ERROR
            what = f"the handler raised {type(exc).__name__}{where}"
        with contextlib.suppress(Exception):  # a full disk must not change the outcome
            if where and not isinstance(exc, SystemExit):
                traceback.print_exc()
            print(
                f"engine: worker {self.spec.slot} pid {os.getpid()}: {what} (client "
                f"{format_address(client_address)}); the worker exits with status {status}"
                + (" once its other connections finish" if where else ""),
                file=sys.stderr, flush=True,
            )
        return status

    def _pipeline(self, request: Any, client_address: Any) -> Any:
        """The classic pipeline for one request, with the server's own methods.

        Returns the client address the handler saw (a PROXY header may change it).
        """
        server = self.server
        intake = self.spec.intake
        if intake is not None:
            admitted = intake.admit(request, client_address)
            if admitted is None:
                return client_address  # closed and logged by the intake
            if admitted[1] != client_address:  # a PROXY header named the real client
                self.scoreboard.client(self.spec.slot, admitted[1])
            request, client_address = admitted
        try:
            if server.verify_request(request, client_address):
                try:
                    server.process_request(request, client_address)
                except Exception:
                    self._handle_error(request, client_address)
                    server.shutdown_request(request)
            else:
                server.shutdown_request(request)
        except BaseException:
            # Like BaseServer: close the request, then let SystemExit & co. end us.
            with contextlib.suppress(Exception):
                server.shutdown_request(request)
            raise
        return client_address

    def _handle_error(self, request: Any, client_address: Any) -> None:
        """``server.handle_error``, which must not kill the worker when it cannot write.

        A full disk or a closed pipe on stderr makes the traceback's write fail; the
        failure is counted and said once writing works again.
        """
        try:
            self.server.handle_error(request, client_address)
        except Exception as exc:
            with self._lock:
                self._lost_reports += 1
                self._lost_reason = f"{type(exc).__name__}: {exc}"
            return
        if self._lost_reports:
            self._say_lost_reports()

    def _say_lost_reports(self) -> None:
        """Say how many error reports were lost, if that can be written now."""
        with self._lock:
            count, self._lost_reports = self._lost_reports, 0
        try:
            print(
                f"engine: worker {self.spec.slot} pid {os.getpid()}: {count} error reports "
                f"could not be written ({self._lost_reason})",
                file=sys.stderr, flush=True,
            )
        except Exception:
            with self._lock:
                self._lost_reports += count  # still failing: say it later

    def count_bytes_on_shutdown(self) -> None:
        """Record each request's bytes just before the server shuts it down.

        The server's ``shutdown_request`` (a user's override included) is wrapped in
        this worker only, so a server that does not count bytes pays nothing per request.
        """
        # Fixed per server, so decided once rather than on every request.
        listener = self.server.socket
        self._tcp = listener.type == socket.SOCK_STREAM and listener.family in (
            socket.AF_INET, socket.AF_INET6
        )
        shutdown_request = self.server.shutdown_request
        count_traffic = self.count_traffic

        def counted_shutdown_request(request: Any) -> None:
            count_traffic(request)
            shutdown_request(request)

        self.server.shutdown_request = counted_shutdown_request  # type: ignore[method-assign]

    def count_traffic(self, request: Any) -> None:
        """Record one request's bytes in/out (TCP: from the kernel, no wrapping needed)."""
        bytes_in = bytes_out = 0
        if isinstance(request, tuple):  # a datagram: (data, socket)
            bytes_in = len(request[0])
        elif self._tcp:
            with contextlib.suppress(OSError):
                info = request.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
                if len(info) >= _TCP_BYTES_OFFSET + _TCP_BYTES.size:
                    bytes_out, bytes_in = _TCP_BYTES.unpack_from(info, _TCP_BYTES_OFFSET)
                    # The peer's FIN takes one unit of sequence space: not a byte.
                    if info[0] in _PEER_CLOSED_STATES and bytes_in:
                        bytes_in -= 1
        self._traffic.last = (bytes_in, bytes_out)
        if bytes_in or bytes_out:
            with self._lock:
                self.scoreboard.add_bytes(self.spec.slot, bytes_in, bytes_out)

    def _finished(self, client_address: Any, started: float, token: int) -> None:
        """Bookkeeping after a pool thread's (or greenlet's) connection."""
        now = time.monotonic()
        with self._lock:
            self.requests += 1
            self.active -= 1
            active, requests = self.active, self.requests
            in_flight = self._in_flight
            was_oldest = next(iter(in_flight)) == token
            del in_flight[token]
            oldest = next(iter(in_flight.values())) if was_oldest and active else None
        if active:
            self.scoreboard.progress(self.spec.slot, now, requests, active, oldest)
        else:
            self.scoreboard.idle(self.spec.slot, now, requests)
        if self.spec.on_request_done is not None:
            self._report(client_address, now - started)
        if self.spec.max_requests and requests >= self.spec.max_requests:
            self._stop_taking()  # the master forks a replacement when we exit
            self.scoreboard.retiring(self.spec.slot)  # so the master logs it as recycled
        self._connection_done()

    def _connection_done(self) -> None:
        """Wake the main loop: it may be waiting for a free thread, or must exit."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def _report(self, client_address: Any, seconds: float) -> None:
        """Hand one finished connection to the access log."""
        assert self.spec.on_request_done is not None
        bytes_in, bytes_out = getattr(self._traffic, "last", (0, 0))
        self._traffic.last = (0, 0)
        with contextlib.suppress(Exception):  # a broken log must not break serving
            self.spec.on_request_done(client_address, seconds, bytes_in, bytes_out)


def _quick_exit(signum: int, frame: object) -> None:
    os._exit(ExitCode.QUICK)


def drain_pipe(fd: int) -> None:
    """Read a non-blocking pipe empty (wake-up bytes: only their arrival matters)."""
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while os.read(fd, 4096):
            pass
