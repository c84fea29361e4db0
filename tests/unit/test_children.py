"""How the master reads a worker's exit (engine.children): on plain data, and with real
forked children that write their slot and exit as told (no master, no loop)."""

from __future__ import annotations

import errno
import faulthandler
import os
import signal
import time

import pytest

from engine.children import (
    ABORT_GRACE,
    Child,
    Children,
    Exit,
    ExitKind,
    classify_exit,
    describe_fork_error,
)
from engine.exits import describe_exit
from tests.kit import wait_until
from tests.kit.procfs import zombie_children
from workers.scoreboard import Scoreboard


def child(**state: object) -> Child:
    record = Child(slot=0, pid=123, generation=0, spawned=0.0)
    for name, value in state.items():
        setattr(record, name, value)
    return record


@pytest.mark.parametrize(
    ("state", "booted", "retiring", "stopping", "expected"),
    [
        ({}, False, False, False, ExitKind.BOOT_FAILED),  # died in worker_init
        ({}, True, False, False, ExitKind.DIED),  # booted: any status is a death, not a boot
        ({"booted": True}, False, False, False, ExitKind.DIED),  # seen booted by the master
        ({}, True, True, False, ExitKind.RECYCLED),  # said it serves its last request
        ({"booted": True, "recycling": "max_worker_memory"}, True, False, False,
         ExitKind.RECYCLED),
        ({"draining": True}, True, False, False, ExitKind.EXITED),  # drained on request
        ({"draining": True}, False, False, False, ExitKind.EXITED),  # told to stop in init
        ({}, False, False, True, ExitKind.EXITED),  # the master is stopping
        ({"why_killed": "hung"}, True, False, False, ExitKind.KILLED),
        ({"why_killed": "silent"}, False, False, False, ExitKind.KILLED),
    ],
)
def test_classify_exit(
    state: dict[str, object], booted: bool, retiring: bool, stopping: bool, expected: ExitKind
) -> None:
    assert classify_exit(child(**state), booted=booted, retiring=retiring,
                         stopping=stopping) is expected


def test_a_worker_retiring_for_another_reason_than_max_requests_is_not_recycled() -> None:
    """A handler's SystemExit(3) (threads, gevent) announces the retirement too, so that
    the replacement is forked at once; its exit, with status 3 or killed at the stop,
    was logged as "recycled", which says max_requests (found probing)."""
    leaving = child(booted=True, draining=True, retiring=True)
    assert classify_exit(leaving, booted=True, retiring=True, stopping=False,
                         code=3) is ExitKind.EXITED
    assert classify_exit(leaving, booted=True, retiring=True, stopping=True,
                         code=-signal.SIGKILL) is ExitKind.EXITED
    assert classify_exit(leaving, booted=True, retiring=True, stopping=False,
                         code=0) is ExitKind.RECYCLED


def test_a_sigkill_the_master_sent_is_not_said_to_be_out_of_memory() -> None:
    killed = signal.SIGKILL  # a raw wait status: killed by that signal, no core
    assert describe_exit(killed) == (
        "killed by SIGKILL (possibly out of memory, if the engine did not send it)")
    assert describe_exit(killed, sent_by_master=True) == (
        "killed by SIGKILL (sent by the master)")


def test_fork_errors_say_their_usual_cause() -> None:
    assert "process limit" in describe_fork_error(OSError(errno.EAGAIN, "Resource busy"))
    assert "out of memory" in describe_fork_error(OSError(errno.ENOMEM, "Cannot allocate"))


def _fork(scoreboard: Scoreboard, slot: int, booted: bool, code: int) -> int:
    """A real child that claims *slot*, maybe says it booted, and exits with *code*."""
    pid = os.fork()
    if pid == 0:
        try:
            scoreboard.worker_started(slot, os.getpid(), time.monotonic())
            if booted:
                scoreboard.worker_booted(slot)
                scoreboard.idle(slot, time.monotonic(), 0)
        finally:
            os._exit(code)
    return pid


def _reap_all(children: Children) -> list[Exit]:
    exits: list[Exit] = []

    def reaped() -> bool:
        exits.extend(children.reap(time.monotonic(), stopping=False))
        return not children

    wait_until(reaped, 10, "every child reaped")
    return exits


