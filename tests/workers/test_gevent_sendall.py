"""SweptSocket.sendall: one plain send for a reply that fits, gevent's sendall for the rest.

Each probe runs in a subprocess with a hub of its own, over gevent socket pairs whose
serving side is made a SweptSocket as the gevent worker makes a plain TCP connection's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.kit.processes import system_command_or_skip

pytest.importorskip("gevent")

SETUP = textwrap.dedent('''
    import array, socket
    import gevent, gevent.socket
    from workers.cooperative import SweptSocket

    def pair():
        ours, theirs = gevent.socket.socketpair()
        ours.__class__ = SweptSocket
        return ours, theirs

    def read_all(sock, size):
        got = bytearray()
        while len(got) < size:
            chunk = sock.recv(65536)
            assert chunk, "the peer closed early"
            got += chunk
        return bytes(got)
''')

BEHAVIOUR = SETUP + textwrap.dedent('''
    # Every kind of data sendall takes arrives whole, in order.
    ints = array.array("i", range(1000))
    for data, wire in [(b"line\\n", b"line\\n"), (bytearray(b"abc"), b"abc"),
                       (memoryview(b"xyz0123")[1:], b"yz0123"), (ints, ints.tobytes()),
                       (b"", b"")]:
        ours, theirs = pair()
        ours.sendall(data)
        ours.close()
        assert theirs.makefile("rb").read() == wire, data
        theirs.close()

    # More than the socket buffers: the rest waits for the reader, in another greenlet.
    ours, theirs = pair()
    big = bytes(range(256)) * (8 * 4096)  # 8 MiB
    reader = gevent.spawn(read_all, theirs, len(big))
    ours.sendall(big)
    assert reader.get(timeout=30) == big
    ours.close(); theirs.close()

    # A socket timeout still bounds a sendall that cannot finish (nobody reads).
    ours, theirs = pair()
    ours.settimeout(0.2)
    try:
        ours.sendall(big)
    except TimeoutError:
        pass
    else:
        raise AssertionError("sendall with nobody reading did not time out")
    ours.close(); theirs.close()

    # A peer that has gone: the error, as from a plain socket.
    ours, theirs = pair()
    theirs.close()
    try:
        ours.sendall(b"anyone?\\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    else:
        raise AssertionError("sendall to a closed peer succeeded")
    print("ok")
''')

REPLIES = 300
SMALL_REPLIES = SETUP + textwrap.dedent(f'''
    ours, theirs = pair()
    for _ in range({REPLIES}):
        ours.sendall(b"x" * 32 + b"\\n")
        assert read_all(theirs, 33) == b"x" * 32 + b"\\n"
    print("ok")
''')


def run_probe(code: str, *prefix: str) -> None:
    out = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "ok", out.stdout


def test_sendall_sends_everything_and_keeps_gevents_waits_and_errors() -> None:
    run_probe(BEHAVIOUR)


def strace_or_skip() -> str:
    """strace, able to trace a child here; skip without it (fail under CI=true when it is
    not installed: tests/system_packages.sh installs it)."""
    path = system_command_or_skip("strace")
    check = subprocess.run([path, "-o", os.devnull, "true"], capture_output=True, timeout=30)
    if check.returncode != 0:
        pytest.skip(f"strace cannot trace here (ptrace refused?): {check.stderr[-200:]!r}")
    return path


def test_a_reply_that_fits_costs_no_getsockopt(tmp_path: Path) -> None:
    # gevent's sendall asks for SO_SNDBUF on every call: 300 replies, 300 getsockopt.
    strace = strace_or_skip()
    trace = tmp_path / "trace"
    run_probe(SMALL_REPLIES, strace, "-f", "-qq", "-e", "trace=getsockopt,sendto",
              "-o", str(trace))
    calls = trace.read_text().splitlines()
    sends = sum("sendto(" in line for line in calls)
    asked = sum("getsockopt(" in line for line in calls)
    assert sends >= REPLIES
    assert asked < 20, f"{asked} getsockopt calls for {REPLIES} replies"
