"""engine ships type hints (``py.typed``): code written against it type-checks.

Runs mypy (a test dependency) on a small user program; skipped when mypy is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

USER_PROGRAM = """
from __future__ import annotations

import socket

import engine


class Echo(engine.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class Reply(engine.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.packet)


# __enter__ returns the server's own type, so transport attributes stay visible.
with engine.TCPServer(("127.0.0.1", 0), Echo) as tcp:
    sock: socket.socket = tcp.socket
    port: int = tcp.server_address[1]
    tcp.handle_request()

with engine.ThreadingTCPServer(("127.0.0.1", 0), Echo) as threading_server:
    daemon: bool = threading_server.daemon_threads
    threading_server.socket.close()

with engine.UDPServer(("127.0.0.1", 0), Reply) as udp:
    size: int = udp.max_packet_size


def serve(server: engine.BaseServer) -> None:
    server.serve_forever(poll_interval=0.1)
    server.shutdown()
"""


def test_user_code_type_checks_against_engine(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e .[test])")
    program = tmp_path / "user_program.py"
    program.write_text(textwrap.dedent(USER_PROGRAM))
    env = dict(os.environ)
    env["MYPYPATH"] = str(ROOT)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-incremental",
            "--cache-dir",
            os.devnull,
            "--follow-imports=silent",  # engine's own type-check is not this test's subject
            "--disallow-untyped-defs",
            "--warn-unused-ignores",
            str(program),
        ],
        cwd=tmp_path,  # keep the project's mypy configuration out of it
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
