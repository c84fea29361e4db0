"""When the master may fork again after failures: boot failures, crash loops, fork errors.

A pure object: every method takes ``now`` (a ``time.monotonic()`` value) and returns what
to log, so the policy is tested with plain numbers and no process.

* A worker that exits before it has booted (``worker_init`` did not return) is a boot
  failure. The next fork waits ``BACKOFF_BASE * 2**(n-1)`` seconds for the n-th failure
  in a row. On a first start, before any worker ever booted, ``FATAL_BOOT_FAILURES`` in a
  row are fatal: a broken import or configuration fails fast (exit 3).
* Once a worker has booted, the service has served: boot failures are then a crash loop
  that backs off up to ``CRASH_BACKOFF_CAP`` and is retried forever (a database that is
  down comes back; a master that exits would need an operator).
* ``fork()`` itself failing (EAGAIN at RLIMIT_NPROC, ENOMEM) is the machine's state, not
  the code's: never fatal, backed off up to ``FORK_BACKOFF_CAP``, one log line per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BACKOFF_BASE = 0.1
BOOT_BACKOFF_CAP = 5.0  # first start: a few seconds, then fatal
CRASH_BACKOFF_CAP = 30.0  # after the service has served: forever, at most this apart
FORK_BACKOFF_CAP = 30.0
FATAL_BOOT_FAILURES = 5


def backoff_delay(failures: int, cap: float) -> float:
    """The wait after the *failures*-th failure in a row (1, 2, ...)."""
    # The exponent is bounded: a loop that runs for days must not overflow a float.
    return min(BACKOFF_BASE * 2.0 ** min(max(failures - 1, 0), 64), cap)


@dataclass(frozen=True)
class Verdict:
    """What a failure means: the log line, its level, and whether the master must stop."""

    message: str
    loud: bool = False  # log as an error (a crash loop), not a warning
    fatal: bool = False


class SpawnBackoff:
    """Counts failures in a row and says when the next fork may happen."""

    def __init__(self) -> None:
        self.boot_failures = 0  # workers in a row that exited before booting
        self.fork_failures = 0  # fork() calls in a row that failed
        self.ever_booted = False  # a worker of this master has booted: it has served
        self.boot_until = 0.0
        self.fork_until = 0.0

    def can_spawn(self, now: float) -> bool:
        """May the master fork now?"""
        return now >= self.next_spawn_at

    @property
    def next_spawn_at(self) -> float:
        """The earliest moment the next fork may happen."""
        return max(self.boot_until, self.fork_until)

    def booted(self) -> str | None:
        """A worker booted: the boot streak ends. Returns a line to log, if any."""
        self.ever_booted = True
        failures, self.boot_failures = self.boot_failures, 0
        self.boot_until = 0.0
        if failures >= FATAL_BOOT_FAILURES:
            return f"a worker booted again after {failures} failed boots; crash loop over"
        return None

    def boot_failed(self, now: float) -> Verdict:
        """A worker exited before it had booted."""
        self.boot_failures += 1
        n = self.boot_failures
        if not self.ever_booted and n >= FATAL_BOOT_FAILURES:
            return Verdict(
                f"no worker could boot: {n} workers in a row exited during start-up (see "
                "their tracebacks above); stopping",
                loud=True, fatal=True,
            )
        cap = CRASH_BACKOFF_CAP if self.ever_booted else BOOT_BACKOFF_CAP
        delay = backoff_delay(n, cap)
        self.boot_until = now + delay
        if self.ever_booted and n >= FATAL_BOOT_FAILURES:
            return Verdict(
                f"crash loop: {n} workers in a row failed to boot; next spawn in {delay:.2f}s "
                "(retrying for as long as it takes)",
                loud=True,
            )
        return Verdict(f"worker failed to boot ({n} in a row); next spawn in {delay:.2f}s")

    def fork_failed(self, now: float, error: str) -> Verdict:
        """``fork()`` raised: back off; never fatal."""
        self.fork_failures += 1
        delay = backoff_delay(self.fork_failures, FORK_BACKOFF_CAP)
        self.fork_until = now + delay
        return Verdict(
            f"cannot fork a worker: {error} ({self.fork_failures} in a row); listeners "
            f"kept, serving with the workers left; next try in {delay:.2f}s",
            loud=self.fork_failures > 1,
        )

    def process_exited(self) -> None:
        """A worker exited: try the next fork at once, if forks were failing. The usual
        cause (a process limit, memory) may have just eased, and a dead worker must
        not wait out a backoff of up to 30 s. A new failure backs off from where the
        streak was; the boot backoff stays."""
        self.fork_until = 0.0

    def fork_worked(self) -> str | None:
        """A fork succeeded: returns a line to log if it had been failing."""
        failures, self.fork_failures = self.fork_failures, 0
        self.fork_until = 0.0
        if failures:
            return f"fork works again after {failures} failed tries; refilling the pool"
        return None

    def status(self, now: float) -> dict[str, Any]:
        """The ``crash_loop`` part of the status document."""
        return {
            "boot_failures": self.boot_failures,
            "fork_failures": self.fork_failures,
            "next_spawn_in": round(max(0.0, self.next_spawn_at - now), 3),
        }
