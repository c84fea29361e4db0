"""CPython's own ``test.test_socketserver``, run with engine standing in for ``socketserver``.

Each run happens in a fresh interpreter (``run_cpython_suite.py``). For engine, the runner
loads ``engine/classic.py`` under the module name ``socketserver`` with
``importlib.util.spec_from_file_location`` and installs it in ``sys.modules`` before the
suite is imported. It is loaded under that name, rather than by aliasing
``sys.modules['socketserver'] = engine``, because the suite's ``test_all`` checks that every
public object whose ``__module__ == 'socketserver'`` is listed in ``__all__``; that only
holds when the classes were defined in a module actually named ``socketserver``.

The same runner is run against the real stdlib module as the reference: engine must pass
everything and run as many tests as the stdlib does, skipping no more.

A third run, ``prefork``, puts engine's Prefork classes in place of the Forking ones
(``ForkingMixIn`` → ``PreforkMixIn``, ``ForkingTCPServer`` → ``PreforkTCPServer``, the UDP
and Unix variants likewise): the drop-in promise, checked by CPython's own tests. Every
run also fails a test that leaves a child process or a thread behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import engine.classic

RUNNER = Path(__file__).with_name("run_cpython_suite.py")
ROOT = Path(__file__).resolve().parents[2]

try:
    import test.test_socketserver  # noqa: F401 - only probing that the suite is installed
except ImportError as exc:  # pragma: no cover - depends on how Python was packaged
    pytest.skip(
        f"CPython's test.test_socketserver is not installed ({exc}); "
        "install the python3-test / libpython3-testsuite package to run conformance",
        allow_module_level=True,
    )


def run_suite(target: str, cwd: Path) -> dict[str, Any]:
    """Run the CPython suite against *target* in a subprocess and return its counts."""
    proc = subprocess.run(
        [sys.executable, str(RUNNER), target],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, (
        f"runner for {target} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
        f"stderr:\n{proc.stderr}"
    )
    counts: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    counts["log"] = proc.stderr
    return counts


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return {
        target: run_suite(target, tmp_path_factory.mktemp(f"cpython-{target}"))
        for target in ("stdlib", "engine", "prefork")
    }


def test_suite_runs_against_engine_module(results: dict[str, dict[str, Any]]) -> None:
    # test.test_socketserver.socketserver is the very module the runner loaded from
    # engine's file (the runner also refuses to run the suite otherwise).
    assert results["engine"]["bound_to_loaded"] is True
    assert results["stdlib"]["bound_to_loaded"] is False
    assert Path(results["engine"]["module_file"]) == Path(engine.classic.__file__)
    assert Path(results["stdlib"]["module_file"]) != Path(engine.classic.__file__)


@pytest.mark.parametrize("target", ["engine", "prefork"])
def test_engine_passes_cpython_suite(results: dict[str, dict[str, Any]], target: str) -> None:
    eng = results[target]
    assert eng["failures"] + eng["errors"] == 0, eng["log"]
    assert eng["unexpected_successes"] == 0, eng["log"]
    assert eng["run"] > 0


@pytest.mark.parametrize("target", ["engine", "prefork"])
def test_engine_runs_as_much_as_stdlib(results: dict[str, dict[str, Any]], target: str) -> None:
    eng, std = results[target], results["stdlib"]
    assert eng["run"] == std["run"], (eng, std)
    assert eng["skipped"] <= std["skipped"], (eng["log"], std["log"])


@pytest.mark.parametrize("target", ["stdlib", "engine", "prefork"])
def test_no_test_leaves_a_process_or_thread_behind(
    results: dict[str, dict[str, Any]], target: str
) -> None:
    assert results[target]["leftovers"] == [], results[target]["log"]


def test_prefork_classes_stand_in_for_the_forking_ones(
    results: dict[str, dict[str, Any]],
) -> None:
    assert results["prefork"]["bound_to_loaded"] is True
    assert results["prefork"]["stand_ins"] == {
        "ForkingMixIn": "engine.PreforkMixIn",
        "ForkingTCPServer": "engine.PreforkTCPServer",
        "ForkingUDPServer": "engine.PreforkUDPServer",
        "ForkingUnixStreamServer": "engine.PreforkUnixStreamServer",
        "ForkingUnixDatagramServer": "engine.PreforkUnixDatagramServer",
    }
