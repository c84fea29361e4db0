"""engine.pidfile: what a pidfile holds, and when it counts as another live engine's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine import pidfile
from engine.errors import ConfigError


@pytest.mark.parametrize(
    "text", ["garbage", "", "-5", "0", "2147483648", "99999999999999999999", "1e3", "\u00b2"],
)
def test_what_is_no_pid_reads_as_none(tmp_path: Path, text: str) -> None:
    path = tmp_path / "engine.pid"
    path.write_text(text)
    assert pidfile.read(str(path)) is None


def test_a_pid_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "engine.pid"
    path.write_text(" 1234\n")
    assert pidfile.read(str(path)) == 1234
    assert pidfile.read(str(tmp_path / "missing.pid")) is None


@pytest.mark.parametrize("stale", ["2147483648", "99999999999999999999", "0", "-5"])
def test_a_stale_file_is_replaced(tmp_path: Path, stale: str) -> None:
    path = tmp_path / "engine.pid"
    path.write_text(stale)
    pidfile.write(str(path), os.getpid())
    assert path.read_text() == f"{os.getpid()}\n"


def test_a_file_a_live_process_holds_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "engine.pid"
    path.write_text(f"{os.getppid()}\n")
    with pytest.raises(ConfigError) as caught:
        pidfile.write(str(path), os.getpid())
    assert caught.value.setting == "pidfile"
    assert path.read_text() == f"{os.getppid()}\n"
