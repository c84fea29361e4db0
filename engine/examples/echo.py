"""Echo handlers: the smallest useful services, used by tests and load tests.

``EchoHandler`` sends every line back as it arrives, until the client closes;
``EchoDatagramHandler`` sends every datagram back to its sender::

    engine serve engine.examples.echo:EchoHandler --bind 127.0.0.1:9000
    engine serve engine.examples.echo:EchoDatagramHandler --udp --bind 127.0.0.1:9000
"""

from __future__ import annotations

from engine.classic import DatagramRequestHandler, StreamRequestHandler


class EchoHandler(StreamRequestHandler):
    """Echo each line (bytes up to and including ``\\n``) back to the client."""

    def handle(self) -> None:
        """Copy lines from the client back to it until it closes its side."""
        # readline (not read(n)) so an interactive client sees each line answered.
        for line in self.rfile:
            self.wfile.write(line)


class EchoDatagramHandler(DatagramRequestHandler):
    """Send each datagram back to its sender, unchanged."""

    def handle(self) -> None:
        """Copy the packet into the reply; ``finish()`` sends it."""
        self.wfile.write(self.rfile.read())
