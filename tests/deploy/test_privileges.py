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
    # The unprivileged master can still watch its workers (statm and stat stay readable).

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

    def as_nobody() -> str:
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
        privileges.switch_to(privileges.resolve("root", None))
        return "switched"

    message = in_child(as_nobody)
    assert message.startswith("ConfigError: invalid setting user='root'"), message
    assert f"running as uid {nobody.pw_uid}" in message
    # Already the right user: nothing to do, no error.
    assert privileges.resolve(str(os.getuid()), str(os.getgid())).is_current()


# --- every id, every group, and memory kept private (found probing as root) ---


def in_child(body: Callable[[], str]) -> str:
    """Run *body* in a forked child (it may change ids for good); its answer, or the
    exception it raised as ``Name: message``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            answer = body()
        except BaseException as exc:  # reported to the parent
            answer = f"{type(exc).__name__}: {exc}"
        try:
            os.write(write_end, answer.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return answer


PR_GET_DUMPABLE = 3


def become(account: pwd.struct_passwd, groups: list[int]) -> None:
    """Be *account* in every uid and gid, with supplementary *groups* (in a child)."""
    os.setgroups(groups)
    os.setresgid(account.pw_gid, account.pw_gid, account.pw_gid)
    os.setresuid(account.pw_uid, account.pw_uid, account.pw_uid)


def test_a_master_that_starts_as_the_service_user_makes_itself_non_dumpable() -> None:
    """The new master of a SIGUSR2 upgrade is exec'd as the service user, and execve
    makes a process dumpable again: it used to stay so, its memory (the TLS key)
    readable and ptrace-able by any process of that user."""
    from workers.prctl import PR_SET_DUMPABLE, prctl

    nobody = pwd.getpwnam("nobody")

    def started_as_nobody() -> str:
        become(nobody, [])
        prctl(PR_SET_DUMPABLE, 1)  # what execve does for a process of this user
        before = prctl(PR_GET_DUMPABLE)
        privileges.switch_to(privileges.resolve("nobody", None))
        return f"{before} {prctl(PR_GET_DUMPABLE)}"

    assert in_child(started_as_nobody) == "1 0"


def test_only_the_real_ids_being_the_account_is_not_enough() -> None:
    """Started with the real ids nobody's but the effective and saved ones root's, the
    switch used to be skipped: the master and workers kept root."""
    nobody = pwd.getpwnam("nobody")

    def real_ids_only() -> str:
        os.setresgid(nobody.pw_gid, 0, 0)
        os.setresuid(nobody.pw_uid, 0, 0)
        privileges.switch_to(privileges.resolve("nobody", None))
        return repr((os.getresuid(), os.getresgid(), os.getgroups()))

    uid, gid = nobody.pw_uid, nobody.pw_gid
    assert in_child(real_ids_only) == repr(((uid,) * 3, (gid,) * 3, [gid]))


def test_groups_the_process_cannot_leave_are_refused() -> None:
    nobody = pwd.getpwnam("nobody")

    def in_root_groups() -> str:
        become(nobody, [0, 6])
        privileges.switch_to(privileges.resolve("nobody", None))
        return "kept " + repr(os.getgroups())

    answer = in_child(in_root_groups)
    assert answer.startswith("ConfigError: invalid setting user='nobody'"), answer
    assert "running in groups 0, 6, which only root can leave" in answer


def test_a_hard_link_in_place_of_a_socket_file_is_not_given_away(tmp_path: Path) -> None:
    """give_to changes the owner of the socket file it created, by path, in a directory
    the service user can write: a hard link swapped in would give it another file."""
    nobody = pwd.getpwnam("nobody")
    account = privileges.resolve("nobody", None)
    precious = tmp_path / "precious"
    precious.write_text("root's\n")
    os.link(precious, tmp_path / "engine.sock")
    privileges.give_to(str(tmp_path / "engine.sock"), account)
    assert os.stat(precious).st_uid == 0
    (tmp_path / "engine.sock").unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "engine.sock"))
        privileges.give_to(str(tmp_path / "engine.sock"), account)
        info = os.stat(tmp_path / "engine.sock")
    assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid)


def test_the_tls_key_is_read_only_once_the_process_is_non_dumpable(tmp_path: Path) -> None:
    """Under --user, a master that starts dumpable (an upgrade's) reads the key only
    after making itself non-dumpable, not later at the switch."""
    import trustme

    from engine import tls
    from engine.config import Settings
    from workers.prctl import PR_SET_DUMPABLE, prctl

    cert = trustme.CA().issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    settings = Settings(certfile=str(tmp_path / "cert.pem"),
                        keyfile=str(tmp_path / "key.pem"), user="nobody")

    def load(with_user: bool) -> str:
        prctl(PR_SET_DUMPABLE, 1)
        tls.build_context(settings if with_user else Settings(
            certfile=settings.certfile, keyfile=settings.keyfile))
        return str(prctl(PR_GET_DUMPABLE))

    assert in_child(lambda: load(True)) == "0"
    assert in_child(lambda: load(False)) == "1"  # without --user: left as it was


def test_check_config_refuses_groups_the_start_would_refuse() -> None:
    """--check-config said 0 where the start, after listening, exited 2."""
    from engine import cli
    from engine.config import Settings

    nobody = pwd.getpwnam("nobody")

    def checked() -> str:
        become(nobody, [0, 6])
        cli.check_with_the_system(Settings(user="nobody"))
        return "accepted"

    answer = in_child(checked)
    assert answer.startswith("ConfigError: invalid setting user='nobody'"), answer
    assert "which only root can leave" in answer
