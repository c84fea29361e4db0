"""The static gates, run by the suite so that CI's one test command runs them too.

``ruff check`` over every Python directory of the project, and ``mypy`` as configured in
pyproject.toml (engine/ and workers/, strictly typed). Both come with the ``test`` extra;
a missing tool is a failure, not a skip: a gate that cannot run cannot fail either.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.kit.engines import ROOT, engine_env

RUFF_PATHS = ("engine", "workers", "tests", "loadtests")


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m TOOL ARGS`` in the checkout; fails the test if the tool is missing."""
    if importlib.util.find_spec(tool) is None:
        pytest.fail(f"{tool} is not installed: python -m pip install -e '.[test]'")
    return subprocess.run(
        [sys.executable, "-m", tool, *args], cwd=ROOT, env=engine_env(),
        capture_output=True, text=True, timeout=600,
    )


def test_ruff_is_clean() -> None:
    result = run_tool("ruff", "check", "--no-fix", *RUFF_PATHS)
    assert result.returncode == 0, f"ruff check:\n{result.stdout}{result.stderr}"


@pytest.mark.timeout(660)  # a cold mypy run on a busy machine
def test_mypy_is_clean() -> None:
    result = run_tool("mypy")
    assert result.returncode == 0, f"mypy:\n{result.stdout}{result.stderr}"
