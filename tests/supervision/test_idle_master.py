"""An idle master costs nothing (#16.4): with no traffic and no deadline pending, it wakes
no more often than ``health_interval``.

Wake-ups are counted from ``/proc/PID/schedstat`` (its third field counts the times the
task was scheduled in: every wake-up is one). Run as a module to measure a longer
window: ``python -m tests.supervision.test_idle_master 60``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.apps.prefork_apps import program
from tests.kit import EngineProcess, kill_group, start_program, wait_until
from tests.kit.procfs import cpu_and_wakeups, schedstat

# A quiet pool: health samples once a minute, idle workers have 2 minutes of silence.
QUIET = "workers = 2\nhealth_interval = 60\nworker_timeout = 120\n"
WINDOW = 2.0  # seconds watched


MODES = ("static", "dynamic")


@pytest.fixture(scope="module")
def wakeups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """Both pools started, settled, and watched over the same window: wake-ups by mode."""
    tmp_path = tmp_path_factory.mktemp("idle-master")
    started: list[EngineProcess] = []
    try:
        for mode in MODES:
            started.append(start_program(program(attrs=QUIET + f"pool_mode = {mode!r}"),
                                         tmp_path=tmp_path))
        for engine in started:
            wait_until(lambda e=engine: len(e.workers()) == 2, 10, "the pool")
        # Settled: the first health round is over (it samples every worker once).
        for engine in started:
            wait_until(lambda e=engine: _settled(e.pid), 10, "the master to go quiet")
        before = [schedstat(engine.pid)[1] for engine in started]
        time.sleep(WINDOW)  # the measurement window itself, not a synchronisation
        after = [schedstat(engine.pid)[1] for engine in started]
        yield {mode: a - b for mode, a, b in zip(MODES, after, before, strict=True)}
    finally:
        leftovers = [engine.close() for engine in started]
    assert not any(leftovers), f"left behind: {leftovers}"


@pytest.mark.parametrize("mode", MODES)
def test_idle_master_does_not_wake_every_second(wakeups: dict[str, int], mode: str) -> None:
    woken = wakeups[mode]
    # A one-second tick would wake it twice in 2 s; a quiet master sleeps throughout.
    assert woken <= 1, f"the idle master woke {woken} times in {WINDOW:g} s"


def _settled(pid: int) -> bool:
    _cpu, woken = cpu_and_wakeups(pid, 0.3)
    return woken == 0


def main(seconds: float) -> None:
    """Print an idle master's wake-ups per minute and CPU over *seconds*."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        engine = start_program(program(attrs="workers = 2\n"), tmp_path=Path(directory))
        try:
            wait_until(lambda: len(psutil.Process(engine.pid).children()) == 2, 10, "pool")
            time.sleep(2)  # let the start-up finish before measuring
            cpu, woken = cpu_and_wakeups(engine.pid, seconds)
            print(f"idle master (defaults: health_interval 5 s): {woken * 60 / seconds:.1f} "
                  f"wake-ups/min, {cpu * 1000:.2f} ms CPU over {seconds:g} s")
        finally:
            assert not kill_group(engine.pid, engine.proc)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0)
