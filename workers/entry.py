"""A freshly forked worker's entry point: pick the worker class, run it, never return.

Kept apart from :mod:`workers.worker` so that the gevent class
(:mod:`workers.cooperative`, which subclasses the sync worker) is imported only here,
and only in a worker that runs it: no import cycle, and a sync worker never loads gevent.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from typing import NoReturn

from workers.protocol import ExitCode, ServerLike
from workers.scoreboard import Scoreboard
from workers.worker import Worker, WorkerSpec, exit_status


def run_worker(server: ServerLike, scoreboard: Scoreboard, spec: WorkerSpec) -> NoReturn:
    """Run a worker in a freshly forked child. Never returns."""
    status: int = ExitCode.ERROR
    try:
        worker_type: type[Worker] = Worker
        if spec.worker_class == "gevent":
            # Importing gevent takes tens of ms: claim the slot first, or the master
            # reads it EMPTY meanwhile and a dynamic pool forks more workers.
            scoreboard.worker_started(spec.slot, os.getpid(), time.monotonic())
            try:
                from workers.cooperative import GeventWorker
            except Exception:
                traceback.print_exc()
                raise SystemExit(ExitCode.BOOT_FAILED) from None
            worker_type = GeventWorker
        status = worker_type(server, scoreboard, spec).run()
    except SystemExit as exc:
        status = exit_status(exc)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(int(status))