def test_reaped_exits_are_read_from_the_slot_and_only_boot_failures_back_off(no_leaks) -> None:
    scoreboard = Scoreboard(3)
    try:
        table = Children(server=object(), scoreboard=scoreboard)
        pids = []
        for slot, (booted, code) in enumerate([(True, 3), (True, 0), (False, 3)]):
            pids.append(_fork(scoreboard, slot, booted, code))
            table.by_slot[slot] = Child(slot, pids[-1], 0, time.monotonic())
        # Every child has exited before the first reap: a booted worker reaped after the
        # boot failure would end its streak (as it should), and the count would depend on
        # which child the scheduler finished first.
        wait_until(lambda: set(pids) <= set(zombie_children()), 10, "every child exited")
        exits = {e.child.slot: e for e in _reap_all(table)}
        assert exits[0].kind is ExitKind.DIED and exits[0].code == 3
        assert "BOOT_FAILED" in exits[0].how  # the status is named, the verdict is not
        assert exits[1].kind is ExitKind.DIED and exits[1].code == 0  # not "recycled"
        assert exits[2].kind is ExitKind.BOOT_FAILED
        assert table.backoff.boot_failures == 1  # only the one that never booted
        assert table.backoff.ever_booted  # proven by the exits of booted workers
        assert table.fatal is None
        assert all(scoreboard.read(slot).pid == 0 for slot in range(3))  # slots cleared
    finally:
        scoreboard.close()


def test_kill_all_reaps_a_live_worker(no_leaks) -> None:
    scoreboard = Scoreboard(1)
    try:
        table = Children(server=object(), scoreboard=scoreboard)
        pid = os.fork()
        if pid == 0:
            signal.pause()
            os._exit(0)
        table.by_slot[0] = Child(0, pid, 0, time.monotonic())
        (exit,) = table.kill_all()
        assert exit.kind is ExitKind.EXITED and exit.code == -signal.SIGKILL
        assert not table
    finally:
        scoreboard.close()


def _stubborn(scoreboard: Scoreboard, slot: int) -> int:
    """A real booted child that ignores SIGTERM: only the drain deadline's SIGKILL ends it."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            faulthandler.disable()  # pytest's: SIGABRT would dump a traceback into the output
            scoreboard.worker_started(slot, os.getpid(), time.monotonic())
            scoreboard.worker_booted(slot)
            os.write(ready_w, b"x")
            signal.pause()
        finally:
            os._exit(0)
    os.close(ready_w)
    os.read(ready_r, 1)  # its SIGTERM disposition is set
    os.close(ready_r)
    return pid


def test_drain_then_kill_at_the_deadline(no_leaks) -> None:
    scoreboard = Scoreboard(1)
    try:
        table = Children(server=object(), scoreboard=scoreboard)
        worker = Child(0, _stubborn(scoreboard, 0), 0, 0.0, booted=True)
        table.by_slot[0] = worker
        table.drain(worker, deadline=100.0)
        assert worker.draining and worker.kill_at == 100.0
        assert scoreboard.read(0).state.name == "DRAINING"
        table.drain(worker, deadline=50.0)  # told already: the first deadline holds
        assert worker.kill_at == 100.0
        assert table.enforce_kill_deadlines(99.0, quick=False) == []
        assert table.reap(99.0, stopping=False) == []  # SIGTERM ignored: still there
        assert table.enforce_kill_deadlines(100.0, quick=False) == [worker]
        (exit,) = _reap_all(table)
        assert exit.kind is ExitKind.EXITED and exit.code == -signal.SIGKILL
    finally:
        scoreboard.close()


def test_hung_worker_is_aborted_then_killed(no_leaks) -> None:
    scoreboard = Scoreboard(1)
    try:
        table = Children(server=object(), scoreboard=scoreboard)
        worker = Child(0, _stubborn(scoreboard, 0), 0, 0.0, booted=True)
        table.by_slot[0] = worker
        table.abort_hung([(worker, "busy for 9s > request_timeout 5s", "10.0.0.1:1")], 10.0)
        assert worker.why_killed and worker.kill_at == 10.0 + ABORT_GRACE
        (exit,) = _reap_all(table)  # SIGABRT's default action ends it
        assert exit.kind is ExitKind.KILLED and exit.code == -signal.SIGABRT
        assert table.backoff.boot_failures == 0
    finally:
        scoreboard.close()
