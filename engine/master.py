"""The master process: one loop that forks, watches, reaps and replaces workers.

The master never accepts connections. Each turn (:meth:`Master.step`) reads the
scoreboard once, decides, sleeps in one ``select()`` until a signal, a status client or
the nearest deadline, and reaps. The parts it calls are mapped in docs/design.md.

Signals (while ``serve_forever()`` runs in the main thread): SIGTERM graceful stop
(drain up to ``graceful_timeout``, then SIGKILL); SIGINT, SIGQUIT quick stop; SIGHUP
graceful restart (new workers first); SIGTTIN, SIGTTOU one worker more / fewer within
[1, max_children]; SIGUSR1 reopen logs; SIGUSR2 upgrade (re-execute on the same
sockets); SIGCHLD reap.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import time
from typing import Any

from engine import boot, supervision, upgrade
from engine.children import Children, SpecFactory, call_hook, run_service_actions
from engine.config import Settings
from engine.errors import MasterFatalError
from engine.events import FORK_BLOCKED_SIGNALS, MasterEvents
from engine.growth import GrowthGate
from engine.handover import Handover
from engine.health import HealthSampler
from engine.pool_adapter import PoolAdapter, Tick
from engine.proctitle import master_title, titled
from workers.scoreboard import Scoreboard

log = logging.getLogger("engine.master")

# What each byte read from the wakeup fd means (WAKE, SIGCHLD: re-check, reap).
COMMANDS: dict[int, tuple[Any, ...]] = {
    signal.SIGTERM: ("stop_gracefully",), signal.SIGINT: ("stop_quickly", True),
    signal.SIGQUIT: ("stop_quickly",), signal.SIGHUP: ("reload",),
    signal.SIGTTIN: ("scale_by", +1), signal.SIGTTOU: ("scale_by", -1),
    signal.SIGUSR1: ("_reopen_logs",), signal.SIGUSR2: ("upgrade",),
}


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
        handler = getattr(server, "RequestHandlerClass", None)
        self.name = str(settings.proc_name or getattr(handler, "__name__", type(server).__name__))
        self.started = time.monotonic()
        self.stop_requested = False
        self.interrupted = False  # so serve_forever raises KeyboardInterrupt, as stdlib's
        self.service_error: Exception | None = None  # serve_forever raises it at the end
        sockets = [server.socket, *getattr(server, "extra_listeners", ())]
        self.events = MasterEvents(sockets)
        scoreboard = Scoreboard(settings.max_children)
        self.children = Children(
            server, scoreboard, fork_blocked=FORK_BLOCKED_SIGNALS,
            gc_freeze=settings.gc_freeze, reap_orphans=os.getpid() == 1,
        )
        self.health = HealthSampler.of(settings)
        self.pool = PoolAdapter(settings, scoreboard, GrowthGate(self.health))
        self.pool.watch(self.events.listener_socks)
        self.handover = Handover(upgrade.old_master_pid(), settings.pidfile, sockets)
        self.specs = SpecFactory.for_server(server, settings, self.name, lambda: self.events.fds)

    # --- the loop ---

    def run(self) -> None:
        """Start up, then supervise the pool until it has stopped.

        Raises ConfigError for a setting that fails at start-up (before the "serving"
        line), MasterFatalError when no worker could boot on a first start.
        """
        title = master_title(self.name, self.server.server_address)
        events = self.events
        with titled(title), events.signals_captured():
            try:
                # Before the first fork: workers close its fd.
                events.add_status(boot.open_status(self.settings, self._status))
                boot.settle_in(self.settings, events.listener_socks, events.status)
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
            self.service_error = self.service_error or run_service_actions(self.server)
            if self.service_error:
                self.request_stop()  # now: not after the sleep this turn would take
        elif not self.children:
            self.state = MasterState.STOPPED
            return
        for byte in self.events.wait(self._next_timeout(tick)):
            name, *args = COMMANDS.get(byte, ("_recheck",))
            getattr(self, name)(*args)
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

    def request_stop(self, quick: bool = False) -> None:
        """Ask for a stop from any thread: graceful (``shutdown()``), or *quick*, as SIGQUIT."""
        self.stop_requested |= not quick
        self.events.wakeup.wake(signal.SIGQUIT if quick else 0)  # 0: a plain wake-up

    # --- commands ---

    def stop_gracefully(self) -> None:
        """Drain every worker, then stop (SIGTERM, ``shutdown()``)."""
        if self.running:
            log.info("graceful stop: draining %d workers", len(self.children))
            self.state = MasterState.STOPPING
            self.children.drain_all(time.monotonic() + self.settings.graceful_timeout)

    def stop_quickly(self, interrupt: bool = False) -> None:
        """Make every worker exit at once (SIGINT: *interrupt*, SIGQUIT)."""
        self.interrupted |= interrupt and self.events.quick_interrupt
        if self.state in (MasterState.STOPPING_QUICK, MasterState.STOPPED):
            return
        log.info("quick stop of %d workers", len(self.children))
        self.state = MasterState.STOPPING_QUICK
        self.children.quit_all(time.monotonic())

    def reload(self) -> None:
        """Replace every worker by a new one; old ones drain once new ones serve."""
        if self.running:
            serving = sum(1 for c in self.children if not c.draining)
            log.info("graceful restart: generation %d replaces %d workers",
                     self.pool.reload(serving), self.pool.reload_size)

    def scale_by(self, delta: int) -> None:
        """Change the pool's floor by *delta*, within [1, max_children]."""
        log.info("workers %d -> %d", *self.pool.scale_by(delta))

    def _recheck(self) -> None:
        """A plain wake-up (or SIGCHLD): the loop re-checks everything anyway."""

    def upgrade(self) -> None:
        """SIGUSR2: start a new master (new code, new config) on the same sockets."""
        if self.running:
            self.handover.start(self.events.listener_socks, self.events.status,
                                FORK_BLOCKED_SIGNALS)

    def _reopen_logs(self) -> None:
        call_hook(self.server, "reopen_logs")
        self.children.signal_all(signal.SIGUSR1)

    # --- workers ---

    def _observe(self, tick: Tick) -> None:
        """Boots and idle times; once the first workers serve, readiness (and hand-over)."""
        for child in self.pool.observe(tick, self.children, self.running):
            self.children.mark_booted(child)
        if not self.handover.ready and self.running:
            booted = sum(1 for c in self.children if c.booted and not c.draining)
            self.handover.check_ready(booted, self.pool.target, self.events.status)

    def _check_health(self, now: float) -> None:
        hogs = supervision.over_memory(self.health, self.children, self.settings, now)
        self.children.recycle(hogs if self.running else [], "max_worker_memory",
                              now + self.settings.graceful_timeout)

    def _enforce_deadlines(self, tick: Tick) -> None:
        killed = self.children.enforce_kill_deadlines(
            tick.now, self.state is MasterState.STOPPING_QUICK)
        self.children.abort_hung(self.pool.hung(tick, self.children), tick.now, killed)

    def manage_workers(self, tick: Tick) -> None:
        """Apply the pool policy: fork, drain, retire."""
        children, pool = self.children, self.pool
        decision = pool.plan(tick, list(children), children.backoff.can_spawn(tick.now))
        for slot in decision.drain:
            children.drain(children.by_slot[slot], tick.now + self.settings.graceful_timeout)
        children.spawn_many(decision.spawn, self.settings.max_children, self.specs,
                            pool.generation, tick.now)
        pool.reload_finished(children)

    def reap_workers(self) -> None:
        """Collect exited workers (and a failed successor); stop if none could boot."""
        self.children.reap(time.monotonic(), stopping=not self.running)
        if self.handover.reap(self.events.status):  # a master of the upgrade exited
            self.children.backoff.process_exited()
        if self.children.fatal and self.running:
            self.stop_quickly()

    def _next_timeout(self, tick: Tick) -> float:
        """How long to sleep; meanwhile, should a new connection wake us?"""
        timeout, watch = self.pool.sleep(
            tick, list(self.children), running=self.running, ready=self.handover.ready,
            spawn_at=self.children.backoff.next_spawn_at, signals=self.events.signals,
            health_due=self.health.next_due)
        self.events.watch_listeners(watch)
        return timeout

    def _status(self) -> dict[str, Any]:
        now, pool = time.monotonic(), self.pool
        records = pool.look(self.children, now, self.running)  # now, not at the last turn
        info = supervision.master_info(
            self.name, self.server.server_address, self.settings, state=self.state.value,
            generation=pool.generation, target=pool.target, started=self.started,
            crash_loop=self.children.backoff.status(now))
        return supervision.status_snapshot(info, records, self.health, now, pool.capacity)

    def _close(self) -> None:
        """Kill what is left and release the master's resources."""
        boot.release(self.settings, self.events.status, self.handover)
        self.children.kill_all()
        self.events.close()
        self.pool.scoreboard.close()

