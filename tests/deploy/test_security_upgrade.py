"""A SIGUSR2 upgrade runs nothing from the working directory (issue 17, point 3).

The engine is started as ``python -m engine serve`` from a directory every user can
write (sticky, as /tmp). Once it serves, an attacker plants ``engine/__main__.py``
there. The upgrade must run the installed engine (the marker is never written), from
``/``, and still find the user's handler module and the relative paths it was given.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from engine import pidfile
from tests.kit import (
    READY,
    ROOT,
    EngineProcess,
    assert_no_leftovers,
    exchange,
    kill_group,
    launch,
    reap,
)

HANDLER = '''
import os
from engine.classic import StreamRequestHandler


class Versioned(StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(b"{version} %d %s" % (os.getpid(), line))
'''

PLANTED = '''
import pathlib
pathlib.Path({marker!r}).write_text("planted code ran as uid %d\\n" % __import__("os").getuid())
'''


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A sticky directory every user can write, like /tmp (root's, outside pytest's)."""
    path = Path(tempfile.mkdtemp(prefix="engine-cwd-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


def write_handler(directory: Path, version: str) -> None:
    (directory / "cwdapp.py").write_text(HANDLER.format(version=version))
    shutil.rmtree(directory / "__pycache__", ignore_errors=True)


def start_in(directory: Path, args: list[str], log_path: Path | None = None) -> EngineProcess:
    """``python -m engine ARGS`` started in *directory* (as a shell would, with $PWD);
    waits for its READY line."""
    engine = launch(
        [sys.executable, "-m", "engine", *args], cwd=directory,
        log_path=log_path or directory / "run" / "stderr.log",
        env={**READY, "PWD": str(directory)}, ready_timeout=20,
    )
    engine.snapshot()
    return engine


def test_upgrade_runs_nothing_planted_in_the_working_directory(shared_dir: Path) -> None:
    run = shared_dir / "run"
    run.mkdir()  # root's 0755: the pidfile and status socket live here
    write_handler(shared_dir, "v1")
    (shared_dir / "engine.toml").write_text('workers = 1\npool_mode = "static"\n')
    marker = run / "marker"
    # Relative paths throughout: they are resolved against the start directory.
    engine = start_in(shared_dir, [
        "serve", "cwdapp:Versioned", "--config", "engine.toml", "--bind", "127.0.0.1:0",
        "--pidfile", "run/engine.pid", "--status-bind", "unix:run/status.sock",
    ])
    new: int | None = None
    try:
        assert psutil.Process(engine.pid).cwd() == "/"  # the master left the directory
        assert pidfile.read(str(run / "engine.pid")) == engine.pid
        assert exchange(engine.address, b"hi\n").startswith(b"v1 ")
        # The attacker plants a package named engine where the master was started.
        planted = shared_dir / "engine"
        planted.mkdir()
        (planted / "__init__.py").write_text(PLANTED.format(marker=str(marker)))
        (planted / "__main__.py").write_text(PLANTED.format(marker=str(marker)))
        (planted / "cli.py").write_text(PLANTED.format(marker=str(marker)))
        write_handler(shared_dir, "v2")  # the new release of the user's own module
        engine.signal(signal.SIGUSR2)
        assert engine.wait(timeout=30) == 0, engine.log()  # the old master handed over
        assert not marker.exists(), marker.read_text()
        new = pidfile.read(str(run / "engine.pid"))
        assert new is not None and new != engine.pid, engine.log()
        engine.seen_pids.add(new)
        assert psutil.Process(new).cwd() == "/"
        assert exchange(engine.address, b"hi\n").startswith(b"v2 ")  # found in the dir
        assert (run / "status.sock").exists()
        workers = {c.pid for c in psutil.Process(new).children()}
        os.kill(new, signal.SIGTERM)
        _, status = os.waitpid(new, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert_no_leftovers(workers | {new})
        assert not (run / "engine.pid").exists()
        assert not marker.exists()
        assert "Traceback" not in engine.log()
    finally:
        kill_group(engine.pid, engine.proc)
        if engine.proc.stdout is not None:
            engine.proc.stdout.close()
        if new is not None:  # in the old master's process group: killed above
            reap([new])


def test_chdir_setting_and_a_missing_directory(shared_dir: Path, tmp_path: Path) -> None:
    run = shared_dir / "run"
    run.mkdir()
    write_handler(shared_dir, "v1")
    engine = start_in(shared_dir, [
        "serve", "cwdapp:Versioned", "--bind", "127.0.0.1:0", "--workers", "1",
        "--chdir", "run",
    ])
    try:
        assert psutil.Process(engine.pid).cwd() == str(run)
        assert exchange(engine.address, b"hi\n").startswith(b"v1 ")
        engine.signal(signal.SIGTERM)
        assert engine.wait() == 0
    finally:
        kill_group(engine.pid, engine.proc)
        if engine.proc.stdout is not None:
            engine.proc.stdout.close()
    result = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "engine.examples.echo:EchoHandler",
         "--bind", "127.0.0.1:0", "--chdir", "no/such/dir"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert f"invalid setting chdir='{tmp_path}/no/such/dir'" in result.stderr
    assert "Traceback" not in result.stderr


def test_upgrade_follows_a_swapped_release_symlink(shared_dir: Path) -> None:
    """A deploy that points ``current`` at a new release, then SIGUSR2: the new master
    imports the new release's module (the start directory is taken as $PWD named it)."""
    for release in ("1", "2"):
        (shared_dir / release).mkdir()
        write_handler(shared_dir / release, f"v{release}")
    current = shared_dir / "current"
    current.symlink_to(shared_dir / "1")
    run = shared_dir / "run"
    run.mkdir()
    engine = start_in(current, [
        "serve", "cwdapp:Versioned", "--bind", "127.0.0.1:0", "--workers", "1",
        "--pool-mode", "static", "--pidfile", "../run/engine.pid",
    ], log_path=run / "stderr.log")
    new: int | None = None
    try:
        assert exchange(engine.address, b"hi\n").startswith(b"v1 ")
        assert pidfile.read(str(run / "engine.pid")) == engine.pid
        swap = shared_dir / "current.new"
        swap.symlink_to(shared_dir / "2")
        swap.replace(current)  # the atomic deploy: `current` now names release 2
        engine.signal(signal.SIGUSR2)
        assert engine.wait(timeout=30) == 0, engine.log()
        new = pidfile.read(str(run / "engine.pid"))
        assert new is not None and new != engine.pid
        engine.seen_pids.add(new)
        assert exchange(engine.address, b"hi\n").startswith(b"v2 ")
        os.kill(new, signal.SIGTERM)
        _, status = os.waitpid(new, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        kill_group(engine.pid, engine.proc)
        if engine.proc.stdout is not None:
            engine.proc.stdout.close()
        if new is not None:
            reap([new])


# --- the re-exec command line, as plain data ---


def test_interpreter_options_stop_at_the_program() -> None:
    from engine.upgrade import interpreter_options

    assert interpreter_options(["python", "-m", "engine", "serve"]) == []
    assert interpreter_options(["python", "-X", "dev", "-W", "error", "-u", "-m", "engine"]) == [
        "-X", "dev", "-W", "error", "-u",
    ]
    assert interpreter_options(["python", "-O", "/usr/bin/engine", "-X", "x"]) == ["-O"]
    assert interpreter_options(["python", "-mengine", "serve"]) == []
    assert interpreter_options(["python", "-c", "code", "-O"]) == []


def test_cli_re_exec_keeps_the_working_directory_off_sys_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bootstrap, run for real from a directory holding a planted engine package."""
    from engine import upgrade

    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{os.pathsep}relative")

    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "__init__.py").write_text("raise SystemExit('planted')\n")
    entry = upgrade.Entry(("--version",), base="/srv/app", handler_directory="/srv/app")
    upgrade.remember_entry(entry)
    try:
        argv, env = upgrade.command_line(), upgrade.new_master_environment()
    finally:
        upgrade.remember_entry(None)
    assert env["PYTHONPATH"] == f"{ROOT}{os.pathsep}/srv/app/relative"
    assert env["ENGINE_BASE_DIR"] == "/srv/app"
    assert argv[0] == sys.executable and argv[-1] == "--version"
    code = argv[argv.index("-c") + 1]
    assert "\n" not in code  # one line in the log
    probe = code.replace("from engine.cli import main; sys.exit(main())", "print(sys.path)")
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
        env=env, timeout=30,
    )
    path = eval(result.stdout)
    assert "" not in path and str(tmp_path) not in path
    assert path[-1] == "/srv/app" and "/srv/app/relative" in path
    assert str(ROOT) in path
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("engine "), result
