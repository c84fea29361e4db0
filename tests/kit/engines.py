"""The one engine launcher: a server as a subprocess in its own session.

:class:`EngineProcess` starts a program in a new session (so its process group is the
whole engine, across SIGUSR2 upgrades too), waits for its ``READY <address>`` line on
stdout, and on :meth:`~EngineProcess.close` kills the group, reaps what this process
adopted and returns whatever is still there (alive or zombie): the leftover check.
Three ways to start one:

* :func:`start_program`: a Python program given as source (a test's own server);
* :func:`serve_engine`: ``python -m engine serve HANDLER --bind BIND ARGS...``;
* :func:`launch`: any argv (``python -m engine`` for the demo, for instance).

:func:`run_cli` runs ``python -m engine ARGS`` to completion (errors, --check-config).
Tests get started engines from the ``engine_proc`` and ``engines`` fixtures
(tests/conftest.py), which close them and assert nothing was left.
"""

from __future__ import annotations

import ast
import contextlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from tests.kit.processes import (
    GONE_TIMEOUT,
    alive_pids,
    kill_group,
    read_first_line,
    wait_group_empty,
)
from tests.kit.procfs import (
    Proc,
    alive,
    group_members,
    is_set_up,
    live_children,
    process_tree,
    read_proc,
)
from tests.kit.waiting import DeadlineExceeded, wait_until

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
DEMO = "engine.examples.demo:DemoHandler"
# The `engine` console script's body, and `python -m engine`'s, for start_program.
CLI = "import sys\nfrom engine.cli import main\nsys.exit(main())\n"
PYTHON_M_ENGINE = "import runpy\nrunpy.run_module('engine', run_name='__main__', alter_sys=True)\n"
READY = {"ENGINE_READY_LINE": "1"}  # the environment that makes the CLI print READY


class EngineError(RuntimeError):
    """An engine did not start: no READY line, or not in time."""


