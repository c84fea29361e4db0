"""Stop points inside the benchmark's servers, for :mod:`loadtests.worker_phases`.

    python -m loadtests.phase_points REQUESTS -- BENCH_SERVERS_ARGS...

With ``PHASE_POINTS_IMPORT_ENGINE=1`` in the environment, the engine is imported before
the server starts, whatever the server (how much a larger parent alone costs a child).

Kept apart from the measuring side, and importing nothing beyond what the benchmark's
servers import, so that the processes measured are the benchmark's own.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any


def _stop_here() -> None:
    os.kill(os.getpid(), signal.SIGSTOP)


def _install_stop_points(requests: int, engine: bool) -> None:
    """Stop after each fork (both sides), at worker_init, after the first reply (HTTP),
    after connections 1 and N."""
    from loadtests import bench_servers

    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        _stop_here()  # the child: "forked"; the parent: out of the way until the end
        return pid

    os.fork = fork
    served = 0

    def counted(handler: type[Any]) -> type[Any]:
        class Counted(handler):
            def finish(self) -> None:
                nonlocal served
                super().finish()
                served += 1
                if served in (1, requests):
                    _stop_here()  # "1 connection", "N connections"

        if hasattr(handler, "handle_one_request"):  # HTTP: the first reply, sent

            def handle_one_request(self: Any) -> None:
                handler.handle_one_request(self)
                if served == 0:
                    _stop_here()  # "first reply"

            Counted.handle_one_request = handle_one_request
        return Counted

    bench_servers.HANDLERS = {k: counted(h) for k, h in bench_servers.HANDLERS.items()}
    if not engine:
        return  # the other servers do not load the engine: leave their memory alone
    from engine import PreforkTCPServer

    PreforkTCPServer.worker_init = lambda self: _stop_here()  # type: ignore[method-assign]


def serve(argv: Sequence[str], requests: int) -> int:
    """Run ``loadtests.bench_servers`` with the stop points installed."""
    if os.environ.get("PHASE_POINTS_IMPORT_ENGINE"):
        import engine  # noqa: F401  (the floor with the engine's modules loaded, unused)
    _install_stop_points(requests, engine=argv[0] == "engine")
    from loadtests import bench_servers

    return bench_servers.main(list(argv))


if __name__ == "__main__":
    sys.exit(serve(sys.argv[3:], int(sys.argv[1])))
