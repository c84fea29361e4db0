"""A dynamic pool grows for I/O-bound load, not for CPU-bound load it cannot speed up."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

from tests.apps.prefork_apps import program
from tests.kit import EngineProcess, LoadGen, PoolWatcher, wait_until
from tests.kit import exchange as tcp_exchange
from tests.kit.procfs import cpu_and_wakeups

CPUS = len(os.sched_getaffinity(0))
WINDOW = 2.0  # seconds the master's CPU is watched under load

# Each request burns ~15 ms of CPU ("BURN") or sleeps as long ("SLEEP" in PidEcho).
BURN_HANDLER = '''
class Burn(StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            end = time.process_time() + 0.015
            while time.process_time() < end:
                pass
            self.wfile.write(b"%d %s" % (os.getpid(), line))
'''


def load(address: object, payload: bytes, clients: int, seconds: float,
         enough: Callable[[], bool] = lambda: False) -> int:
    """*clients* threads sending requests back to back for *seconds* (or until *enough*
    says so); return failures."""
    failures = []
    deadline = time.monotonic() + seconds

    def client() -> None:
        for _ in range(10_000):  # bounded in count as well as in time
            if time.monotonic() > deadline or enough():
                return
            try:
                tcp_exchange(address, payload)
            except OSError as exc:
                failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return len(failures)


def pool_peak(engine_proc: Callable[..., EngineProcess], handler: str, payload: bytes,
              before: str = "", stop_at: int | None = None) -> int:
    """The most children seen during 3 s of load (or until there were *stop_at*)."""
    engine = engine_proc(program(
        handler=handler, before=before,
        attrs=f"workers = {CPUS}\nmax_children = 40\nmin_spare = 2\nmax_spare = 40",
    ))
    with PoolWatcher(engine, interval=0) as watch:
        def enough() -> bool:
            return stop_at is not None and watch.peak_children >= stop_at

        assert load(engine.address, payload, clients=16, seconds=3.0, enough=enough) == 0
    return watch.peak_children


def test_cpu_bound_load_does_not_fork_past_what_the_cpus_can_run(engine_proc) -> None:
    peak = pool_peak(engine_proc, "Burn", b"x\n", before=BURN_HANDLER + "import time\n")
    # Without the saturation check this climbs towards 16 clients + 2 spares.
    assert peak <= CPUS + 6, peak


def test_io_bound_load_still_grows_the_pool(engine_proc) -> None:
    peak = pool_peak(engine_proc, "PidEcho", b"SLEEP 0.015\n", stop_at=12)
    assert peak >= 12, peak


def test_cpu_bound_keepalive_clients_still_get_a_worker_each(engine_proc) -> None:
    """Long connections hold their workers: waiting ones need new workers, CPU or not."""
    engine = engine_proc(program(
        handler="Burn", before=BURN_HANDLER + "import time\n",
        attrs=f"workers = {CPUS}\nmax_children = 40\nmin_spare = 1\nmax_spare = 40",
    ))
    served: set[int] = set()
    stop = threading.Event()

    def keepalive_client(index: int) -> None:
        with socket.create_connection(engine.address, timeout=20) as sock, \
                sock.makefile("rb") as replies:
            for _ in range(2_000):  # bounded; the test stops it much sooner
                if stop.is_set():
                    return
                sock.sendall(b"x\n")
                if not replies.readline():
                    return
                served.add(index)

    threads = [threading.Thread(target=keepalive_client, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(served) == 12, 20, "every keep-alive client answered")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def test_master_does_not_spin_while_growth_is_held(engine_proc) -> None:
    """Every worker busy, connections queued, growth held for a CPU-bound load: a
    queued connection cannot lead to a fork, so it must not wake the master (it would
    poll the readable listener in a loop, taking CPU from the workers)."""
    engine = engine_proc(program(
        handler="Burn", before=BURN_HANDLER + "import time\n",
        attrs=f"workers = {CPUS}\nmax_children = 40\nmin_spare = 2\nmax_spare = 40",
    ))
    with LoadGen(engine.address, clients=16, max_seconds=30.0, request=b"x\n",
                 reply=None) as loaded:
        # Past the first second of load: the growth the gate allows is over by then.
        wait_until(lambda: loaded.ok >= 200, 20, "the CPU-bound load under way")
        cpu, _ = cpu_and_wakeups(engine.pid, WINDOW)
        share = cpu / WINDOW  # of one CPU
        stats = loaded.stop()
    assert stats.failed == 0, stats.failures.most_common(3)
    # Ten short ticks a second cost ~1-2% of a CPU; a polling loop costs a CPU's share.
    assert share < 0.05, f"the master used {share:.0%} of a CPU under a held load"
