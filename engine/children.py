"""The master's table of worker processes: fork, signal, reap, and say how each one ended.

:class:`Children` owns the worker processes and their scoreboard slots. How an exit is
read (:func:`classify_exit`) and when the next fork may happen
(:class:`~engine.crashloop.SpawnBackoff`) are pure, so they are tested on plain data.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import gc
import importlib
import logging
import os
import random
import signal
import sys
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from engine import unpatched
from engine.crashloop import SpawnBackoff, Verdict
from engine.exits import describe_exit
from engine.intake import build_intake
from engine.logs import access_logger
from engine.proctitle import worker_title
from workers.entry import run_worker
from workers.protocol import WorkerState
from workers.scoreboard import Scoreboard
from workers.worker import WorkerSpec

log = logging.getLogger("engine.master")

# signal.pthread_sigmask without the signal module's conversion of the old mask into a
# set of Signals members: between two forks of a batch, every page that conversion
# writes stays with the earlier workers as their own copy (see Children.spawn_many).
_set_signal_mask = importlib.import_module("_signal").pthread_sigmask

# How long a worker told to dump its traceback (SIGABRT), or to quit, gets before SIGKILL.
ABORT_GRACE = 1.0
# What a gevent worker imports after fork: its class, gevent, and what
# ``gevent.monkey.patch_all()`` imports (gevent's replacement modules; its plugin events
# read the installed packages' entry points with importlib.metadata). Imported once in
# the master, without patching anything, their pages are shared by every worker instead
# of copied into each: 2.8 MiB less USS per idle gevent worker (docs/benchmarks.md).
GEVENT_MODULES = (
    "workers.cooperative", "gevent.events", "gevent.local", "gevent.select",
    "gevent.selectors", "gevent.signal", "gevent.subprocess", "gevent.thread",
    "gevent.threading", "gevent.time", "importlib.metadata",
    # patch_all() patches _threading_local.local, importing it first (0.33 MiB per worker)
    "_threading_local",
    # patch_all()'s thread patcher, one module per Python version (gevent's own choice)
    "gevent.monkey._patch_thread_common",
    "gevent.monkey._patch_thread_" + ("lt313" if sys.version_info < (3, 13) else "gte313"),
)


@dataclass
class Child:
    """The master's own record of one live worker process."""

    slot: int
    pid: int
    generation: int
    spawned: float
    booted: bool = False
    draining: bool = False  # told to stop, or leaving on its own (retiring)
    kill_at: float | None = None  # SIGKILL deadline (drain or abort grace)
    idle_since: float | None = None
    last_requests: int = 0
    why_killed: str = ""  # hung: aborted by the master
    retiring: bool = False  # left on its own after max_requests
    recycling: str = ""  # drained by the master to be replaced (max_worker_memory)
    sigkilled: bool = False  # the master sent it SIGKILL (a deadline passed, or at exit)


class ExitKind(enum.Enum):
    """How a worker's life ended, as the master reads it."""

    BOOT_FAILED = "failed to boot"  # exited before worker_init returned, unasked
    DIED = "died"  # booted, then exited or was killed without being asked
    RECYCLED = "recycled"  # max_requests, or replaced for its memory
    EXITED = "exited"  # asked to stop (drain, quick stop, scale down, reload)
    KILLED = "killed"  # hung: aborted by the master


def classify_exit(
    child: Child, *, booted: bool, retiring: bool, stopping: bool, code: int = 0
) -> ExitKind:
    """Read one exit. *booted* and *retiring* are what the worker wrote in its slot;
    *code* its status as :func:`os.waitstatus_to_exitcode` gives it.

    A booted worker's exit is never a boot failure, whatever its status; "recycled" is
    only said when the master recycled it, or when it retired (max_requests) and exited
    0: a handler's SystemExit announces the retirement too, and exits with its status.
    """
    if child.why_killed:
        return ExitKind.KILLED
    booted = booted or child.booted
    if not booted:
        return ExitKind.EXITED if child.draining or stopping else ExitKind.BOOT_FAILED
    if child.recycling or ((retiring or child.retiring) and code == 0):
        return ExitKind.RECYCLED
    if child.draining or stopping:
        return ExitKind.EXITED
    return ExitKind.DIED


@dataclass(frozen=True)
class Exit:
    """One reaped worker."""

    child: Child
    kind: ExitKind
    code: int  # as os.waitstatus_to_exitcode: negative for a signal
    how: str  # "exit code 3 (BOOT_FAILED)", "killed by SIGKILL ..."


