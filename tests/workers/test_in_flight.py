"""The scoreboard's request_start is the oldest connection in flight (plain memory)."""

from __future__ import annotations

from workers.scoreboard import Scoreboard


def test_busy_and_progress_keep_the_oldest_start() -> None:
    board = Scoreboard(2)
    try:
        board.busy(1, now=10.0, requests=0, active=1, client=("127.0.0.1", 5))
        assert board.read(1).request_start == 10.0
        board.busy(1, now=12.0, requests=0, active=2, client=("127.0.0.1", 6), since=10.0)
        record = board.read(1)
        assert (record.request_start, record.heartbeat, record.active) == (10.0, 12.0, 2)
        board.progress(1, now=13.0, requests=1, active=1)  # a newer one finished
        assert board.read(1).request_start == 10.0
        board.progress(1, now=14.0, requests=2, active=1, since=12.0)  # the oldest did
        record = board.read(1)
        assert (record.request_start, record.heartbeat, record.requests) == (12.0, 14.0, 2)
        assert board.read(0).request_start == 0.0  # the neighbour slot is untouched
    finally:
        board.close()
