"""Handlers for the CLI tests, served by ``engine serve tests.apps.cli_apps:...``.

``CrashOnBootHandler``: when the environment has ``CLI_APPS_CRASH_WORKERS=1`` at import,
every process forked afterwards exits at once with status 3 (as a failing
``worker_init`` would), so the master meets a crash loop and gives up. A handler class
cannot define ``worker_init`` (that is a server hook) and no setting breaks a boot, so
an at-fork hook is the way to reach that path through the command line.
"""

from __future__ import annotations

import os

from engine.classic import StreamRequestHandler

CRASH_VARIABLE = "CLI_APPS_CRASH_WORKERS"


class PidHandler(StreamRequestHandler):
    """Answer every connection with the serving process's pid."""

    def handle(self) -> None:
        self.wfile.write(f"{os.getpid()}\n".encode())


class CrashOnBootHandler(PidHandler):
    """Never serves: see the module docstring."""


def _exit_as_boot_failure() -> None:
    os._exit(3)  # ExitCode.BOOT_FAILED, before the worker touches its slot


# Only in the engine subprocess that asked for it, never in pytest's own process.
if os.environ.get(CRASH_VARIABLE) == "1":
    os.register_at_fork(after_in_child=_exit_as_boot_failure)
