"""A handler module or class that raises anything while it is loaded is exit 2.

Found probing from outside: a module that called ``sys.exit(0)`` at import made
``engine serve`` (and ``--check-config``) exit 0 with no output, ``sys.exit(7)`` exit 7,
``raise KeyboardInterrupt`` exit 130, all silently; a ``BaseException`` subclass and a
metaclass whose ``__getattribute__`` raises got an unhandled traceback and exit 1.
Each must give the documented first line, ``engine: error: cannot import handler ...``
naming the exception, then the module's traceback, with exit status 2.
A real Ctrl-C while a slow module imports is still exit 130.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.kit import ROOT, EngineProcess, run_cli
from tests.kit.engines import PYTHON_M_ENGINE
from tests.kit.processes import read_first_line

MODULES = {
    "exit_zero": ("import sys\nsys.exit(0)\n", "SystemExit: 0"),
    "exit_seven": ("import sys\nsys.exit(7)\n", "SystemExit: 7"),
    "exit_bare": ("raise SystemExit\n", "SystemExit"),
    "interrupt": ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
    "base_exception": (
        "class Odd(BaseException):\n    pass\nraise Odd('not an Exception')\n",
        "Odd: not an Exception",
    ),
    "generator_exit": ("raise GeneratorExit('early')\n", "GeneratorExit: early"),
    "bad_str": (
        "class Odd(Exception):\n    def __str__(self):\n        raise ValueError('no text')\n"
        "raise Odd()\n",
        "Odd",
    ),
    "metaclass": (
        "class Meta(type):\n"
        "    def __getattribute__(cls, name):\n"
        "        raise RuntimeError('no attributes here')\n"
        "class H(metaclass=Meta):\n    pass\n",
        "RuntimeError: no attributes here",
    ),
    "metaclass_exit": (
        "import sys\n"
        "class Meta(type):\n"
        "    def __getattribute__(cls, name):\n"
        "        sys.exit(3)\n"
        "class H(metaclass=Meta):\n    pass\n",
        "SystemExit: 3",
    ),
    "module_getattr": (
        "def __getattr__(name):\n    raise KeyboardInterrupt\n",
        "KeyboardInterrupt",
    ),
}


@pytest.mark.parametrize("check", [False, True], ids=["serve", "check-config"])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_handler_that_raises_anything_while_loaded_exits_2(
    tmp_path: Path, name: str, check: bool
) -> None:
    source, described = MODULES[name]
    module = f"raising_{name}"
    (tmp_path / f"{module}.py").write_text(source)
    result = run_cli(
        ["serve", f"{module}:H", "--bind", "127.0.0.1:0",
         *(["--check-config"] if check else [])],
        env={"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"},
    )
    assert result.returncode == 2, result
    first = result.stderr.splitlines()[0] if result.stderr else ""
    assert first == f"engine: error: cannot import handler '{module}:H': {described}", result
    assert "serving" not in result.stderr and "READY" not in result.stdout
    assert "listening on" not in result.stderr
    # The module's own code failed: the traceback after the first line says where.
    assert f"{module}.py" in result.stderr


def test_ctrl_c_while_a_slow_module_imports_is_still_exit_130(tmp_path: Path) -> None:
    # The module says it is importing, then waits: the SIGINT is a real one.
    (tmp_path / "slow_to_import.py").write_text(
        "import signal\nprint('IMPORTING', flush=True)\nsignal.pause()\n"
    )
    with EngineProcess(
        ["python3", "-c", PYTHON_M_ENGINE, "serve", "slow_to_import:H", "--bind",
         "127.0.0.1:0"],
        log_path=tmp_path / "engine.log",
        env={"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"},
    ) as engine:
        assert engine.proc.stdout is not None
        assert read_first_line(engine.proc.stdout.fileno(), 30) == b"IMPORTING"
        engine.signal(signal.SIGINT)
        assert engine.wait(timeout=30) == 130
        assert engine.log() == ""  # quietly, as a Ctrl-C at any other time
