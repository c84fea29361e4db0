"""Opening log files: a pipe nobody reads is a clear error, not a start that hangs.

Found probing as root: a FIFO planted at ``log_file`` (in the service user's own log
directory) kept the master waiting in ``open()`` for ever, before its "serving" line.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from engine import safefiles


def test_a_pipe_no_process_reads_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "engine.log"
    os.mkfifo(fifo)
    outcome: list[BaseException | int] = []

    def open_it() -> None:
        try:
            outcome.append(safefiles.open_append(str(fifo)))
        except BaseException as exc:  # reported to the test
            outcome.append(exc)

    opener = threading.Thread(target=open_it, daemon=True)
    opener.start()
    opener.join(timeout=10)
    if opener.is_alive():  # the old code: waiting for a reader; give it one, then fail
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        opener.join(timeout=10)
        pytest.fail("open_append waited for a reader of the pipe")
    [error] = outcome
    assert isinstance(error, OSError) and error.errno == errno.ENXIO
    assert "is a pipe that no process reads" in str(error)


def test_a_pipe_with_a_reader_is_opened_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "engine.log"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fd = safefiles.open_append(str(fifo))
        try:
            assert os.get_blocking(fd)  # a log write waits for the reader, never EAGAIN
            os.write(fd, b"line\n")
            assert os.read(reader, 100) == b"line\n"
        finally:
            os.close(fd)
    finally:
        os.close(reader)


def test_a_plain_file_is_created_blocking_and_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "engine.log"
    path.write_bytes(b"old\n")
    fd = safefiles.open_append(str(path))
    try:
        assert os.get_blocking(fd)
        os.write(fd, b"new\n")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"old\nnew\n"


def test_the_pidfile_mode_honours_the_umask(tmp_path: Path) -> None:
    """``umask = 077`` left the pidfile 0644: written through a temporary file whose
    mode was set with fchmod, which the umask does not touch."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.umask(0o077)
            safefiles.replace_contents(str(tmp_path / "engine.pid"), "1\n")
            os.umask(0o022)
            safefiles.replace_contents(str(tmp_path / "other.pid"), "1\n")
            os.write(write_end, b"done")
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b"done"
    os.waitpid(pid, 0)
    assert (tmp_path / "engine.pid").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "other.pid").stat().st_mode & 0o777 == 0o644
