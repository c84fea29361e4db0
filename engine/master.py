"""The master process: one loop that forks, watches, reaps and replaces workers.

The master never accepts connections. It sleeps in a single ``select()`` on its wakeup
fd (signals and other threads write to it) until the nearest deadline, then, in order:
turns the bytes it read into commands, reaps exited workers, enforces deadlines
(drain → SIGKILL, hung workers), and applies the pool policy (:mod:`engine.pool`).

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

import contextlib
import enum
import gc
import logging
import os
import random
import select
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine import listeners, pidfile, pool, privileges, sdnotify, supervision, upgrade, watchdog
from engine.config import Settings, connection_slots, resolved_workers
from engine.errors import MasterFatalError
from engine.exits import describe_exit
from engine.growth import GrowthGate
from engine.health import HealthSampler
from engine.intake import build_intake
from engine.logs import access_logger
from engine.proctitle import format_address, master_title, titled, worker_title
from engine.status import StatusServer
from engine.unpatched import default_selector, fork, new_poll  # never gevent's (issue 12)
from engine.wakeup import WAKE, WakeupFd, captured_signals
from workers.protocol import ExitCode, WorkerState
from workers.scoreboard import Scoreboard
from workers.worker import WorkerSpec, run_worker

log = logging.getLogger("engine.master")

# Consecutive failed boots (with no worker up) before the master gives up.
MAX_BOOT_FAILURES = 5
BOOT_BACKOFF_BASE = 0.1
BOOT_BACKOFF_CAP = 5.0
# How long a worker told to dump its traceback (SIGABRT) gets before SIGKILL.
ABORT_GRACE = 1.0
# Ticks: short while the pool is changing, long when all is quiet.
BUSY_TICK = 0.1
QUIET_TICK = 1.0
# Without signals (serve_forever in a thread) child exits are found by polling.
NO_SIGNAL_TICK = 0.05

HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
)


# Blocked across fork: ours, plus those a worker ignores but whose default would kill it.
FORK_BLOCKED_SIGNALS = (*HANDLED_SIGNALS, signal.SIGWINCH)


class MasterState(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"  # graceful: draining every worker
    STOPPING_QUICK = "stopping quickly"
    STOPPED = "stopped"


@dataclass
class WorkerSlot:
    """The master's own record of one live worker process."""

    slot: int
    pid: int
    generation: int
    spawned: float
    booted: bool = False
    draining: bool = False
    kill_at: float | None = None  # SIGKILL deadline (drain or abort grace)
    idle_since: float | None = None
    last_requests: int = 0
    why_killed: str = ""
    retiring: bool = False  # left on its own after max_requests


