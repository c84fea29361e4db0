"""engine.logs: the log format, log and access-log files, and reopening them on
SIGUSR1, in process and through a real engine."""

from __future__ import annotations

import logging
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine import logs
from engine.config import Settings
from tests.kit import CLI, READY, EngineProcess, fd_targets, wait_until
from tests.kit import exchange as tcp_exchange

LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[(\d+)\] \[([\w ]+)\] (.*)")


@pytest.fixture
def restore_loggers() -> Iterator[None]:
    """Put the engine loggers back as they were (other tests rely on propagation)."""
    saved = {
        name: (lg.handlers[:], lg.level, lg.propagate)
        for name in (logs.ENGINE_LOGGER, logs.ACCESS_LOGGER)
        for lg in [logging.getLogger(name)]
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers[:]:
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.setLevel(level)
        logger.propagate = propagate
    logs._installed.clear()


def test_setup_logging_format_level_and_file(tmp_path: Path, restore_loggers: None) -> None:
    path = tmp_path / "engine.log"
    logger = logs.setup_logging(Settings(log_file=str(path), log_level="warning"))
    logs.setup_logging(Settings(log_file=str(path), log_level="warning"))  # no duplicates
    logging.getLogger("engine.master").info("hidden")
    logging.getLogger("engine.master").warning("spawned %s", "something")
    for handler in logger.handlers:
        handler.flush()
    lines = path.read_text().splitlines()
    assert len(lines) == 1, lines
    match = LINE.fullmatch(lines[0])
    assert match and match.group(2) == "master" and match.group(3) == "WARNING spawned something"
    assert logger.propagate is False


def test_reopen_logs_after_a_rename(tmp_path: Path, restore_loggers: None) -> None:
    path = tmp_path / "engine.log"
    logger = logs.setup_logging(Settings(log_file=str(path)))
    logger.info("before")
    path.rename(tmp_path / "engine.log.1")
    logs.reopen_logs()
    logger.info("after")
    for handler in logger.handlers:
        handler.flush()
    assert "before" in (tmp_path / "engine.log.1").read_text()
    assert "after" in path.read_text() and "before" not in path.read_text()


def test_access_logger(tmp_path: Path, restore_loggers: None) -> None:
    assert logs.access_logger(Settings()) is None
    path = tmp_path / "access.log"
    access = logs.access_logger(Settings(access_log=str(path)))
    assert access is not None
    access(("127.0.0.1", 5000), 0.0012345, 10, 20)  # the worker's form

    class Request:
        _engine_bytes = (3, 4)

    access(("::1", 6000, 0, 0), 0.5, Request())  # (client, seconds, request)
    access("", 1.0, object())  # a Unix client; no byte counts
    for handler in logging.getLogger(logs.ACCESS_LOGGER).handlers:
        handler.flush()
    messages = [LINE.fullmatch(line).group(3) for line in path.read_text().splitlines()]  # type: ignore[union-attr]
    assert messages == [
        "127.0.0.1:5000 1.234ms in=10 out=20",
        "[::1]:6000 500.000ms in=3 out=4",
        "unix 1000.000ms in=- out=-",
    ]


def test_role_of_a_child_process() -> None:
    logs._master_pid = -1  # as if this process were a worker forked by another master
    try:
        assert logs.process_role().startswith("worker")
    finally:
        logs._master_pid = None
    assert logs.process_role() == "master"


def test_engine_logs_and_access_logs_reopen_on_sigusr1(
    engine_proc: Callable[..., EngineProcess], tmp_path: Path
) -> None:
    log_path, access_path = tmp_path / "engine.log", tmp_path / "access.log"
    engine = engine_proc(
        CLI,
        args=["serve", "engine.examples.echo:EchoHandler", "--bind", "127.0.0.1:0",
              "--workers", "1", "--pool-mode", "static",
              "--log-file", str(log_path), "--access-log", str(access_path)],
        env=READY,
    )
    assert tcp_exchange(engine.address, b"hello\n") == b"hello\n"
    first = wait_until(lambda: access_path.read_text(), 10, "an access log line")
    match = LINE.fullmatch(first.splitlines()[0])
    assert match and match.group(2) == "worker 0"
    assert re.fullmatch(r"127\.0\.0\.1:\d+ [\d.]+ms in=\d+ out=\d+", match.group(3))
    assert "[master] INFO listening on 127.0.0.1:" in log_path.read_text()

    # logrotate: move the files away, then SIGUSR1; master and worker reopen.
    log_path.rename(tmp_path / "engine.log.1")
    access_path.rename(tmp_path / "access.log.1")
    engine.signal(signal.SIGUSR1)
    # The master reopens the file first (it creates it); the worker writes once it has
    # reopened its own: before, a line may still go to the old file, as with any server
    # (that race failed this test once in CI). Its fds say when it has.
    [worker] = engine.workers()
    wait_until(lambda: str(access_path) in fd_targets(worker.pid).values(), 10,
               "the worker to reopen the access log")
    wait_until(log_path.exists, 10, "the master to reopen its log")
    assert tcp_exchange(engine.address, b"again\n") == b"again\n"
    wait_until(lambda: "127.0.0.1:" in access_path.read_text(), 10, "a line in the new file")
    assert len((tmp_path / "access.log.1").read_text().splitlines()) == 1
    engine.signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0
    assert "graceful stop" in log_path.read_text()
