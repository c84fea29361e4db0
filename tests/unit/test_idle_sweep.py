"""The gevent worker's client_timeout decision (workers.idle_sweep), with plain data:
per second, a connection is waiting on its client or not, and a wait of its ended in
that second or not; numbers stand for the clock."""

from __future__ import annotations

from workers.idle_sweep import IdleSweep, sweep_interval

WAIT = "wait"  # waiting on its client, in the same wait as at the last sweep
WOKE = "woke"  # waiting again, after a wait of its ended (data came, or room to send)
BUSY = "busy"  # not waiting on its socket (running, or waiting on something else)
OWN = "own"  # not ours to judge: the handler set its own timeout, or it closed


def sweeps(timeout: float, states: dict[str, list[str]]) -> list[tuple[float, list[str]]]:
    """Sweep once a second over the per-second states of each connection; returns the
    (time, expired) of every sweep that expired something. An expired connection is
    closed: it is not judged again."""
    idle = IdleSweep(timeout)
    fired, gone = [], set()
    for second in range(max(len(s) for s in states.values())):
        expired = []
        for conn, seq in states.items():
            if conn in gone:
                continue
            state = seq[second] if second < len(seq) else seq[-1]
            if state == WOKE:
                idle.wait_ended(conn)  # what the worker's socket does when a wait ends
            if idle.judge(conn, float(second), None if state == OWN else state != BUSY):
                expired.append(conn)
                gone.add(conn)
                idle.wait_ended(conn)  # the connection ends
        if expired:
            fired.append((float(second), sorted(expired)))
    assert not idle.waiting.keys() & gone  # nothing kept for a connection that is gone
    return fired


def test_a_connection_in_one_wait_expires_after_the_timeout() -> None:
    # First seen waiting at t=0: expires at the first sweep >= 0 + 3.
    assert sweeps(3, {"a": [WAIT] * 10}) == [(3.0, ["a"])]


def test_waits_that_end_keep_it_alive() -> None:
    # Waiting at every sweep, but each time in a new wait: never idle for 3 s.
    assert sweeps(3, {"a": [WOKE] * 10}) == []
    # A wait that ends starts the count again.
    assert sweeps(3, {"a": [WAIT, WAIT, WOKE] + [WAIT] * 10}) == [(5.0, ["a"])]


def test_the_wait_starts_when_it_is_first_seen_not_at_the_last_byte() -> None:
    # Busy elsewhere (not waiting on the socket) for 5 s, then it waits: the 3 s count
    # from the first sweep that sees it waiting (t=5), not from t=0.
    assert sweeps(3, {"a": [BUSY] * 5 + [WAIT] * 10}) == [(8.0, ["a"])]


def test_connections_are_judged_each_on_its_own() -> None:
    fired = sweeps(3, {
        "idle": [WAIT] * 10,
        "chatty": [WOKE] * 10,
        "late": [WOKE] * 2 + [WAIT] * 10,
    })
    assert fired == [(3.0, ["idle"]), (4.0, ["late"])]


def test_a_connection_that_is_not_ours_to_judge_never_expires() -> None:
    assert sweeps(1, {"own": [OWN] * 10}) == []


def test_an_expired_connection_is_forgotten() -> None:
    idle = IdleSweep(1)
    assert idle.judge("a", 0.0, True) is False
    assert idle.waiting == {"a": 0.0}
    assert idle.judge("a", 1.0, True) is True
    assert idle.waiting == {}
    # Seen waiting again (its greenlet not yet gone): a new wait, judged afresh.
    assert idle.judge("a", 1.5, True) is False


def test_only_connections_seen_waiting_are_kept() -> None:
    idle = IdleSweep(1)
    idle.judge("busy", 0.0, False)
    idle.judge("own", 0.0, None)
    idle.judge("waiting", 0.0, True)
    assert idle.waiting == {"waiting": 0.0}
    idle.wait_ended("waiting")
    assert idle.waiting == {}


def test_sweep_interval_is_a_fraction_of_the_timeout_within_bounds() -> None:
    assert sweep_interval(30) == 7.5
    assert sweep_interval(3600) == 10.0
    assert sweep_interval(0.1) == 0.05