class Master:
    """Runs the pool for one server: ``run()`` returns when the pool has stopped."""

    def __init__(self, server: Any, settings: Settings) -> None:
        self.server = server
        self.settings = settings
        self.state = MasterState.RUNNING
        self.target = resolved_workers(settings)
        self.generation = 0
        self.reload_size: int | None = None
        self.workers: dict[int, WorkerSlot] = {}  # by slot
        self.batch = 1
        self.next_growth = 0.0  # growth above the floor: at most one batch per tick
        self.boot_failures = 0
        self.backoff_until = 0.0
        self.fatal: str | None = None
        self.quick_interrupt = False  # SIGINT with Python's default handler before us
        self.interrupted = False  # so serve_forever raises KeyboardInterrupt, as stdlib's
        self.listener_watched = False
        self.listeners: list[Any] = [server.socket, *getattr(server, "extra_listeners", ())]
        # A zero-timeout readiness check of the listeners, kept for the master's life.
        self.listener_probe = new_poll()  # never gevent's (issue 12)
        for listener in self.listeners:
            self.listener_probe.register(listener.fileno(), select.POLLIN)
        # Built before any fork or privilege drop: key files may be root's alone.
        self.intake = build_intake(settings, server)
        self.account = (
            privileges.resolve(settings.user, settings.group) if settings.user else None
        )
        self.old_master = upgrade.old_master_pid()  # set when started by SIGUSR2
        self.new_master: int | None = None  # our successor, during an upgrade
        self.ready = False
        self.name = settings.proc_name or _handler_name(server)
        self.scoreboard = Scoreboard(settings.max_children)
        self.wakeup = WakeupFd()
        self.selector = default_selector()  # never gevent's (issue 12)
        self.signals_captured = False
        self.is_pid1 = os.getpid() == 1
        self._commands: dict[int, Callable[[], None]] = {
            WAKE: self._on_wake,
            signal.SIGTERM: self.stop_gracefully,
            signal.SIGINT: self._on_interrupt,
            signal.SIGQUIT: self.stop_quickly,
            signal.SIGHUP: self.reload,
            signal.SIGTTIN: lambda: self.scale_by(+1),
            signal.SIGTTOU: lambda: self.scale_by(-1),
            signal.SIGUSR1: self._reopen_logs,
            signal.SIGUSR2: self.upgrade,
            signal.SIGCHLD: lambda: None,  # reaping happens every iteration anyway
        }
        self.stop_requested = False
        self.started = time.monotonic()
        # The CLI sets _engine_request_done; for other servers, access_log builds one.
        self.access_log = getattr(server, "_engine_request_done", None) or access_logger(
            settings
        )
        self.health = HealthSampler(settings.health_interval, settings.max_worker_memory)
        self.growth = GrowthGate(self.health)
        self.status: StatusServer | None = None

    # --- the loop ---

    def run(self) -> None:
        """Fork the pool and supervise it until it has stopped.

        Raises:
            MasterFatalError: no worker could boot (crash loop).
        """
        self.selector.register(self.wakeup, selectors.EVENT_READ)
        title = master_title(self.name, self.server.server_address)
        with titled(title), captured_signals(self.wakeup, HANDLED_SIGNALS) as previous:
            self.signals_captured = bool(previous)
            self.quick_interrupt = previous.get(signal.SIGINT) is signal.default_int_handler
            log.info("master %d serving %s with %d workers", os.getpid(), title, self.target)
            try:
                self._open_status()
                self._settle_in()
                self.manage_workers(time.monotonic())  # the initial pool, at once
                while self.state is not MasterState.STOPPED:
                    self.step()
            finally:
                self._close()
        if self.fatal:
            raise MasterFatalError(self.fatal)
        if self.interrupted:
            raise KeyboardInterrupt

    def _open_status(self) -> None:
        """Open the status endpoint, before the first fork (workers close its fd)."""
        handed_in = upgrade.handed_in_status_socket()
        if self.settings.status_bind is None:
            if handed_in is not None:
                handed_in.close()  # the new config has no status endpoint
            return
        self.status = StatusServer(
            self.settings.status_bind, lambda: supervision.status_snapshot(self), handed_in
        )
        self.selector.register(self.status, selectors.EVENT_READ)
        log.info("status on %s", format_address(self.status.address))

    def _settle_in(self) -> None:
        """Before the first fork: pidfile, then give up root (sockets are bound)."""
        if self.settings.pidfile:
            pidfile.write(self.settings.pidfile, os.getpid())
        if self.account is not None:
            paths = [listeners.unix_path(sock) for sock in self.listeners]
            if self.status is not None and isinstance(self.status.address, str):
                paths.append(self.status.address)
            for path in paths:
                if path:
                    privileges.give_to(path, self.account)
            privileges.switch_to(self.account)
            log.info("running as user %s (uid %d, gid %d)", self.account.name,
                     self.account.uid, self.account.gid)

    def _close(self) -> None:
        """Kill what is left and release the master's resources."""
        sdnotify.notify("STOPPING=1")
        if self.handed_off and self.status is not None:
            self.status.hand_off()  # its file is the successor's now
        if self.settings.pidfile:
            pidfile.remove_if_ours(self.settings.pidfile, os.getpid())
        self.kill_all()
        if self.status is not None:
            self.status.close()
        self.selector.close()
        self.wakeup.close()
        self.scoreboard.close()

    def step(self) -> None:
        """One iteration: wait, dispatch commands, reap, enforce deadlines, plan."""
        now = time.monotonic()
        self._watch_listener()
        for key, _ in self.selector.select(self._next_timeout(now)):
            if key.fileobj is self.wakeup:
                for byte in self.wakeup.drain():
                    self._commands.get(byte, lambda: None)()
            elif key.fileobj is self.status and self.status is not None:
                self.status.handle_ready()
        if self.stop_requested and self.state is MasterState.RUNNING:
            self.stop_gracefully()
        self.reap_workers()
        now = time.monotonic()
        self._observe(now)
        if not self.ready and self.running:
            self._check_ready()
        if self.health.due(now):
            supervision.check_health(self, now)
        self._enforce_deadlines(now)
        if self.state is MasterState.RUNNING:
            self.manage_workers(now)
            self._call_service_actions()
        elif not self.workers:
            self.state = MasterState.STOPPED

    @property
    def handed_off(self) -> bool:
        """A successor (SIGUSR2) serves on our sockets: they and their files are its."""
        return self.new_master is not None

    @property
    def running(self) -> bool:
        return self.state is MasterState.RUNNING

    def request_stop(self) -> None:
        """Ask for a graceful stop from any thread (``shutdown()``)."""
        self.stop_requested = True
        self.wakeup.wake()

    def _next_timeout(self, now: float) -> float:
        tick = QUIET_TICK
        if self._pool_is_changing():
            tick = BUSY_TICK
        if not self.signals_captured:
            tick = min(tick, NO_SIGNAL_TICK)
        deadlines = [w.kill_at for w in self.workers.values() if w.kill_at is not None]
        for worker in self.workers.values():
            if worker.kill_at is None:
                record = self.scoreboard.read(worker.slot)
                hang = watchdog.hang_deadline(record, worker.spawned, self.settings)
                if hang is not None:
                    deadlines.append(hang + 0.001)
        if self.backoff_until > now:
            deadlines.append(self.backoff_until)
        deadlines.append(self.health.next_due)
        if deadlines:
            tick = min(tick, max(0.0, min(deadlines) - now))
        return tick

    def _pool_is_changing(self) -> bool:
        if self.state is not MasterState.RUNNING or self.reload_size is not None:
            return True
        if not self.ready:  # first boot: READY (and an upgrade's hand-over) waits on it
            return True
        if len(self.workers) < self.target or self.backoff_until > time.monotonic():
            return True
        if self.settings.pool_mode == "static":
            return len(self.workers) != self.target
        return any(
            self.scoreboard.state(w.slot) != WorkerState.IDLE for w in self.workers.values()
        )

    # --- commands ---

    def _on_wake(self) -> None:
        """A plain wake-up: state is re-checked by the loop."""

    def _on_interrupt(self) -> None:
        self.interrupted = self.quick_interrupt
        self.stop_quickly()

    def stop_gracefully(self) -> None:
        """Drain every worker, then stop (SIGTERM, ``shutdown()``)."""
        if self.state is not MasterState.RUNNING:
            return
        log.info("graceful stop: draining %d workers", len(self.workers))
        self.state = MasterState.STOPPING
        deadline = time.monotonic() + self.settings.graceful_timeout
        for worker in self.workers.values():
            self.drain_worker(worker, deadline)

    def stop_quickly(self) -> None:
        """Make every worker exit at once (SIGINT, SIGQUIT)."""
        if self.state in (MasterState.STOPPING_QUICK, MasterState.STOPPED):
            return
        log.info("quick stop of %d workers", len(self.workers))
        self.state = MasterState.STOPPING_QUICK
        deadline = time.monotonic() + ABORT_GRACE
        for worker in self.workers.values():
            self._signal(worker, signal.SIGQUIT)
            worker.draining = True
            worker.kill_at = deadline

    def reload(self) -> None:
        """Replace every worker by a new one; old ones drain once new ones serve."""
        if self.state is not MasterState.RUNNING:
            return
        serving = sum(1 for w in self.workers.values() if not w.draining)
        self.generation += 1
        self.reload_size = max(serving, self.target)
        log.info("graceful restart: generation %d replaces %d workers", self.generation, serving)

    def scale_by(self, delta: int) -> None:
        """Change the pool's floor by *delta*, within [1, max_children]."""
        before = self.target
        self.target = min(max(self.target + delta, 1), self.settings.max_children)
        log.info("workers %d -> %d", before, self.target)

    def upgrade(self) -> None:
        """SIGUSR2: start a new master (new code, new config) on the same sockets."""
        if not self.running:
            return
        if self.new_master is not None:
            log.warning("upgrade already under way (new master pid %d)", self.new_master)
            return
        if self.old_master is not None:
            log.warning("upgrade refused: still replacing the old master %d", self.old_master)
            return
        path = self.settings.pidfile
        moved = bool(path) and pidfile.set_aside(str(path), os.getpid())
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORK_BLOCKED_SIGNALS)
        try:
            self.new_master = upgrade.start_new_master(
                self.listeners, self.status.listener if self.status is not None else None
            )
        except OSError as exc:
            log.error("upgrade failed: cannot fork: %s", exc)
            if moved:
                pidfile.restore(str(path), os.getpid())
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        log.info("upgrade: started new master pid %d: %s", self.new_master,
                 " ".join(upgrade.command_line()))

    def _check_ready(self) -> None:
        """Once the first workers serve: tell systemd, and stop the master we replace."""
        booted = sum(1 for w in self.workers.values() if w.booted and not w.draining)
        if booted < self.target:
            return
        self.ready = True
        if self.old_master is None:
            sdnotify.notify("READY=1", f"MAINPID={os.getpid()}")
            return
        sdnotify.notify(f"MAINPID={os.getpid()}", "READY=1")
        log.info("upgrade: %d workers serve; stopping the old master %d", booted,
                 self.old_master)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.old_master, signal.SIGTERM)
        self.old_master = None
        if self.status is not None:
            self.status.claim()

    def _reap_new_master(self) -> None:
        """Our successor died before taking over: keep serving, restore the pidfile."""
        if self.new_master is None:
            return
        try:
            pid, status = os.waitpid(self.new_master, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.new_master, 0
        if not pid:
            return
        log.error("upgrade failed: new master %d %s; still serving", self.new_master,
                  describe_exit(status))
        self.new_master = None
        if self.settings.pidfile:
            pidfile.restore(self.settings.pidfile, os.getpid())

    def _reopen_logs(self) -> None:
        reopen = getattr(self.server, "reopen_logs", None)
        if reopen is not None:
            self._guarded(reopen)
        for worker in self.workers.values():
            self._signal(worker, signal.SIGUSR1)

    # --- workers ---

    def spawn_worker(self, slot: int, now: float) -> None:
        """Fork one worker into *slot*."""
        settings = self.settings
        max_requests = settings.max_requests
        if max_requests:
            max_requests += random.randint(0, settings.max_requests_jitter)
        spec = WorkerSpec(
            slot=slot,
            generation=self.generation,
            master_pid=os.getpid(),
            title=worker_title(slot, self.name),
            threads=settings.threads,
            worker_class=settings.worker_class,  # worker classes (issue 12)
            worker_connections=settings.worker_connections,
            request_timeout=settings.request_timeout,
            count_bytes=settings.count_bytes or self.access_log is not None,
            max_requests=max_requests,
            close_fds=(
                *self.wakeup.fds,
                self.selector.fileno(),
                *((self.status.fileno(),) if self.status is not None else ()),
            ),
            on_request_done=self.access_log,
            extra_listeners=tuple(self.listeners[1:]),
            intake=self.intake,
        )
        self.scoreboard.clear(slot)
        if settings.gc_freeze:
            gc.freeze()  # keep the master's objects out of the workers' collections: CoW
        # Block our signals across fork(): the child must not run the master's handlers
        # (a SIGTERM would be lost); it unblocks them once its own handlers are in place.
        spec.signal_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORK_BLOCKED_SIGNALS)
        try:
            pid = fork()  # never gevent's (issue 12)
        except OSError as exc:
            log.error("fork failed for worker %d: %s", slot, exc)
            self._boot_failed(now)
            return
        finally:
            if os.getpid() == spec.master_pid:
                signal.pthread_sigmask(signal.SIG_SETMASK, spec.signal_mask)
                if settings.gc_freeze:
                    # The child keeps them frozen (that is the point); the master must
                    # not, or garbage made between forks would never be collected.
                    gc.unfreeze()
        if pid == 0:
            run_worker(self.server, self.scoreboard, spec)
        self.workers[slot] = WorkerSlot(slot, pid, self.generation, now)
        log.info("spawned worker %d pid %d (generation %d)", slot, pid, self.generation)
        hook = getattr(self.server, "worker_spawned", None)
        if hook is not None:
            self._guarded(hook, slot, pid)

    def drain_worker(self, worker: WorkerSlot, deadline: float) -> None:
        """Tell a worker to finish its connections and exit by *deadline*."""
        if worker.kill_at is not None or (worker.draining and not worker.retiring):
            return  # told already (a retiring worker still gets the deadline)
        worker.draining = True
        worker.kill_at = deadline
        self.scoreboard.set_draining(worker.slot)
        self._signal(worker, signal.SIGTERM)

    def abort_worker(self, worker: WorkerSlot, why: str) -> None:
        """A hung worker: ask for its traceback (SIGABRT), SIGKILL it shortly after."""
        record = self.scoreboard.read(worker.slot)
        log.warning(
            "worker %d pid %d %s (client %s); dumping its traceback, then killing it",
            worker.slot, worker.pid, why, record.client or "-",
        )
        worker.why_killed = why
        worker.draining = True
        worker.kill_at = time.monotonic() + ABORT_GRACE
        self._signal(worker, signal.SIGABRT)

    def kill_all(self) -> None:
        """SIGKILL and reap whatever is left (used on the way out)."""
        for worker in list(self.workers.values()):
            self._signal(worker, signal.SIGKILL)
        for worker in list(self.workers.values()):
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(worker.pid, 0)
                self._worker_exited(worker, status)
            self.workers.pop(worker.slot, None)

    def reap_workers(self) -> None:
        """Collect every exited worker of ours (and adopted orphans when PID 1)."""
        for worker in list(self.workers.values()):
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = worker.pid, 0  # reaped by someone else: gone all the same
            if pid:
                self._worker_exited(worker, status)
        self._reap_new_master()
        if self.is_pid1:
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass

    def _worker_exited(self, worker: WorkerSlot, status: int) -> None:
        now = time.monotonic()
        del self.workers[worker.slot]
        # A worker writes IDLE once set up and DRAINING on its way out; one that never
        # got past STARTING (or said BOOT_FAILED) did not boot. Judge by the slot, not by
        # what the master happened to see between ticks.
        booted = worker.booted or self.scoreboard.state(worker.slot) in (
            WorkerState.IDLE, WorkerState.BUSY, WorkerState.DRAINING
        )
        code = os.waitstatus_to_exitcode(status)
        how = describe_exit(status)
        self.scoreboard.clear(worker.slot)
        if worker.why_killed:
            log.warning("worker %d pid %d killed: %s", worker.slot, worker.pid, worker.why_killed)
        elif (worker.draining and not worker.retiring) or self.state is not MasterState.RUNNING:
            log.info("worker %d pid %d exited: %s", worker.slot, worker.pid, how)
        elif code == 0 and booted:
            log.info("worker %d pid %d recycled: %s", worker.slot, worker.pid, how)
        else:
            log.warning("worker %d pid %d died: %s", worker.slot, worker.pid, how)
        failed_boot = code == ExitCode.BOOT_FAILED or (not booted and not worker.draining)
        if failed_boot and self.state is MasterState.RUNNING:
            self._boot_failed(now)
        hook = getattr(self.server, "worker_exited", None)
        if hook is not None:
            self._guarded(hook, worker.slot, worker.pid, code)

    def _boot_failed(self, now: float) -> None:
        self.boot_failures += 1
        delay = min(BOOT_BACKOFF_BASE * 2 ** (self.boot_failures - 1), BOOT_BACKOFF_CAP)
        self.backoff_until = now + delay
        if self.boot_failures >= MAX_BOOT_FAILURES and not any(
            w.booted for w in self.workers.values()
        ):
            self.fatal = (
                f"no worker could boot: {self.boot_failures} workers in a row exited "
                "during start-up (see their tracebacks above); stopping"
            )
            log.critical("%s", self.fatal)
            self.stop_quickly()
        else:
            log.warning("worker failed to boot; next spawn in %.2fs", delay)

    def _observe(self, now: float) -> None:
        """Read the scoreboard: boots, idle times."""
        for worker in self.workers.values():
            state = self.scoreboard.state(worker.slot)
            if not worker.booted and state in (WorkerState.IDLE, WorkerState.BUSY):
                worker.booted = True
                self.boot_failures = 0
            if not worker.draining and self.scoreboard.is_retiring(worker.slot):
                # Serving its last request (max_requests): count it as leaving now, so
                # its replacement is forked while it finishes, not after it is reaped.
                worker.draining = worker.retiring = True
            if state == WorkerState.IDLE:
                requests = self.scoreboard.read(worker.slot).requests
                if worker.idle_since is None or requests != worker.last_requests:
                    worker.idle_since = now
                    worker.last_requests = requests
            else:
                worker.idle_since = None

    def _enforce_deadlines(self, now: float) -> None:
        for worker in list(self.workers.values()):
            if worker.kill_at is not None:
                if now >= worker.kill_at:
                    worker.kill_at = None
                    if not worker.why_killed and self.state is not MasterState.STOPPING_QUICK:
                        log.warning(
                            "worker %d pid %d did not finish within graceful_timeout; "
                            "SIGKILL", worker.slot, worker.pid,
                        )
                    self._signal(worker, signal.SIGKILL)
                continue
            record = self.scoreboard.read(worker.slot)
            why = watchdog.hang_reason(record, worker.spawned, self.settings, now)
            if why is not None:
                self.abort_worker(worker, why)

    def manage_workers(self, now: float) -> None:
        """Apply the pool policy: fork, drain, retire."""
        views = self._views()
        settings = self.settings
        params = pool.PoolParams(
            mode=settings.pool_mode,
            target=self.target,
            max_children=settings.max_children,
            min_spare=settings.min_spare,
            max_spare=settings.max_spare,
            idle_timeout=settings.idle_timeout,
            max_spawn_batch=settings.max_spawn_batch,
        )
        decision = pool.plan(
            views,
            params,
            generation=self.generation,
            reload_size=self.reload_size,
            connections_waiting=self._connections_waiting(views),
            batch=self.batch,
            now=now,
            can_spawn=now >= self.backoff_until,
            can_grow=now >= self.next_growth,
            cpu_saturated=self._cpu_saturated(views),
        )
        self.batch = decision.next_batch
        if decision.grew:
            self.next_growth = now + BUSY_TICK
        deadline = now + settings.graceful_timeout
        for slot in decision.drain:
            self.drain_worker(self.workers[slot], deadline)
        free_slots = (s for s in range(settings.max_children) if s not in self.workers)
        for slot, _ in zip(free_slots, range(decision.spawn), strict=False):
            self.spawn_worker(slot, now)
        if self.reload_size is not None and all(
            w.generation == self.generation for w in self.workers.values() if not w.draining
        ):
            self.reload_size = None

    def _watch_listener(self) -> None:
        """Wake on a new connection while no worker is free, or while the pool is quiet.

        With no free worker, that is how ondemand forks its first worker at once. While
        the pool is quiet the master sleeps a long tick, and a burst that takes every
        spare would otherwise wait for it. Under load (short ticks, spares available)
        the listener stays out of the selector: workers take connections, the master
        must not wake for each one.
        """
        wanted = (
            self.running
            and self.settings.pool_mode != "static"
            and len(self.workers) < self.settings.max_children
            and time.monotonic() >= self.backoff_until
            and (
                not self._pool_is_changing()
                or not any(pool.is_spare(v) for v in self._views())
            )
        )
        if wanted != self.listener_watched:
            for listener in self.listeners:
                if wanted:
                    self.selector.register(listener.fileno(), selectors.EVENT_READ)
                else:
                    self.selector.unregister(listener.fileno())
            self.listener_watched = wanted

    def _views(self) -> list[pool.WorkerView]:
        """What the pool policy sees of each live worker (one scoreboard read each)."""
        threads = connection_slots(self.settings)  # threads, or gevent's connections
        views = []
        for worker in self.workers.values():
            record = self.scoreboard.read(worker.slot)
            views.append(
                pool.WorkerView(
                    slot=worker.slot,
                    generation=worker.generation,
                    state=record.state,
                    draining=worker.draining,
                    idle_since=worker.idle_since,
                    free_threads=record.state == WorkerState.BUSY and record.active < threads,
                )
            )
        return views

    def _cpu_saturated(self, views: list[pool.WorkerView]) -> bool:
        """Should growth pause for a CPU-bound load (see :mod:`engine.growth`)?

        Only asked when at least one worker per CPU is busy and the pool is short of
        spare workers, so a quiet pool reads nothing from /proc.
        """
        if self.settings.pool_mode == "static":
            return False
        busy = [
            self.workers[v.slot].pid for v in views
            if v.state == WorkerState.BUSY and not v.draining
        ]
        spare = sum(1 for v in views if not v.draining and pool.is_spare(v))
        if len(busy) < self.growth.cpus or spare >= self.settings.min_spare:
            return False
        requests = {w.pid: self.scoreboard.read(w.slot).requests for w in self.workers.values()}
        return self.growth.saturated(busy, requests, time.monotonic())

    def _connections_waiting(self, views: list[pool.WorkerView]) -> bool:
        """Is a connection (or datagram) waiting that no idle worker will take?"""
        if self.settings.pool_mode == "static":
            return False
        if any(pool.is_spare(v) for v in views):
            return False
        return bool(self.listener_probe.poll(0))

    # --- helpers ---

    def _signal(self, worker: WorkerSlot, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signum)

    def _guarded(self, hook: Callable[..., Any], *args: Any) -> None:
        """Run a user hook; its failure is logged, never fatal to the master."""
        try:
            hook(*args)
        except Exception:
            log.exception("hook %s raised", getattr(hook, "__name__", hook))

    def _call_service_actions(self) -> None:
        self._guarded(self.server.service_actions)


def _handler_name(server: Any) -> str:
    handler = getattr(server, "RequestHandlerClass", None)
    return getattr(handler, "__name__", type(server).__name__)
