"""The overhead floor: the smallest prefork server that can serve a socketserver handler.

A parent binds, forks ``workers`` children and waits. Each child loops on a blocking
``accept()`` of the shared listening socket (the kernel wakes one waiter per
connection), runs the request handler class directly and closes the connection. There
is no supervision, no scoreboard, no signal handling, no graceful stop and no error
reporting: whatever a real prefork server does beyond this is overhead, which is what
the benchmark measures against it.

A child that holds a keep-alive connection serves nobody else until the client leaves,
so with 2 children only 2 keep-alive clients are ever served.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable
from typing import Any, NoReturn

HandlerClass = Callable[[socket.socket, Any, Any], Any]


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on *host*:*port* (SO_REUSEADDR, blocking)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def child_loop(sock: socket.socket, handler: HandlerClass, server: Any = None) -> NoReturn:
    """Accept and serve connections forever, in a forked child."""
    accept = sock.accept
    try:
        while True:
            conn, address = accept()
            try:
                handler(conn, address, server)
            except Exception:
                pass  # the floor reports nothing: a broken connection is the client's loss
            finally:
                conn.close()
    finally:
        os._exit(0)


def serve(sock: socket.socket, handler: HandlerClass, workers: int, server: Any = None) -> None:
    """Fork *workers* children that serve *sock* with *handler*; wait for them.

    SIGTERM or SIGINT in the parent kills the children and returns.
    """
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            child_loop(sock, handler, server)
        children.append(pid)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
