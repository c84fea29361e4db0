"""Settings sources (defaults, TOML file, ENGINE_* environment, command line) and the
one precedence function, engine.config.sources.resolve()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.config import Origin, Settings, load_settings, read_env, read_file, resolve
from engine.errors import ConfigError


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "engine.toml"
    path.write_text(text)
    return path


def config_error(**kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        resolve(**kwargs)
    return info.value


def test_defaults_only() -> None:
    resolved = resolve({}, env={})
    assert resolved.settings == Settings()
    assert set(resolved.origins.values()) == {Origin("default")}
    assert str(Origin("default")) == "default"


def test_precedence_cli_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = toml(tmp_path, "max_children = 10\nmin_spare = 1\nmax_spare = 7\n")
    env = {"ENGINE_MAX_CHILDREN": "20", "ENGINE_MIN_SPARE": "3"}
    resolved = resolve({"max_children": "30"}, env=env, config_path=path)
    s = resolved.settings
    assert (s.max_children, s.min_spare, s.max_spare, s.threads) == (30, 3, 7, 1)
    assert resolved.origins["max_children"] == Origin("cli", "--max-children")
    assert resolved.origins["min_spare"] == Origin("env", "ENGINE_MIN_SPARE")
    assert resolved.origins["max_spare"] == Origin("file", str(path))
    assert resolved.origins["threads"] == Origin("default")
    assert str(resolved.origins["min_spare"]) == "env ENGINE_MIN_SPARE"


@pytest.mark.parametrize(
    ("cli", "env", "file", "expected"),
    [
        (None, None, None, 40),
        (None, None, 11, 11),
        (None, "12", 11, 12),
        ("13", "12", 11, 13),
        ("13", None, None, 13),
        ("13", None, 11, 13),
    ],
)
def test_each_layer_overrides_the_lower_ones(
    tmp_path: Path, cli: str | None, env: str | None, file: int | None, expected: int
) -> None:
    path = toml(tmp_path, f"max_children = {file}\n") if file is not None else None
    resolved = resolve(
        {"max_children": cli} if cli else {},
        env={"ENGINE_MAX_CHILDREN": env} if env else {},
        config_path=path,
    )
    assert resolved.settings.max_children == expected


def test_typed_values_from_each_source(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        'bind = ["127.0.0.1:9000", "unix:/tmp/x.sock"]\nudp = true\nidle_timeout = 2.5\n'
        'max_worker_memory = "512M"\nworkers = 2\npool_mode = "Static"\n',
    )
    s = load_settings({}, env={}, config_path=path)
    assert s.bind == ("127.0.0.1:9000", "unix:/tmp/x.sock") and s.udp is True
    assert (s.idle_timeout, s.max_worker_memory, s.workers) == (2.5, 512 * 1024**2, 2)
    assert s.pool_mode == "static"
    env = {
        "ENGINE_BIND": "127.0.0.1:9000,unix:/tmp/x.sock", "ENGINE_UDP": "yes",
        "ENGINE_WORKERS": "auto", "ENGINE_REQUEST_TIMEOUT": "off",
        "ENGINE_GC_FREEZE": "0",
    }
    s = load_settings({}, env=env)
    assert s.bind == ("127.0.0.1:9000", "unix:/tmp/x.sock") and s.udp is True
    assert s.workers is None and s.request_timeout is None and s.gc_freeze is False
    s = load_settings({"bind": ["[::1]:1"], "udp": False, "threads": "4"}, env=env)
    assert s.bind == ("[::1]:1",) and s.udp is False and s.threads == 4


def test_env_reads_only_setting_variables() -> None:
    env = {"ENGINE_WORKERS": "3", "ENGINE_READY_LINE": "1", "ENGINE_HTTP_DIR": "/",
           "WORKERS": "9", "engine_threads": "2"}
    assert read_env(env) == {"workers": "3"}


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_MAX_REQUESTS", "77")
    resolved = resolve({})
    assert resolved.settings.max_requests == 77
    assert resolved.origins["max_requests"] == Origin("env", "ENGINE_MAX_REQUESTS")


def test_file_layout_is_top_level_keys(tmp_path: Path) -> None:
    assert read_file(toml(tmp_path, "threads = 2\n")) == {"threads": 2}
    error = config_error(env={}, config_path=toml(tmp_path, "[engine]\nthreads = 2\n"))
    assert error.setting == "engine"
    assert "top level" in error.allowed and "unknown key 'engine'" in error.allowed


def test_bad_values_name_the_setting_and_the_source(tmp_path: Path) -> None:
    error = config_error(cli_values={"max_children": "0"}, env={})
    assert (error.setting, error.value) == ("max_children", "0")
    assert "from 1 to 4096" in error.allowed and "(from cli --max-children)" in error.allowed
    assert str(error).startswith("invalid setting max_children='0': ")

    error = config_error(env={"ENGINE_WORKERS": "abc"})
    assert (error.setting, error.value) == ("workers", "abc")
    assert "(from env ENGINE_WORKERS)" in error.allowed

    path = toml(tmp_path, 'max_children = "x"\n')
    error = config_error(env={}, config_path=path)
    assert (error.setting, error.value) == ("max_children", "x")
    assert f"(from file {path})" in error.allowed

    error = config_error(env={"ENGINE_BIND": "127.0.0.1:1,nowhere"})
    assert (error.setting, error.value) == ("bind", "nowhere")


def test_a_bad_lower_layer_is_harmless_when_overridden(tmp_path: Path) -> None:
    # Validation is of the merged result: only the value that wins must be valid.
    path = toml(tmp_path, 'threads = "many"\n')
    s = load_settings({"threads": "2"}, env={"ENGINE_THREADS": "x"}, config_path=path)
    assert s.threads == 2


def test_unknown_keys(tmp_path: Path) -> None:
    error = config_error(env={}, config_path=toml(tmp_path, "max_childs = 3\n"))
    assert error.setting == "max_childs" and error.value == 3
    assert "unknown key 'max_childs'" in error.allowed
    error = config_error(cli_values={"no_such": 1}, env={})
    assert error.setting == "no_such" and "known setting" in error.allowed


def test_consistency_errors_name_the_source(tmp_path: Path) -> None:
    error = config_error(cli_values={"workers": "50"}, env={})
    assert error.setting == "workers" and "at most max_children (40)" in error.allowed
    assert "(from cli --workers)" in error.allowed
    error = config_error(env={"ENGINE_MIN_SPARE": "9"})
    assert error.setting == "min_spare" and "(from env ENGINE_MIN_SPARE)" in error.allowed


def test_unreadable_or_broken_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    error = config_error(env={}, config_path=missing)
    assert (error.setting, error.value) == ("config", str(missing))
    assert "readable TOML file" in error.allowed
    error = config_error(env={}, config_path=toml(tmp_path, "threads = = 2\n"))
    assert error.setting == "config" and "valid TOML" in error.allowed
    error = config_error(env={}, config_path=tmp_path)  # a directory
    assert error.setting == "config"


# --- config files that are not text files (#13.8) ---


@pytest.mark.timeout(10)  # a FIFO read without care blocks for ever
@pytest.mark.parametrize("kind", ["directory", "fifo", "device", "huge", "not-utf8", "nul"])
def test_a_config_path_that_is_no_toml_text_file_is_named(tmp_path: Path, kind: str) -> None:
    import os

    path: Path | str = tmp_path / "engine.toml"
    if kind == "directory":
        path = tmp_path
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = "/dev/zero"
    elif kind == "huge":
        Path(path).write_text("# padding\n" * 200_000)
    elif kind == "not-utf8":
        Path(path).write_bytes(b"\xff\xfe x")
    else:
        path = "engine\0.toml"
    error = config_error(env={}, config_path=path)
    assert error.setting == "config"
    assert str(error).startswith("invalid setting config=")


# --- every rule in the registry (#13.10, #15.4) ---


@pytest.mark.parametrize("bind", ["0.0.0.0:9100", ":9100", "192.0.2.10:9100", "[::]:9100",
                                  "example.com:9100"])
def test_status_bind_must_be_loopback_in_the_registry(bind: str) -> None:
    from engine.config import build

    with pytest.raises(ConfigError) as info:
        build({"status_bind": bind})
    assert info.value.setting == "status_bind" and "loopback" in info.value.allowed


@pytest.mark.parametrize("bind", ["127.0.0.1:9100", "localhost:0", "[::1]:9100",
                                  "unix:/run/engine-status.sock"])
def test_loopback_status_binds_are_accepted(bind: str) -> None:
    from engine.config import build

    assert build({"status_bind": bind}).status_bind == bind


def test_stream_only_settings_are_one_rule_for_udp_and_datagram_servers() -> None:
    from engine.config.settings import check_stream_only

    with pytest.raises(ConfigError) as info:
        resolve({"udp": True, "proxy_protocol": True}, env={})
    assert info.value.setting == "proxy_protocol"
    with pytest.raises(ConfigError) as info:
        check_stream_only(Settings(certfile="c.pem"), datagram=True)
    assert info.value.setting == "certfile"
    check_stream_only(Settings(certfile="c.pem"), datagram=False)