class Children:
    """The live workers by slot, their scoreboard, and the fork/reap/signal operations."""

    def __init__(
        self,
        server: Any,
        scoreboard: Scoreboard,
        *,
        fork_blocked: tuple[int, ...] = (),
        gc_freeze: bool = False,
        reap_orphans: bool = False,
    ) -> None:
        self.server = server
        self.fork_blocked = fork_blocked  # signals blocked across fork()
        self.scoreboard = scoreboard
        self.gc_freeze = gc_freeze
        self.frozen = False  # the master's objects at its first fork: frozen for good
        self.reap_orphans = reap_orphans  # PID 1: adopted orphans are ours to reap
        self.by_slot: dict[int, Child] = {}
        self.backoff = SpawnBackoff()
        self.fatal: str | None = None  # set when no worker could boot on a first start

    def __iter__(self) -> Iterator[Child]:
        return iter(list(self.by_slot.values()))

    def __len__(self) -> int:
        return len(self.by_slot)

    def __bool__(self) -> bool:
        return bool(self.by_slot)

    def free_slots(self, size: int) -> Iterator[int]:
        """Slots with no live worker, lowest first."""
        return (slot for slot in range(size) if slot not in self.by_slot)

    # --- fork ---

    def _fork(self, spec: WorkerSpec, now: float, fork: Callable[[], int]) -> int | None:
        """Fork one worker (*fork* is ``os.fork``, never gevent's: its hub would hide
        exits from waitpid); None when fork() failed. Returns in the master only."""
        self.scoreboard.clear(spec.slot)
        if self.gc_freeze and not self.frozen:
            # Once, for good: what the master holds by its first fork (modules, classes,
            # the server) lives as long as it does. Frozen, it is skipped by every
            # collection, the workers' and the master's own: a full collection writes
            # the header of each object it walks, and the page copies it makes became
            # every worker's private memory (the master used to unfreeze after each
            # fork: 6 MiB more USS for a lone worker after one; docs/benchmarks.md).
            # The price: start-up garbage in cycles is never collected (not collected
            # here first: that cost each worker 70 KiB, the holes it leaves in pages).
            gc.freeze()
            self.frozen = True
        # Block the master's signals across fork(): the child must not run the master's
        # handlers (a SIGTERM would be lost); it unblocks them once its own are in place.
        spec.signal_mask = _set_signal_mask(signal.SIG_BLOCK, self.fork_blocked)
        try:
            pid = fork()
        except OSError as exc:
            self._report(self.backoff.fork_failed(now, describe_fork_error(exc)))
            return None
        finally:
            if os.getpid() == spec.master_pid:
                _set_signal_mask(signal.SIG_SETMASK, spec.signal_mask)
        if pid == 0:
            if self.gc_freeze:
                gc.freeze()  # and what the master made since: out of this worker's collections
            run_worker(self.server, self.scoreboard, spec)
        return pid

    def _record(self, spec: WorkerSpec, pid: int, generation: int, now: float) -> Child:
        """Enter a forked worker in the table; log it and run the ``worker_spawned`` hook."""
        child = self.by_slot[spec.slot] = Child(spec.slot, pid, generation, now)
        recovered = self.backoff.fork_worked()
        if recovered:
            log.warning("%s", recovered)
        log.info("spawned worker %d pid %d (generation %d)", spec.slot, pid, generation)
        call_hook(self.server, "worker_spawned", spec.slot, pid)
        return child

    def spawn_many(
        self, count: int, size: int, make_spec: Callable[[int, int], WorkerSpec],
        generation: int, now: float,
    ) -> int:
        """Fork up to *count* workers into free slots below *size*; return how many.

        Stops at the first failed fork: one failure (and one log line) per backoff step.
        The forks come back to back, and the bookkeeping (the table, the log lines, the
        ``worker_spawned`` hook) after the last: a page the master writes between two
        forks stays, in its old version, with the workers forked before, as their own
        copy. Logging between forks cost the first of 4 static workers 200 KiB of USS,
        and the others 150 (tests/prefork/test_master_gc_memory.py).
        """
        specs = [make_spec(slot, generation)
                 for slot, _ in zip(self.free_slots(size), range(count), strict=False)]
        forked: list[tuple[WorkerSpec, int]] = []
        fork = unpatched.original("os", "fork")  # looked up once for the batch
        # What the program printed and has not flushed would be in every worker's copy
        # of the buffer, and each worker flushes its own at exit: printed once per worker.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # closed, or a full disk: not ours
                stream.flush()
        try:
            for spec in specs:
                pid = self._fork(spec, now, fork)
                if pid is None:
                    break
                forked.append((spec, pid))
        finally:  # whatever happens, no forked worker goes unrecorded
            for spec, pid in forked:
                self._record(spec, pid, generation, now)
        return len(forked)

    # --- signals ---

    def signal(self, child: Child, signum: int) -> None:
        """Send *signum* to one worker (gone already is fine)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)

    def signal_all(self, signum: int) -> None:
        """Send *signum* to every worker."""
        for child in self:
            self.signal(child, signum)

    def drain_all(self, deadline: float) -> None:
        """Tell every worker to finish and exit by *deadline* (graceful stop)."""
        for child in self:
            self.drain(child, deadline)

    def drain(self, child: Child, deadline: float) -> None:
        """Tell a worker to finish its connections and exit by *deadline*."""
        if child.kill_at is not None or (child.draining and not child.retiring):
            return  # told already (a retiring worker still gets the deadline)
        child.draining = True
        child.kill_at = deadline
        self.scoreboard.set_draining(child.slot)
        self.signal(child, signal.SIGTERM)

    def quit_all(self, now: float) -> None:
        """Make every worker exit at once (SIGQUIT), SIGKILL after ABORT_GRACE."""
        for child in self:
            self.signal(child, signal.SIGQUIT)
            child.draining = True
            child.kill_at = now + ABORT_GRACE

    def recycle(self, children: Iterable[Child], reason: str, deadline: float) -> None:
        """Drain *children* to be replaced (logged as recycled for *reason*)."""
        for child in children:
            child.recycling = reason
            self.drain(child, deadline)

    def abort_hung(
        self, hung: Iterable[tuple[Child, str, str]], now: float, skip: Container[Child] = ()
    ) -> None:
        """Abort each (child, why, client) found hung, except those in *skip*."""
        for child, why, client in hung:
            if child not in skip:
                self.abort(child, why, client, now)

    def abort(self, child: Child, why: str, client: str, now: float) -> None:
        """A hung worker: ask for its traceback (SIGABRT), SIGKILL it shortly after."""
        log.warning(
            "worker %d pid %d %s (client %s); dumping its traceback, then killing it",
            child.slot, child.pid, why, client or "-",
        )
        child.why_killed = why
        child.draining = True
        child.kill_at = now + ABORT_GRACE
        self.signal(child, signal.SIGABRT)

    def enforce_kill_deadlines(self, now: float, quick: bool) -> list[Child]:
        """SIGKILL every worker past its drain or abort deadline; return them."""
        killed = []
        for child in self:
            if child.kill_at is not None and now >= child.kill_at:
                killed.append(child)
                child.kill_at = None
                if not child.why_killed and not quick:
                    log.warning(
                        "worker %d pid %d did not finish within graceful_timeout; SIGKILL",
                        child.slot, child.pid,
                    )
                child.sigkilled = True
                self.signal(child, signal.SIGKILL)
        return killed

    def kill_all(self, stopping: bool = True) -> list[Exit]:
        """SIGKILL and reap whatever is left (used on the way out)."""
        for child in self:
            child.sigkilled = True
            self.signal(child, signal.SIGKILL)
        exits = []
        for child in self:
            status = 0
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(child.pid, 0)
            exits.append(self._exited(child, status, stopping))
        if self.frozen:  # no worker left to share pages with (serve_forever may return)
            gc.unfreeze()
            self.frozen = False
        return exits

    # --- reaping ---

    def reap(self, now: float, stopping: bool) -> list[Exit]:
        """Collect every exited worker (and adopted orphans when PID 1), log each exit."""
        exits = []
        for child in self:
            try:
                pid, status = os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = child.pid, 0  # reaped by someone else: gone all the same
            if pid:
                exit = self._exited(child, status, stopping)
                exits.append(exit)
                self.backoff.process_exited()
                if exit.kind is ExitKind.BOOT_FAILED:
                    self._report(self.backoff.boot_failed(now))
        if self.reap_orphans:
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
        return exits

    def mark_booted(self, child: Child) -> None:
        """The worker said it booted (scoreboard): the boot-failure streak ends."""
        child.booted = True
        recovered = self.backoff.booted()
        if recovered:
            log.warning("%s", recovered)

    def _exited(self, child: Child, status: int, stopping: bool) -> Exit:
        del self.by_slot[child.slot]
        record = self.scoreboard.read(child.slot)  # what the worker last said
        self.scoreboard.clear(child.slot)
        if not child.booted and (
            record.booted or record.state in (WorkerState.IDLE, WorkerState.BUSY)
        ):
            self.mark_booted(child)  # booted (and served, maybe) between two looks
        code = os.waitstatus_to_exitcode(status)
        kind = classify_exit(child, booted=child.booted, retiring=record.retiring,
                             stopping=stopping, code=code)
        how = describe_exit(status, sent_by_master=child.sigkilled)
        if kind is ExitKind.KILLED:
            log.warning("worker %d pid %d killed: %s", child.slot, child.pid, child.why_killed)
        elif kind in (ExitKind.EXITED, ExitKind.RECYCLED):
            detail = f" ({child.recycling})" if child.recycling else ""
            log.info("worker %d pid %d %s%s: %s", child.slot, child.pid, kind.value, detail, how)
        else:
            when = " (before it booted)" if kind is ExitKind.BOOT_FAILED else ""
            log.warning("worker %d pid %d died: %s%s", child.slot, child.pid, how, when)
        call_hook(self.server, "worker_exited", child.slot, child.pid, code)
        return Exit(child, kind, code, how)

    def _report(self, verdict: Verdict) -> None:
        if verdict.fatal:
            self.fatal = verdict.message
            log.critical("%s", verdict.message)
        elif verdict.loud:
            log.error("%s", verdict.message)
        else:
            log.warning("%s", verdict.message)


def call_hook(server: Any, name: str, *args: Any) -> None:
    """Run the server's hook *name*, if it has one; its failure is logged, never fatal."""
    hook = getattr(server, name, None)
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:
        log.exception("hook %s raised", getattr(hook, "__name__", hook))


