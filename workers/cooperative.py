"""The gevent worker class: one greenlet per connection, the classic pipeline unchanged.

``worker_class = "gevent"``: after fork, and before ``worker_init``, the worker
monkey-patches the standard library (``gevent.monkey.patch_all()``), so handlers that
block on sockets, ``time.sleep``, locks... yield to the others instead. Each connection
(or datagram) runs the same per-connection code as the sync worker
(:meth:`workers.worker.Worker._pipeline`: the intake, ``verify_request``,
``process_request``, ``shutdown_request``, ``handle_error``) in its own greenlet, up to
``worker_connections`` at once. The master is never patched.

Supervision, in the worker's own hub:

* a heartbeat greenlet writes the scoreboard every second; if the hub stops running (a
  handler spinning on the CPU without yielding), the heartbeat stops and the master's
  ``worker_timeout`` kills the worker with its traceback, busy or not;
* ``request_timeout`` is per connection: a greenlet past it gets a ``gevent.Timeout``
  where it blocks; its traceback is logged, its connection closed, and the worker keeps
  serving the others.
"""

from __future__ import annotations

import _socket
import contextlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.pool
import gevent.socket
import gevent.ssl

from workers.gevent_process import patch_process
from workers.idle_sweep import IdleSweep, sweep_interval
from workers.protocol import ExitCode, WorkerState, format_address
from workers.worker import (
    CAPACITY_BACKOFF,
    IDLE_WAKE,
    Worker,
    drain_pipe,
)

# A worker holding clearly more connections than a sibling that has room leaves the next
# one to it for BALANCE_DEFER seconds: every worker is woken by the same readiness, and
# the first awake would otherwise take a whole burst (its keep-alive clients then share
# one CPU while the other idles).
BALANCE_DEFER = 0.0005
BALANCE_REFRESH = 0.002  # seconds between two reads of the loads
_TAKING = (WorkerState.IDLE, WorkerState.BUSY)
SWEEP_SLICE = 64  # connections the idle sweep judges at a time (about 0.1 ms of the hub)
_GEVENT_SOCKET = gevent.socket.socket
_GEVENT_WAIT = _GEVENT_SOCKET._wait
_GEVENT_SENDALL = _GEVENT_SOCKET.sendall
_CURRENT_GREENLET = gevent.getcurrent
_RAW_SOCKET = _socket.socket  # what gevent's socket wraps (its _sock)


def _noting_waits(read: Callable[..., Any]) -> Callable[..., Any]:
    """gevent's read loop around *read* (a ``_socket.socket`` method), noting each wait
    that ends: the loop itself, not a wrapper around gevent's (see SweptSocket)."""

    def loop(self: SweptSocket, *args: Any) -> Any:
        while True:
            try:
                return read(self._sock, *args)
            except BlockingIOError:
                if self.timeout == 0.0:
                    raise
            watcher = self._read_event
            if self.timeout is not None or watcher.callback is not None:
                # A timeout to enforce, or another greenlet already reading (gevent
                # raises ConcurrentObjectUseError): gevent's own wait.
                _GEVENT_WAIT(self, watcher)
            else:
                # The wait itself, without gevent's four calls around it: their C frames
                # are in the stack saved with every waiting greenlet (1 KB a connection).
                # A stray switch back here is harmless: the read is retried.
                watcher.start(_CURRENT_GREENLET().switch)
                try:
                    self.hub.switch()
                finally:
                    watcher.stop()
            self.waiting.pop(self, None)

    loop.__name__ = loop.__qualname__ = read.__name__
    return loop


class SweptSocket(gevent.socket.socket):
    """A plain TCP connection under the idle sweep (set by assigning ``__class__``).

    Each time one of its waits ends it takes itself out of :attr:`waiting` (the
    worker's ``IdleSweep.waiting``): a dict lookup per wait, where asking the kernel
    for byte counters at each sweep was a system call per connection. ``recv`` and
    ``recv_into``, where an idle connection waits, are gevent's loops with that added
    (a wrapper's frame, live in every waiting greenlet, cost 210 bytes a connection)
    and with a shallower wait (:func:`_noting_waits`). Other waits (sending) go
    through ``_wait``. ``sendall`` tries one plain send first (see its docstring).
    """

    __slots__ = ()
    waiting: dict[Any, float] = {}

    recv = _noting_waits(_RAW_SOCKET.recv)
    recv_into = _noting_waits(_RAW_SOCKET.recv_into)

    def sendall(self, data: Any, flags: int = 0) -> None:
        """gevent's ``sendall``, after one plain ``send`` of *data* (bytes or bytearray).

        A reply that fits in the socket's buffer, nearly every one, is then sent with one
        system call: gevent's ``sendall`` also asks the kernel for ``SO_SNDBUF`` on every
        call (to size its chunks) and goes through three more Python calls. What the
        first send leaves is sent by gevent's, waiting and timing out as it does.
        """
        if data.__class__ is bytes or data.__class__ is bytearray:
            try:
                sent = self._sock.send(data, flags)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        _GEVENT_SENDALL(self, data, flags)

    def _wait(self, watcher: Any, timeout_exc: Any = None) -> None:
        try:
            _GEVENT_WAIT(self, watcher, timeout_exc)
        finally:
            self.waiting.pop(self, None)


