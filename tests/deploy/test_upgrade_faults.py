"""An upgrade that dies at any moment leaves the pidfile and socket files right (#13.7).

Real processes: the old master is the test's subprocess, the new master its child; the
new master is SIGKILLed after it wrote the pidfile, before it took over.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

from tests.deploy.test_upgrade import Start, read_pid, stop_adopted, write_app
from tests.kit import CLI, READY, assert_no_leftovers, wait_until
from tests.kit import exchange as tcp_exchange


def _env(tmp_path: Path) -> dict[str, str]:
    return {**READY, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_new_master_killed_after_writing_the_pidfile(engine_proc: Start, tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    pidfile = tmp_path / "engine.pid"
    oldbin = Path(f"{pidfile}.oldbin")
    engine = engine_proc(CLI, env=_env(tmp_path), args=[
        "serve", "upgrade_app:Versioned", "--bind", "127.0.0.1:0", "--pidfile", str(pidfile),
        "--workers", "1", "--pool-mode", "static",
    ])
    old = engine.pid
    # The new release's workers never finish booting: the new master writes the
    # pidfile, then waits for them, and never stops the old master.
    write_app(tmp_path, "v2")
    with open(tmp_path / "upgrade_app.py", "a") as app:
        app.write("import time, engine.cli\n")
        app.write("engine.cli.CommandLineServer.worker_init = lambda self: time.sleep(60)\n")
    os.kill(old, signal.SIGUSR2)
    new = wait_until(lambda: (pid := read_pid(pidfile)) not in (None, old) and pid, 20,
                     "the new master's pidfile")
    assert read_pid(oldbin) == old
    new_workers = wait_until(lambda: psutil.Process(new).children(), 10, "its worker")
    engine.seen_pids |= {new, *(w.pid for w in new_workers)}
    os.kill(new, signal.SIGKILL)
    wait_until(lambda: "upgrade failed: new master" in engine.log(), 10, "the failure logged")
    wait_until(lambda: read_pid(pidfile) == old, 10, "the pidfile back to the old master")
    assert not oldbin.exists()
    assert f"new master {new} killed by SIGKILL" in engine.log()
    assert tcp_exchange(engine.address, b"still\n").startswith(b"v1 ")
    engine.signal(signal.SIGTERM)
    assert engine.wait(timeout=10) == 0
    assert not pidfile.exists()
    assert_no_leftovers(engine.seen_pids)


def test_unix_socket_file_is_removed_by_the_last_master(engine_proc: Start, tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    path = tmp_path / "engine.sock"
    pidfile = tmp_path / "engine.pid"
    engine = engine_proc(CLI, env=_env(tmp_path), args=[
        "serve", "upgrade_app:Versioned", "--bind", f"unix:{path}", "--pidfile", str(pidfile),
        "--workers", "1", "--pool-mode", "static",
    ])
    old = engine.pid
    assert tcp_exchange(str(path), b"hi\n").startswith(b"v1 ")
    os.kill(old, signal.SIGUSR2)
    assert engine.wait(timeout=30) == 0  # the old master handed over and left
    assert path.exists()  # the new master serves on it
    new = read_pid(pidfile)
    assert new is not None and new != old
    workers = {c.pid for c in psutil.Process(new).children()}
    engine.seen_pids |= workers | {new}
    assert tcp_exchange(str(path), b"hi\n").startswith(b"v1 ")
    assert stop_adopted(new) == 0
    assert not path.exists()  # the last master serving it removed it
    assert_no_leftovers(workers | {new})
