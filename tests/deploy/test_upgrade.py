"""SIGUSR2: the master re-executes itself on the same sockets, under load, losing nothing.

Real processes throughout: the old master is the test's subprocess; the new master is
its child, re-parented to the test process (a subreaper) when the old one exits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import psutil

from tests.kit import (
    CLI,
    READY,
    Background,
    EngineProcess,
    LoadGen,
    assert_no_leftovers,
    run_cli,
    wait_until,
)
from tests.kit import (
    exchange as tcp_exchange,
)

Start = Callable[..., EngineProcess]

HANDLER = '''
import os
from engine.classic import StreamRequestHandler

VERSION = b"{version}"


class Versioned(StreamRequestHandler):
    """Answers each line with the code version, the serving pid and the line."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(b"%s %d %s" % (VERSION, os.getpid(), line))
'''


def write_app(directory: Path, version: str) -> None:
    (directory / "upgrade_app.py").write_text(HANDLER.format(version=version))
    for cached in (directory / "__pycache__").glob("upgrade_app*"):
        cached.unlink()  # same size and mtime second: do not trust the bytecode cache


class PidfileWatch(Background):
    """Reads the pidfile in a thread; counts the reads that found neither file."""

    join_timeout = 5.0

    def __init__(self, path: Path) -> None:
        super().__init__(name="pidfile-watch")
        self.path = path
        self.reads = 0
        self.missing = 0

    def _run(self) -> None:
        old = Path(str(self.path) + ".oldbin")
        while not self._stop.wait(0.002):  # pacing, not synchronisation
            self.reads += 1
            if not (self.path.exists() or old.exists()):
                self.missing += 1


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def notifications(sock: socket.socket) -> list[str]:
    """Every sd_notify message received so far."""
    messages = []
    sock.setblocking(False)
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def status_master_pid(path: Path) -> int:
    result = run_cli(["status", "--status-bind", f"unix:{path}", "--json"])
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)["master"]["pid"])


def stop_adopted(pid: int) -> int:
    """SIGTERM a master re-parented to us and reap it; return its exit status."""
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_sigusr2_upgrade_under_load_refuses_and_drops_nothing(
    engine_proc: Start, tmp_path: Path
) -> None:
    write_app(tmp_path, "v1")
    pidfile = tmp_path / "engine.pid"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    env = {
        **READY,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
    }
    status = tmp_path / "status.sock"
    engine = engine_proc(CLI, env=env, args=[
        "serve", "upgrade_app:Versioned", "--bind", "127.0.0.1:0", "--pidfile", str(pidfile),
        "--workers", "2", "--pool-mode", "static", "--status-bind", f"unix:{status}",
    ])
    old = engine.pid
    assert read_pid(pidfile) == old
    wait_until(lambda: "READY=1" in "".join(notifications(notify)), 10, "READY=1 from systemd")
    assert tcp_exchange(engine.address, b"hi\n").startswith(b"v1 ")

    write_app(tmp_path, "v2")  # the new code the new master must run
    with PidfileWatch(pidfile) as watch, \
            LoadGen(engine.address, clients=4, max_requests=50_000, max_seconds=60,
                    reply=None) as load:
        wait_until(lambda: load.ok >= 200, 20, "load before the upgrade")
        engine.snapshot()
        os.kill(old, signal.SIGUSR2)
        assert engine.wait(timeout=30) == 0  # the old master drained and left on its own
        new = read_pid(pidfile)
        assert new is not None and new != old
        engine.seen_pids |= {new, *(c.pid for c in psutil.Process(new).children())}
        served_before = load.ok
        wait_until(lambda: load.ok >= served_before + 300, 20, "load after the upgrade")
    assert load.refused == 0, load.refused
    assert not load.failures, load.failures
    assert watch.missing == 0 and watch.reads > 0
    assert not Path(str(pidfile) + ".oldbin").exists()
    assert tcp_exchange(engine.address, b"hi\n").startswith(b"v2 ")
    assert psutil.Process(new).ppid() == os.getpid()  # re-parented to the subreaper
    messages = notifications(notify)
    assert f"MAINPID={new}" in "".join(messages), messages
    log = engine.log()
    assert f"upgrade: started new master pid {new}" in log
    assert f"stopping the old master {old}" in log
    assert "Traceback" not in log
    # The status endpoint moved over with the sockets (its address was taken).
    assert status_master_pid(status) == new
    workers = {c.pid for c in psutil.Process(new).children()}
    assert stop_adopted(new) == 0
    assert not pidfile.exists()
    assert not status.exists()  # claimed by the new master once it took over
    assert_no_leftovers(workers | {new})
    notify.close()


def test_failed_upgrade_keeps_the_old_master_serving(engine_proc: Start, tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    pidfile = tmp_path / "engine.pid"
    env = {**READY, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    status = tmp_path / "status.sock"
    engine = engine_proc(CLI, env=env, args=[
        "serve", "upgrade_app:Versioned", "--bind", "127.0.0.1:0", "--pidfile", str(pidfile),
        "--workers", "1", "--pool-mode", "static", "--status-bind", f"unix:{status}",
    ])
    # The new release's workers die as they boot: the new master adopts the sockets and
    # the status endpoint, forks, backs off, gives up (exit 3) and must hand nothing back
    # changed (the sockets stay non-blocking, the status file stays).
    write_app(tmp_path, "v2")
    with open(tmp_path / "upgrade_app.py", "a") as app:
        app.write("os.register_at_fork(after_in_child=lambda: os._exit(1))\n")
    os.kill(engine.pid, signal.SIGUSR2)
    wait_until(lambda: "upgrade failed: new master" in engine.log(), 20, "the failure logged")
    wait_until(lambda: read_pid(pidfile) == engine.pid, 10, "the pidfile restored")
    assert not Path(str(pidfile) + ".oldbin").exists()
    assert tcp_exchange(engine.address, b"still\n").startswith(b"v1 ")
    assert "no worker could boot" in engine.log()
    assert status_master_pid(status) == engine.pid  # the failed master left it alone
    for _ in range(20):  # every old worker still takes connections (none blocks in accept)
        assert tcp_exchange(engine.address, b"x\n").startswith(b"v1 ")
    engine.signal(signal.SIGTERM)
    assert engine.wait(timeout=10) == 0  # promptly: no worker stuck in a blocking accept
    assert not pidfile.exists()


def test_library_server_adopts_sockets_on_upgrade(engine_proc: Start, tmp_path: Path) -> None:
    """A PreforkTCPServer script (no CLI) is upgraded too: server_bind adopts the socket."""
    pidfile = tmp_path / "lib.pid"
    code = f'''
import os, sys
from engine import PreforkTCPServer, StreamRequestHandler

class Echo(StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(b"%d %s" % (os.getpid(), line))

class Server(PreforkTCPServer):
    allow_reuse_address = True
    workers = 1
    pool_mode = "static"
    pidfile = {str(pidfile)!r}

    def worker_spawned(self, slot, pid):
        print("READY", repr(self.server_address), flush=True)

with Server(("127.0.0.1", int(os.environ.get("PORT", "0"))), Echo) as server:
    server.serve_forever()
'''
    engine = engine_proc(code)
    old = engine.pid
    os.kill(old, signal.SIGUSR2)
    assert engine.wait(timeout=30) == 0
    new = read_pid(pidfile)
    assert new is not None and new != old
    reply = tcp_exchange(engine.address, b"after\n")
    assert reply.endswith(b" after\n")
    workers = {c.pid for c in psutil.Process(new).children()}
    assert int(reply.split()[0]) in workers
    engine.seen_pids |= workers | {new}
    assert stop_adopted(new) == 0
