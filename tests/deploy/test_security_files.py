"""Files root opens or creates are never redirected by another user (issue 17, point 1),
and files the service user cannot clean up are reported (issue 13, item 12).

Run as root, with ``nobody`` as the service user and as the attacker. The symlink
cases do not depend on ``fs.protected_symlinks``: the links are planted in a
directory owned by the service user, or followed by root from its own directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine import pidfile
from tests.kit import CLI, READY, EngineProcess, exchange, run_cli, wait_until

Start = Callable[..., EngineProcess]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="privileged paths need root")

NOBODY = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
SERVE = ["serve", "tests.apps.deploy_apps:WhoAmI", "--bind", "127.0.0.1:0",
         "--workers", "1", "--pool-mode", "static"]


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A root-owned 0755 directory the service user can reach (pytest's are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="engine-security-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def service_dir(parent: Path, name: str = "run") -> Path:
    """A directory owned by the service user, as /run/engine often is."""
    assert NOBODY is not None
    directory = parent / name
    directory.mkdir()
    os.chown(directory, NOBODY.pw_uid, NOBODY.pw_gid)
    parent.chmod(0o755)
    return directory


def victim(parent: Path) -> Path:
    """A root-owned file an attacker would like root to write to."""
    path = parent / "precious"
    path.write_text("precious\n")
    return path


def refused(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``engine ARGS``, which must refuse to start; a server that starts fails."""
    try:
        return run_cli(args, env=READY, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"engine started instead of refusing: {args}")


# --- point 1: no symlink followed, no predictable temporary name ---


def test_pidfile_is_written_without_a_predictable_temporary_name(tmp_path: Path) -> None:
    target = victim(tmp_path)
    directory = service_dir(tmp_path)
    path = directory / "engine.pid"
    # What an attacker with the directory can plant: the old temporary names.
    for pid in (os.getpid(), *range(os.getpid() + 1, os.getpid() + 50)):
        (directory / f"engine.pid.{pid}.tmp").symlink_to(target)
    pidfile.write(str(path), os.getpid())
    assert target.read_text() == "precious\n"
    assert pidfile.read(str(path)) == os.getpid()
    assert not path.is_symlink()
    # A symlink at the pidfile itself is replaced, not followed, and not read.
    path.unlink()
    path.symlink_to(target)
    assert pidfile.read(str(path)) is None
    pidfile.write(str(path), os.getpid())
    assert target.read_text() == "precious\n" and not path.is_symlink()
    assert sorted(p.name for p in directory.iterdir() if not p.name.endswith(".tmp")) == [
        "engine.pid"
    ]


@pytest.mark.parametrize("setting", ["log-file", "access-log"])
def test_log_files_are_not_opened_through_a_planted_symlink(
    tmp_path: Path, setting: str
) -> None:
    target = victim(tmp_path)
    directory = service_dir(tmp_path, "log")  # the service user's own log directory
    (directory / "engine.log").symlink_to(target)
    result = refused([*SERVE, "--user", "nobody", f"--{setting}", str(directory / "engine.log")])
    assert result.returncode == 2, result.stderr
    name = setting.replace("-", "_")
    assert f"invalid setting {name}=" in result.stderr and "symbolic link" in result.stderr
    assert "Traceback" not in result.stderr
    assert target.read_text() == "precious\n"


def test_log_file_with_another_hard_link_is_refused(tmp_path: Path) -> None:
    from engine import safefiles  # new with the fix: the test fails on the old code

    target = victim(tmp_path)
    os.link(target, tmp_path / "engine.log")
    with pytest.raises(OSError, match="hard links"):
        safefiles.open_append(str(tmp_path / "engine.log"))
    assert target.read_text() == "precious\n"


# --- point 1: directories other users can write are refused while privileged ---


def writable_by_all(parent: Path, sticky: bool = False) -> Path:
    directory = parent / ("sticky" if sticky else "shared")
    directory.mkdir()
    directory.chmod(0o1777 if sticky else 0o777)
    parent.chmod(0o755)
    return directory


@pytest.mark.parametrize(("setting", "flag", "value"), [
    ("pidfile", "--pidfile", "{dir}/engine.pid"),
    ("log_file", "--log-file", "{dir}/engine.log"),
    ("access_log", "--access-log", "{dir}/access.log"),
    ("bind", "--bind", "unix:{dir}/engine.sock"),
    ("status_bind", "--status-bind", "unix:{dir}/status.sock"),
])
def test_paths_in_a_directory_others_can_write_are_refused(
    tmp_path: Path, setting: str, flag: str, value: str
) -> None:
    directory = writable_by_all(tmp_path)
    result = refused([*SERVE, "--user", "nobody", flag, value.format(dir=directory)])
    assert result.returncode == 2, result.stderr
    assert f"invalid setting {setting}=" in result.stderr, result.stderr
    assert "writable by every user" in result.stderr and "Traceback" not in result.stderr
    assert list(directory.iterdir()) == []  # nothing was created there


