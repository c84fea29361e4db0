"""Handlers for the deployment tests: they tell who served the connection."""

from __future__ import annotations

import os

from engine.classic import StreamRequestHandler


class WhoAmI(StreamRequestHandler):
    """Answers each line with ``pid uid gid master_pid client_address line``."""

    def handle(self) -> None:
        for line in self.rfile:
            answer = f"{os.getpid()} {os.getuid()} {os.getgid()} {os.getppid()} "
            self.wfile.write(answer.encode() + repr(self.client_address).encode() + b" " + line)
