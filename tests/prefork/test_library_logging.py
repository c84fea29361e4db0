"""``log_file`` and ``log_level`` on a server class run from Python: documented as class
attributes, they were validated and then ignored (found probing: no file, the engine
logger untouched); ``engine serve`` sets them up itself."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.apps.prefork_apps import program
from tests.kit import exchange as tcp_exchange
from tests.kit import wait_until


def test_log_file_and_level_as_class_attributes(engine_proc, tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    engine = engine_proc(program(attrs=f"workers = 1\nlog_file = {str(log)!r}"))
    assert tcp_exchange(engine.address, b"hi\n").endswith(b" hi\n")
    wait_until(lambda: log.exists() and "serving" in log.read_text(), 10, "the log file")
    assert "serving" not in engine.log()  # the engine's lines go to the file only
    engine.signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0
    assert "exited: exit code 0" in log.read_text()  # the workers' stop, logged there


def test_log_level_as_a_class_attribute(engine_proc) -> None:
    engine = engine_proc(program(attrs="workers = 1\nlog_level = 'warning'"))
    assert tcp_exchange(engine.address, b"hi\n").endswith(b" hi\n")
    engine.signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0
    assert "serving" not in engine.log()  # INFO lines are below the level


def test_without_them_the_program_s_logging_is_untouched(engine_proc) -> None:
    engine = engine_proc(program(attrs="workers = 1"))  # basicConfig INFO to stderr
    wait_until(lambda: "serving" in engine.log(), 10, "the engine's INFO line via root")
    engine.signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0
