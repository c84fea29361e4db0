"""Where the engine listens: several binds, systemd socket activation, SO_REUSEPORT,
Unix socket file modes. Real engines in subprocesses; nothing left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.kit import (
    CLI,
    READY,
    ROOT,
    EngineProcess,
    assert_no_leftovers,
    free_port,
    kill_group,
    process_tree,
    wait_until,
)
from tests.kit import (
    exchange as tcp_exchange,
)

Start = Callable[..., EngineProcess]
WHO = "tests.apps.deploy_apps:WhoAmI"


def serve(start: Start, *args: str) -> EngineProcess:
    return start(CLI, args=["serve", WHO, *args], env=READY)


def served_by(address: object) -> tuple[int, int]:
    """(worker pid, its master's pid) of the worker that answers one request."""
    words = tcp_exchange(address, b"who\n").split()
    return int(words[0]), int(words[3])



def test_several_binds_serve_tcp_ipv6_and_unix(engine_proc: Start, tmp_path: Path) -> None:
    unix = tmp_path / "engine.sock"
    port, port6 = free_port(), free_port()
    engine = serve(
        engine_proc, "--bind", f"127.0.0.1:{port}", "--bind", f"[::1]:{port6}",
        "--bind", f"unix:{unix}", "--workers", "2", "--pool-mode", "static",
        "--socket-mode", "0640",
    )
    masters = {
        served_by(("127.0.0.1", port))[1],
        served_by(("::1", port6))[1],
        served_by(str(unix))[1],
    }
    assert masters == {engine.pid}
    assert stat.S_IMODE(os.stat(unix).st_mode) == 0o640
    assert f"listening on 127.0.0.1:{port}, [::1]:{port6}, unix:{unix}" in engine.log()
    # Every listener is served by every worker: all three keep answering under a loop
    # of requests spread over them (the worker rotates which listener it tries first).
    for _ in range(20):
        for address in (("127.0.0.1", port), ("::1", port6), str(unix)):
            assert tcp_exchange(address, b"x\n").endswith(b" x\n")
    engine.signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0
    assert not unix.exists()  # the file we created is removed on the way out


def test_a_bind_that_fails_closes_the_others(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        unix = tmp_path / "first.sock"
        result = subprocess.run(
            [sys.executable, "-m", "engine", "serve", WHO, "--bind", f"unix:{unix}",
             "--bind", f"127.0.0.1:{busy}"],
            cwd=ROOT, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{busy}" in result.stderr
    assert not unix.exists() or not _listening(unix)


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def test_umask_applies_to_created_socket_files(engine_proc: Start, tmp_path: Path) -> None:
    unix = tmp_path / "masked.sock"
    engine = serve(engine_proc, "--bind", f"unix:{unix}", "--umask", "077", "--workers", "1")
    assert stat.S_IMODE(os.stat(unix).st_mode) == 0o700
    engine.signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0


def test_reuse_port_lets_two_engines_share_a_port(engine_proc: Start) -> None:
    port = free_port()
    common = ("--bind", f"127.0.0.1:{port}", "--reuse-port", "--workers", "2",
              "--pool-mode", "static")
    first = serve(engine_proc, *common)
    second = serve(engine_proc, *common)
    seen: set[int] = set()
    # The kernel hashes each connection (by its source port) to one of the sockets.
    wait_until(
        lambda: seen.add(served_by(("127.0.0.1", port))[1]) or len(seen) == 2, 20,
        "connections reaching both engines",
    )
    assert seen == {first.pid, second.pid}
    # One instance leaving does not stop the other from serving the port.
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    for _ in range(20):
        assert served_by(("127.0.0.1", port))[1] == second.pid


def test_without_reuse_port_a_second_engine_cannot_bind(engine_proc: Start) -> None:
    port = free_port()
    serve(engine_proc, "--bind", f"127.0.0.1:{port}", "--workers", "1")
    result = subprocess.run(
        [sys.executable, "-m", "engine", "serve", WHO, "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert "Address already in use" in result.stderr


@pytest.mark.skipif(
    not os.path.exists("/usr/bin/systemd-socket-activate"),
    reason="systemd-socket-activate is not installed (tests/system_packages.sh installs it)",
)
def test_systemd_socket_activation_serves_the_passed_sockets(tmp_path: Path) -> None:
    port, second = free_port(), free_port()
    unix = tmp_path / "activated.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "LISTEN_"))}
    env["PYTHONPATH"] = str(ROOT)
    log = tmp_path / "activate.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "-l", f"127.0.0.1:{second}",
             "-l", str(unix), f"--setenv=PYTHONPATH={ROOT}",
             sys.executable, "-m", "engine", "serve", WHO,
             # The bind setting is ignored when sockets are passed in:
             "--bind", "127.0.0.1:1", "--workers", "2", "--pool-mode", "static"],
            cwd=ROOT, env=env, stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_until(lambda: b"Listening on" in log.read_bytes() and unix.exists(), 20,
                   "systemd-socket-activate listening")
        # The first connection makes systemd-socket-activate exec the engine in place.
        _, master = served_by(("127.0.0.1", port))
        assert master == proc.pid
        assert served_by(("127.0.0.1", second))[1] == proc.pid
        assert served_by(str(unix))[1] == proc.pid
        text = log.read_text()
        assert "serving 3 socket(s) handed in by systemd socket activation" in text
        # The passed sockets, not the bind setting (127.0.0.1:1):
        assert f"listening on 127.0.0.1:{port}, 127.0.0.1:{second}, unix:{unix}" in text
        assert len(psutil.Process(proc.pid).children()) == 2
        seen = {p.pid for p in process_tree(proc.pid)}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert_no_leftovers(seen)
        assert unix.exists()  # a socket handed in is not ours to remove
    finally:
        with contextlib.suppress(Exception):
            kill_group(proc.pid, proc)
