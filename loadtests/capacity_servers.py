"""One-process reference servers for the capacity benchmark (``loadtests.capacity``).

``python -m loadtests.capacity_servers KIND --port PORT``

* ``gevent``: gevent's ``StreamServer`` (after ``monkey.patch_all()``), one greenlet
  per connection, running the benchmark's handler class unchanged
  (:class:`loadtests.bench_servers.LineHandler`, a ``StreamRequestHandler`` echo):
  what the engine's gevent worker class does, without the master and its workers;
* ``asyncio``: ``asyncio.start_server`` with the same echo written as a coroutine
  (an asyncio server cannot run a blocking handler class).

Both listen on 127.0.0.1 with the benchmark's backlog and run until killed.
"""

from __future__ import annotations

import argparse
import sys

BACKLOG = 2048  # as loadtests.bench_servers: the same for every server
MAX_LINE = 65536


def serve_gevent(port: int) -> None:
    """gevent StreamServer running the socketserver handler class, one greenlet each."""
    from gevent import monkey

    monkey.patch_all()  # before anything imports socket, as gevent asks
    from gevent.server import StreamServer

    from loadtests.bench_servers import LineHandler

    class Stub:
        """Stands for socketserver's server argument (the echo handler never uses it)."""

    stub = Stub()

    def handle(sock: object, address: object) -> None:
        try:
            LineHandler(sock, address, stub)  # type: ignore[arg-type]
        finally:
            sock.close()  # type: ignore[attr-defined]

    server = StreamServer(("127.0.0.1", port), handle, backlog=BACKLOG)
    server.serve_forever()


def serve_asyncio(port: int) -> None:
    """asyncio's stream server: the same echo as a coroutine."""
    import asyncio

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                writer.write(line)
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(
            echo, "127.0.0.1", port, backlog=BACKLOG, limit=MAX_LINE
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


KINDS = {"gevent": serve_gevent, "asyncio": serve_asyncio}


def main(argv: list[str] | None = None) -> int:
    """Serve KIND on 127.0.0.1:PORT until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        KINDS[args.kind](args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
