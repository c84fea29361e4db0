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


def test_a_predecessor_gone_before_we_were_ready_is_taken_over_once() -> None:
    """The old master exited while we could not fork yet (a process limit): we take
    over, and reap says so once, so that the fork backoff ends once."""
    handover = Handover(4242, None)  # not our parent: it has exited
    assert handover.reap() is True
    assert handover.took_over and handover.state is HandoverState.SERVING
    assert handover.reap() is False
    waiting = Handover(4242, None)
    waiting.ready = True  # ready already: check_ready stops (or finds gone) the old one
    assert waiting.reap() is False and waiting.state is HandoverState.REPLACING


OLD_MASTER = """
import os, signal, sys
from engine.handover import Handover
def stopped(*_):
    _, status = os.wait()
    sys.exit(15 if os.waitstatus_to_exitcode(status) == 0 else 1)
signal.signal(signal.SIGTERM, stopped)  # before the fork: the child may be quick
if os.fork() == 0:  # the new master: its parent is the master it replaces
    handover = Handover(os.getppid(), None)
    ready = not handover.check_ready(booted=0, target=1) and handover.check_ready(1, 1)
    os._exit(0 if ready and handover.took_over else 1)
while True:
    signal.pause()
"""


def test_replacing_master_stops_the_old_one_when_ready() -> None:
    old = subprocess.Popen([sys.executable, "-c", OLD_MASTER])
    try:
        assert old.wait(timeout=30) == 15  # SIGTERMed by its child, which exited 0
    finally:
        old.kill()
        old.wait()


def test_an_old_master_that_is_gone_is_not_signalled_by_pid() -> None:
    """The old master exited before the new one was ready (stopped by hand): its pid
    may be another process's by then. The new master used to SIGTERM whatever had the
    pid, and died of the error when that process was another user's."""
    unrelated = subprocess.Popen(
        [sys.executable, "-c", "import signal; signal.pthread_sigmask(signal.SIG_BLOCK, "
         "{signal.SIGTERM}); print('ready', flush=True); signal.pause()"],
        stdout=subprocess.PIPE,
    )
    try:
        assert unrelated.stdout is not None and unrelated.stdout.readline() == b"ready\n"
        handover = Handover(unrelated.pid, None)  # not our parent: not the old master
        assert handover.check_ready(booted=1, target=1)
        assert handover.took_over and handover.state is HandoverState.SERVING
        # A SIGTERM sent would be pending: it blocks it.
        status = Path(f"/proc/{unrelated.pid}/status").read_text()
        pending = int(status.split("ShdPnd:")[1].split()[0], 16)
        assert not pending & (1 << (signal.SIGTERM - 1)), hex(pending)
    finally:
        unrelated.kill()
        unrelated.wait()
        if unrelated.stdout is not None:
            unrelated.stdout.close()


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
