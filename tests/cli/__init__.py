"""End-to-end tests of the `engine` command, and the helpers they share."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from tests.support import ROOT, kill_tree

# The `engine` console script's body, and `python -m engine`'s, for engine_proc.
CLI = "import sys\nfrom engine.cli import main\nsys.exit(main())\n"
PYTHON_M_ENGINE = "import runpy\nrunpy.run_module('engine', run_name='__main__', alter_sys=True)\n"
READY = {"ENGINE_READY_LINE": "1"}


def run_cli(
    args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m engine ARGS`` to completion in its own session.

    Meant for commands that end by themselves (errors, --check-config, status). The
    process group is killed afterwards whatever happened, so a command that started
    serving by mistake leaves nothing behind.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", *args], cwd=ROOT, env=full_env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_tree(proc.pid, proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
