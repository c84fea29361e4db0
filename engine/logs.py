"""Logging for the ``engine`` command, with the standard library only.

* :func:`setup_logging` configures the ``engine`` logger (the master logs through
  ``engine.master``) with one format for every process::

      2026-11-21 12:00:00,000 [12345] [master] INFO spawned worker 0 pid 12346 (generation 0)
      2026-11-21 12:00:01,000 [12346] [worker 0] ERROR ...

* :func:`access_logger` returns the per-connection callback for the access log.
* :func:`reopen_logs` reopens every log file opened here (SIGUSR1, for logrotate).

Files are opened in append mode (``O_APPEND``) before workers fork, so the master and
every worker share them and each line lands whole: a record is flushed with one
``write()``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from engine import safefiles
from engine.config.settings import Settings
from workers.protocol import format_address

ENGINE_LOGGER = "engine"
ACCESS_LOGGER = "engine.access"
LOG_FORMAT = "%(asctime)s [%(process)d] [%(role)s] %(levelname)s %(message)s"
ACCESS_FORMAT = "%(asctime)s [%(process)d] [%(role)s] %(message)s"

# (client_address, seconds, bytes_in, bytes_out), or (client_address, seconds, request).
AccessLog = Callable[..., None]

# Open log files, for reopen_logs(); a handler leaves the set when it is closed.
_file_handlers: set[ReopenableFileHandler] = set()
# The handlers setup_logging()/access_logger() installed, so calling them again
# replaces them instead of duplicating every line.
_installed: dict[str, logging.Handler] = {}
_master_pid: int | None = None
_WORKER_TITLE = re.compile(r"engine: worker (\d+)")


def process_role() -> str:
    """``master``, ``worker <slot>`` (read from the process title), or ``worker``."""
    if _master_pid is None or os.getpid() == _master_pid:
        return "master"
    try:
        import setproctitle

        match = _WORKER_TITLE.search(setproctitle.getproctitle())
    except Exception:  # a title is a nicety: never let it break a log line
        match = None
    return f"worker {match.group(1)}" if match else "worker"


class RoleFormatter(logging.Formatter):
    """A formatter that fills ``%(role)s`` with the process role."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._role_pid = -1
        self._role = ""

    def format(self, record: logging.LogRecord) -> str:
        """Format *record*, adding its process role (cached per process: forks change it)."""
        if not hasattr(record, "role"):
            pid = os.getpid()
            if pid != self._role_pid:
                self._role_pid, self._role = pid, process_role()
            record.role = self._role
        return super().format(record)


class ReopenableFileHandler(logging.FileHandler):
    """A file handler (append mode) that :func:`reopen_logs` can reopen.

    The file is opened without following a symlink and must be a plain file with one
    link (:func:`engine.safefiles.open_append`): it is opened as root at start.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, mode="a", encoding="utf-8")
        _file_handlers.add(self)

    def _open(self) -> Any:
        """The stream, opened with O_NOFOLLOW (logging's own open follows symlinks)."""
        fd = safefiles.open_append(self.baseFilename)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)

    def close(self) -> None:
        """Close the file; a closed handler is not reopened any more."""
        _file_handlers.discard(self)
        super().close()

    def reopen(self) -> None:
        """Open the path again (logrotate moved the old file) and swap streams.

        Raises:
            OSError: the file cannot be opened; the old stream stays in use.
        """
        # The handler owns the new stream and closes it: no context manager here.
        stream = self._open()
        # setStream flushes and swaps under the handler's lock, so a record is never
        # written half to the old file and half to the new one.
        old = self.setStream(stream)
        if old is not None:
            old.close()


def _handler_for(path: str | None) -> logging.Handler:
    """A handler writing to *path*, or to stderr for None or ``-``."""
    if path is None or path == "-":
        return logging.StreamHandler(sys.stderr)
    return ReopenableFileHandler(path)


def _install(logger: logging.Logger, key: str, handler: logging.Handler) -> None:
    previous = _installed.pop(key, None)
    if previous is not None:
        logger.removeHandler(previous)
        previous.close()
    logger.addHandler(handler)
    _installed[key] = handler


def setup_logging(settings: Settings) -> logging.Logger:
    """Configure the ``engine`` logger from *settings*; return it.

    Level from ``log_level``; output to ``log_file`` (appended, reopened by
    :func:`reopen_logs`) or stderr. The logger does not propagate to the root logger,
    so an application's own logging set-up does not print engine lines twice. Calling
    it again replaces the previous configuration.

    Raises:
        OSError: ``log_file`` cannot be opened.
    """
    global _master_pid
    _master_pid = os.getpid()  # the process that sets up logging is the master
    logger = logging.getLogger(ENGINE_LOGGER)
    handler = _handler_for(settings.log_file)
    handler.setFormatter(RoleFormatter(LOG_FORMAT))
    _install(logger, ENGINE_LOGGER, handler)
    logger.setLevel(settings.log_level.upper())
    logger.propagate = False
    return logger


def set_up_from_settings(settings: Settings) -> None:
    """For a server run from Python (not ``engine serve``, which does it first): set
    up the engine log as :func:`setup_logging` does, if ``log_file`` or ``log_level``
    was given and nothing set it up yet. Otherwise the engine's lines go wherever the
    program's logging sends them, untouched.

    Raises:
        OSError: ``log_file`` cannot be opened.
    """
    if ENGINE_LOGGER in _installed:
        return
    if settings.log_file is None and settings.log_level == type(settings)().log_level:
        return
    setup_logging(settings)


def reopen_logs() -> None:
    """Reopen every log file opened by this module (after logrotate moved them).

    Never raises: it runs in the master's loop and in workers' SIGUSR1 handlers, where
    an exception would take the process down. A file that cannot be reopened keeps its
    old stream, and the failure is reported on stderr.
    """
    for handler in list(_file_handlers):
        try:
            handler.reopen()
        except OSError as exc:
            print(f"engine: cannot reopen log file {handler.baseFilename}: {exc}", file=sys.stderr)


def access_logger(settings: Settings) -> AccessLog | None:
    """The access-log callback, or None when ``access_log`` is not set.

    The worker calls it after each connection as ``(client_address, seconds, bytes_in,
    bytes_out)`` (``WorkerSpec.on_request_done``); the older form ``(client_address,
    seconds, request)`` is accepted too, with the byte counts read from
    ``request._engine_bytes`` when present. It writes one line per connection: client,
    duration in milliseconds, bytes in and out (``-`` when unknown)::

        2026-11-21 12:00:00,000 [12346] [worker 0] 127.0.0.1:51200 1.234ms in=12 out=12

    Raises:
        OSError: the access log file cannot be opened.
    """
    if settings.access_log is None:
        return None
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = _handler_for(settings.access_log)
    handler.setFormatter(RoleFormatter(ACCESS_FORMAT))
    _install(logger, ACCESS_LOGGER, handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not into the engine log, which may be the same stream

    def log_access(client_address: Any, seconds: float, *traffic: Any) -> None:
        if len(traffic) == 1:  # (request,)
            traffic = getattr(traffic[0], "_engine_bytes", (None, None))
        bytes_in, bytes_out = traffic if len(traffic) == 2 else (None, None)
        logger.info(
            "%s %.3fms in=%s out=%s",
            format_address(client_address),
            seconds * 1000.0,
            "-" if bytes_in is None else bytes_in,
            "-" if bytes_out is None else bytes_out,
        )

    return log_access