def run_service_actions(server: Any) -> Exception | None:
    """Run the server's ``service_actions``; return what it raised (logged), if anything.

    Unlike the other hooks', its exception stops the pool: BaseServer's loop lets it
    end ``serve_forever``, and PreforkMixIn does the same once the pool has drained.
    """
    try:
        server.service_actions()
    except Exception as error:
        log.error("service_actions raised %r: stopping the pool; serve_forever raises "
                  "it once the pool has stopped", error)
        return error
    return None


def preload_worker_modules(worker_class: str) -> None:
    """Import, in the master before any fork, what a *worker_class* worker would import
    after it (gevent's modules; nothing for sync). Importing patches nothing: the master
    stays on the standard library. A module that fails to import is left to the worker,
    which reports the error as a failed boot, as it would have without this."""
    if worker_class != "gevent":
        return
    for name in GEVENT_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # the worker's own import raises it again, with its traceback
            log.debug("preloading %s failed", name, exc_info=True)


def describe_fork_error(exc: OSError) -> str:
    """``fork()``'s error in words, with the usual cause for the usual errnos."""
    hint = {
        errno.EAGAIN: "a process limit reached (RLIMIT_NPROC, a pids cgroup, pid_max)",
        errno.ENOMEM: "out of memory",
    }.get(exc.errno or 0)
    text = exc.strerror or str(exc)
    return f"{text} ({hint})" if hint else text


