"""The short locust load test CI runs: ``python -m loadtests.run_locust`` for 2 s.

It starts ``python -m engine`` (the demo service), loads it with 8 locust users mixing
short, keep-alive and slow TCP clients, stops it, and must pass: requests of every
kind, no failure, the reports written, and no process of the engine or of locust left.

Locust is never imported into this process: it monkeypatches the standard library with
gevent on import, which would change every other test. The run happens in subprocesses.
"""

from __future__ import annotations

import csv
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.kit.engines import ROOT
from tests.kit.processes import kill_group, wait_group_empty

pytestmark = pytest.mark.slow

TASKS = ("short", "keepalive", "slow")
RUN_TIMEOUT = 60.0  # seconds for the whole run (2 s of load, start-up, stop, reports)
STOP_TIMEOUT = 30.0  # seconds the runner gets to clean up after a SIGTERM
GONE_TIMEOUT = 10.0


def _locust_import_problem() -> str | None:
    """Why locust cannot be imported by a fresh interpreter (``None`` if it can)."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import locust"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return "importing locust took more than 60 s"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no error output"])[-1]
        return f"locust cannot be imported ({last}); install the [test] or [load] extra"
    return None


@pytest.fixture(scope="module")
def locust_available() -> None:
    """Skip the module's tests when locust is not importable."""
    problem = _locust_import_problem()
    if problem is not None:
        pytest.skip(problem)


def _wait_or_stop(proc: subprocess.Popen[bytes]) -> int | None:
    """The runner's exit status; if it overruns, SIGTERM it (it then cleans up its
    engine and locust), SIGKILL it if need be, and return ``None``."""
    try:
        return proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
        return None


def _started_groups(output: str) -> dict[str, int]:
    """The process groups the runner announced: ENGINE_PID and LOCUST_PID (each was
    started in its own session, so its pid is its process group id)."""
    return {kind: int(pid) for kind, pid in re.findall(r"^(ENGINE|LOCUST)_PID (\d+)$",
                                                        output, re.MULTILINE)}


def _leftovers(pgids: set[int]) -> list[int]:
    """Processes of *pgids* still there after a grace period; they are then killed
    (so a failing test leaks nothing) and returned for the assertion."""
    left = [p.pid for pgid in sorted(pgids) for p in wait_group_empty(pgid, GONE_TIMEOUT)]
    for pgid in pgids:
        kill_group(pgid, term_first=False)
    return left


def _stats(path: Path) -> dict[str, dict[str, str]]:
    """Locust's ``_stats.csv`` rows by name (the tasks and ``Aggregated``)."""
    with open(path, newline="") as file:
        return {row["Name"]: row for row in csv.DictReader(file)}


def test_short_locust_run_passes_and_leaves_nothing(
    locust_available: None, tmp_path: Path
) -> None:
    """Exit 0, >0 requests and 0 failures per task, CSV and HTML written, nothing left."""
    out = tmp_path / "reports"
    stdout_path, stderr_path = tmp_path / "run_locust.out", tmp_path / "run_locust.err"
    command = [
        sys.executable, "-m", "loadtests.run_locust", "--users", "8", "--spawn-rate", "8",
        "--run-time", "2s", "--p99-ms", "2000", "--out", str(out),
    ]
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
        )
    try:
        status = _wait_or_stop(proc)
    finally:
        if proc.returncode is None:  # interrupted while waiting: never leak the runner
            proc.kill()
            proc.wait()
        output = stdout_path.read_text(errors="replace")
        groups = _started_groups(output)
        left = _leftovers(set(groups.values()))
    report = f"stdout:\n{output}\nstderr:\n{stderr_path.read_text(errors='replace')}"

    assert "ENGINE" in groups, f"the runner announced no ENGINE_PID\n{report}"
    assert "LOCUST" in groups, f"the runner announced no LOCUST_PID\n{report}"
    assert not left, f"processes left behind: {left}\n{report}"
    assert not psutil.pid_exists(groups["ENGINE"])
    assert status is not None, f"run_locust overran {RUN_TIMEOUT:g}s\n{report}"
    assert status == 0, f"run_locust exited {status}\n{report}"
    assert "RESULT PASS" in output
    summary = [line for line in output.splitlines() if line.startswith("SUMMARY ")]
    assert len(summary) == 1, report

    stats_path = out / "locust_stats.csv"
    assert stats_path.is_file(), report
    rows = _stats(stats_path)
    for name in (*TASKS, "Aggregated"):
        assert name in rows, f"no {name!r} row in {stats_path}: {sorted(rows)}"
        assert int(rows[name]["Request Count"]) > 0, f"no {name} request: {rows[name]}"
        assert int(rows[name]["Failure Count"]) == 0, f"{name} failures: {rows[name]}"
    assert (out / "locust.html").stat().st_size > 0
