"""Helpers shared by the test suite: deadlines, subprocess engines, leftover checks.

Nothing here sleeps as synchronisation: every wait is on a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from loadtests.background import Background
from loadtests.procio import read_first_line

# Tests import these from here.
from loadtests.sockio import exchange as tcp_exchange
from loadtests.sockio import read_to_eof, recv_line  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


class DeadlineExceeded(AssertionError):
    """A condition did not become true before its deadline."""


def wait_until(
    predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition"
) -> T:
    """Poll *predicate* with a short backoff until it returns a truthy value.

    Returns that value; raises :class:`DeadlineExceeded` naming *what* otherwise.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)  # a poll interval, not synchronisation: the predicate decides
        delay = min(delay * 2, 0.05)


def connect(server: Any, payload: bytes = b"", timeout: float = 10.0) -> socket.socket:
    """A TCP client connected to *server* (anything with ``server_address``)."""
    client = socket.create_connection(server.server_address, timeout=timeout)
    if payload:
        client.sendall(payload)
    return client


@contextlib.contextmanager
def open_clients(
    address: Any, count: int, timeout: float = 30.0
) -> Iterator[list[socket.socket]]:
    """*count* TCP clients connected to *address*, all closed on the way out."""
    clients: list[socket.socket] = []
    try:
        for _ in range(count):
            clients.append(socket.create_connection(address, timeout=timeout))
        yield clients
    finally:
        for client in clients:
            client.close()


class PeakChildren(Background):
    """Watch, in a thread, the most child processes *pid* has at any moment.

    Zombies count: they are processes until reaped. Use as a context manager; read
    :attr:`peak` afterwards.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(name="peak-children")
        self.pid = pid
        self.peak = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, len(psutil.Process(self.pid).children()))
            except psutil.NoSuchProcess:
                return


def process_tree(pid: int) -> list[psutil.Process]:
    """The process *pid* and all its descendants (empty if it is gone)."""
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def become_subreaper() -> None:
    """Make this process adopt orphaned descendants (Linux), so tests can reap them.

    When a test kills a master, its workers are re-parented; without this they would
    go to PID 1, which in some sandboxes never reaps them.
    """
    import ctypes

    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def reap(pids: Sequence[int]) -> None:
    """Collect any of *pids* that are exited children (adopted orphans included)."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def alive_pids(pids: Sequence[int]) -> list[int]:
    """The pids from *pids* that still exist (zombies included, after reaping ours)."""
    reap(pids)
    return [pid for pid in pids if psutil.pid_exists(pid)]


def zombie_children(pid: int | None = None) -> list[int]:
    """Zombie children of *pid* (default: this process)."""
    try:
        children = psutil.Process(pid or os.getpid()).children()
    except psutil.NoSuchProcess:
        return []
    zombies = []
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child.pid)
    return zombies


def open_fds() -> set[int]:
    """File descriptors open in this process now."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


@dataclass
class EngineProcess:
    """An engine (or any server) running as a subprocess in its own session.

    The child prints a ready line ``READY <address>`` on stdout once it listens; the
    address is parsed with ``eval`` of a repr (tuple or str). Everything the child
    prints afterwards on stderr is collected in a temporary file for assertions.
    """

    proc: subprocess.Popen[bytes]
    address: Any
    log_path: Path
    seen_pids: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[psutil.Process]:
        """Live (non-zombie) direct children of the master."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        live = []
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() != psutil.STATUS_ZOMBIE:
                    live.append(child)
        self.seen_pids.update(child.pid for child in live)
        return live

    def snapshot(self) -> None:
        """Remember every pid in the tree now, for the leftover check."""
        self.seen_pids.update(p.pid for p in process_tree(self.pid))

    def signal(self, signum: int) -> None:
        self.snapshot()
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)