class SpecFactory:
    """Makes each new worker's :class:`~workers.worker.WorkerSpec` (same for all but slot)."""

    def __init__(
        self, settings: Any, *, name: str, extra_listeners: tuple[Any, ...], intake: Any,
        access_log: Any, close_fds: Callable[[], tuple[int, ...]],
    ) -> None:
        self.settings = settings
        self.name = name
        self.extra_listeners = extra_listeners
        self.intake = intake
        self.access_log = access_log
        self.close_fds = close_fds  # the master's own fds, known once its loop is set up

    @classmethod
    def for_server(
        cls, server: Any, settings: Any, name: str, close_fds: Callable[[], tuple[int, ...]]
    ) -> SpecFactory:
        """Build the intake now, before any fork or privilege drop (key files may be
        root's alone). The CLI sets ``_engine_request_done``; otherwise ``access_log``
        builds the access-log callback."""
        preload_worker_modules(settings.worker_class)
        return cls(
            settings, name=name, extra_listeners=tuple(getattr(server, "extra_listeners", ())),
            intake=build_intake(settings, server), close_fds=close_fds,
            access_log=getattr(server, "_engine_request_done", None) or access_logger(settings),
        )

    def __call__(self, slot: int, generation: int) -> WorkerSpec:
        settings = self.settings
        max_requests = settings.max_requests
        if max_requests:
            max_requests += random.randint(0, settings.max_requests_jitter)
        return WorkerSpec(
            slot=slot,
            generation=generation,
            master_pid=os.getpid(),
            title=worker_title(slot, self.name),
            threads=settings.threads,
            worker_class=settings.worker_class,
            worker_connections=settings.worker_connections,
            request_timeout=settings.request_timeout,
            count_bytes=settings.count_bytes or self.access_log is not None,
            max_requests=max_requests,
            close_fds=self.close_fds(),
            on_request_done=self.access_log,
            extra_listeners=self.extra_listeners,
            intake=self.intake,
        )
