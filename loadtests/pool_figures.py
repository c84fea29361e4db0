"""Figures for the prefork pool: replacement time, idle master CPU, worker USS.

    python -m loadtests.pool_figures [--kills 20] [--idle-seconds 10]

Starts real engines on 127.0.0.1 (each in its own session, killed by process group
at the end) and prints one line per figure. Bounded: a few seconds per figure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from tests.kit.processes import kill_group

ROOT = Path(__file__).resolve().parent.parent

SERVER = textwrap.dedent(
    """
    import os, sys
    import engine

    # A master that holds many Python objects, as a real application would.
    BALLAST = [{{"key": str(i), "value": [i, i * 2]}} for i in range({ballast})]

    class Handler(engine.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                garbage = [[n] for n in range(2000)]  # make the worker's GC run
                self.wfile.write(line)

    class Server(engine.PreforkTCPServer):
        workers = {workers}
        pool_mode = "static"
        gc_freeze = {gc_freeze}

    with Server(("127.0.0.1", 0), Handler) as server:
        print("READY", server.server_address[1], flush=True)
        server.serve_forever()
    """
)


@contextlib.contextmanager
def engine(workers: int, gc_freeze: bool = True, ballast: int = 0) -> Iterator[tuple[int, int]]:
    """Run an engine; yield (master pid, port); kill its process group afterwards."""
    code = SERVER.format(workers=workers, gc_freeze=gc_freeze, ballast=ballast)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if not line or line[0] != b"READY":
            raise RuntimeError("engine did not start")
        yield proc.pid, int(line[1])
    finally:
        kill_group(proc.pid, proc, grace=10)
        if proc.stdout is not None:
            proc.stdout.close()


def live_workers(master: int) -> set[int]:
    pids = set()
    for child in psutil.Process(master).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.add(child.pid)
    return pids


def wait_for(predicate, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.0005)
    raise TimeoutError


def request(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"x\n")
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(100):
            pass


def replacement_times(kills: int) -> list[float]:
    """Time from SIGKILL of a worker to its replacement serving (ms)."""
    times = []
    with engine(workers=4) as (master, port):
        wait_for(lambda: len(live_workers(master)) == 4)
        for _ in range(kills):
            before = live_workers(master)
            victim = min(before)
            start = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            new = wait_for(lambda b=before: live_workers(master) - b)
            # Served: the new worker's title is set once it is set up; wait for it.
            pid = next(iter(new))
            wait_for(lambda p=pid: "engine: worker" in " ".join(psutil.Process(p).cmdline()))
            times.append((time.monotonic() - start) * 1000)
            request(port)
    return times


def idle_master_cpu(seconds: float) -> float:
    """CPU seconds the master used per wall second while idle (as a percentage)."""
    with engine(workers=2) as (master, _port):
        wait_for(lambda: len(live_workers(master)) == 2)
        time.sleep(1.0)  # let start-up settle before measuring
        proc = psutil.Process(master)
        before = proc.cpu_times()
        time.sleep(seconds)
        after = proc.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return 100.0 * used / seconds


def worker_uss(gc_freeze: bool, requests: int = 300) -> float:
    """Mean USS of 2 workers (MiB) after load, in a master holding 300k objects."""
    with engine(workers=2, gc_freeze=gc_freeze, ballast=100_000) as (master, port):
        workers = wait_for(lambda: len(live_workers(master)) == 2 and live_workers(master))
        for _ in range(requests):
            request(port)
        uss = [psutil.Process(pid).memory_full_info().uss for pid in workers]
    return statistics.mean(uss) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    times = replacement_times(args.kills)
    median, worst = statistics.median(times), max(times)
    print(
        f"worker replacement (kill -9 -> new worker set up): median {median:.1f} ms, "
        f"max {worst:.1f} ms over {len(times)} kills"
    )
    idle = idle_master_cpu(args.idle_seconds)
    print(f"idle master CPU: {idle:.3f}% over {args.idle_seconds:g} s")
    frozen, thawed = worker_uss(True), worker_uss(False)
    print(f"worker USS after load: {frozen:.1f} MiB with gc.freeze(), {thawed:.1f} MiB without")


if __name__ == "__main__":
    main()
