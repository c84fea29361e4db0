"""The servers the benchmark launches, one per process (``python -m loadtests.bench_servers``).

Every server serves the *same* handler class on 127.0.0.1:PORT:

* ``line`` protocol: :class:`LineHandler`, a ``StreamRequestHandler`` that echoes each
  request line until EOF (so one connection carries one request or many);
* ``http`` protocol: :class:`HelloHandler`, an ``http.server`` handler answering GET with
  a 14-byte body (HTTP/1.1: keep-alive unless the client says ``Connection: close``),
  and, for gunicorn, :func:`wsgi_app`, the equivalent WSGI application.

Kinds: ``engine`` (``PreforkTCPServer``), ``floor`` (the hand-written prefork loop of
:mod:`loadtests.floor`), ``forking`` (stdlib ``ForkingTCPServer``) and ``threading``
(stdlib ``ThreadingTCPServer``). Every one listens with the same backlog (2048, the
engine's default; the stdlib's default of 5 would drop SYNs under 32 clients and
measure TCP retransmission timers instead of servers).

Usage::

    python -m loadtests.bench_servers KIND --port PORT [--proto line|http]
        [--workers N] [--pool-mode static|dynamic|ondemand] [--ksm]
"""

from __future__ import annotations

import argparse
import http.server
import signal
import socketserver
import sys
from collections.abc import Callable, Iterable
from typing import Any

BACKLOG = 2048
MAX_LINE = 65536
BODY = b"Hello, world!\n"
KINDS = ("engine", "floor", "forking", "threading")


class LineHandler(socketserver.StreamRequestHandler):
    """Line protocol: reply to each request line with the same line, until EOF."""

    def handle(self) -> None:
        """Echo lines until the client closes."""
        readline = self.rfile.readline
        write = self.wfile.write
        while True:
            line = readline(MAX_LINE)
            if not line:
                return
            write(line)


class HelloHandler(http.server.BaseHTTPRequestHandler):
    """HTTP: GET answers 200 with :data:`BODY`; no access log (gunicorn's default).

    ``wbufsize = -1`` buffers the response, which ``handle_one_request`` flushes once:
    headers and body leave in one segment. With the default unbuffered ``wfile`` they
    are two writes, and on a keep-alive connection Nagle's algorithm holds the second
    until the client's delayed ACK (about 40 ms on Linux) for every request.
    """

    protocol_version = "HTTP/1.1"
    wbufsize = -1

    def do_GET(self) -> None:
        """Answer with a short text body."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log."""


def wsgi_app(
    environ: dict[str, Any], start_response: Callable[[str, list[tuple[str, str]]], Any]
) -> Iterable[bytes]:
    """The WSGI equivalent of :class:`HelloHandler`, for gunicorn."""
    start_response(
        "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]
    )
    return [BODY]


HANDLERS: dict[str, type[socketserver.BaseRequestHandler]] = {
    "line": LineHandler,
    "http": HelloHandler,
}


class StdForking(socketserver.ForkingTCPServer):
    """stdlib ForkingTCPServer with the benchmark's backlog."""

    allow_reuse_address = True
    request_queue_size = BACKLOG


class StdThreading(socketserver.ThreadingTCPServer):
    """stdlib ThreadingTCPServer with the benchmark's backlog."""

    allow_reuse_address = True
    request_queue_size = BACKLOG
    daemon_threads = True


def run_engine(port: int, handler: type[socketserver.BaseRequestHandler], args: Any) -> None:
    """PreforkTCPServer with ``workers``, ``pool_mode`` and ``worker_class`` from the
    command line."""
    from engine import PreforkTCPServer

    attrs: dict[str, Any] = {
        "allow_reuse_address": True,
        "request_queue_size": BACKLOG,
        "workers": args.workers,
        "pool_mode": args.pool_mode,
        "worker_class": args.worker_class,
    }
    if args.max_children is not None:
        attrs["max_children"] = args.max_children
    if args.ksm:
        attrs["ksm"] = True
    server_class = type("BenchPreforkServer", (PreforkTCPServer,), attrs)
    with server_class(("127.0.0.1", port), handler) as server:
        server.serve_forever()


def run_floor(port: int, handler: type[socketserver.BaseRequestHandler], args: Any) -> None:
    """The hand-written prefork loop."""
    from loadtests import floor

    sock = floor.bind("127.0.0.1", port, BACKLOG)
    floor.serve(sock, handler, args.workers)


def run_stdlib(
    server_class: type[socketserver.TCPServer],
    port: int,
    handler: type[socketserver.BaseRequestHandler],
) -> None:
    """A stdlib server until SIGTERM."""
    with server_class(("127.0.0.1", port), handler) as server:
        server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--proto", choices=sorted(HANDLERS), default="line")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool-mode", default="dynamic")
    parser.add_argument("--max-children", type=int, default=None)
    parser.add_argument("--worker-class", choices=("sync", "gevent"), default="sync")
    parser.add_argument("--ksm", action="store_true", help="engine: ksm = true")
    args = parser.parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    # The stdlib servers and the floor stop on SIGTERM; the engine installs its own.
    signal.signal(signal.SIGTERM, on_term)
    handler = HANDLERS[args.proto]
    try:
        if args.kind == "engine":
            run_engine(args.port, handler, args)
        elif args.kind == "floor":
            run_floor(args.port, handler, args)
        elif args.kind == "forking":
            run_stdlib(StdForking, args.port, handler)
        else:
            run_stdlib(StdThreading, args.port, handler)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
