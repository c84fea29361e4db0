"""A full garbage collection in the master leaves its workers' memory alone.

The master freezes (``gc.freeze()``) what it holds at its first fork, for good, so its
own collections never walk those objects, which every worker shares copy-on-write. It
used to unfreeze after each fork: its next full collection then wrote the header of
every object, the kernel copied each page it wrote, and the workers were left with the
old copies as private memory (a lone worker went from 2.4 to 8.4 MiB of USS;
``docs/benchmarks.md``). The master here collects when SIGUSR1 calls its
``reopen_logs`` hook (the worker runs the same hook and collects too: that walks only
its own objects).
"""

from __future__ import annotations

import os
import signal

import psutil

from tests.apps.prefork_apps import program
from tests.kit import exchange, wait_until

ATTRS = '''
workers = 1
pool_mode = 'static'
health_interval = 3600
def reopen_logs(self):
    import gc
    gc.collect()
    print("COLLECTED", os.getpid(), file=sys.stderr, flush=True)
'''
MIB = 1 << 20


def test_a_full_collection_in_the_master_copies_no_worker_page(engine_proc) -> None:
    engine = engine_proc(program(attrs=ATTRS))
    (worker,) = wait_until(lambda: engine.workers(), 10, "the worker")
    exchange(engine.address, b"hello\n")  # booted and serving
    before = worker.memory_full_info().uss
    os.kill(engine.master, signal.SIGUSR1)
    wait_until(lambda: f"COLLECTED {engine.master}" in engine.log(), 10, "the master's gc")
    exchange(engine.address, b"hello\n")
    grown = worker.memory_full_info().uss - before
    assert grown < 1 * MIB, f"the worker's USS grew by {grown / MIB:.2f} MiB"


BATCH = 4
KIB = 1 << 10


def test_the_workers_of_one_batch_start_with_the_same_memory(engine_proc) -> None:
    """A page the master writes between two forks stays, in its old version, with the
    workers forked before: their private copy from then on. The master forks a batch
    back to back and logs, runs hooks and allocates only after the last fork, so the
    first worker of a batch costs what the last one does (they differed by 200 KiB)."""
    engine = engine_proc(program(attrs=f"""
workers = {BATCH}
pool_mode = 'static'
health_interval = 3600
def worker_spawned(self, slot, pid):
    logging.getLogger('test').info('worker %d spawned as %d', slot, pid)
"""))
    pids = engine.wait_workers(BATCH)
    uss: dict[int, int] = {}

    def settled() -> bool:  # booted and waiting: the same USS twice in a row
        nonlocal uss
        before, uss = uss, {pid: psutil.Process(pid).memory_full_info().uss for pid in pids}
        return uss == before

    wait_until(settled, 10, "the workers' memory to settle")
    spread = max(uss.values()) - min(uss.values())
    shown = ", ".join(f"{pid}: {size // KIB} KiB" for pid, size in sorted(uss.items()))
    assert spread < 48 * KIB, f"idle workers of one batch differ by {spread // KIB} KiB ({shown})"
