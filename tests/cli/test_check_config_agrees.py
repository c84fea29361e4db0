"""``--check-config`` refuses what the start refuses, with the same message, and
creates nothing; every message names where the value came from.

Found probing from outside: ``--check-config`` exited 0 for a missing ``chdir``, a log
file, access log, pidfile or status socket in a missing directory, a log file that is
a directory, all of which the start refused with exit 2; ``--ca-certs`` and
``--tls-ciphers`` without ``--certfile`` were accepted (``--keyfile`` alone was not);
``--worker-timeout 0.5`` was accepted and killed every idle worker; ``umask = 77`` in
a TOML file was read as decimal; and the system checks' messages left out
``(from SOURCE)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kit import ROOT, run_cli

ECHO = "engine.examples.echo:EchoHandler"
BASE = ["serve", ECHO, "--bind", "127.0.0.1:0", "--workers", "1"]


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("engine: error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def both_refuse(args: list[str], env: dict[str, str] | None = None) -> str:
    """Run the start and --check-config; both exit 2 with one and the same error line,
    with no traceback; return that line."""
    checked = run_cli([*BASE, *args, "--check-config"], env=env)
    started = run_cli([*BASE, *args], env=env)
    for result in (checked, started):
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr
        assert "serving" not in result.stderr and "READY" not in result.stdout
    line = error_line(checked.stderr)
    assert line == error_line(started.stderr)
    assert checked.stdout == ""  # nothing printed as if it were fine
    return line


def paths(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "a_file").write_text("")
    return {
        "missing": "/nonexistent/engine-test/x",
        "dir": str(tmp_path),
        "under_file": str(tmp_path / "a_file" / "x"),
        "file": str(tmp_path / "a_file"),
    }


@pytest.mark.parametrize(
    ("flag", "where", "expected"),
    [
        ("--chdir", "missing", "a directory the engine can enter (No such file or directory)"),
        ("--chdir", "file", "a directory the engine can enter (Not a directory)"),
        ("--log-file", "missing",
         "a file that can be opened for appending (No such file or directory)"),
        ("--log-file", "dir", "a file that can be opened for appending (Is a directory)"),
        # As root, engine.safefiles finds it first: "... cannot be checked (Not a directory)".
        ("--log-file", "under_file", "(Not a directory)"),
        ("--access-log", "missing",
         "a file that can be opened for appending (No such file or directory)"),
        ("--access-log", "dir", "a file that can be opened for appending (Is a directory)"),
        ("--pidfile", "missing", "a writable path (No such file or directory)"),
        ("--pidfile", "dir", "a writable path (Is a directory)"),
        ("--status-bind", "missing", "an address free to listen on (No such file or directory)"),
        ("--status-bind", "file",
         "a path that is free or a stale socket (this one exists and is not a socket)"),
    ],
)
def test_check_config_refuses_the_paths_the_start_refuses(
    tmp_path: Path, flag: str, where: str, expected: str
) -> None:
    path = paths(tmp_path)[where]
    value = f"unix:{path}" if flag == "--status-bind" else path
    line = both_refuse([flag, value])
    setting = flag[2:].replace("-", "_")
    assert line.startswith(f"engine: error: invalid setting {setting}={value!r}: "), line
    assert expected in line and line.endswith(f" (from cli {flag})"), line


@pytest.mark.parametrize(("where", "expected"), [
    ("missing", "an address free to listen on (No such file or directory)"),
    ("file", "a path that is free or a stale socket (this one exists and is not a socket)"),
])
def test_a_unix_bind_the_start_cannot_listen_on_is_refused_by_both(
    tmp_path: Path, where: str, expected: str
) -> None:
    """--check-config said 0 for a Unix socket in a missing directory, and the start
    then failed with "cannot listen" (exit 1): a path, checked as the other paths are."""
    value = f"unix:{paths(tmp_path)[where]}"
    line = both_refuse(["--bind", value])
    assert line.startswith(f"engine: error: invalid setting bind={value!r}: "), line
    assert expected in line and line.endswith(" (from cli --bind)"), line


def test_a_relative_missing_chdir_is_refused_as_an_absolute_path() -> None:
    line = both_refuse(["--chdir", "no-such-dir-for-engine-tests"])
    assert f"chdir='{ROOT}/no-such-dir-for-engine-tests'" in line  # run_cli runs in ROOT


def test_check_config_creates_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    result = run_cli([
        *BASE, "--log-file", str(run / "engine.log"), "--access-log", str(run / "a.log"),
        "--pidfile", str(run / "engine.pid"), "--status-bind", f"unix:{run / 'status.sock'}",
        "--chdir", str(run), "--check-config",
    ])
    assert result.returncode == 0, result
    assert list(run.iterdir()) == []


def test_check_config_accepts_existing_files_and_leaves_them_alone(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text("old line\n")
    pidfile = tmp_path / "engine.pid"
    pidfile.write_text("garbage")

    def state() -> list[tuple[int, ...]]:
        return [(s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_mode)
                for s in (log.stat(), pidfile.stat())]

    before = state()
    result = run_cli([*BASE, "--log-file", str(log), "--pidfile", str(pidfile),
                      "--check-config"])
    assert result.returncode == 0, result
    assert state() == before
    assert log.read_text() == "old line\n" and pidfile.read_text() == "garbage"


# --- settings the registry now refuses, from the command line ---


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--ca-certs", "/etc/ssl/ca.pem"],
         "invalid setting ca_certs='/etc/ssl/ca.pem': used with certfile (from cli --ca-certs)"),
        (["--tls-ciphers", "NOSUCH"],
         "invalid setting tls_ciphers='NOSUCH': used with certfile (from cli --tls-ciphers)"),
        (["--worker-timeout", "0.5"], "invalid setting worker_timeout='0.5': a number of "
         "seconds >= 2 (twice the 1s period of an idle worker's heartbeat)"),
        (["--worker-timeout", "900ms"], "invalid setting worker_timeout='900ms'"),
    ],
)
def test_settings_refused_by_the_registry(args: list[str], expected: str) -> None:
    assert error_line(run_cli([*BASE, *args, "--check-config"]).stderr).startswith(
        f"engine: error: {expected}"
    )
    result = run_cli([*BASE, *args])
    assert result.returncode == 2 and error_line(result.stderr).startswith(
        f"engine: error: {expected}"
    )


def test_an_integer_mode_in_the_config_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "engine.toml"
    config.write_text("umask = 77\n")
    line = both_refuse(["--config", str(config)])
    assert line.startswith("engine: error: invalid setting umask=77: a string of octal digits, "
                           'e.g. "0660"')
    assert line.endswith(f"(from file {config})")


# --- the system checks name the source too ---


@pytest.mark.parametrize(
    ("args", "env", "toml", "fragments"),
    [
        (["--user", "no-such-user-here"], {}, None,
         ["invalid setting user='no-such-user-here': an existing user name or a uid "
          "(from cli --user)"]),
        ([], {"ENGINE_CHDIR": "/nonexistent/engine-test"}, None,
         ["invalid setting chdir='/nonexistent/engine-test'", "(from env ENGINE_CHDIR)"]),
        ([], {}, 'pidfile = "/nonexistent/engine-test/e.pid"\n',
         ["invalid setting pidfile=", "(from file "]),
        ([], {"ENGINE_LOG_FILE": "/nonexistent/engine-test/e.log"}, None,
         ["invalid setting log_file=", "(from env ENGINE_LOG_FILE)"]),
        ([], {"ENGINE_STATUS_BIND": "unix:/nonexistent/engine-test/s"}, None,
         ["invalid setting status_bind=", "(from env ENGINE_STATUS_BIND)"]),
    ],
)
def test_system_check_errors_name_the_source(
    tmp_path: Path, args: list[str], env: dict[str, str], toml: str | None,
    fragments: list[str],
) -> None:
    if toml is not None:
        config = tmp_path / "engine.toml"
        config.write_text(toml)
        args = [*args, "--config", str(config)]
    line = both_refuse(args, env=env)
    for fragment in fragments:
        assert fragment in line, line
    assert line.count("(from ") == 1, line



@pytest.mark.parametrize(
    ("flag", "value"),
    [("--pidfile", "/run/engine-test-not-made-yet/engine.pid"),
     ("--status-bind", "unix:/run/engine-test-not-made-yet/status.sock"),
     ("--log-file", "/var/log/engine-test-not-made-yet/engine.log")],
)
def test_a_directory_systemd_makes_at_start_may_be_missing_for_check_config(
    flag: str, value: str
) -> None:
    # systemd makes RuntimeDirectory= and LogsDirectory= when it starts the service:
    # a config checked before then is fine, with a note; the start itself needs them.
    directory = value.removeprefix("unix:").rsplit("/", 1)[0]
    checked = run_cli([*BASE, flag, value, "--check-config"])
    assert checked.returncode == 0, checked
    assert f"engine: note: {directory} does not exist yet" in checked.stderr
    started = run_cli([*BASE, flag, value])
    assert started.returncode == 2, started
    assert "(No such file or directory)" in error_line(started.stderr)
    assert not Path(directory).exists()
