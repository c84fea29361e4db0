"""Run PyPI packages built on socketserver with engine standing in for it.

A scratch virtualenv (``--system-site-packages``, so it sees the installed packages; no
pip of its own, so it is made in a fraction of a second) gets a ``sitecustomize`` that
loads :mod:`tests.conformance.stand_in`: every interpreter started with that venv's
python, including the server processes a package's test suite spawns itself, then
imports the ``socketserver`` that ``ENGINE_STANDS_IN`` names. A package's sources (for
its tests) are its sdist from PyPI, fetched with ``pip download`` into a cache and
unpacked, never copied into this repository.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
STAND_IN = Path(__file__).with_name("stand_in.py")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "engine-tests" / "sdists"

LINGER = 5.0  # seconds a run's leftover processes get to exit by themselves

SITECUSTOMIZE = """
import importlib.util, os, sys
if os.environ.get("ENGINE_STANDS_IN"):
    sys.path.insert(0, {root!r})  # engine from this checkout, whatever else is installed
    try:
        spec = importlib.util.spec_from_file_location("_engine_stand_in", {stand_in!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove({root!r})  # and nothing else from it (its `tests` package...)
"""


def make_venv(where: Path) -> Path:
    """A virtualenv over this interpreter's packages, with the stand-in; its python."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(where)],
        check=True,
        timeout=60,
    )
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.strip()
    code = SITECUSTOMIZE.format(root=str(ROOT), stand_in=str(STAND_IN))
    (Path(purelib) / "sitecustomize.py").write_text(textwrap.dedent(code))
    assert sysconfig.get_path("purelib") != purelib  # never this interpreter's own
    return python


def sdist(name: str, version: str, into: Path) -> Path:
    """The unpacked sdist of *name* *version* (downloaded once into the cache)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    prefix = _normal(f"{name}-{version}.tar.gz")
    found = [p for p in CACHE.glob("*.tar.gz") if _normal(p.name) == prefix]
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", "--dest", str(CACHE), f"{name}=={version}"],
            check=True, timeout=180,
        )
        found = [p for p in CACHE.glob("*.tar.gz") if _normal(p.name) == prefix]
    assert len(found) == 1, found
    with tarfile.open(found[0]) as archive:
        top = archive.getnames()[0].split("/")[0]
        archive.extractall(into, filter="data")
    return into / top


def _normal(filename: str) -> str:
    return filename.lower().replace("-", "_")


@dataclass
class Run:
    """What one run of a package's tests gave."""

    outcomes: dict[str, str]  # test id → passed / failed / skipped
    output: str
    returncode: int
    left_behind: list[str]  # processes of the run still there once it had exited

    def failed(self) -> list[str]:
        return sorted(name for name, outcome in self.outcomes.items() if outcome == "failed")


def run_pytest(python: Path, mode: str, cwd: Path, args: list[str], timeout: float) -> Run:
    """Run pytest in *cwd* with the venv's *python*, ``socketserver`` as *mode* says."""
    report = cwd / f"report-{mode}.xml"
    env = {**os.environ, "ENGINE_STANDS_IN": mode}
    env.pop("PYTHONPATH", None)  # the venv and its stand-in decide what is imported
    proc = _run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         f"--junitxml={report}", "--timeout", "20", *args],
        cwd, env, timeout,
    )
    outcomes = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                outcomes[name] = "failed"
            elif case.find("skipped") is not None:
                outcomes[name] = "skipped"
            else:
                outcomes[name] = "passed"
    return Run(outcomes, proc.stdout + proc.stderr, proc.returncode, proc.left_behind)


def run_script(python: Path, mode: str, cwd: Path, code: str, timeout: float) -> Run:
    """Run a script of ours that prints ``OK <check>`` per check that held."""
    env = {**os.environ, "ENGINE_STANDS_IN": mode}
    env.pop("PYTHONPATH", None)
    proc = _run([str(python), "-c", code], cwd, env, timeout)
    lines = proc.stdout.splitlines()
    outcomes = {line.split(" ", 1)[1]: "passed" for line in lines if line.startswith("OK ")}
    return Run(outcomes, proc.stdout + proc.stderr, proc.returncode, proc.left_behind)


@dataclass
class _Finished:
    stdout: str
    stderr: str
    returncode: int
    left_behind: list[str]


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> _Finished:
    """Run *argv* in a session of its own; then find (and kill) what it left running.

    Servers a suite starts in their own sessions escape this check; those it starts as
    its children stay in the session, and so do their workers.
    """
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # What outlives the run gets a moment to exit on its own (a worker whose master
        # is gone notices it within its idle wake-up), then is counted and killed.
        deadline = time.monotonic() + LINGER
        left = _session_members(proc.pid)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)  # polling with a deadline: the membership decides
            left = _session_members(proc.pid)
        for each in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                each.send_signal(signal.SIGKILL)
        _reap_orphans(proc.pid)
    return _Finished(stdout, stderr, proc.returncode,
                     [f"{p.pid} {_cmdline(p)}" for p in left])


def _session_members(sid: int, *, zombies: bool = False) -> list[psutil.Process]:
    members = []
    for each in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if os.getsid(each.pid) == sid and (zombies or each.status() != psutil.STATUS_ZOMBIE):
                members.append(each)
    return members


def _reap_orphans(sid: int) -> None:
    """Reap the run's processes that were reparented to us (the suite is a subreaper)."""
    for each in _session_members(sid, zombies=True):
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if each.ppid() == os.getpid():
                os.waitpid(each.pid, 0)


def _cmdline(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(process.cmdline())[:120]
    return "?"
