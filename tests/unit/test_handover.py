"""The SIGUSR2 hand-over's states and files (engine.handover), without a new master:
refusals, readiness, the pidfile put back after a successor died, socket files."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from engine import pidfile
from engine.handover import Handover, HandoverState, restore_pidfile


def test_states_and_refusals() -> None:
    plain = Handover(None, None)
    assert plain.state is HandoverState.SERVING and plain.refusal() is None
    replacing = Handover(4242, None)
    assert replacing.state is HandoverState.REPLACING
    assert "still replacing the old master 4242" in (replacing.refusal() or "")
    plain.new_master = 777
    assert plain.state is HandoverState.SUCCESSOR_STARTED and plain.handed_off
    assert "already under way (new master pid 777)" in (plain.refusal() or "")


def test_ready_once_the_floor_has_booted() -> None:
    handover = Handover(None, None)
    assert not handover.check_ready(booted=1, target=2) and not handover.ready
    assert not handover.check_ready(booted=2, target=2)  # no old master to stop
    assert handover.ready and not handover.took_over
    assert handover.state is HandoverState.SERVING


def test_replacing_master_stops_the_old_one_when_ready() -> None:
    old = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    try:
        handover = Handover(old.pid, None)
        assert not handover.check_ready(booted=0, target=1)
        assert handover.check_ready(booted=1, target=1)
        assert old.wait(timeout=10) == -signal.SIGTERM
        assert handover.took_over and handover.state is HandoverState.SERVING
    finally:
        old.kill()
        old.wait()


def test_pidfile_restored_when_the_successor_died_after_writing_it(tmp_path: Path) -> None:
    path = str(tmp_path / "engine.pid")
    pidfile.write(path, os.getpid())
    assert pidfile.set_aside(path, os.getpid())
    dead = _dead_pid()
    Path(path).write_text(f"{dead}\n")  # the successor wrote it, then was killed
    restore_pidfile(path, os.getpid(), dead)
    assert pidfile.read(path) == os.getpid()
    assert not Path(path + pidfile.OLD_SUFFIX).exists()


def test_pidfile_restored_when_the_successor_died_before_writing_it(tmp_path: Path) -> None:
    path = str(tmp_path / "engine.pid")
    pidfile.write(path, os.getpid())
    assert pidfile.set_aside(path, os.getpid())
    restore_pidfile(path, os.getpid(), _dead_pid())
    assert pidfile.read(path) == os.getpid()
    assert not Path(path + pidfile.OLD_SUFFIX).exists()


def test_pidfile_of_another_live_process_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "engine.pid"
    other = os.getppid()  # alive, and neither us nor the dead successor
    path.write_text(f"{other}\n")
    restore_pidfile(str(path), os.getpid(), _dead_pid())
    assert pidfile.read(str(path)) == other


def test_socket_files_are_removed_only_by_a_master_that_took_over(tmp_path: Path) -> None:
    path = tmp_path / "engine.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        failed = Handover(4242, None, [sock])  # never took over: the old master serves on
        failed.release_files()
        assert path.exists()
        took_over = Handover(4242, None, [sock])
        took_over.took_over = True
        took_over.new_master = 99  # ...then handed over again: the next master's file
        took_over.release_files()
        assert path.exists()
        took_over.new_master = None
        took_over.release_files()
        assert not path.exists()


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