def engine_env(
    env: Mapping[str, str] | None = None, *, inherit_engine_env: bool = False
) -> dict[str, str]:
    """This process's environment for a child: the checkout first on PYTHONPATH,
    unbuffered output, no inherited ``ENGINE_*`` variable (unless asked), then *env*."""
    full = {k: v for k, v in os.environ.items()
            if inherit_engine_env or not k.startswith("ENGINE_")}
    full["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    full["PYTHONUNBUFFERED"] = "1"
    full.update(env or {})
    return full


class EngineProcess:
    """A server started as ``argv`` in its own session; stderr goes to *log_path*.

    :attr:`pgid` is the session's process group: the engine and everything it forks.
    :attr:`master` is the current master (it changes after a SIGUSR2 upgrade, see
    :meth:`adopt_master`). :attr:`seen_pids` collects every pid observed in the tree,
    for the leftover check of :meth:`close`. Use as a context manager, or close it.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        inherit_engine_env: bool = False,
        cwd: Path = ROOT,
        nofile: int | None = None,
        name: str = "engine",
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        def preexec() -> None:  # runs in the child between fork and exec
            # SIGINT as Python expects it, whatever the runner inherited (#13.13).
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(log_path, "wb") as log_file:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                self.argv, cwd=cwd, env=engine_env(env, inherit_engine_env=inherit_engine_env),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file,
                start_new_session=True, preexec_fn=preexec,
            )
        self.pgid = self.proc.pid
        self.master = self.proc.pid
        self.seen_pids: set[int] = {self.proc.pid}
        self.leftovers: list[Proc] = []
        self.returncodes: dict[int, int] = {}
        self.address: Any = None
        self._drain: threading.Thread | None = None

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = 30.0, *, drain: bool = False) -> Any:
        """Wait for ``READY <repr(address)>`` on stdout; return (and keep) the address.

        With *drain*, what the program prints afterwards is read and dropped in a
        thread, so a chatty program never blocks on a full pipe.

        Raises:
            EngineError: the program exited, printed something else, or said nothing
                within *timeout* seconds (the message has its log).
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        try:
            line = read_first_line(fd, timeout)
        except TimeoutError:
            raise EngineError(
                f"{self.name}: not ready in {timeout:g}s; log:\n{self.log()}"
            ) from None
        if not line.startswith(b"READY "):
            raise EngineError(f"{self.name}: no READY line (got {line!r}); log:\n{self.log()}")
        self.address = ast.literal_eval(line[len(b"READY "):].decode())
        self.snapshot()
        if drain:
            self._drain = threading.Thread(
                target=_discard, args=(fd,), name=f"{self.name}-stdout", daemon=True
            )
            self._drain.start()
        return self.address

    # --- looking at it ---

    @property
    def pid(self) -> int:
        """The first master's pid (also the process group id)."""
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.address[1])

    def log(self) -> str:
        """Everything the engine wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def log_count(self, text: str) -> int:
        return self.log().count(text)

    def log_tail(self, lines: int = 30) -> str:
        """The last *lines* lines of the log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log().splitlines()[-lines:])
        return ""

    def workers(self) -> list[psutil.Process]:
        """Live (non-zombie) children of the current master, as psutil processes."""
        try:
            kids = psutil.Process(self.master).children()
        except psutil.NoSuchProcess:
            return []
        live = []
        for child in kids:
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() != psutil.STATUS_ZOMBIE:
                    live.append(child)
        self.seen_pids.update(child.pid for child in live)
        return live

    def worker_pids(self) -> list[int]:
        """Pids of the live (non-zombie) children of the current master, sorted."""
        pids = live_children(self.master)
        self.seen_pids.update(pids)
        return pids

    def wait_workers(self, count: int, timeout: float = 30.0) -> list[int]:
        """Wait until the master has exactly *count* live, set-up workers; return them."""
        pids: list[int] = []

        def full() -> bool:
            nonlocal pids
            pids = self.worker_pids()
            return len(pids) == count and all(is_set_up(pid) for pid in pids)

        wait_until(full, timeout, f"{count} live workers")
        return pids

    def snapshot(self) -> None:
        """Remember every pid of the tree and of the group now, for the leftover check."""
        self.seen_pids.update(p.pid for p in process_tree(self.master))
        self.seen_pids.update(p.pid for p in group_members(self.pgid))

    def master_alive(self) -> bool:
        return alive(self.master)

    # --- acting on it ---

    def signal(self, signum: int) -> None:
        """Send *signum* to the current master."""
        self.snapshot()
        os.kill(self.master, signum)

    def adopt_master(self, pid: int) -> None:
        """After an upgrade: *pid* is the master now (our child, as subreaper)."""
        self.master = pid
        self.seen_pids.add(pid)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the current master to exit; return its exit status.

        Raises:
            subprocess.TimeoutExpired or DeadlineExceeded: still running after *timeout*.
        """
        pid = self.master
        if pid == self.proc.pid:
            code = self.proc.wait(timeout=timeout)
        else:  # an adopted master (after SIGUSR2): ours to reap, as subreaper
            code = _wait_adopted(pid, timeout)
        self.returncodes[pid] = code
        return code

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM the master (a graceful stop) and return its exit status."""
        self.snapshot()
        self.workers()
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait_gone(self, timeout: float = GONE_TIMEOUT) -> bool:
        """Wait until the group is empty and every pid seen is gone; return whether so."""
        if wait_group_empty(self.pgid, timeout, self.proc):
            return False
        strays = sorted(self.seen_pids - {self.proc.pid})
        with contextlib.suppress(DeadlineExceeded):
            wait_until(lambda: not alive_pids(strays), timeout, "the engine's processes")
        return not alive_pids(strays)

    def close(self, grace: float = 10.0) -> list[Proc]:
        """Stop whatever is left: SIGTERM the group, SIGKILL it after *grace* seconds,
        reap, and return (and keep in :attr:`leftovers`) every process of the engine
        still there, alive or zombie: the group's members and any pid seen that left it.
        """
        self.snapshot()
        left = kill_group(self.pgid, self.proc, grace=grace)
        if self.proc.returncode is None:  # not in its group any more: by pid, then
            self.proc.kill()
            self.proc.wait(timeout=grace)
        self.returncodes.setdefault(self.proc.pid, self.proc.returncode)
        strays = sorted(self.seen_pids - {self.proc.pid} - {p.pid for p in left})
        with contextlib.suppress(DeadlineExceeded):
            wait_until(lambda: not alive_pids(strays), GONE_TIMEOUT, "the engine's processes")
        left += [p for p in map(read_proc, alive_pids(strays)) if p is not None]
        self.leftovers = left
        if self._drain is not None:
            self._drain.join(GONE_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return left


def _discard(fd: int) -> None:
    """Read *fd* until EOF (or until it is closed), dropping the bytes."""
    with contextlib.suppress(OSError):
        while os.read(fd, 65536):
            pass


def _wait_adopted(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not ours: wait for it to disappear instead
            wait_until(lambda: read_proc(pid) is None, max(0.0, deadline - time.monotonic()),
                       f"pid {pid} to exit")
            return 0
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(f"pid {pid} did not exit in {timeout:g}s")
        time.sleep(0.01)  # a poll interval: waitpid decides


# --- the ways to start one ---


def launch(
    argv: Sequence[str], *, log_path: Path, ready_timeout: float = 30.0, drain: bool = False,
    **kwargs: Any,
) -> EngineProcess:
    """Start *argv* as an :class:`EngineProcess` (*kwargs* go to it) and wait until it
    is ready; on any failure, its group is killed before the error propagates."""
    engine = EngineProcess(argv, log_path=log_path, **kwargs)
    try:
        engine.wait_ready(ready_timeout, drain=drain)
    except BaseException:
        engine.close(grace=1.0)
        raise
    return engine


def start_program(
    code: str,
    *,
    tmp_path: Path,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 20.0,
) -> EngineProcess:
    """Run *code* (a Python program that prints ``READY <repr(address)>`` and flushes
    once it serves) with *args*, and wait for that line."""
    script = tmp_path / f"server_{time.monotonic_ns()}.py"
    script.write_text(code)
    return launch(
        [sys.executable, str(script), *args], log_path=tmp_path / f"{script.stem}.log",
        env=env, ready_timeout=ready_timeout, name=script.stem,
    )


def serve_engine(
    args: Sequence[str] = (),
    *,
    log_dir: Path,
    name: str = "engine",
    handler: str = DEMO,
    bind: str = f"{HOST}:0",
    env: Mapping[str, str] | None = None,
    nofile: int | None = None,
    ready_timeout: float = 30.0,
) -> EngineProcess:
    """``python -m engine serve HANDLER --bind BIND ARGS...``, ready; *nofile* sets its
    RLIMIT_NOFILE."""
    return launch(
        [sys.executable, "-m", "engine", "serve", handler, "--bind", bind, *args],
        log_path=log_dir / f"{name}-{time.monotonic_ns()}.log", ready_timeout=ready_timeout,
        env={**READY, **(env or {})}, nofile=nofile, name=name,
    )


def run_cli(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 30.0,
    wrapper: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m engine ARGS`` to completion in its own session, behind *wrapper*
    (a command-line prefix that execs the rest, as :func:`exec_after` makes) if given.

    Meant for commands that end by themselves (errors, --check-config, status). The
    process group is killed afterwards whatever happened, so a command that started
    serving by mistake leaves nothing behind.
    """
    proc = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "engine", *args], cwd=ROOT, env=engine_env(env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc.pid, proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


StartEngine = Callable[..., EngineProcess]
"""The type of the ``engine_proc`` and ``engines`` fixtures."""


def log_time(line: str) -> float:
    """Seconds since midnight of an engine log line (``2026-12-03 14:10:06,331 ...``):
    to compare two events by the master's own clock."""
    hours, minutes, rest = line.split()[1].split(":")
    seconds, millis = rest.split(",")
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis) / 1000
