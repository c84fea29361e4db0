"""The ``ksm`` setting: let the kernel merge identical pages of the master and its workers.

A worker shares the master's pages until it writes to them, and CPython writes to every
object it touches (its reference count): a long-lived worker ends up with a few MiB of
pages of its own, most of them byte for byte the same as its siblings' or the master's
(docs/benchmarks.md, "a worker's private memory, step by step"). Kernel samepage merging
(KSM) finds such pages and maps one copy, copy-on-write, in each process.
``prctl(PR_SET_MEMORY_MERGE)`` (Linux 6.4+) makes all of a process's anonymous memory
mergeable, and its children inherit that: the master sets it before its first fork.

Merging is done by the kernel's KSM daemon, which root turns on
(``/sys/kernel/mm/ksm/run``); without it nothing is merged. It costs that daemon's CPU
time, and a merged page can be detected through write timing by another process that
holds the same page and also uses KSM: so ``ksm`` is off unless asked for.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from engine.errors import ConfigError
from workers.prctl import PR_GET_MEMORY_MERGE, PR_SET_MEMORY_MERGE, prctl

log = logging.getLogger("engine.master")

KSM_RUN = Path("/sys/kernel/mm/ksm/run")  # 1: the daemon merges; 0 or 2: it does not
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def apply(wanted: bool, run_file: Path = KSM_RUN) -> None:
    """Make this process's memory, and its future children's, mergeable or not.

    Off also undoes what an upgraded-from master left on (the flag survives exec).

    Raises:
        ConfigError: ``ksm`` is on and this kernel cannot do it.
    """
    if not wanted:
        with contextlib.suppress(OSError):
            if prctl(PR_GET_MEMORY_MERGE):
                prctl(PR_SET_MEMORY_MERGE, 0)
        return
    try:
        prctl(PR_SET_MEMORY_MERGE, 1)
    except OSError as exc:
        raise ConfigError(
            "ksm", True,
            "a kernel that can merge a process's pages (Linux 6.4 or later, built with KSM): "
            f"prctl(PR_SET_MEMORY_MERGE) failed ({exc.strerror}); set ksm off",
        ) from None
    state = daemon_state(run_file)
    if state != "1":
        log.warning(
            "ksm is on, but the kernel's KSM daemon is not merging (%s is %s): no page "
            "will be shared until root writes 1 there", run_file, state or "missing",
        )
    else:
        log.info("ksm: the workers' identical pages will be merged by the kernel")


def daemon_state(run_file: Path = KSM_RUN) -> str:
    """The content of /sys/kernel/mm/ksm/run ("1": merging), "" if it cannot be read."""
    try:
        return run_file.read_text().strip()
    except OSError:
        return ""


def merged_bytes(pid: int) -> int | None:
    """Bytes of *pid*'s memory merged by the KSM daemon (``ksm_merging_pages`` of
    ``/proc/PID/ksm_stat``, Linux 6.1+), or None where the kernel does not say."""
    try:
        with open(f"/proc/{pid}/ksm_stat", "rb") as file:
            for line in file:
                if line.startswith(b"ksm_merging_pages "):
                    return int(line.split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        pass
    return None