def test_a_directory_of_another_user_is_refused_without_user_switch(tmp_path: Path) -> None:
    directory = service_dir(tmp_path)  # nobody's: fine for --user nobody, not for root alone
    result = refused([*SERVE, "--pidfile", str(directory / "engine.pid")])
    assert result.returncode == 2
    assert "invalid setting pidfile=" in result.stderr and "owned by uid" in result.stderr


def test_a_symlinked_directory_on_the_way_is_checked_too(tmp_path: Path) -> None:
    shared = writable_by_all(tmp_path)
    (tmp_path / "run").symlink_to(shared)  # root's link, into a directory all can write
    result = refused([*SERVE, "--pidfile", str(tmp_path / "run" / "engine.pid")])
    assert result.returncode == 2 and "writable by every user" in result.stderr


def test_sticky_directory_is_accepted_for_a_path_root_owns(
    engine_proc: Start, tmp_path: Path
) -> None:
    assert NOBODY is not None
    sticky = writable_by_all(tmp_path, sticky=True)
    planted = sticky / "planted.pid"
    planted.write_text("1\n")
    os.chown(planted, NOBODY.pw_uid + 1 if NOBODY.pw_uid < 65535 else 1, 0)  # a stranger's
    result = refused([*SERVE, "--pidfile", str(planted)])
    assert result.returncode == 2 and "sticky" not in result.stderr.split(":")[0]
    assert "invalid setting pidfile=" in result.stderr
    engine = engine_proc(CLI, env=READY, args=[*SERVE, "--pidfile", str(sticky / "engine.pid")])
    assert pidfile.read(str(sticky / "engine.pid")) == engine.pid
    engine.signal(signal.SIGTERM)
    assert engine.wait() == 0


def test_a_symlink_in_a_directory_of_the_service_user_is_not_followed(
    tmp_path: Path,
) -> None:
    """The service user owns /run/engine and may put a link to a root directory in it:
    root used to follow it, and wrote the pidfile and the logs there."""
    assert NOBODY is not None
    root_only = tmp_path / "root-only"
    root_only.mkdir(mode=0o700)
    target = victim(root_only)
    directory = service_dir(tmp_path)
    (directory / "sub").symlink_to(root_only)
    os.lchown(directory / "sub", NOBODY.pw_uid, NOBODY.pw_gid)
    for flag, name, setting in (
        ("--pidfile", "precious", "pidfile"), ("--log-file", "precious", "log_file"),
        ("--access-log", "new.log", "access_log"),
    ):
        path = directory / "sub" / name
        result = refused([*SERVE, "--user", "nobody", flag, str(path)])
        assert result.returncode == 2, result.stderr
        assert f"invalid setting {setting}=" in result.stderr
        assert f"{directory} is owned by uid {NOBODY.pw_uid}" in result.stderr
        assert "a directory on the way must be root's alone" in result.stderr
        assert "Traceback" not in result.stderr
    assert target.read_text() == "precious\n"
    assert sorted(p.name for p in root_only.iterdir()) == ["precious"]


def test_a_missing_directory_in_a_sticky_directory_is_refused(tmp_path: Path) -> None:
    """Anyone may create the missing ``sub`` in a sticky directory, as a symlink, between
    the check and the open: it used to be accepted."""
    from engine.safefiles import Trusted, unsafe_reason

    assert NOBODY is not None
    sticky = writable_by_all(tmp_path, sticky=True)
    service = Trusted.for_service(NOBODY.pw_uid, NOBODY.pw_gid)
    reason = unsafe_reason(str(sticky / "sub" / "engine.log"), service)
    assert reason == (f"{sticky} is writable by every user; {sticky / 'sub'} is on the "
                      "way, and a directory on the way must be root's alone"), reason
    assert unsafe_reason(str(sticky / "engine.log"), service) is None  # the file may be
    # Missing below a directory only root can write: nobody else can create it.
    assert unsafe_reason(str(tmp_path / "missing" / "engine.log"), service) is None
    result = refused([*SERVE, "--user", "nobody", "--log-file", str(sticky / "sub" / "x.log")])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "a directory on the way must be root's alone" in result.stderr


def test_an_abstract_socket_name_is_refused_not_made_a_file(tmp_path: Path) -> None:
    """``unix:@NAME`` was taken for an abstract socket by the checks but bound as a file
    named @NAME in the working directory, unchecked."""
    result = refused([*SERVE, "--status-bind", "unix:@status.sock", "--chdir", str(tmp_path)])
    assert result.returncode == 2, result.stderr
    assert "invalid setting status_bind='unix:@status.sock'" in result.stderr
    assert "abstract sockets (unix:@NAME) are not supported" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_status_socket_is_never_chmoded_by_path(tmp_path: Path) -> None:
    """A chmod by path after bind() could be sent to another file through a symlink
    swapped in meanwhile; the mode is set on the socket before bind()."""
    import stat
    import sys

    from engine.status import StatusServer

    calls: list[tuple[object, ...]] = []
    watching = True

    def hook(event: str, args: tuple[object, ...]) -> None:
        if watching and event == "os.chmod":
            calls.append(args)

    sys.addaudithook(hook)  # cannot be removed: the flag turns it off
    try:
        server = StatusServer(f"unix:{tmp_path / 'status.sock'}", lambda: {})
    finally:
        watching = False
    try:
        assert [c for c in calls if not isinstance(c[0], int)] == []  # fchmod only
        assert stat.S_IMODE(os.stat(tmp_path / "status.sock").st_mode) == 0o600
    finally:
        server.close()


