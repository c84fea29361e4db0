"""Fixtures of the reliability tests: engines started as real CLI subprocesses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtests.reliability_support import Engine

StartEngine = Callable[..., Engine]


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[StartEngine]:
    """Start ``python -m engine serve ...`` subprocesses (see :class:`Engine`); on
    teardown stop them, kill their process groups and assert nothing of theirs is left."""
    started: list[Engine] = []

    def start(args: list[str], **kwargs: Any) -> Engine:
        engine = Engine(args, log_dir=tmp_path, **kwargs)
        started.append(engine)
        return engine

    yield start
    leftovers = [(engine.name, engine.close()) for engine in started]
    assert all(not left for _, left in leftovers), f"left behind: {leftovers}"
