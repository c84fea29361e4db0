"""Where a worker's private memory comes from, step by step of its life.

    python -m loadtests.worker_phases [--proto http|line] [--requests 200] [--rounds 3]
        [--servers engine,floor,floor-engine,forking] [--json]

:mod:`loadtests.worker_memory` measures a worker once, at the end. This stops one
worker (``SIGSTOP`` from inside, at fixed points) and reads its USS from outside at
each point, so that its private memory splits into what the fork, the worker's own
set-up, its first connection and the next ones each cost:

* *forked*: in the child, as soon as ``fork()`` returned (what any fork of that
  process costs: the interpreter's after-fork code and the at-fork hooks);
* *booted*: at the engine's ``worker_init`` hook (its signals, its scoreboard slot,
  its process title are set; the listener timeout and the loop's set-up come after);
  the floor and a forked child have no such step;
* *first reply* (HTTP): the first request answered, its connection still open, which
  is where :mod:`loadtests.worker_memory` reads a ForkingTCPServer child;
* *1 connection*: the first connection closed (after the handler's ``finish()``);
* *N connections*: after the N-th (``--requests``), one request each; a forked child
  serves one.

``floor-engine`` is the floor in a parent that imported the engine and uses none of
it: what a larger parent alone costs each child it forks.

The parent stops itself right after each ``fork()`` and stays stopped until the end:
a page the parent writes after the fork would otherwise become the child's own, and
the figures would depend on what the parent happened to run meanwhile (with 2 or
more workers, :mod:`loadtests.worker_memory` shows that part). Each server runs one
worker (``--workers 1``) of the benchmark's servers and handlers
(:mod:`loadtests.bench_servers`, started through :mod:`loadtests.phase_points`).
Medians over ``--rounds`` fresh servers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import psutil

from loadtests import worker_memory
from tests.kit import kill_group

SERVERS = ("engine", "floor", "floor-engine", "forking")
# floor-engine: the floor in a parent that imported the engine (and uses none of it)
POINTS = ("forked", "booted", "first reply", "1 connection", "N connections")
STOP_LIMIT = 20.0  # seconds for a process to reach its next stop point
KIB = 1024


def _wait_stopped(pid: int) -> None:
    deadline = time.monotonic() + STOP_LIMIT
    while psutil.Process(pid).status() != psutil.STATUS_STOPPED:
        if time.monotonic() > deadline:
            raise RuntimeError(f"pid {pid} did not reach its next stop point")
        time.sleep(0.005)  # polling a process state from outside: nothing to wait on


def _uss_at_stop(pid: int) -> int:
    """Wait until *pid* stops, read its USS (KiB), let it go on."""
    _wait_stopped(pid)
    uss = int(psutil.Process(pid).memory_full_info().uss) // KIB
    os.kill(pid, signal.SIGCONT)
    return uss


def _the_child(parent: int) -> int:
    deadline = time.monotonic() + STOP_LIMIT
    while True:
        children = psutil.Process(parent).children()
        if children:
            return int(children[0].pid)
        if time.monotonic() > deadline:
            raise RuntimeError("no worker was forked")
        time.sleep(0.005)


def measure_once(server: str, proto: str, requests: int) -> dict[str, int]:
    """USS (KiB) of one worker at each of its stop points, on a fresh server."""
    port = worker_memory.free_port()
    kind = {"engine": "engine-static", "floor-engine": "floor"}.get(server, server)
    argv = worker_memory.server_argv(kind, proto, port, 1)
    argv[1:3] = ["-m", "loadtests.phase_points", str(requests), "--"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(worker_memory.REPO), os.environ.get("PYTHONPATH", "")) if p
    ))
    if server == "floor-engine":
        env["PHASE_POINTS_IMPORT_ENGINE"] = "1"
    proc = subprocess.Popen(
        argv, cwd=worker_memory.REPO, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, start_new_session=True,
    )
    found: dict[str, int] = {}
    client: threading.Thread | None = None
    try:
        if server == "forking":  # it forks when a connection comes: send one first
            client = _request_in_background(port, proto, proc)
        child = _the_child(proc.pid)
        found["forked"] = _uss_at_stop(child)
        if server == "engine":
            found["booted"] = _uss_at_stop(child)
        if client is None:
            worker_memory.one_request(port, proto)
        if proto == "http":
            found["first reply"] = _uss_at_stop(child)
        found["1 connection"] = _uss_at_stop(child)
        if server != "forking":
            for _ in range(requests - 1):
                worker_memory.one_request(port, proto)
            found["N connections"] = _uss_at_stop(child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
        kill_group(proc.pid, proc)
        if client is not None:
            client.join(STOP_LIMIT)
    return found


def _request_in_background(
    port: int, proto: str, proc: subprocess.Popen[bytes]
) -> threading.Thread:
    def connect_and_ask() -> None:
        deadline = time.monotonic() + STOP_LIMIT
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError, RuntimeError):
                worker_memory.one_request(port, proto)
                return
            time.sleep(0.05)  # the server is still binding: retry its port

    thread = threading.Thread(target=connect_and_ask, daemon=True)
    thread.start()
    return thread


def measure(server: str, proto: str, requests: int, rounds: int) -> dict[str, float]:
    """Median USS (KiB) at each stop point over *rounds* fresh servers."""
    runs = [measure_once(server, proto, requests) for _ in range(rounds)]
    return {p: statistics.median(r[p] for r in runs) for p in POINTS if p in runs[0]}


def table(results: dict[str, dict[str, float]], requests: int) -> list[str]:
    """Markdown: USS at each point and what the step added, per server."""
    names = {"N connections": f"{requests} connections"}
    labels = {"engine": "engine worker", "floor": "floor worker",
              "floor-engine": "floor worker, engine imported",
              "forking": "ForkingTCPServer child"}
    head = "| step | " + " | ".join(f"{labels[s]} (KiB, +step)" for s in results) + " |"
    lines = [head, "|---|" + "--:|" * len(results)]
    for point in POINTS:
        if not any(point in points for points in results.values()):
            continue  # "first reply" with the line protocol, "booted" without the engine
        cells = []
        for points in results.values():
            if point not in points:
                cells.append("")
                continue
            before = [points[p] for p in POINTS[: POINTS.index(point)] if p in points]
            step = points[point] - before[-1] if before else points[point]
            cells.append(f"{points[point]:,.0f} (+{step:,.0f})")
        lines.append(f"| {names.get(point, point)} | " + " | ".join(cells) + " |")
    child = results.get("forking", {})
    reference = child.get("first reply") or child.get("1 connection")
    if reference:  # loadtests.worker_memory's comparison: a worker at its end, a child mid-way
        ratios = ", ".join(
            f"{labels[s]} {list(points.values())[-1] / reference:.2f}x"
            for s, points in results.items() if s != "forking"
        )
        lines.append(f"\nLast step against the forked child's first reply: {ratios}.")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the servers asked for and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto", choices=("http", "line"), default="http")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--json", action="store_true", help="raw figures as JSON")
    args = parser.parse_args(argv)
    servers = worker_memory.servers_arg(parser, args.servers, SERVERS)
    if args.requests < 2 or args.rounds < 1:
        parser.error("--requests must be at least 2 and --rounds at least 1")
    results = {s: measure(s, args.proto, args.requests, args.rounds) for s in servers}
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"{args.proto}: USS of one worker at each step (the parent stopped after each "
          f"fork), median of {args.rounds} rounds")
    print("\n".join(table(results, args.requests)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
