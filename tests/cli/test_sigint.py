"""SIGINT's exit status does not depend on how the engine was started (#13.13).

A shell starts background jobs, and `nohup` its command, with SIGINT ignored, and a
process inherits that: Python then installs no KeyboardInterrupt handler. `engine`
installs its own, so SIGINT means a quick stop and exit status 130 either way. The test
launcher (tests/kit/engines.py EngineProcess) gives every child the default disposition,
so the tests pass whether or not the runner itself ignores SIGINT.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import pytest

from tests.kit import READY, EngineProcess, wait_until

Start = Callable[..., EngineProcess]

# Start `python -m engine ARGS` the way `nohup engine ... &` does: SIGINT ignored.
WITH_SIGINT_IGNORED = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'engine', *sys.argv[1:]])\n"
)
STATIC_2 = ["--workers", "2", "--pool-mode", "static"]


def test_sigint_exits_130_when_started_with_sigint_ignored(engine_proc: Start) -> None:
    engine = engine_proc(
        WITH_SIGINT_IGNORED,
        args=["serve", "engine.examples.echo:EchoHandler", "--bind", "127.0.0.1:0",
              *STATIC_2],
        env=READY,
    )
    workers = wait_until(lambda: len(engine.workers()) == 2 and engine.workers(), 10, "pool")
    engine.signal(signal.SIGINT)
    assert engine.wait(timeout=30) == 130
    log = engine.log()
    assert "quick stop" in log and "Traceback" not in log
    assert all(not worker.is_running() for worker in workers)


@pytest.fixture
def runner_ignoring_sigint() -> Iterator[None]:
    """This process ignores SIGINT for the test, as a runner started by `nohup` does."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_launcher_gives_children_the_default_sigint(
    runner_ignoring_sigint: None, engine_proc: Start
) -> None:
    probe = engine_proc(
        "import signal\n"
        "default = signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
        "print('READY', repr(str(default)), flush=True)\n"
    )
    assert probe.address == "True"
    probe.wait(timeout=10)