def test_a_config_file_another_user_can_write_is_refused_as_root(tmp_path: Path) -> None:
    """The service user could otherwise write ``user = "root"`` (or the files root opens,
    or the handler to import) into it, for the next start."""
    assert NOBODY is not None
    config = tmp_path / "engine.toml"
    config.write_text('workers = 1\nuser = "nobody"\n')
    check = [*SERVE, "--config", str(config), "--check-config"]
    assert run_cli(check, timeout=30).returncode == 0  # root's, 0644: fine
    for owner, mode, writer in ((NOBODY.pw_uid, 0o644, f"uid {NOBODY.pw_uid}, its owner"),
                                (0, 0o646, "every user"),
                                (0, 0o664, f"group {NOBODY.pw_gid}")):
        os.chown(config, owner, NOBODY.pw_gid)
        config.chmod(mode)
        result = run_cli(check, timeout=30)
        assert result.returncode == 2, result.stderr
        assert f"invalid setting config='{config}'" in result.stderr
        assert f"writable by {writer}" in result.stderr and "Traceback" not in result.stderr
        assert "a file path" not in result.stderr  # said once, not wrapped in another
    os.chown(config, 0, 0)
    config.chmod(0o664)  # group root may write it
    assert run_cli(check, timeout=30).returncode == 0


# --- issue 13 item 12: what the service user cannot clean up is said at start ---


def test_files_the_service_user_cannot_remove_are_reported(
    engine_proc: Start, public_dir: Path
) -> None:
    # Root's 0755 directory, not writable by nobody: the files stay behind.
    pid_path, status = public_dir / "engine.pid", public_dir / "status.sock"
    unix = public_dir / "s.sock"
    engine = engine_proc(CLI, env=READY, args=[
        *SERVE, "--bind", f"unix:{unix}", "--user", "nobody", "--pidfile", str(pid_path),
        "--status-bind", f"unix:{status}",
    ])
    wait_until(lambda: "running as user nobody" in engine.log(), 10, "the switch")
    log = engine.log()
    assert f"the pidfile {pid_path} will stay behind" in log, log
    assert f"the socket file {unix} will stay behind" in log
    assert f"the socket file {status} will stay behind" in log
    assert exchange(engine.address, b"x\n")
    # An upgrade cannot set the pidfile aside: it says so (it used to fail silently).
    engine.signal(signal.SIGUSR2)
    wait_until(lambda: "cannot rename the pidfile" in engine.log(), 10, "the rename failure")
    wait_until(lambda: "upgrade failed" in engine.log(), 20, "the failed upgrade")
    engine.signal(signal.SIGTERM)
    assert engine.wait() == 0
    assert f"cannot remove the pidfile {pid_path}" in engine.log()
    assert "Traceback" not in engine.log()
    assert pid_path.exists() and unix.exists() and status.exists()  # as announced


def test_no_warning_when_the_service_user_owns_the_directory(
    engine_proc: Start, public_dir: Path
) -> None:
    directory = service_dir(public_dir)
    pid_path = directory / "engine.pid"
    engine = engine_proc(CLI, env=READY, args=[
        *SERVE, "--user", "nobody", "--pidfile", str(pid_path),
        "--status-bind", f"unix:{directory / 'status.sock'}",
    ])
    wait_until(lambda: "running as user nobody" in engine.log(), 10, "the switch")
    engine.signal(signal.SIGTERM)
    assert engine.wait() == 0
    assert "will stay behind" not in engine.log() and "cannot remove" not in engine.log()
    assert list(directory.iterdir()) == []


def test_group_writable_directory_is_trusted_only_for_root_or_the_service_group(
    tmp_path: Path,
) -> None:
    from engine.safefiles import Trusted, unsafe_reason

    assert NOBODY is not None
    directory = tmp_path / "group"
    directory.mkdir(mode=0o770)
    directory.chmod(0o770)
    service = Trusted.for_service(NOBODY.pw_uid, NOBODY.pw_gid)
    os.chown(directory, 0, NOBODY.pw_gid)
    assert unsafe_reason(str(directory / "engine.pid"), service) is None
    assert "writable by group" in str(
        unsafe_reason(str(directory / "engine.pid"), Trusted.for_service(None, None))
    )
    os.chown(directory, 0, 0)
    assert unsafe_reason(str(directory / "engine.pid"), Trusted.for_service(None, None)) is None


def test_an_unprivileged_process_is_not_checked(tmp_path: Path) -> None:
    """Only root's opens are at stake: as nobody, a shared directory is not refused."""
    from engine.safefiles import Trusted, check_path

    assert NOBODY is not None
    shared = writable_by_all(tmp_path)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.setgroups([])
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
            check_path("pidfile", str(shared / "engine.pid"), Trusted.for_service(None, None))
            os.write(write_end, b"accepted")
        except Exception as exc:
            os.write(write_end, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    assert answer == b"accepted"
