"""Decode a worker's wait status into words for logs and hooks."""

from __future__ import annotations

import os
import signal

from workers.protocol import ExitCode


def describe_exit(status: int, sent_by_master: bool = False) -> str:
    """Say how a process ended, from its raw ``waitpid`` status.

    ``"exit code 0"``, ``"exit code 3 (BOOT_FAILED)"``, ``"killed by SIGKILL (possibly
    out of memory...)"``, ``"killed by SIGSEGV (core dumped)"``. *sent_by_master*: the
    master sent it SIGKILL (past a deadline), so that is not left to guess.
    """
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        text = f"killed by {name}"
        if os.WCOREDUMP(status):
            text += " (core dumped)"
        elif signum == signal.SIGKILL and sent_by_master:
            text += " (sent by the master)"
        elif signum == signal.SIGKILL:
            text += " (possibly out of memory, if the engine did not send it)"
        return text
    code = os.waitstatus_to_exitcode(status)
    try:
        return f"exit code {code} ({ExitCode(code).name})" if code else "exit code 0"
    except ValueError:
        return f"exit code {code}"
