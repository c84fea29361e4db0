"""The master process: one loop that forks, watches, reaps and replaces workers.

The master never accepts connections. Each turn of its loop (:meth:`Master.step`) reads
the scoreboard once, decides (boots, hung workers, the pool plan), then sleeps in one
``select()`` (:mod:`engine.events`) until a signal, a status client or the nearest
deadline, and reaps. Its parts, each with one owner: :mod:`engine.children` (fork,
signal, reap, how an exit reads, :mod:`engine.crashloop` backoff),
:mod:`engine.pool_adapter` (the scoreboard read, the pool policy), :mod:`engine.handover`
(SIGUSR2), :mod:`engine.boot` (start-up) and :mod:`engine.supervision` (health, status).

Signals (while ``serve_forever()`` runs in the main thread):

=================  ==========================================================
SIGTERM            graceful stop: workers finish in-flight connections (up to
                   ``graceful_timeout``, then SIGKILL); serve_forever returns
SIGINT, SIGQUIT    quick stop: workers exit at once
SIGHUP             graceful restart: new workers first, then the old ones drain
SIGTTIN, SIGTTOU   one worker more / fewer, within [1, max_children]
SIGUSR1            reopen log files
SIGUSR2            upgrade: re-execute (new code and config) with the same
                   sockets; the new master stops this one once its workers serve
SIGCHLD            reap
=================  ==========================================================
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from engine import boot, pidfile, privileges, sdnotify, supervision, upgrade
from engine.children import Children, SpecFactory
from engine.config import Settings
from engine.errors import MasterFatalError
from engine.events import MasterEvents
from engine.growth import GrowthGate
from engine.handover import Handover
from engine.health import HealthSampler
from engine.intake import build_intake
from engine.logs import access_logger
from engine.pool_adapter import PoolAdapter, Tick
from engine.proctitle import format_address, master_title, titled
from engine.version import __version__
from engine.wakeup import WAKE, captured_signals
from workers.scoreboard import Scoreboard

log = logging.getLogger("engine.master")

HANDLED_SIGNALS = (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN,
    signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD,
)
# Blocked across fork: ours, plus those a worker ignores but whose default would kill it.
FORK_BLOCKED_SIGNALS = (*HANDLED_SIGNALS, signal.SIGWINCH)


class MasterState(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"  # graceful: draining every worker
    STOPPING_QUICK = "stopping quickly"
    STOPPED = "stopped"


class Master:
    """Runs the pool for one server: ``run()`` returns when the pool has stopped."""

    def __init__(self, server: Any, settings: Settings) -> None:
        self.server = server
        self.settings = settings
        self.state = MasterState.RUNNING
        self.name = settings.proc_name or _handler_name(server)
        self.started = time.monotonic()
        self.stop_requested = False
        self.interrupted = False  # so serve_forever raises KeyboardInterrupt, as stdlib's
        sockets = [server.socket, *getattr(server, "extra_listeners", ())]
        self.events = MasterEvents(sockets)
        scoreboard = Scoreboard(settings.max_children)
        self.children = Children(
            server, scoreboard, fork_blocked=FORK_BLOCKED_SIGNALS,
            gc_freeze=settings.gc_freeze, reap_orphans=os.getpid() == 1,
        )
        self.health = HealthSampler(settings.health_interval, settings.max_worker_memory)
        self.pool = PoolAdapter(settings, scoreboard, GrowthGate(self.health))
        self.pool.watch(self.events.listener_fds)
        self.handover = Handover(upgrade.old_master_pid(), settings.pidfile)
        # Built before any fork or privilege drop: key files may be root's alone. The
        # CLI sets _engine_request_done; for other servers, access_log builds one.
        self.specs = SpecFactory(
            settings, name=self.name, extra_listeners=tuple(sockets[1:]),
            intake=build_intake(settings, server), close_fds=lambda: self.events.fds,
            access_log=getattr(server, "_engine_request_done", None) or access_logger(settings),
        )
        self._commands: dict[int, Callable[[], None]] = {
            WAKE: lambda: None,  # a plain wake-up: state is re-checked by the loop
            signal.SIGTERM: self.stop_gracefully, signal.SIGINT: self._on_interrupt,
            signal.SIGQUIT: self.stop_quickly, signal.SIGHUP: self.reload,
            signal.SIGTTIN: lambda: self.scale_by(+1), signal.SIGTTOU: lambda: self.scale_by(-1),
            signal.SIGUSR1: self._reopen_logs, signal.SIGUSR2: self.upgrade,
            signal.SIGCHLD: lambda: None,  # reaping happens every iteration anyway
        }

    # --- the loop ---

    def run(self) -> None:
        """Start up, then supervise the pool until it has stopped.

        Raises:
            ConfigError: a setting fails at start-up (status_bind, pidfile), before
                the "serving" line.
            MasterFatalError: no worker could boot (crash loop on a first start).
        """
        title = master_title(self.name, self.server.server_address)
        events = self.events
        with titled(title), captured_signals(events.wakeup, HANDLED_SIGNALS) as previous:
            events.signals = bool(previous)
            events.quick_interrupt = previous.get(signal.SIGINT) is signal.default_int_handler
            try:
                status = boot.open_status(self.settings, self._status)
                if status is not None:
                    events.add_status(status)  # before the first fork: workers close its fd
                account = self.settings.user and privileges.resolve(
                    self.settings.user, self.settings.group)
                boot.settle_in(self.settings, events.listener_socks, status, account or None)
                log.info("master %d serving %s with %d workers", os.getpid(), title,
                         self.pool.target)
                while self.state is not MasterState.STOPPED:
                    self.step()
            finally:
                self._close()
        if self.children.fatal:
            raise MasterFatalError(self.children.fatal)
        if self.interrupted:
            raise KeyboardInterrupt

    def step(self) -> None:
        """One turn: look (one scoreboard read), decide, act, sleep, dispatch, reap."""
        tick = self.pool.snapshot(self.children, time.monotonic())
        self._observe(tick)
        if self.health.due(tick.now):
            self._check_health(tick.now)
        self._enforce_deadlines(tick)
        if self.running:
            self.manage_workers(tick)
            self._guarded(self.server.service_actions)
        elif not self.children:
            self.state = MasterState.STOPPED
            return
        for byte in self.events.wait(self._next_timeout(tick)):
            self._commands.get(byte, lambda: None)()
        if self.stop_requested and self.running:
            self.stop_gracefully()
        self.reap_workers()

    @property
    def running(self) -> bool:
        return self.state is MasterState.RUNNING

    @property
    def handed_off(self) -> bool:
        """A successor (SIGUSR2) serves on our sockets: they and their files are its."""
        return self.handover.handed_off

    @property
    def workers(self) -> dict[int, Any]:
        """The live workers by slot (read-only view for the server class)."""
        return dict(self.children.by_slot)

    def request_stop(self) -> None:
        """Ask for a graceful stop from any thread (``shutdown()``)."""
        self.stop_requested = True
        self.events.wakeup.wake()

    # --- commands ---

    def _on_interrupt(self) -> None:
        self.interrupted = self.events.quick_interrupt
        self.stop_quickly()

    def stop_gracefully(self) -> None:
        """Drain every worker, then stop (SIGTERM, ``shutdown()``)."""
        if not self.running:
            return
        log.info("graceful stop: draining %d workers", len(self.children))
        self.state = MasterState.STOPPING
        deadline = time.monotonic() + self.settings.graceful_timeout
        for child in self.children:
            self.children.drain(child, deadline)

    def stop_quickly(self) -> None:
        """Make every worker exit at once (SIGINT, SIGQUIT)."""
        if self.state in (MasterState.STOPPING_QUICK, MasterState.STOPPED):
            return
        log.info("quick stop of %d workers", len(self.children))
        self.state = MasterState.STOPPING_QUICK
        self.children.quit_all(time.monotonic())

    def reload(self) -> None:
        """Replace every worker by a new one; old ones drain once new ones serve."""
        if self.running:
            serving = sum(1 for c in self.children if not c.draining)
            generation = self.pool.reload(serving)
            log.info("graceful restart: generation %d replaces %d workers", generation, serving)

    def scale_by(self, delta: int) -> None:
        """Change the pool's floor by *delta*, within [1, max_children]."""
        log.info("workers %d -> %d", *self.pool.scale_by(delta))

    def upgrade(self) -> None:
        """SIGUSR2: start a new master (new code, new config) on the same sockets."""
        if not self.running:
            return
        refusal = self.handover.refusal()
        if refusal is not None:
            log.warning("%s", refusal)
        else:
            status = self.events.status
            self.handover.start(self.events.listener_socks,
                                status.listener if status is not None else None,
                                FORK_BLOCKED_SIGNALS)

    def _reopen_logs(self) -> None:
        reopen = getattr(self.server, "reopen_logs", None)
        if reopen is not None:
            self._guarded(reopen)
        for child in self.children:
            self.children.signal(child, signal.SIGUSR1)

    # --- workers ---

    def _observe(self, tick: Tick) -> None:
        """Boots and idle times; once the first workers serve, readiness (and hand-over)."""
        for child in self.pool.observe(tick, self.children):
            self.children.mark_booted(child)
        if not self.handover.ready and self.running:
            booted = sum(1 for c in self.children if c.booted and not c.draining)
            status = self.events.status
            if self.handover.check_ready(booted, self.pool.target) and status is not None:
                status.claim()

    def _check_health(self, now: float) -> None:
        hogs = supervision.over_memory(
            self.health, self.children, self.settings.max_worker_memory, now)
        for child in hogs if self.running else ():
            child.recycling = "max_worker_memory"
            self.children.drain(child, now + self.settings.graceful_timeout)

    def _enforce_deadlines(self, tick: Tick) -> None:
        killed = self.children.enforce_kill_deadlines(
            tick.now, self.state is MasterState.STOPPING_QUICK)
        for child, why, client in self.pool.hung(tick, self.children):
            if child not in killed:
                self.children.abort(child, why, client, tick.now)

    def manage_workers(self, tick: Tick) -> None:
        """Apply the pool policy: fork, drain, retire."""
        children, backoff = self.children, self.children.backoff
        decision = self.pool.plan(tick, list(children), backoff.can_spawn(tick.now))
        deadline = tick.now + self.settings.graceful_timeout
        for slot in decision.drain:
            children.drain(children.by_slot[slot], deadline)
        for slot, _ in zip(children.free_slots(self.settings.max_children),
                           range(decision.spawn), strict=False):
            child = children.spawn(self.specs(slot, self.pool.generation), self.pool.generation,
                                   tick.now)
            if child is None:
                break  # fork failed: backed off, logged once for this step
            hook = getattr(self.server, "worker_spawned", None)
            if hook is not None:
                self._guarded(hook, child.slot, child.pid)
        self.pool.reload_finished(children)

    def reap_workers(self) -> None:
        """Collect exited workers (and a failed successor); stop if none could boot."""
        for exit in self.children.reap(time.monotonic(), stopping=not self.running):
            hook = getattr(self.server, "worker_exited", None)
            if hook is not None:
                self._guarded(hook, exit.child.slot, exit.child.pid, exit.code)
        self.handover.reap_successor()
        if self.children.fatal and self.running:
            self.stop_quickly()

    def kill_all(self) -> None:
        """SIGKILL and reap whatever is left (used on the way out)."""
        self.children.kill_all()

    def _next_timeout(self, tick: Tick) -> float:
        children, backoff = list(self.children), self.children.backoff
        backing_off = not backoff.can_spawn(tick.now)
        changing = self.pool.is_changing(tick, children, running=self.running,
                                         ready=self.handover.ready, backing_off=backing_off)
        self.events.watch_listeners(self.pool.wants_listener(
            tick, children, running=self.running, can_spawn=not backing_off,
            changing=changing))
        deadlines = [self.health.next_due, *([backoff.next_spawn_at] if backing_off else [])]
        return self.pool.next_timeout(tick, children, changing=changing,
                                      signals=self.events.signals, other_deadlines=deadlines)

    # --- glue ---

    def _status(self) -> dict[str, Any]:
        now = time.monotonic()
        info = {
            "pid": os.getpid(), "name": self.name, "state": self.state.value,
            "address": format_address(self.server.server_address),
            "pool_mode": self.settings.pool_mode, "generation": self.pool.generation,
            "target": self.pool.target, "max_children": self.settings.max_children,
            "version": __version__, "started": self.started,
            "crash_loop": self.children.backoff.status(now),
        }
        records = [self.pool.scoreboard.read(slot) for slot in sorted(self.children.by_slot)]
        return supervision.status_snapshot(info, records, self.health, now)

    def _close(self) -> None:
        """Kill what is left and release the master's resources."""
        sdnotify.notify("STOPPING=1")
        status = self.events.status
        if self.handed_off and status is not None:
            status.hand_off()  # its file is the successor's now
        if self.settings.pidfile:
            pidfile.remove_if_ours(self.settings.pidfile, os.getpid())
        self.kill_all()
        if status is not None:
            status.close()
        self.events.close()
        self.pool.scoreboard.close()

    def _guarded(self, hook: Callable[..., Any], *args: Any) -> None:
        """Run a user hook; its failure is logged, never fatal to the master."""
        try:
            hook(*args)
        except Exception:
            log.exception("hook %s raised", getattr(hook, "__name__", hook))


def _handler_name(server: Any) -> str:
    handler = getattr(server, "RequestHandlerClass", None)
    return getattr(handler, "__name__", type(server).__name__)
