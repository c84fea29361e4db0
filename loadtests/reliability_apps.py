"""Handlers the reliability scenarios serve with ``engine serve MODULE:CLASS``.

* :class:`UntimedDemoHandler`: the demo protocol without the demo's own 30 s read
  timeout, so the engine's ``--client-timeout`` is what bounds an idle connection
  (a handler's own ``timeout`` attribute overrides the setting). In the sync worker on
  TCP that timeout is the kernel's, and a read it ends returns the unfinished line (see
  docs/tls-and-proxy.md#client_timeout): this handler ends, as on a timeout, on a line
  without its newline, or a client dripping a byte every few seconds would keep its
  thread.
* :class:`StrictLineHandler`: a strict line protocol that does *not* forgive its
  clients: every failure (a reset, garbage, an over-long line, a client that never
  reads and so makes a write time out) propagates out of ``handle()``, so the
  server's ``handle_error`` reports it, once per connection. A line is a decimal
  integer N, answered with N+1; ``FLOOD <bytes>`` answers that many bytes.
* :class:`FaultHandler`, with the fault switches below: the fault scenarios' handler
  (exits on request, failures to report, workers that die or hang at boot, and a
  master whose process limit can be lowered from outside).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time

from engine.classic import StreamRequestHandler
from engine.examples.demo import DemoHandler

STRICT_MAX_LINE = 1024
STRICT_TIMEOUT = 1.0
MAX_FLOOD = 64 * 1024 * 1024


class UntimedDemoHandler(DemoHandler):
    """The demo protocol; idle connections are bounded by ``--client-timeout`` only."""

    timeout = None  # type: ignore[assignment]  # DemoHandler's is an int

    def respond(self, line: bytes) -> tuple[bytes, bool]:
        if not line.endswith(b"\n"):  # the kernel's client_timeout (or EOF) cut it short
            raise TimeoutError("unfinished line")  # handle() ends quietly, as on a timeout
        return super().respond(line)


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


# --------------------------------------------------------------------------- faults
#
# The fault scenarios configure these through the environment, which `engine serve`
# passes on to its workers and to a new master after SIGUSR2.

FAULT_MARKER = "RELIABILITY_FAULT_MARKER"  # a path: while the file exists, the fault is on
SLOW_BOOT_MARKER = "RELIABILITY_SLOW_BOOT_MARKER"  # a path: see _slow_boot
NPROC_FIFO = "RELIABILITY_NPROC_FIFO"  # a FIFO: lines set the master's RLIMIT_NPROC


class FaultHandler(StreamRequestHandler):
    """One line per connection, answered, then maybe a fault.

    ``PING`` → ``PONG``; ``FAIL`` → ``FAILED`` then ``ValueError`` (a handler bug that
    ``handle_error`` reports); ``EXIT3`` / ``SYSEXIT3`` / ``EXIT0`` → ``BYE`` then
    ``os._exit(3)`` / ``SystemExit(3)`` / ``os._exit(0)``. While the file named by
    ``$RELIABILITY_FAULT_MARKER`` exists, every request ends in ``os._exit(3)`` after its
    answer (a worker that dies at each request).
    """

    timeout = STRICT_TIMEOUT * 10

    def handle(self) -> None:
        line = self.rfile.readline(STRICT_MAX_LINE).strip()
        if line == b"FAIL":
            self.wfile.write(b"FAILED\n")
            raise ValueError("handler failed on purpose")
        if line in (b"EXIT3", b"SYSEXIT3", b"EXIT0"):
            self.wfile.write(b"BYE\n")
            if line == b"SYSEXIT3":
                raise SystemExit(3)
            os._exit(3 if line == b"EXIT3" else 0)
        self.wfile.write(b"PONG\n" if line == b"PING" else b"ERR\n")
        marker = os.environ.get(FAULT_MARKER)
        if marker and os.path.exists(marker):
            os._exit(3)


def _fail_boot() -> None:
    """In each new worker, before it boots: exit 1 while the fault marker exists."""
    marker = os.environ.get(FAULT_MARKER)
    if marker and os.path.exists(marker):
        print(f"worker {os.getpid()}: dependency down ({marker} exists)", file=sys.stderr,
              flush=True)
        os._exit(1)


def _slow_boot() -> None:
    """In each new worker of a new release: never finish booting while the parent lives
    (bounded: 60 s). Its parent's death ends it: PR_SET_PDEATHSIG is not set yet."""
    parent = os.getppid()
    deadline = time.monotonic() + 60.0
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.05)  # polls the parent; nothing to synchronise with
    os._exit(0)


def _nproc_control(path: str) -> None:
    """In the master: set its own soft RLIMIT_NPROC to each number read from *path*
    (``max``: back to the hard limit). prlimit(2) on another user's process is refused
    in some sandboxes even to root, so the master does it to itself."""
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    with os.fdopen(os.open(path, os.O_RDWR), "r") as control:
        print("NPROC control open", file=sys.stderr, flush=True)
        for line in control:
            soft = hard if line.strip() == "max" else int(line)
            resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))
            print("NPROC set to", line.strip(), file=sys.stderr, flush=True)


def _install_faults() -> None:
    """Run when the master imports this module (each master, after SIGUSR2 too)."""
    if os.environ.get(FAULT_MARKER):
        os.register_at_fork(after_in_child=_fail_boot)
    slow = os.environ.get(SLOW_BOOT_MARKER)
    if slow and os.path.exists(slow):  # the "new release": its workers hang at boot
        os.register_at_fork(after_in_child=_slow_boot)
    fifo = os.environ.get(NPROC_FIFO)
    if fifo:
        threading.Thread(target=_nproc_control, args=(fifo,), daemon=True,
                         name="nproc-control").start()


_install_faults()
