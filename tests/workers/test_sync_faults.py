"""Faults of the sync worker with a thread pool, and of error reporting (issue 13.4-13.6).

Real processes, sockets and faults: a connection hung in one thread while others keep
coming, handlers raising SystemExit / KeyboardInterrupt in a pool thread, and stderr on
a full tmpfs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apps.prefork_apps import program
from tests.kit import exchange, recv_line, wait_until

COMMANDS = "from tests.apps.worker_apps import Commands\n"


def pids(engine) -> set[int]:
    return {p.pid for p in engine.workers()}


def test_hung_thread_is_killed_while_other_connections_keep_coming(engine_proc) -> None:
    """threads=4: new connections must not reset the hung one's request_timeout clock."""
    engine = engine_proc(program(
        handler="Commands", before=COMMANDS,
        attrs="workers = 1\npool_mode = 'static'\nthreads = 4\nrequest_timeout = 1",
    ))
    before = wait_until(lambda: len(pids(engine)) == 1 and pids(engine), 10, "pool")
    start = time.monotonic()  # the worker notes the connection's start after this
    with socket.create_connection(engine.address, timeout=10) as hung:
        hung.sendall(b"SLEEP 600\n")
        hung.settimeout(0.05)
        closed_after = None
        while time.monotonic() - start < 6.0:
            with contextlib.suppress(OSError):  # the worker may be dying under us
                exchange(engine.address, b"short\n", 2.0)
            try:
                if hung.recv(100) == b"":
                    closed_after = time.monotonic() - start
                    break
            except TimeoutError:
                continue
    assert closed_after is not None, "the hung connection outlived the load"
    assert 1.0 <= closed_after < 3.5, closed_after
    assert re.search(r"busy on one request for 1\.\ds > request_timeout 1s", engine.log())
    wait_until(lambda: (now := pids(engine)) and now != before, 10, "replacement")


@pytest.mark.parametrize(
    ("command", "expected"),
    [(b"EXIT 3\n", "SystemExit"), (b"INTERRUPT\n", "KeyboardInterrupt")],
)
def test_base_exception_in_a_pool_thread_is_reported(engine_proc, command, expected) -> None:
    """As inline: the exception is logged and the worker exits (its others finish)."""
    engine = engine_proc(program(
        handler="Commands", before=COMMANDS,
        attrs="workers = 1\npool_mode = 'static'\nthreads = 4",
    ))
    before = wait_until(lambda: len(pids(engine)) == 1 and pids(engine), 10, "pool")
    victim = next(iter(before))
    with socket.create_connection(engine.address, timeout=10) as other:
        other.sendall(b"SLEEP 0.5\n")
        with socket.create_connection(engine.address, timeout=10) as client:
            client.sendall(command)
            assert recv_line(client) == b"%d %s" % (victim, command)
            assert client.recv(100) == b""
        # The connection in flight in another thread is finished, not cut.
        assert recv_line(other) == b"%d SLEEP 0.5\n" % victim
    wait_until(lambda: (now := pids(engine)) and victim not in now, 10, "replacement")
    log = wait_until(lambda: expected in engine.log() and engine.log(), 10, "report")
    assert re.search(rf"{victim}.*{expected}", log), log
    if expected == "SystemExit":  # the master's line, once it has reaped the worker
        wait_until(lambda: re.search(rf"worker 0 pid {victim} .*exit (code|status) 3",
                                     engine.log()), 10, "the exit status logged")


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted in tmp_path (needs root), unmounted on teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path, mode: str = "wb") -> None:
    """Write to *path* until ENOSPC (its filesystem is full then)."""
    with open(path, mode, buffering=0) as out:
        for _ in range(1024 * 64):  # 64 KiB, one byte at the end: bounded well above
            try:
                out.write(b"\0" * (4096 if mode == "wb" else 1))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return
    raise AssertionError("the tmpfs never filled up")


def test_error_report_on_a_full_disk_does_not_kill_the_worker(full_tmpfs, engine_proc) -> None:
    """handle_error's write fails with ENOSPC: the worker lives, and says so later."""
    err_log = full_tmpfs / "stderr.log"
    redirect = (
        f"_fd = os.open({str(err_log)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)\n"
        "os.dup2(_fd, 2)\n" + COMMANDS
    )
    engine = engine_proc(program(
        handler="Commands", before=redirect, attrs="workers = 1\npool_mode = 'static'",
    ))
    worker = wait_until(lambda: len(pids(engine)) == 1 and pids(engine), 10, "pool").pop()
    filler = full_tmpfs / "filler"
    _fill(filler)
    _fill(err_log, "ab")  # the log's last page too: the next write has no room at all
    for _ in range(3):
        assert exchange(engine.address, b"FAIL\n") == b"%d FAIL\n" % worker
    assert exchange(engine.address, b"ok\n") == b"%d ok\n" % worker
    assert pids(engine) == {worker}
    filler.unlink()  # room again: the next report says what was lost
    assert exchange(engine.address, b"FAIL\n") == b"%d FAIL\n" % worker
    text = wait_until(
        lambda: "could not be written" in err_log.read_text() and err_log.read_text(), 10,
        "the lost-reports line",
    )
    assert re.search(rf"worker 0 pid {worker}: [23] error reports could not be written", text)
    assert "handler failed on purpose" in text


def test_error_report_to_a_closed_pipe_does_not_kill_the_worker(engine_proc) -> None:
    """stderr is a pipe nobody reads any more: every write fails with EPIPE."""
    closed_pipe = "_r, _w = os.pipe()\nos.dup2(_w, 2)\nos.close(_r)\n" + COMMANDS
    engine = engine_proc(program(
        handler="Commands", before=closed_pipe, attrs="workers = 1\npool_mode = 'static'",
    ))
    worker = wait_until(lambda: len(pids(engine)) == 1 and pids(engine), 10, "pool").pop()
    for _ in range(3):
        assert exchange(engine.address, b"FAIL\n") == b"%d FAIL\n" % worker
    assert exchange(engine.address, b"ok\n") == b"%d ok\n" % worker
    assert pids(engine) == {worker}
