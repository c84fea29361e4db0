"""The pool policy on plain data: no processes, so the invariants can be fuzzed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.pool import PoolParams, WorkerView, plan
from workers.protocol import WorkerState

DYNAMIC = PoolParams(
    mode="dynamic", target=2, max_children=40, min_spare=2, max_spare=8,
    idle_timeout=10.0, max_spawn_batch=32,
)


def busy(count: int) -> list[WorkerView]:
    return [WorkerView(slot, 0, WorkerState.BUSY, False, None) for slot in range(count)]


def test_busy_dynamic_pool_grows_to_keep_spares() -> None:
    decision = plan(busy(2), DYNAMIC, generation=0, reload_size=None,
                    connections_waiting=True, batch=4, now=0.0)
    assert decision.spawn == 4 and decision.grew


def test_cpu_saturated_pool_does_not_grow_above_the_floor() -> None:
    decision = plan(busy(2), DYNAMIC, generation=0, reload_size=None,
                    connections_waiting=True, batch=4, now=0.0, cpu_saturated=True)
    assert decision.spawn == 0 and not decision.grew
    assert decision.next_batch == 1  # the ramp starts over once growth is allowed again


def test_cpu_saturated_pool_still_replaces_workers_below_the_floor() -> None:
    decision = plan(busy(1), DYNAMIC, generation=0, reload_size=None,
                    connections_waiting=True, batch=1, now=0.0, cpu_saturated=True)
    assert decision.spawn == 1 and not decision.grew


views = st.lists(
    st.builds(
        WorkerView,
        slot=st.integers(0, 39),
        generation=st.integers(0, 2),
        state=st.sampled_from(list(WorkerState)[1:]),
        draining=st.booleans(),
        idle_since=st.none() | st.floats(0, 100),
        free_threads=st.booleans(),
    ),
    max_size=40,
    unique_by=lambda view: view.slot,
)


@settings(max_examples=300, deadline=None)
@given(
    workers=views,
    mode=st.sampled_from(["static", "dynamic", "ondemand"]),
    target=st.integers(0, 40),
    waiting=st.booleans(),
    batch=st.integers(1, 32),
    saturated=st.booleans(),
    generation=st.integers(0, 2),
)
def test_never_more_than_max_children_and_no_growth_when_saturated(
    workers: list[WorkerView], mode: str, target: int, waiting: bool, batch: int,
    saturated: bool, generation: int,
) -> None:
    params = PoolParams(mode=mode, target=target, max_children=40, min_spare=2,
                        max_spare=8, idle_timeout=10.0, max_spawn_batch=32)
    decision = plan(workers, params, generation=generation, reload_size=None,
                    connections_waiting=waiting, batch=batch, now=50.0,
                    cpu_saturated=saturated)
    assert len(workers) + decision.spawn <= params.max_children
    current = [w for w in workers if not w.draining and w.generation == generation]
    if saturated:
        assert not decision.grew
        assert decision.spawn <= max(0, target - len(current))
