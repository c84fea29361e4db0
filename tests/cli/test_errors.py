"""Exit statuses of `engine` in a real subprocess: 2 for bad settings (from every
source) and bad handler paths, 3 when no worker can boot, 1 when it cannot listen,
and --check-config's precedence report."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kit import CLI, READY, ROOT, EngineProcess, kill_group, run_cli

ECHO = "engine.examples.echo:EchoHandler"


def assert_usage_error(result: object, *fragments: str) -> None:
    assert getattr(result, "returncode") == 2, result  # noqa: B009 - CompletedProcess
    err: str = getattr(result, "stderr")  # noqa: B009
    assert err.startswith("engine: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize(
    ("args", "env", "toml", "fragments"),
    [
        (["--max-children", "0"], {}, None,
         ["invalid setting max_children='0': an integer from 1 to 4096", "cli --max-children"]),
        ([], {"ENGINE_WORKERS": "abc"}, None,
         ["invalid setting workers='abc'", "env ENGINE_WORKERS"]),
        ([], {}, 'max_children = "x"\n', ["invalid setting max_children='x'", "from file "]),
        ([], {}, "max_childs = 3\n", ["invalid setting max_childs=3", "unknown key"]),
        ([], {}, "[engine]\nworkers = 2\n", ["invalid setting engine=", "top level"]),
        ([], {"ENGINE_POOL_MODE": "elastic"}, None, ["pool_mode='elastic'", "one of static"]),
        (["--bind", "localhost"], {}, None, ["bind='localhost'", "HOST:PORT"]),
        (["--workers", "0"], {}, None, ["workers=0", "ondemand"]),
        (["--bind", "127.0.0.1:0", "--keyfile", "k.pem"], {}, None,
         ["invalid setting keyfile='k.pem'", "used with certfile"]),
        (["--bind", "127.0.0.1:0", "--allow-from", "10.0.0.300/8"], {}, None,
         ["invalid setting allow_from='10.0.0.300/8'", "CIDR"]),
        (["--bind", "127.0.0.1:0", "--umask", "999"], {}, None,
         ["invalid setting umask='999'", "octal"]),
        (["--bind", "127.0.0.1:0", "--user", "no-such-user-here"], {}, None,
         ["invalid setting user='no-such-user-here'", "existing user"]),
        (["--bind", "127.0.0.1:0", "--udp", "--proxy-protocol"], {}, None,
         ["invalid setting proxy_protocol=True", "unset with udp"]),
        (["--bind", "127.0.0.1:0", "--log-file", "/nonexistent/dir/engine.log"], {}, None,
         ["invalid setting log_file='/nonexistent/dir/engine.log'", "No such file"]),
        (["--bind", "127.0.0.1:0"], {"ENGINE_ACCESS_LOG": "/nonexistent/dir/a.log"}, None,
         ["invalid setting access_log=", "opened for appending"]),
        # Found by hand: a process title, a status document and OpenSSL need UTF-8.
        (["--bind", "127.0.0.1:0"], {"ENGINE_PROC_NAME": os.fsdecode(b"caf\xe9")}, None,
         ["invalid setting proc_name=", "UTF-8"]),
        (["--bind", "127.0.0.1:0"], {"ENGINE_TLS_CIPHERS": os.fsdecode(b"\xffRSA")}, None,
         ["invalid setting tls_ciphers=", "UTF-8"]),
    ],
)
def test_bad_settings_exit_2_naming_the_setting(
    tmp_path: Path, args: list[str], env: dict[str, str], toml: str | None,
    fragments: list[str],
) -> None:
    config: list[str] = []
    if toml is not None:
        path = tmp_path / "engine.toml"
        path.write_text(toml)
        config = ["--config", str(path)]
    assert_usage_error(run_cli(["serve", ECHO, *config, *args], env=env), *fragments)


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run_cli(["serve", ECHO, "--config", str(tmp_path / "nope.toml")])
    assert_usage_error(result, "invalid setting config=", "readable TOML file")


@pytest.mark.parametrize(
    ("handler", "fragment"),
    [
        ("no_such_package.module:Handler", "cannot import handler 'no_such_package.module:"),
        ("engine.examples.echo:NoSuchHandler", "has no attribute 'NoSuchHandler'"),
        ("engine.examples.echo.EchoHandler", "must be MODULE:CLASS"),
    ],
)
def test_bad_handler_path_exits_2(handler: str, fragment: str) -> None:
    assert_usage_error(run_cli(["serve", handler]), fragment)


def test_argparse_errors_exit_2() -> None:
    result = run_cli(["serve"])
    assert result.returncode == 2 and "MODULE:CLASS" in result.stderr
    result = run_cli(["serve", ECHO, "--no-such-flag"])
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr
    # Choice settings are argparse choices (from their Literal types).
    result = run_cli(["serve", ECHO, "--pool-mode", "elastic"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "argument --pool-mode: invalid choice: 'elastic' (choose from 'static', " \
        "'dynamic', 'ondemand')" in result.stderr


def test_check_config_shows_precedence_and_sources(tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text("max_children = 11\nthreads = 3\nmax_requests = 100\n")
    result = run_cli(
        ["serve", ECHO, "--config", str(path), "--max-children", "13", "--check-config"],
        env={"ENGINE_MAX_CHILDREN": "12", "ENGINE_THREADS": "2"},
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split(" = ")[0]: line for line in result.stdout.splitlines()}
    assert lines["max_children"].startswith("max_children = 13 ")
    assert lines["max_children"].endswith("# cli --max-children")
    assert lines["threads"].startswith("threads = 2 ")
    assert lines["threads"].endswith("# env ENGINE_THREADS")
    assert lines["max_requests"].startswith("max_requests = 100 ")
    assert lines["max_requests"].endswith(f"# file {path}")
    assert lines["idle_timeout"].endswith("# default")
    assert f"# handler: {ECHO}" in result.stdout


def test_cannot_listen_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["serve", ECHO, "--bind", f"127.0.0.1:{port}"])
    assert result.returncode == 1
    assert f"engine: error: cannot listen on 127.0.0.1:{port}" in result.stderr


def test_no_worker_can_boot_exits_3(engine_proc: Callable[..., EngineProcess]) -> None:
    engine = engine_proc(
        CLI,
        args=["serve", "tests.apps.cli_apps:CrashOnBootHandler", "--bind", "127.0.0.1:0",
              "--workers", "2", "--pool-mode", "static"],
        env={**READY, "CLI_APPS_CRASH_WORKERS": "1"},
    )
    engine.snapshot()
    assert engine.wait(timeout=30) == 3
    log = engine.log()
    assert "engine: error: no worker could boot" in log
    assert "Traceback" not in log


def test_sigterm_before_serving_is_not_lost(engine_proc: Callable[..., EngineProcess]) -> None:
    # The READY line comes from inside the master loop, after its signal handlers are
    # in place: a SIGTERM sent the moment it is read is a graceful stop.
    engine = engine_proc(
        CLI, args=["serve", ECHO, "--bind", "127.0.0.1:0", "--workers", "1"], env=READY,
    )
    engine.signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0


# --- bad input from outside: bytes, wrong kinds of file, out-of-range options (#13.8) ---


@pytest.mark.parametrize(
    "command",
    [["serve", ECHO], ["serve", ECHO, "--check-config"], ["status"]],
    ids=["serve", "check-config", "status"],
)
def test_a_config_file_that_is_not_utf8_exits_2(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b"\xff\xfe x")
    result = run_cli([*command, "--config", str(path)])
    assert_usage_error(result, "invalid setting config=", "UTF-8")


@pytest.mark.parametrize("timeout", ["-1", "nan", "inf", "1e400", "0", "soon"])
def test_status_timeout_out_of_range_exits_2(timeout: str) -> None:
    result = run_cli(["status", "--status-bind", "127.0.0.1:9", "--timeout", timeout])
    assert_usage_error(result, "timeout")


def test_a_nul_in_a_toml_path_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "nul.toml"
    path.write_text('log_file = "engine\\u0000.log"\n')
    result = run_cli(["serve", ECHO, "--bind", "127.0.0.1:0", "--config", str(path)])
    assert_usage_error(result, "invalid setting log_file=")


# --- --check-config and the start agree: every rule is checked by both (#13.10) ---


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--status-bind", "0.0.0.0:9100"], ["invalid setting status_bind='0.0.0.0:9100'",
                                             "loopback"]),
        (["--status-bind", "[::]:9100"], ["invalid setting status_bind=", "loopback"]),
        (["--user", "no-such-user-here"], ["invalid setting user='no-such-user-here'"]),
        (["--certfile", "/nonexistent/cert.pem"], ["invalid setting certfile="]),
    ],
)
def test_check_config_refuses_what_the_start_refuses(
    args: list[str], fragments: list[str]
) -> None:
    for check in (["--check-config"], []):
        result = run_cli(["serve", ECHO, "--bind", "127.0.0.1:0", *args, *check])
        assert_usage_error(result, *fragments)


# --- a handler that is not one is refused before serving (#13.11) ---


@pytest.mark.parametrize(
    ("handler", "fragment"),
    [
        ("builtins:dict", "'builtins:dict' is not a request handler"),
        ("collections:OrderedDict", "is not a request handler"),
        ("engine:PreforkTCPServer", "is a server class, not a request handler"),
        ("engine.examples.demo:MAX_LINE", "is not a class"),
        ("engine.examples.nothing_here:Handler", "cannot import handler"),
    ],
)
def test_a_handler_that_is_not_a_request_handler_exits_2(handler: str, fragment: str) -> None:
    for check in (["--check-config"], []):
        result = run_cli(["serve", handler, "--bind", "127.0.0.1:0", *check])
        assert_usage_error(result, fragment)
        assert "serving" not in result.stderr


def test_a_handler_module_that_raises_on_import_exits_2_with_a_clear_first_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "broken_handler_module.py").write_text(
        "raise RuntimeError('the database is not configured')\n"
    )
    result = run_cli(
        ["serve", "broken_handler_module:Handler", "--bind", "127.0.0.1:0"],
        env={"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"},
    )
    assert result.returncode == 2, result
    first = result.stderr.splitlines()[0]
    assert first == (
        "engine: error: cannot import handler 'broken_handler_module:Handler': "
        "RuntimeError: the database is not configured"
    ), result.stderr
    # The user's own code failed: the traceback that follows says where.
    assert "the database is not configured" in result.stderr.splitlines()[-1]
    assert "serving" not in result.stderr


def test_a_group_id_beyond_uid_t_exits_2_before_serving() -> None:
    # Found by hand: --check-config passed, the start died in os.initgroups().
    for check in (["--check-config"], []):
        result = run_cli(["serve", ECHO, "--bind", "127.0.0.1:0", "--user", "root",
                          "--group", "99999999999999999999", *check])
        assert_usage_error(result, "invalid setting group='99999999999999999999'")


def test_bytes_that_are_not_utf8_in_argv_and_env_do_not_break_the_start(
    engine_proc: Callable[..., EngineProcess], tmp_path: Path,
) -> None:
    # Found by hand: the master died in setproctitle.getproctitle() (argv not UTF-8).
    # A path may hold any bytes but NUL.
    pidfile = os.fsdecode(bytes(tmp_path) + b"/engine\xff.pid")
    engine = engine_proc(
        CLI, args=["serve", ECHO, "--bind", "127.0.0.1:0", "--workers", "1",
                   "--pidfile", pidfile],
        env={**READY, "ENGINE_ACCESS_LOG": os.fsdecode(bytes(tmp_path) + b"/a\xff.log")},
    )
    engine.signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0
    assert "Traceback" not in engine.log()


# --- the hand-over variables (systemd, SIGUSR2 upgrade) with odd values (#13.8) ---


@pytest.mark.parametrize("value", ["99999999999999999999", "\u00b2", "3,x", "-1"])
def test_odd_handed_in_descriptors_exit_2(value: str) -> None:
    result = run_cli(["serve", ECHO, "--bind", "127.0.0.1:0"], env={"ENGINE_LISTEN_FDS": value})
    assert_usage_error(result, "LISTEN_FDS")


@pytest.mark.parametrize(
    "variables",
    [{"ENGINE_STATUS_FD": "\u00b2"}, {"ENGINE_STATUS_FD": "99999999999999999999"},
     {"ENGINE_UPGRADE_FROM": "\u00b2"}, {"ENGINE_UPGRADE_FROM": "9" * 30}],
    ids=["status-fd-superscript", "status-fd-huge", "upgrade-from-superscript",
         "upgrade-from-huge"],
)
def test_odd_upgrade_variables_are_ignored(
    engine_proc: Callable[..., EngineProcess], variables: dict[str, str]
) -> None:
    # Found by hand: int() of "²" (str.isdigit() is true) and a descriptor beyond C long
    # were tracebacks; a stale or foreign value must not stop the start.
    engine = engine_proc(
        CLI, args=["serve", ECHO, "--bind", "127.0.0.1:0", "--workers", "1"],
        env={**READY, **variables},
    )
    engine.signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0
    assert "Traceback" not in engine.log()


def test_a_huge_systemd_socket_count_exits_2() -> None:
    # LISTEN_FDS is read only when LISTEN_PID is ours: the wrapper sets both, then
    # becomes the engine. Memory is capped so the unfixed code fails fast (MemoryError)
    # instead of listing a billion descriptors.
    wrapper = (
        "import os, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1000000000')\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'engine', *sys.argv[1:]])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-c", wrapper, "serve", ECHO, "--bind", "127.0.0.1:0"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        kill_group(proc.pid, proc)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_usage_error(result, "invalid setting LISTEN_FDS='1000000000'")
