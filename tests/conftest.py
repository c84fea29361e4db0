"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    EngineProcess,
    assert_no_leftovers,
    become_subreaper,
    kill_tree,
    open_fds,
    start_engine,
    zombie_children,
)


@pytest.fixture(scope="session", autouse=True)
def _adopt_orphans() -> None:
    """Orphans of killed masters come back to the test process, to be reaped."""
    become_subreaper()


@pytest.fixture
def engine_proc(tmp_path: Path) -> Iterator[Callable[..., EngineProcess]]:
    """Start server programs as subprocesses; on teardown kill their process groups
    and assert that no process of theirs is left, alive or zombie."""
    started: list[EngineProcess] = []

    def start(code: str, **kwargs: Any) -> EngineProcess:
        engine = start_engine(code, tmp_path=tmp_path, **kwargs)
        started.append(engine)
        return engine

    yield start
    for engine in started:
        engine.snapshot()
        seen = kill_tree(engine.pid, engine.proc) | engine.seen_pids
        if engine.proc.stdout is not None:
            engine.proc.stdout.close()
        assert_no_leftovers(seen)


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Assert that a test leaves no zombie child and no new open fd in this process."""
    before = open_fds()
    yield
    assert zombie_children() == [], "test left zombie children"
    leaked = open_fds() - before
    assert not leaked, f"test leaked fds {sorted(leaked)}"
