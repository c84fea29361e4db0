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
