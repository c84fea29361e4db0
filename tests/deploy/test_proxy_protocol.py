"""PROXY protocol end to end: ``engine serve --proxy-protocol`` in a subprocess, with a
test client playing the proxy. Headers are built here (text and struct), not with the
engine's parser.

Shows: the handler's ``client_address`` is the one from a v1 header, a v2 IPv4 or IPv6
header (with TLVs), and the real peer for a v2 LOCAL header; the bytes after the header
reach the handler intact; a peer outside --proxy-allow-from is closed before the
handler runs (a marker file the handler writes stays absent) with a log line.
"""

from __future__ import annotations

import ast
import contextlib
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.apps.intake_apps import MARKER_VARIABLE
from tests.kit import CLI, READY, EngineProcess, wait_until

ADDRESS_HANDLER = "tests.apps.intake_apps:AddressHandler"
ONE_WORKER = ["--workers", "1", "--pool-mode", "static"]
SIGNATURE = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"

Start = Callable[..., EngineProcess]


def serve(start: Start, marker: Path, *args: str) -> EngineProcess:
    return start(CLI, args=[
        "serve", ADDRESS_HANDLER, "--bind", "127.0.0.1:0", *ONE_WORKER,
        "--proxy-protocol", *args,
    ], env={**READY, MARKER_VARIABLE: str(marker)})


def v2_proxy(family: int, source: str, source_port: int, tlvs: bytes = b"") -> bytes:
    """A v2 PROXY (command 1) STREAM header from *source* to the matching loopback."""
    af, code, destination = (
        (socket.AF_INET, 0x1, "127.0.0.1") if family == 4 else (socket.AF_INET6, 0x2, "::1")
    )
    block = (
        socket.inet_pton(af, source) + socket.inet_pton(af, destination)
        + struct.pack("!HH", source_port, 8080) + tlvs
    )
    return SIGNATURE + bytes([0x21, (code << 4) | 0x1]) + struct.pack("!H", len(block)) + block


def talk(address: Any, header: bytes, line: bytes = b"hello\n") -> tuple[Any, bytes, Any]:
    """Send *header* + *line*; return (address the handler saw, echo, our own address)."""
    with socket.create_connection(address, timeout=10) as sock, sock.makefile("rb") as replies:
        sock.sendall(header + line)
        seen = replies.readline()
        assert seen, "closed without an answer"
        return ast.literal_eval(seen.decode()), replies.readline(), sock.getsockname()


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "handler-ran"


def test_handler_sees_the_address_from_v1_and_v2_headers(
    engine_proc: Start, marker: Path
) -> None:
    engine = serve(engine_proc, marker)
    v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 80\r\n"
    assert talk(engine.address, v1)[:2] == (("203.0.113.7", 40000), b"hello\n")
    v1_6 = b"PROXY TCP6 2001:db8:0:0:0:0:0:9 ::1 40002 80\r\n"
    assert talk(engine.address, v1_6)[:2] == (("2001:db8::9", 40002, 0, 0), b"hello\n")
    tlvs = struct.pack("!BH", 0x05, 4) + b"uid1"  # PP2_TYPE_UNIQUE_ID, skipped
    assert talk(engine.address, v2_proxy(4, "198.51.100.2", 40001, tlvs))[:2] == (
        ("198.51.100.2", 40001), b"hello\n"
    )
    assert talk(engine.address, v2_proxy(6, "2001:db8::7", 40003))[:2] == (
        ("2001:db8::7", 40003, 0, 0), b"hello\n"
    )
    # Payload that looks like a header is the handler's, untouched.
    line = b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n"
    assert talk(engine.address, v1, line)[1] == line
    assert marker.read_text().count("\n") == 5  # every connection reached the handler


def test_v2_local_keeps_the_real_peer(engine_proc: Start, marker: Path) -> None:
    engine = serve(engine_proc, marker)
    local = SIGNATURE + b"\x20\x00\x00\x00"  # the proxy's own health check
    seen, echo, ours = talk(engine.address, local)
    assert seen == ours and echo == b"hello\n"


def test_untrusted_peer_never_reaches_the_handler(engine_proc: Start, marker: Path) -> None:
    engine = serve(engine_proc, marker, "--proxy-allow-from", "10.0.0.0/8")
    with socket.create_connection(engine.address, timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 80\r\nhello\n")
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""  # closed, not a byte of an answer
    wait_until(
        lambda: "PROXY header from a peer not in proxy_allow_from" in engine.log(), 10,
        "the refusal's log line",
    )
    line = next(x for x in engine.log().splitlines() if "proxy_allow_from" in x)
    assert "WARNING" in line and "127.0.0.1:" in line
    assert not marker.exists()


def test_malformed_header_is_closed_and_logged(engine_proc: Start, marker: Path) -> None:
    engine = serve(engine_proc, marker)
    with socket.create_connection(engine.address, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")  # a client that bypassed the proxy
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""
    wait_until(lambda: "bad PROXY header" in engine.log(), 10, "the log line")
    assert not marker.exists()
