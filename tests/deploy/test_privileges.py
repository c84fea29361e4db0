"""--user/--group: bind a privileged port as root, then serve as nobody, master included.

CI runs as root, so this runs for real there; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from engine import privileges
from engine.errors import ConfigError
from tests.kit import CLI, READY, EngineProcess, run_cli, wait_until
from tests.kit import exchange as tcp_exchange

Start = Callable[..., EngineProcess]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def free_privileged_port() -> int:
    for port in range(1023, 900, -1):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port below 1024 on 127.0.0.1")


def test_master_and_workers_drop_to_nobody_after_binding_port_below_1024(
    engine_proc: Start, tmp_path: Path
) -> None:
    nobody = pwd.getpwnam("nobody")
    tmp_path.chmod(0o755)  # lets nobody reach its socket files (pytest makes it 0700)
    port = free_privileged_port()
    unix = tmp_path / "service.sock"
    status = tmp_path / "status.sock"
    engine = engine_proc(CLI, env=READY, args=[
        "serve", "tests.apps.deploy_apps:WhoAmI", "--bind", f"127.0.0.1:{port}",
        "--bind", f"unix:{unix}", "--socket-mode", "0660", "--user", "nobody",
        "--status-bind", f"unix:{status}", "--health-interval", "0.2",
        "--workers", "2", "--pool-mode", "static",
    ])
    master = psutil.Process(engine.pid)
    assert tuple(master.uids()) == (nobody.pw_uid,) * 3  # real, effective and saved
    assert tuple(master.gids()) == (nobody.pw_gid,) * 3
    wait_until(lambda: len(engine.workers()) == 2, 10, "two workers")
    for worker in engine.workers():
        assert tuple(worker.uids()) == (nobody.pw_uid,) * 3
    words = tcp_exchange(("127.0.0.1", port), b"who\n").split()
    assert (int(words[1]), int(words[2])) == (nobody.pw_uid, nobody.pw_gid)
    assert tcp_exchange(str(unix), b"who\n").split()[1] == str(nobody.pw_uid).encode()
    info = os.stat(unix)
    assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert stat.S_IMODE(info.st_mode) == 0o660
    # The unprivileged master can still watch its workers (they stay dumpable).

    def sampled() -> bool:
        result = run_cli(["status", "--status-bind", f"unix:{status}", "--json"])
        workers = json.loads(result.stdout)["workers"]
        return bool(workers) and all(w["rss"] for w in workers)

    wait_until(sampled, 20, "workers' RSS sampled by the unprivileged master")
    assert "running as user nobody" in engine.log()
    engine.signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0
    log = engine.log()
    assert "Traceback" not in log and "AccessDenied" not in log


def test_switching_user_without_root_is_a_clear_error() -> None:
    """Once unprivileged, asking for another user is a ConfigError naming the setting."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            privileges.switch_to(privileges.resolve("root", None))
            os.write(write_end, b"switched")
        except ConfigError as exc:
            os.write(write_end, str(exc).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert message.startswith("invalid setting user='root'"), message
    assert f"running as uid {nobody.pw_uid}" in message
    # Already the right user: nothing to do, no error.
    assert privileges.resolve(str(os.getuid()), str(os.getgid())).is_current()
