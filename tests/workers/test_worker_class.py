"""Choosing a worker class: settings, start-up errors, the patched-at-import module,
and the watchdog's rules for gevent workers (pure logic on plain records)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.config import build, connection_slots
from engine.errors import ConfigError
from engine.watchdog import COOPERATIVE_GRACE, hang_deadline, hang_reason
from tests.kit import CLI, READY, ROOT, exchange, kill_group, run_cli, wait_until
from workers.protocol import WorkerState
from workers.scoreboard import SlotRecord

ECHO = "engine.examples.echo:EchoHandler"
PATCHED = "tests.apps.patched_apps:Echo"
# Any import of gevent fails in the process that runs this first.
NO_GEVENT = "import sys\nsys.modules['gevent'] = None\n"


def test_worker_class_settings_and_connection_slots() -> None:
    assert build({}).worker_class == "sync"
    assert connection_slots(build({"threads": 8})) == 8
    gevent = build({"worker_class": "gevent", "worker_connections": "500"})
    assert connection_slots(gevent) == 500
    with pytest.raises(ConfigError, match="worker_class"):
        build({"worker_class": "eventlet"})


def test_threads_with_gevent_is_a_config_error_naming_threads() -> None:
    with pytest.raises(ConfigError, match=r"threads=4: 1 with worker_class=gevent"):
        build({"worker_class": "gevent", "threads": 4})
    result = run_cli(["serve", ECHO, "--worker-class", "gevent", "--threads", "4",
                      "--bind", "127.0.0.1:0"])
    assert result.returncode == 2, result.stderr
    assert "threads=4" in result.stderr and "Traceback" not in result.stderr


def test_worker_class_from_the_environment() -> None:
    result = run_cli(["serve", ECHO, "--check-config"], env={"ENGINE_WORKER_CLASS": "gevent"})
    assert result.returncode == 0, result.stderr
    assert 'worker_class = "gevent"' in result.stdout


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        kill_group(proc.pid, proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_gevent_missing_fails_at_start_on_the_command_line() -> None:
    result = _run(NO_GEVENT + CLI, "serve", ECHO, "--worker-class", "gevent",
                  "--bind", "127.0.0.1:0")
    assert result.returncode == 2, result.stderr
    assert "pip install 'engine[gevent]'" in result.stderr
    assert "serving" not in result.stderr and "Traceback" not in result.stderr


def test_gevent_missing_fails_at_start_in_the_python_api() -> None:
    code = NO_GEVENT + (
        "from engine import PreforkTCPServer, StreamRequestHandler\n"
        "from engine.errors import ConfigError\n"
        "class Server(PreforkTCPServer):\n"
        "    worker_class = 'gevent'\n"
        "try:\n"
        "    Server(('127.0.0.1', 0), StreamRequestHandler)\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert "invalid setting worker_class='gevent'" in result.stdout
    assert "pip install 'engine[gevent]'" in result.stdout


def test_module_patched_at_import_serves_with_gevent(engine_proc) -> None:
    pytest.importorskip("gevent")
    engine = engine_proc(CLI, args=["serve", PATCHED, "--worker-class", "gevent",
                                    "--workers", "2", "--pool-mode", "static",
                                    "--bind", "127.0.0.1:0"], env=READY)
    workers = wait_until(lambda: len(engine.workers()) == 2 and engine.workers(), 10, "pool")
    reply = exchange(engine.address, b"hello\n")
    pid, patched, line = reply.split(b" ", 2)
    assert int(pid) in {w.pid for w in workers} and patched == b"patched"
    assert line == b"hello\n"
    # The master's loop was not patched: it reaps and replaces a killed worker at once.
    victim = workers[0].pid
    os.kill(victim, 9)
    wait_until(lambda: len(now := {w.pid for w in engine.workers()}) == 2 and victim not in now,
               5, "replacement")
    engine.signal(15)
    assert engine.wait(10) == 0
    assert "Traceback" not in engine.log()


def test_module_patched_at_import_is_refused_by_the_sync_worker() -> None:
    pytest.importorskip("gevent")
    result = run_cli(["serve", PATCHED, "--bind", "127.0.0.1:0"])
    assert result.returncode == 2, result.stderr
    assert "worker_class" in result.stderr and "--worker-class gevent" in result.stderr
    assert "serving" not in result.stderr and "Traceback" not in result.stderr


# --- the watchdog's rules (plain records, a fake clock) ---


def _record(state: WorkerState, beat: float, start: float = 0.0) -> SlotRecord:
    return SlotRecord(slot=0, pid=1, state=state, request_start=start, heartbeat=beat,
                      requests=0, bytes_in=0, bytes_out=0, started=0.0, active=1, client="")


def test_busy_gevent_worker_is_judged_by_its_heartbeat() -> None:
    settings = build({"worker_class": "gevent", "worker_timeout": 2})
    busy = _record(WorkerState.BUSY, beat=100.0, start=50.0)
    assert hang_deadline(busy, spawned=0.0, settings=settings) == 102.0
    assert hang_reason(busy, 0.0, settings, now=101.9) is None
    reason = hang_reason(busy, 0.0, settings, now=103.0)
    assert reason is not None and reason.startswith("hub silent for 3.0s > worker_timeout 2s")
    # The sync worker: busy workers are exempt from worker_timeout.
    assert hang_deadline(busy, 0.0, build({"worker_timeout": 2})) is None


def test_gevent_request_timeout_is_a_backstop_after_the_worker_own() -> None:
    settings = build({"worker_class": "gevent", "request_timeout": 1, "worker_timeout": 30})
    busy = _record(WorkerState.BUSY, beat=100.0, start=99.0)
    assert hang_deadline(busy, 0.0, settings) == 99.0 + 1 + COOPERATIVE_GRACE
