"""Locust load test of the engine demo service (its newline-terminated line protocol).

Run it through :mod:`loadtests.run_locust`, which starts the engine and checks the
results; by hand it is::

    locust -f loadtests/locustfile.py --headless --host tcp://127.0.0.1:8000 -u 32 -r 32

Each simulated user runs three kinds of task, each reported to locust as a ``TCP``
request under its own name:

* ``short``: connect, ``PING``, expect ``PONG``, close (one connection per request);
* ``keepalive``: one persistent connection per user carrying ``PING`` and echo
  exchanges for the whole run (reconnected after any error);
* ``slow``: connect, send an echo line in small pieces with pauses in between (a slow
  client holding a worker), expect the line back, close.

Every socket operation has a timeout (``LOCUST_TCP_TIMEOUT`` seconds, default 10), and
any wrong reply counts as a failure. Locust imports gevent and monkeypatches the
standard library, so the plain ``socket`` module used here is cooperative.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Callable

import gevent
from locust import User, between, events, stats, task
from locust.env import Environment

# Seconds allowed for each connect, send or receive.
TIMEOUT = float(os.environ.get("LOCUST_TCP_TIMEOUT", "10"))
# The demo answers lines up to 64 KiB; a longer reply is a protocol error here.
MAX_REPLY = 64 * 1024 + 1
# The slow task: how many pieces its line is sent in, and the pause between pieces.
SLOW_PIECES = 4
SLOW_PAUSE = 0.02

_user_ids = itertools.count(1)


class ProtocolError(Exception):
    """The server answered something other than what the protocol says."""


def parse_host(host: str | None) -> tuple[str, int]:
    """``tcp://HOST:PORT``, ``HOST:PORT`` or ``[IPV6]:PORT`` → ``(host, port)``.

    Raises:
        ValueError: no host given, or it has no port.
    """
    if not host:
        raise ValueError("no host: pass --host tcp://127.0.0.1:PORT")
    text = host.removeprefix("tcp://").rstrip("/")
    name, sep, port = text.rpartition(":")
    if not sep or not name or not port.isdigit():
        raise ValueError(f"host {host!r} is not tcp://HOST:PORT")
    return name.strip("[]"), int(port)


class LineClient:
    """A blocking TCP client of a newline-terminated line protocol, with timeouts."""

    def __init__(self, address: tuple[str, int], timeout: float = TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buffer = bytearray()

    def connect(self) -> None:
        """Open the connection (``connect`` and every later operation time out)."""
        self.sock = socket.create_connection(self.address, timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer.clear()

    def close(self) -> None:
        """Close the connection, if open."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._buffer.clear()

    def _socket(self) -> socket.socket:
        if self.sock is None:
            raise ConnectionError("not connected")
        return self.sock

    def send(self, data: bytes) -> None:
        """Send all of *data*."""
        self._socket().sendall(data)

    def send_slowly(self, data: bytes, pieces: int, pause: float) -> None:
        """Send *data* in *pieces* parts, sleeping *pause* seconds between parts."""
        sock = self._socket()
        size = max(1, -(-len(data) // pieces))  # ceiling division
        for start in range(0, len(data), size):
            if start:
                time.sleep(pause)  # gevent-patched: yields to other users
            sock.sendall(data[start:start + size])

    def read_line(self) -> bytes:
        """Receive one line, newline included, within :attr:`timeout` in total.

        Raises:
            ConnectionError: the server closed the connection before a full line.
            TimeoutError: no full line within the timeout.
            ProtocolError: the line is longer than any reply of the protocol.
        """
        sock = self._socket()
        deadline = time.monotonic() + self.timeout
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > MAX_REPLY:
                raise ProtocolError(f"reply longer than {MAX_REPLY} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete line within {self.timeout}s")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(
                    f"server closed the connection (partial reply {bytes(self._buffer)!r})"
                )
            self._buffer += chunk
        sock.settimeout(self.timeout)
        line = bytes(self._buffer[:end + 1])
        del self._buffer[:end + 1]
        return line


def expect(reply: bytes, expected: bytes) -> None:
    """Raise :class:`ProtocolError` unless *reply* is *expected*."""
    if reply != expected:
        raise ProtocolError(f"expected {expected!r}, got {reply!r}")


def _let_the_csv_writer_catch_up(environment: Environment, **kwargs: object) -> None:
    """Make the ``--csv`` statistics final.

    Locust rewrites ``_stats.csv`` only every ``CSV_STATS_INTERVAL_SEC`` from a
    background greenlet and does not write it once more at exit, so without this
    the file misses the last second of requests (locust issues #1806, #2299),
    failures included. ``quitting`` fires after every user has stopped: waiting one
    interval lets the writer record the final figures before locust closes the files.
    """
    options = environment.parsed_options
    if options is not None and getattr(options, "csv_prefix", None):
        gevent.sleep(stats.CSV_STATS_INTERVAL_SEC + 0.25)


events.quitting.add_listener(_let_the_csv_writer_catch_up)


class DemoUser(User):
    """A client of the demo service mixing short, keep-alive and slow connections."""

    wait_time = between(0.01, 0.05)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.address = parse_host(self.host)
        self.user_id = next(_user_ids)
        self.sent = itertools.count(1)  # numbers the lines this user sends
        self.exchanges = itertools.count(1)  # keep-alive exchanges: odd echo, even PING
        self.connection: LineClient | None = None

    def on_stop(self) -> None:
        """Close the persistent connection."""
        self._drop_connection()

    def _drop_connection(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def _measure(self, name: str, exchange: Callable[[], int]) -> None:
        """Run *exchange* (which returns the bytes received) and report it to locust."""
        start = time.perf_counter()
        length = 0
        error: Exception | None = None
        try:
            length = exchange()
        except Exception as exc:  # every failure is a result of the load test
            error = exc
        self.environment.events.request.fire(
            request_type="TCP",
            name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length,
            exception=error,
            context={},
        )
        if error is not None and name == "keepalive":
            self._drop_connection()  # reconnect at the next keepalive task

    @task(3)
    def short(self) -> None:
        """A connection per request: connect, PING, PONG, close."""

        def exchange() -> int:
            client = LineClient(self.address)
            try:
                client.connect()
                client.send(b"PING\n")
                reply = client.read_line()
                expect(reply, b"PONG\n")
                return len(reply)
            finally:
                client.close()

        self._measure("short", exchange)

    @task(3)
    def keepalive(self) -> None:
        """One exchange (PING or an echo, in turn) on this user's persistent connection."""

        def exchange() -> int:
            if self.connection is None:
                client = LineClient(self.address)
                client.connect()
                self.connection = client
            number = next(self.sent)
            if next(self.exchanges) % 2:
                request = response = f"echo user={self.user_id} n={number}\n".encode()
            else:
                request, response = b"PING\n", b"PONG\n"
            self.connection.send(request)
            reply = self.connection.read_line()
            expect(reply, response)
            return len(reply)

        self._measure("keepalive", exchange)

    @task(1)
    def slow(self) -> None:
        """A slow client: its line arrives in pieces, with pauses in between."""

        def exchange() -> int:
            line = f"slow user={self.user_id} n={next(self.sent)}\n".encode()
            client = LineClient(self.address)
            try:
                client.connect()
                client.send_slowly(line, SLOW_PIECES, SLOW_PAUSE)
                reply = client.read_line()
                expect(reply, line)
                return len(reply)
            finally:
                client.close()

        self._measure("slow", exchange)
