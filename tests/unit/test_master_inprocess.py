"""A Master built in this process, driven a turn at a time: commands, timeouts, status.

No fork happens: an ondemand pool with no worker and no connection forks nothing, so
the loop's own decisions are checked directly (the end-to-end tests fork for real).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator

import pytest

from engine import PreforkTCPServer, StreamRequestHandler
from engine.master import Master, MasterState
from engine.pool_adapter import NO_SIGNAL_TICK
from engine.version import __version__


class Quiet(PreforkTCPServer):
    pool_mode = "ondemand"
    workers = 0
    health_interval = 60


@pytest.fixture
def master() -> Iterator[Master]:
    server = Quiet(("127.0.0.1", 0), StreamRequestHandler)
    built = Master(server, server.prefork_settings())
    try:
        yield built
    finally:
        built._close()
        server.server_close()


def test_commands_are_dispatched_from_the_wakeup_fd(master: Master, caplog) -> None:
    caplog.set_level(logging.INFO, logger="engine.master")
    master.events.wakeup.wake(signal.SIGHUP)
    master.step()
    assert master.pool.generation == 1 and "graceful restart: generation 1" in caplog.text
    master.events.wakeup.wake(signal.SIGTERM)
    master.step()
    assert master.state is MasterState.STOPPING
    master.step()  # no worker left to drain
    assert master.state is MasterState.STOPPED
    assert not master.children  # nothing was forked


def test_without_signals_the_master_polls_for_exits(master: Master) -> None:
    master.health.next_due = 60.0  # the first health sample taken
    tick = master.pool.snapshot(master.children, 0.0)
    assert master.events.signals is False  # not inside run(): no signal capture
    assert master._next_timeout(tick) == pytest.approx(NO_SIGNAL_TICK)


def test_status_document_from_plain_data(master: Master) -> None:
    document = master._status()
    info = document["master"]
    assert info["version"] == __version__ and info["pool_mode"] == "ondemand"
    assert info["crash_loop"] == {"boot_failures": 0, "fork_failures": 0, "next_spawn_in": 0.0}
    assert document["workers"] == []


def test_master_is_small() -> None:
    """Issue #15: the loop stays a table of contents, its state a handful of parts."""
    import inspect

    import engine.master

    assert len(inspect.getsource(engine.master).splitlines()) <= 250
    server = Quiet(("127.0.0.1", 0), StreamRequestHandler)
    built = Master(server, server.prefork_settings())
    try:
        assert len(vars(built)) <= 15, sorted(vars(built))
    finally:
        built._close()
        server.server_close()