class GeventWorker(Worker):
    """A worker that serves each connection in its own greenlet."""

    blocking_connections = False  # never blocking: client_timeout is the idle sweep (TCP)

    _group: gevent.pool.Pool
    _stopped: gevent.event.Event
    _beat: gevent.Greenlet | None = None  # the heartbeat, kept up while draining
    _taken = 0  # connections taken so far (max_requests counts them)
    _least: int | None = None  # the fewest a sibling with room held at the last read
    _loads_read = float("-inf")
    _idle: IdleSweep | None = None  # client_timeout on plain TCP connections

    def _prepare_process(self) -> None:
        patch_process()
        intake = self.spec.intake
        context = getattr(intake, "ssl_context", None)
        if context is not None:
            # Built in the master before patching: make its sockets cooperative too.
            context.__class__ = gevent.ssl.SSLContext
        self._stopped = gevent.event.Event()
        # Per-connection byte counts: local to each greenlet now that threading is patched.
        self._traffic = threading.local()
        timeout = getattr(intake, "client_timeout", None)
        if timeout is not None and context is None:
            # A socket timeout costs a timer around every wait: sweep instead.
            self._idle = IdleSweep(timeout)
            SweptSocket.waiting = self._idle.waiting
            intake.tcp_timeout_elsewhere = True  # type: ignore[union-attr]

    def _stop_taking(self) -> None:
        self.draining = True
        stopped = getattr(self, "_stopped", None)
        if stopped is not None:  # None: SIGTERM before patching; run() exits at once
            stopped.set()

    def _start_serving(self) -> None:
        self._group = gevent.pool.Pool(self.spec.worker_connections)

    def _serve(self) -> None:
        beat = gevent.spawn(self._heartbeat)
        wakeups = gevent.spawn(self._watch_signals)
        sweeper = gevent.spawn(self._sweep_idle) if self._idle is not None else None
        takers = [
            gevent.spawn(self._take_from, take, listener.fileno())
            for take, listener in zip(self._takers, self._listeners(), strict=True)
        ]
        try:
            self._stopped.wait()
        finally:
            gevent.killall([*takers, wakeups, *([sweeper] if sweeper else [])])
            self._beat = beat

    def _finish_serving(self) -> None:
        # The master SIGKILLs us at graceful_timeout if they take longer.
        self._group.join()
        if self._beat is not None:
            self._beat.kill()

    def _connection_done(self) -> None:
        """Nothing to wake: the group's free slot wakes a waiting taker by itself."""

    # --- greenlets ---

    def _heartbeat(self) -> None:
        """Prove the hub runs: the master's worker_timeout watches this, busy or idle."""
        slot = self.spec.slot
        while True:
            self.scoreboard.heartbeat(slot, time.monotonic())
            if self._lost_reports:
                self._say_lost_reports()
            if os.getppid() != self.spec.master_pid:
                self._exit_status = ExitCode.QUICK
                self._stop_taking()
            gevent.sleep(IDLE_WAKE)

    def _watch_signals(self) -> None:
        """Wake the hub when a signal arrives, so that its Python handler runs now.

        The handler (SIGTERM: drain) runs once the interpreter gets control; a hub
        asleep in epoll would otherwise run it only at its next timer or connection.
        The signal module writes to the wakeup pipe; this greenlet waits on it.
        """
        readable = gevent.get_hub().loop.io(self._wake_r, 1)
        while True:
            gevent.get_hub().wait(readable)
            drain_pipe(self._wake_r)

    def _sweep_idle(self) -> None:
        """client_timeout for plain TCP connections: see :mod:`workers.idle_sweep`."""
        idle = self._idle
        assert idle is not None
        interval = sweep_interval(idle.timeout)
        while True:
            # Each connection once per interval, a slice at a time spread over it: 10,000
            # looks in one go would hold every other connection for milliseconds.
            greenlets = list(self._group.greenlets)
            pause = interval / max(1, -(-len(greenlets) // SWEEP_SLICE))
            for start in range(0, max(1, len(greenlets)), SWEEP_SLICE):
                gevent.sleep(pause)
                now = time.monotonic()
                for greenlet in greenlets[start:start + SWEEP_SLICE]:
                    sock = greenlet.args[0] if greenlet.args else None
                    if type(sock) is SweptSocket and idle.judge(sock, now, _waiting(sock)):
                        greenlet.kill(TimeoutError("timed out"), block=False)

    def _take_from(self, take: Callable[[], tuple[Any, Any]], fileno: int) -> None:
        """Take connections (or datagrams) from one listener while slots are free."""
        hub = gevent.get_hub()
        readable = hub.loop.io(fileno, 1)
        group = self._group
        deferred = False
        while not self.draining:
            if group.full():
                group.wait_available()
                continue
            if not deferred and self._ahead_of_a_sibling():
                deferred = True  # once per connection: a sibling that takes none is not waited on
                gevent.sleep(BALANCE_DEFER)
                continue
            try:
                request, client_address = take()
            except (BlockingIOError, InterruptedError):
                hub.wait(readable)
                continue
            except OSError as exc:
                if not self._accept_failed(exc):
                    gevent.sleep(CAPACITY_BACKOFF if self._backoff_until else 0.001)
                continue
            group.spawn(self._connection, request, client_address)
            deferred = False
            self._taken += 1
            if self.spec.max_requests and self._taken >= self.spec.max_requests:
                # The last one: the master forks our replacement while we finish.
                self._announce_retirement()
                self._stop_taking()
            gevent.sleep(0)  # the new connection runs (and counts) before the next accept

    def _ahead_of_a_sibling(self) -> bool:
        """Does a sibling worker with room hold clearly fewer connections than we do?

        The siblings' counts are read from the scoreboard every BALANCE_REFRESH; our
        own is counted live. (Ours was read with theirs, and a burst of 40 queued
        connections takes less than BALANCE_REFRESH to accept: the first worker awake
        took nearly all of it while its count still read 0.) Each connection is held
        back at most once, so two workers that both see themselves ahead lose 0.5 ms.
        """
        now = time.monotonic()
        if now - self._loads_read >= BALANCE_REFRESH:
            self._loads_read = now
            board, me, cap = self.scoreboard, self.spec.slot, self.spec.worker_connections
            loads = (board.load(slot) for slot in range(board.size) if slot != me)
            self._least = min((n for state, n in loads if state in _TAKING and n < cap),
                              default=None)
        least = self._least
        return least is not None and self.active > least + max(2, least // 8)

    def _connection(self, request: Any, client_address: Any) -> None:
        """One connection's greenlet: the pipeline within request_timeout."""
        token, started = self._track(client_address)
        limit = self.spec.request_timeout
        timer = gevent.Timeout(limit) if limit else None
        idle = self._idle
        # Plain TCP: not a Unix socket (a str address), a datagram (a tuple) or TLS.
        if idle is not None and type(client_address) is tuple and type(request) is _GEVENT_SOCKET:
            request.__class__ = SweptSocket
        try:
            if timer is not None:
                timer.start()
            client_address = self._pipeline(request, client_address)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise  # a handler's own Timeout that it let escape: not ours to judge
            self._report_timeout(client_address, limit)
        except BaseException as exc:
            self._exit_after_the_others(exc, client_address, " in a greenlet")
        finally:
            if timer is not None:
                timer.close()
            if idle is not None:
                idle.wait_ended(request)
            self._finished(client_address, started, token)

    def _report_timeout(self, client_address: Any, limit: float | None) -> None:
        """A connection overran request_timeout: its traceback (where it blocked)."""
        with contextlib.suppress(Exception):  # stderr on a full disk: still serve
            print(
                f"engine: worker {self.spec.slot} pid {os.getpid()}: connection from "
                f"{format_address(client_address)} busy for more than request_timeout "
                f"{limit:g}s; closed it. Where it was:",
                file=sys.stderr,
            )
            traceback.print_exc()
            sys.stderr.flush()


def _waiting(sock: Any) -> bool | None:
    """Is a greenlet waiting on *sock* (None: the handler set its own timeout)?"""
    if sock.timeout is not None:
        return None  # gevent applies the handler's own timeout
    read, write = sock._read_event, sock._write_event
    return bool((read is not None and read.active) or (write is not None and write.active))