def default_sigint() -> None:
    """In a child before exec: SIGINT to its default, so Python turns it into
    KeyboardInterrupt even when the test runner was started with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_engine(
    code: str,
    *,
    tmp_path: Path,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    ready_timeout: float = 20.0,
) -> EngineProcess:
    """Run *code* (a Python program) as a subprocess and wait for its READY line.

    The program must print ``READY <repr(address)>`` and flush once it serves.
    """
    script = tmp_path / f"server_{time.monotonic_ns()}.py"
    script.write_text(code)
    log_path = tmp_path / f"{script.stem}.log"
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
            preexec_fn=default_sigint,  # whatever the runner inherited (#13.13)
        )
    assert proc.stdout is not None
    line = _read_line_with_deadline(proc, ready_timeout, log_path)
    if not line.startswith(b"READY "):
        kill_tree(proc.pid, proc)
        raise AssertionError(f"no READY line, got {line!r}; log:\n{log_path.read_text()}")
    address = eval(line[len(b"READY "):].decode())  # repr of a tuple or str from our own code
    engine = EngineProcess(proc=proc, address=address, log_path=log_path)
    engine.snapshot()
    return engine


def _read_line_with_deadline(
    proc: subprocess.Popen[bytes], timeout: float, log_path: Path
) -> bytes:
    assert proc.stdout is not None
    try:
        return read_first_line(proc.stdout.fileno(), timeout)
    except TimeoutError:
        kill_tree(proc.pid, proc)
        raise DeadlineExceeded(
            f"server did not get ready in {timeout}s; log:\n{log_path.read_text()}"
        ) from None


def kill_tree(
    pid: int, proc: subprocess.Popen[bytes] | None = None, grace: float = 10.0
) -> set[int]:
    """SIGTERM the process group of *pid*, then SIGKILL it; return every pid seen."""
    seen = {p.pid for p in process_tree(pid)}
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signum)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        seen |= {p.pid for p in process_tree(pid)}
        if not any(_exists_not_zombie(p) for p in seen):
            break
    if proc is not None and proc.returncode is None:
        proc.kill()
        proc.wait(timeout=grace)
    return seen


def _exists_not_zombie(pid: int) -> bool:
    reap([pid])
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_no_leftovers(pids: set[int], timeout: float = 5.0) -> None:
    """Every pid in *pids* is gone (not alive, not a zombie) within *timeout*."""
    wait_until(
        lambda: not alive_pids(sorted(pids)), timeout, f"processes {sorted(pids)} to go away"
    )


class LoadLoop(Background):
    """Bounded client load in background threads: one connection per request.

    Each request sends a line and expects a reply line; refused connections and
    any other failures are counted separately. Stops at *max_requests* or
    *max_seconds*, whichever comes first, or when :meth:`stop` is called.
    """

    def __init__(
        self,
        address: Any,
        *,
        clients: int = 4,
        max_requests: int = 100_000,
        max_seconds: float = 60.0,
        payload: bytes = b"ping\n",
        timeout: float = 10.0,
    ) -> None:
        import threading

        super().__init__(clients, name="load-loop")
        self.join_timeout = timeout + 5
        self.address = address
        self.payload = payload
        self.timeout = timeout
        self.ok = 0
        self.refused = 0
        self.failures: list[str] = []
        self.servers: set[bytes] = set()
        self._left = max_requests
        self._deadline = time.monotonic() + max_seconds
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return self.ok + self.refused + len(self.failures)

    def _take(self) -> bool:
        with self._lock:
            if self._left <= 0 or self._stop.is_set() or time.monotonic() > self._deadline:
                return False
            self._left -= 1
            return True

    def _run(self) -> None:
        while self._take():
            try:
                reply = tcp_exchange(self.address, self.payload, self.timeout)
                if not reply.endswith(self.payload):
                    raise AssertionError(f"bad reply {reply!r}")
            except ConnectionRefusedError:
                with self._lock:
                    self.refused += 1
            except Exception as exc:  # every failure is data for the test
                with self._lock:
                    self.failures.append(repr(exc))
            else:
                with self._lock:
                    self.ok += 1
                    self.servers.add(reply.split(b" ", 1)[0])
