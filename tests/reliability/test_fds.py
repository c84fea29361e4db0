"""File-descriptor hygiene and socket-file modes, on real engines.

* A worker holds what it needs and nothing else of the master's: stdin/out/err, the
  listening socket, the access log it writes, and its own epoll and wake-up pipe; not
  the master's status socket, wake-up pipe or selector.
* A handler's subprocess (run with ``close_fds=False``, so only close-on-exec protects
  it) has fds 0, 1, 2 and the one it lists ``/proc/self/fd`` with: nothing leaks
  through exec, from the master or the worker, before or after a SIGUSR2 upgrade.
* Unix socket files get ``--socket-mode``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.kit import (
    EngineProcess,
    StartEngine,
    caught_signals,
    fd_targets,
    settled_fd_count,
    wait_until,
)

FD_APP = "tests.apps.reliability_apps:FdHandler"


def ask(address: Any, command: bytes) -> Any:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(address)
        sock.sendall(command + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def listening_inodes(port: int) -> set[str]:
    """``socket:[inode]`` of every TCP socket listening on *port* (from /proc/net)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as file:
            next(file)
            for line in file:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{inode}]")
    return inodes


def check_worker_fds(engine: EngineProcess, worker: int, allowed_shared: set[str]) -> list[str]:
    """What is wrong with *worker*'s fds (empty if nothing)."""
    master = fd_targets(engine.master)
    mine = fd_targets(worker)
    problems = []
    for fd in (0, 1, 2):
        if mine.get(fd) != master.get(fd):
            problems.append(f"fd {fd} is {mine.get(fd)!r}, the master's is {master.get(fd)!r}")
    stdio = {master.get(fd) for fd in (0, 1, 2)}
    master_targets = set(master.values())
    for fd, target in sorted(mine.items()):
        if fd <= 2 or target in stdio or target in allowed_shared:
            continue
        if target == "anon_inode:[eventpoll]":
            continue  # counted below: every epoll reads the same
        if target in master_targets:
            problems.append(f"fd {fd} -> {target} is the master's")
    epolls = [fd for fd, t in mine.items() if t == "anon_inode:[eventpoll]"]
    if len(epolls) > 1:
        problems.append(f"{len(epolls)} epoll fds {epolls} (its own is one)")
    own_pipes = [t for fd, t in mine.items() if t.startswith("pipe:") and t not in master_targets]
    if len(own_pipes) > 2:
        problems.append(f"pipes beyond its wake-up pipe: {own_pipes}")
    return problems


def check_child_fds(answer: dict[str, str]) -> str:
    """A handler's subprocess must have 0, 1, 2 and its listing fd, nothing else."""
    extra = {fd: t for fd, t in answer.items() if fd not in ("0", "1", "2")}
    listing = [fd for fd, t in extra.items() if t == "?" or t.startswith("/proc/")]
    leaked = {fd: t for fd, t in extra.items() if fd not in listing[:1]}
    return f"leaked into the handler's subprocess: {leaked} (all: {answer})" if leaked else ""


def check_ls(lines: list[str]) -> str:
    entries = [line for line in lines if line.startswith("l")]
    fds = sorted(int(line.split(" -> ")[0].split()[-1]) for line in entries)
    return "" if fds == [0, 1, 2, 3] else f"ls -l /proc/self/fd shows {fds}: {lines}"


def audit(engine: EngineProcess, status_port: int, access_log: Path) -> list[str]:
    """Every fd problem of *engine*'s workers and of their handlers' subprocesses."""
    listener = listening_inodes(engine.port)
    status = listening_inodes(status_port)
    assert len(listener) == 1 and len(status) == 1, (listener, status)
    allowed = listener | {str(access_log)}
    problems = []
    for worker in engine.worker_pids():
        targets = set(fd_targets(worker).values())
        if status & targets:
            problems.append(f"worker {worker} holds the master's status socket")
        if not listener & targets:
            problems.append(f"worker {worker} does not hold the listening socket")
        problems += [f"worker {worker}: {p}" for p in check_worker_fds(engine, worker, allowed)]
    # Several connections, so that every worker (2 workers x 2 threads) is asked.
    for _ in range(6):
        problems.append(check_child_fds(ask(engine.address, b"CHILD")))
    problems.append(check_ls(ask(engine.address, b"LS")))
    return [p for p in problems if p]


def test_workers_and_handler_subprocesses_hold_only_their_own_fds(
    engines: StartEngine, tmp_path: Path
) -> None:
    access_log = tmp_path / "access.log"
    pidfile = tmp_path / "engine.pid"
    engine = engines([
        "--workers", "2", "--pool-mode", "static", "--threads", "2",
        "--status-bind", "127.0.0.1:0", "--access-log", str(access_log),
        "--pidfile", str(pidfile),
    ], handler=FD_APP)
    workers = engine.wait_workers(2)
    status_port = _status_port(engine)
    assert audit(engine, status_port, access_log) == []

    # The same after a SIGUSR2 upgrade: the new master adopted the sockets it was
    # handed; neither it nor its workers may pass them on through exec.
    if signal.SIGUSR2 not in caught_signals(engine.master):
        pytest.skip("this build's master does not handle SIGUSR2")
    old = engine.master
    old_fds = settled_fd_count(old)
    engine.signal(signal.SIGUSR2)
    new = wait_until(lambda: _new_pid(pidfile, old), 30, "the new master's pidfile")
    wait_until(lambda: engine.proc.poll() is not None, 60, "the old master to exit")
    assert engine.proc.returncode == 0
    engine.adopt_master(new)
    new_workers = engine.wait_workers(2)
    assert not set(new_workers) & set(workers)
    wait_until(lambda: signal.SIGTERM in caught_signals(new), 20, "the new master's handlers")
    assert settled_fd_count(new) <= old_fds, (fd_targets(new), old_fds)
    assert audit(engine, _status_port(engine), access_log) == []
    assert engine.stop() == 0


def _status_port(engine: EngineProcess) -> int:
    """The status endpoint's port, from the master's log line ``status on HOST:PORT``."""
    line = wait_until(lambda: [x for x in engine.log().splitlines() if "status on " in x], 20,
                    "the status line")[-1]
    return int(line.rsplit(":", 1)[1])


def _new_pid(path: Path, old: int) -> int:
    """The pid in *path* if it is not *old* (0 otherwise)."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return 0
    return 0 if pid == old else pid


@pytest.mark.parametrize("mode", [0o660, 0o600, 0o666])
def test_unix_socket_file_gets_the_configured_mode(
    engines: StartEngine, tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "engine.sock"
    engine = engines(["--workers", "1", "--pool-mode", "static", "--umask", "0022",
                      "--socket-mode", f"{mode:04o}"], bind=f"unix:{path}",
                     handler=FD_APP)
    assert engine.address == str(path)
    assert os.stat(path).st_mode & 0o777 == mode
    assert "0" in ask(str(path), b"SELF")  # it serves
    assert engine.stop() == 0
    assert not path.exists()
