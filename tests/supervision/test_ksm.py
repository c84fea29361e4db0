"""``ksm``: the master and its workers let the kernel merge their identical pages.

A worker's own memory is mostly pages it copied from the master by touching objects
(reference counts), byte for byte the same as its siblings'. With ``ksm = true`` the
master marks its memory mergeable (``prctl(PR_SET_MEMORY_MERGE)``, Linux 6.4+) before
its first fork, the workers inherit that, and the kernel's KSM daemon, when root has
turned it on, maps one copy of each such page. Checked here on the real kernel: the
flag on every process (``/proc/PID/ksm_stat``), the flag an exec'd-into master inherits
and must drop when ``ksm`` is off, a kernel that refuses (a seccomp filter makes it),
and, where the test may turn the daemon on (root), the pages actually merged.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import psutil
import pytest

from engine import ksm
from tests.kit import READY, exchange, launch, run_cli, wait_until
from tests.kit.processes import exec_after
from tests.kit.seccomp import refusing_prctl, supported
from workers.prctl import PR_GET_MEMORY_MERGE, PR_SET_MEMORY_MERGE, prctl

ECHO = "engine.examples.echo:EchoHandler"
KSM_SYSFS = Path("/sys/kernel/mm/ksm")
MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


def _kernel_can_merge() -> bool:
    try:
        prctl(PR_GET_MEMORY_MERGE)
    except OSError:
        return False
    return Path("/proc/self/ksm_stat").exists()


pytestmark = pytest.mark.skipif(
    not _kernel_can_merge(), reason="the kernel has no PR_SET_MEMORY_MERGE (Linux 6.4+)"
)


def ksm_stat(pid: int) -> dict[str, str]:
    """/proc/PID/ksm_stat as a dict ("ksm_merge_any": "yes", "ksm_merging_pages": "12")."""
    text = Path(f"/proc/{pid}/ksm_stat").read_text()
    return dict(line.replace(":", "").split(None, 1) for line in text.splitlines())


def mergeable(pid: int) -> bool:
    return ksm_stat(pid)["ksm_merge_any"] == "yes"


def shown_merged(status_socket: Path) -> list[int | None]:
    """Each worker's ``ksm_merged`` in the status (None: not read)."""
    shown = json.loads(exchange(str(status_socket), b"json\n"))["workers"]
    return [w["ksm_merged"] for w in shown if w["rss"] is not None]  # sampled ones


@pytest.mark.parametrize("on", [True, False])
def test_the_status_shows_merged_memory_with_ksm_only(engines, tmp_path: Path, on: bool) -> None:
    status_socket = tmp_path / "status.sock"
    engine = engines(["--workers", "2", "--health-interval", "1", "--status-bind",
                      f"unix:{status_socket}", "--ksm" if on else "--no-ksm"], handler=ECHO)
    engine.wait_workers(2)
    seen = wait_until(lambda: len(merged := shown_merged(status_socket)) == 2 and merged,
                      10, "both workers sampled")
    if on:  # a number of bytes (0 while the daemon is off), read from /proc/PID/ksm_stat
        assert all(isinstance(value, int) and value >= 0 for value in seen), seen
    else:
        assert seen == [None, None]


def test_ksm_marks_the_master_and_every_worker(engines) -> None:
    engine = engines(["--workers", "2", "--ksm"], handler=ECHO)
    workers = engine.wait_workers(2)
    assert mergeable(engine.master)
    assert all(mergeable(pid) for pid in workers)
    if ksm.daemon_state() == "1":
        assert "the workers' identical pages will be merged" in engine.log()
    else:  # nothing merges until root turns the daemon on: say so
        assert "the kernel's KSM daemon is not merging" in engine.log()


def test_without_ksm_nothing_is_marked(engines) -> None:
    engine = engines(["--workers", "2"], handler=ECHO)
    workers = engine.wait_workers(2)
    assert not any(mergeable(pid) for pid in [engine.master, *workers])
    assert "ksm" not in engine.log()


def test_ksm_off_drops_the_flag_a_master_inherited(tmp_path: Path, _started) -> None:
    # The flag survives exec (an upgrade re-execs the master): ksm off must clear it.
    inherit = exec_after(f"from workers.prctl import prctl\nprctl({PR_SET_MEMORY_MERGE}, 1)")
    argv = [*inherit, sys.executable, "-m", "engine", "serve", ECHO,
            "--bind", "127.0.0.1:0", "--workers", "1", "--pool-mode", "static"]
    engine = launch(argv, log_path=tmp_path / "engine.log", env=READY)
    _started.append(engine)
    (worker,) = engine.wait_workers(1)
    assert not mergeable(engine.master)
    assert not mergeable(worker)


@pytest.mark.skipif(not supported(), reason="the seccomp filter knows x86_64 and aarch64")
def test_a_kernel_that_refuses_stops_the_start_naming_ksm() -> None:
    result = run_cli(["serve", ECHO, "--bind", "127.0.0.1:0", "--ksm"],
                     wrapper=refusing_prctl(PR_SET_MEMORY_MERGE, errno.EINVAL))
    err = result.stderr
    assert result.returncode == 2, err
    assert "\nengine: error: invalid setting ksm=True: " in f"\n{err}", err
    assert "Linux 6.4" in err and "Invalid argument" in err
    assert "Traceback" not in err and "serving" not in err


def _daemon_files_writable() -> bool:
    try:
        with open(KSM_SYSFS / "run", "r+"):
            return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _daemon_files_writable(),
                    reason="turning the kernel's KSM daemon on needs root")
def test_the_workers_pages_are_merged(engines, tmp_path: Path) -> None:
    saved = (KSM_SYSFS / "run").read_text().strip()
    status_socket = tmp_path / "status.sock"
    try:
        (KSM_SYSFS / "run").write_text("1")
        engine = engines(["--workers", "2", "--pool-mode", "static", "--ksm",
                          "--health-interval", "1", "--status-bind", f"unix:{status_socket}"],
                         handler=ECHO)
        workers = [psutil.Process(pid) for pid in engine.wait_workers(2)]
        for _ in range(100):
            exchange(engine.address, b"hello\n")
        before = {w.pid: w.memory_full_info().uss for w in workers}
        scans = int((KSM_SYSFS / "full_scans").read_text())
        wait_until(lambda: int((KSM_SYSFS / "full_scans").read_text()) >= scans + 4, 120,
                   "four full scans of the KSM daemon")
        for worker in workers:
            merged = int(ksm_stat(worker.pid)["ksm_merging_pages"])
            assert merged >= 100, f"worker {worker.pid}: {merged} pages merged"
            fell = before[worker.pid] - worker.memory_full_info().uss
            assert fell >= MIB // 2, f"worker {worker.pid}: USS fell {fell / MIB:.2f} MiB"

        # The status shows it per worker (its next health sample, within a second).
        def merged_in_status() -> bool:
            merged = shown_merged(status_socket)
            return len(merged) == 2 and all((m or 0) >= 100 * PAGE for m in merged)

        wait_until(merged_in_status, 10, "the merged pages in the status")
    finally:
        (KSM_SYSFS / "run").write_text(saved)
