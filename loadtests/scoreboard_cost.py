"""Requests/s and CPU per request with the scoreboard on and off, side by side.

    python -m loadtests.scoreboard_cost [--rounds 5] [--duration 3]

"Off" is the same engine with the worker's scoreboard writes replaced by no-ops (in the
server process of this benchmark only). Static pool of 2 workers, 32 keep-alive
clients from the C load generator (loadtests/loadgen.c), rounds interleaved, medians
reported. Loopback only; every process is killed by process group at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

from loadtests.bench import build_loadgen
from tests.kit.processes import kill_group

ROOT = Path(__file__).resolve().parent.parent

SERVER = textwrap.dedent(
    """
    import engine
    from workers.scoreboard import Scoreboard

    if {off}:
        for name in ("busy", "idle", "progress", "heartbeat", "add_bytes"):
            setattr(Scoreboard, name, lambda *args, **kwargs: None)

    class Handler(engine.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                self.wfile.write(line)

    class Server(engine.PreforkTCPServer):
        workers = 2
        pool_mode = "static"
        worker_timeout = None  # with heartbeats off, idle workers would look silent

    with Server(("127.0.0.1", 0), Handler) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()
    """
)


def tree_cpu(pid: int) -> float:
    total = 0.0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def one_round(loadgen: Path, off: bool, duration: float) -> tuple[float, float]:
    """(requests/s, server CPU µs per request) for one run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER.format(off=off)],
        # The generator resets its connections at the end: handle_error's tracebacks.
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        gen = subprocess.Popen(
            [str(loadgen), "-p", str(port), "-c", "32", "-m", "keepalive",
             "-d", f"{duration:g}", "-w", "0.5", "-H"],
            stdout=subprocess.PIPE, stdin=subprocess.PIPE, start_new_session=True,
        )
        assert gen.stdout is not None and gen.stdin is not None
        assert gen.stdout.readline().strip() == b"start"
        cpu0 = tree_cpu(server.pid)
        result = json.loads(gen.stdout.readline())
        cpu1 = tree_cpu(server.pid)
        gen.stdin.close()
        gen.wait(30)
        gen.stdout.close()
        replies = int(result["replies"])
        return float(result["rps"]), (cpu1 - cpu0) / max(replies, 1) * 1e6
    finally:
        kill_group(server.pid, server, grace=30)
        if server.stdout is not None:
            server.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    loadgen = build_loadgen()
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for off in (False, True):
            results[off].append(one_round(loadgen, off, args.duration))
    for off in (False, True):
        rps = statistics.median(r for r, _ in results[off])
        cpu = statistics.median(c for _, c in results[off])
        label = "off" if off else "on "
        print(f"scoreboard {label}: {rps:8.0f} req/s, {cpu:6.1f} µs CPU/request")
    on_rps = statistics.median(r for r, _ in results[False])
    off_rps = statistics.median(r for r, _ in results[True])
    print(f"on/off requests/s ratio: {on_rps / off_rps:.3f}")


if __name__ == "__main__":
    main()
