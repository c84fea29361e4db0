"""A handler's SystemExit code, as the worker reports it and the kernel will.

Found probing: ``SystemExit(99999)`` was logged as "exits with status 99999", but the
master saw 159, and a code too large for a C int made ``os._exit`` itself fail.
"""

from __future__ import annotations

import os

import pytest

from workers.worker import ExitCode, exit_status


@pytest.mark.parametrize("code", [0, 3, 255, 256, 99999, -1, 2**40 + 7, True])
def test_an_int_code_is_what_the_kernel_reports(code: int) -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - exits at once
        try:
            os._exit(exit_status(SystemExit(code)))
        finally:  # os._exit itself failed (a code too large for a C int)
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == exit_status(SystemExit(code))
    assert 0 <= exit_status(SystemExit(code)) <= 255


@pytest.mark.parametrize("code", [None, "bye", 1.5])
def test_any_other_code_is_an_error(code: object) -> None:
    assert exit_status(SystemExit(code)) == ExitCode.ERROR
