"""Fixtures shared by the whole suite (the helpers themselves are in tests/kit)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kit.engines import EngineProcess, StartEngine, serve_engine, start_program
from tests.kit.processes import become_subreaper
from tests.kit.procfs import open_fds, zombie_children


@pytest.fixture(scope="session", autouse=True)
def _adopt_orphans() -> None:
    """Orphans of killed masters come back to the test process, to be reaped."""
    become_subreaper()


@pytest.fixture
def _started() -> Iterator[list[EngineProcess]]:
    """The engines a test started; on teardown each is closed (its process group
    killed and reaped) and nothing of any of them may be left, alive or zombie."""
    started: list[EngineProcess] = []
    yield started
    leftovers = [(engine.name, engine.close()) for engine in started]
    assert all(not left for _, left in leftovers), f"left behind: {leftovers}"


@pytest.fixture
def engine_proc(tmp_path: Path, _started: list[EngineProcess]) -> StartEngine:
    """Start server programs (Python source that prints ``READY <address>``) as
    subprocesses in their own sessions: ``engine_proc(code, args=..., env=...)``
    (see :func:`tests.kit.engines.start_program`)."""

    def start(code: str, **kwargs: Any) -> EngineProcess:
        engine = start_program(code, tmp_path=tmp_path, **kwargs)
        _started.append(engine)
        return engine

    return start


@pytest.fixture
def engines(tmp_path: Path, _started: list[EngineProcess]) -> StartEngine:
    """Start ``python -m engine serve HANDLER --bind ... ARGS`` subprocesses:
    ``engines(args, handler=..., nofile=...)`` (see :func:`tests.kit.engines.serve_engine`)."""

    def start(args: list[str], **kwargs: Any) -> EngineProcess:
        engine = serve_engine(args, log_dir=tmp_path, **kwargs)
        _started.append(engine)
        return engine

    return start


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Assert that a test leaves no zombie child and no new open fd in this process."""
    before = open_fds()
    yield
    assert zombie_children() == [], "test left zombie children"
    leaked = open_fds() - before
    assert not leaked, f"test leaked fds {sorted(leaked)}"
