"""Handlers the reliability scenarios serve with ``engine serve MODULE:CLASS``.

* :class:`UntimedDemoHandler`: the demo protocol without the demo's own 30 s read
  timeout, so the engine's ``--client-timeout`` is what bounds an idle connection
  (a handler's own ``timeout`` attribute overrides the setting).
* :class:`StrictLineHandler`: a strict line protocol that does *not* forgive its
  clients: every failure (a reset, garbage, an over-long line, a client that never
  reads and so makes a write time out) propagates out of ``handle()``, so the
  server's ``handle_error`` reports it, once per connection. A line is a decimal
  integer N, answered with N+1; ``FLOOD <bytes>`` answers that many bytes.
"""

from __future__ import annotations

from engine.classic import StreamRequestHandler
from engine.examples.demo import DemoHandler

STRICT_MAX_LINE = 1024
STRICT_TIMEOUT = 1.0
MAX_FLOOD = 64 * 1024 * 1024


class UntimedDemoHandler(DemoHandler):
    """The demo protocol; idle connections are bounded by ``--client-timeout`` only."""

    timeout = None  # type: ignore[assignment]  # DemoHandler's is an int


class StrictLineHandler(StreamRequestHandler):
    """Answer N+1 to each line N; any bad input or client raises out of ``handle``."""

    timeout = STRICT_TIMEOUT

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(STRICT_MAX_LINE + 1)
            if not line:
                return  # a clean EOF (a half-close included) is not an error
            if len(line) > STRICT_MAX_LINE or not line.endswith(b"\n"):
                raise ValueError(f"line too long or unterminated: {len(line)} bytes")
            words = line.split()
            if len(words) == 2 and words[0] == b"FLOOD":
                size = int(words[1])
                if not 0 <= size <= MAX_FLOOD:
                    raise ValueError(f"FLOOD size {size} out of range")
                self.wfile.write(b"x" * size)
                continue
            number = int(line.decode("ascii").strip())  # ValueError on garbage
            self.wfile.write(b"%d\n" % (number + 1))
