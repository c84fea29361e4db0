"""``loadtests/worker_memory.py`` on a few requests: it finds each server's workers,
reads their memory, and leaves no process behind.

The figures themselves are the tool's output (docs/benchmarks.md), not asserted here:
what is checked is that the tool measures what it says (one child for
ForkingTCPServer, the configured number of workers for the prefork servers, USS equal
to the private pages of the smaps breakdown) and that it cleans up.
"""

from __future__ import annotations

import pytest

from loadtests import worker_memory
from tests.kit import assert_no_leftovers

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("server", "workers"), [("engine-static", 2), ("floor", 2),
                                                 ("forking", 1)])
def test_workers_are_found_measured_and_stopped(server: str, workers: int, no_leaks) -> None:
    result = worker_memory.measure(server, "line", requests=20, workers=2, maps=True)
    assert len(result.workers) == workers
    assert result.parent is not None
    for proc in result.workers:
        assert 0 < proc.uss <= proc.pss <= proc.rss
        assert "anon" in proc.maps
        # psutil's USS is the private pages smaps lists (read a moment apart).
        assert abs(sum(proc.maps.values()) - proc.uss) <= max(64, proc.uss // 10)
    assert_no_leftovers({result.parent.pid, *(p.pid for p in result.workers)})
