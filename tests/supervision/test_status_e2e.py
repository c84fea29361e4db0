"""End to end: a real prefork engine with status_bind, read over its status socket.

Needs the master integration (engine/master.py) from the status/health report.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.apps.prefork_apps import program
from tests.kit import EngineProcess, wait_until
from tests.kit import exchange as tcp_exchange


def status(path: str, request: bytes = b"json\n") -> bytes:
    return tcp_exchange(path, request, timeout=5.0)


def test_status_of_a_running_pool(
    engine_proc: Callable[..., EngineProcess], tmp_path: Path
) -> None:
    sock_path = f"/tmp/engine-e2e-{os.getpid()}.sock"
    attrs = f"workers = 2\npool_mode = 'static'\nstatus_bind = 'unix:{sock_path}'\n" \
            "health_interval = 0.2\ncount_bytes = True"
    engine = engine_proc(program(attrs=attrs))
    wait_until(lambda: os.path.exists(sock_path), 10, "status socket")

    def two_sampled_idle() -> dict[str, Any] | None:
        data = json.loads(status(sock_path))
        workers = data["workers"]
        ok = len(workers) == 2 and all(
            w["state"] == "idle" and w["rss"] for w in workers
        )
        return data if ok else None

    data = wait_until(two_sampled_idle, 10, "two sampled idle workers")
    assert data["master"]["pid"] == engine.pid and data["master"]["uptime"] >= 0
    assert {w["pid"] for w in data["workers"]} == {p.pid for p in engine.workers()}

    # A held connection makes one worker busy, with its client and a request age.
    with socket.create_connection(engine.address, timeout=5) as held:
        held.sendall(b"hi\n")
        held.recv(100)
        busy = wait_until(
            lambda: [w for w in json.loads(status(sock_path))["workers"]
                     if w["state"] == "busy"], 5, "a busy worker",
        )
        assert busy[0]["client"].startswith("127.0.0.1:")
        assert busy[0]["request_age"] is not None

    # count_bytes: the finished connection's traffic (3 bytes in, pid + echo out).
    counted = wait_until(
        lambda: [
            w for w in json.loads(status(sock_path))["workers"]
            if w["bytes_in"] and w["requests"] == 1
        ],
        5, "byte counts",
    )
    assert counted[0]["bytes_in"] == 3 and counted[0]["bytes_out"] > 3

    raw = status(sock_path, b"GET /metrics HTTP/1.0\r\n\r\n")
    body = raw.partition(b"\r\n\r\n")[2].decode()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert sum(s.value for s in families["engine_workers"].samples) == 2
    assert "engine_master_rss_bytes" in families

    engine.signal(15)
    assert engine.wait() == 0
    assert not os.path.exists(sock_path), "the master removed its status socket"
