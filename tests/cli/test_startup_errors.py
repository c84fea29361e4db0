"""Start-up errors of the master come before its "serving" line and name the setting.

Issue #13 item 9: a busy ``--status-bind`` port used to fail after "serving ... with 2
workers" was logged, as a bare ``[Errno 98] Address already in use``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.kit import StartEngine, run_cli

ECHO = "engine.examples.echo:EchoHandler"


def test_busy_status_port_is_a_setting_error_before_serving() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["serve", ECHO, "--bind", "127.0.0.1:0", "--workers", "2",
                          "--status-bind", f"127.0.0.1:{port}"])
    assert result.returncode == 2, result.stderr
    assert "status_bind" in result.stderr and f"127.0.0.1:{port}" in result.stderr
    assert "Address already in use" in result.stderr
    assert "serving" not in result.stderr  # nothing was announced as serving
    assert "spawned worker" not in result.stderr
    assert "Traceback" not in result.stderr


def test_pidfile_held_by_a_live_process_fails_before_serving(tmp_path: Path) -> None:
    pidfile = tmp_path / "engine.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # this test process: alive
    result = run_cli(["serve", ECHO, "--bind", "127.0.0.1:0", "--pidfile", str(pidfile)])
    assert result.returncode == 2, result.stderr
    assert "pidfile" in result.stderr and str(pidfile) in result.stderr
    assert "serving" not in result.stderr
    assert "Traceback" not in result.stderr
    assert pidfile.read_text() == f"{os.getpid()}\n"  # left alone


@pytest.mark.parametrize(
    "stale", ["2147483648", "99999999999999999999", "0", "-5", "garbage", "4294967296"],
)
def test_a_stale_pidfile_with_any_number_is_replaced(
    engines: StartEngine, tmp_path: Path, stale: str,
) -> None:
    # Found probing: a pid beyond pid_t (2**31 and up) was an OverflowError traceback
    # from psutil.pid_exists, after the "listening on" line; 0 is no process either.
    pidfile = tmp_path / "stale.pid"
    pidfile.write_text(stale)
    engine = engines(["--workers", "1", "--pidfile", str(pidfile)], handler=ECHO)
    assert pidfile.read_text() == f"{engine.pid}\n"
    assert engine.stop() == 0
    assert "Traceback" not in engine.log()
