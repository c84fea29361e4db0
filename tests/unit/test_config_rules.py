"""Registry rules found by probing from outside: values every source used to accept
that the running engine then mishandled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.config import build, resolve
from engine.config.settings import WORKER_TIMEOUT_MIN, registry
from engine.errors import ConfigError
from workers.worker import IDLE_WAKE


def refused(values: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        build(values)
    return caught.value


# --- worker_timeout: not below what an idle worker's heartbeat needs ---


def test_the_worker_timeout_floor_is_twice_the_heartbeat_period() -> None:
    # An idle worker (sync or gevent) writes its heartbeat every IDLE_WAKE seconds: a
    # worker_timeout at or below that killed every idle worker, again and again.
    assert WORKER_TIMEOUT_MIN == 2 * IDLE_WAKE


@pytest.mark.parametrize("value", [0.5, 0.9, 1, "1s", "1999ms", WORKER_TIMEOUT_MIN - 0.001])
def test_a_worker_timeout_below_the_floor_is_refused(value: Any) -> None:
    error = refused({"worker_timeout": value})
    assert error.setting == "worker_timeout"
    assert f">= {WORKER_TIMEOUT_MIN:g}" in error.allowed and "heartbeat" in error.allowed


@pytest.mark.parametrize("value", [WORKER_TIMEOUT_MIN, "2s", 30, "off", None])
def test_a_worker_timeout_at_the_floor_or_off_is_accepted(value: Any) -> None:
    build({"worker_timeout": value})


def test_the_floor_is_in_the_help() -> None:
    field = next(f for f in registry() if f.name == "worker_timeout")
    assert f"At least {WORKER_TIMEOUT_MIN:g} s" in field.metadata["help"]


# --- umask and socket_mode: a TOML integer is ambiguous ---


@pytest.mark.parametrize(("key", "number"), [("socket_mode", 660), ("umask", 77),
                                             ("umask", 0), ("socket_mode", 432)])
def test_an_integer_mode_in_a_toml_file_is_refused(
    tmp_path: Path, key: str, number: int
) -> None:
    # TOML reads 660 as decimal (0o1224) and 0o660 as 432: nothing tells them apart,
    # where the env var and the flag read "660" as octal.
    path = tmp_path / "engine.toml"
    path.write_text(f"{key} = {number}\n")
    with pytest.raises(ConfigError) as caught:
        resolve({}, env={}, config_path=path)
    error = caught.value
    assert error.setting == key and error.value == number
    assert 'a string of octal digits, e.g. "0660"' in error.allowed
    assert f"from file {path}" in str(error)


@pytest.mark.parametrize(("text", "mode"), [('"0660"', 0o660), ('"660"', 0o660),
                                            ('"0o660"', 0o660), ("'027'", 0o27)])
def test_a_string_mode_in_a_toml_file_is_octal(tmp_path: Path, text: str, mode: int) -> None:
    path = tmp_path / "engine.toml"
    path.write_text(f"socket_mode = {text}\numask = {text}\n")
    settings = resolve({}, env={}, config_path=path).settings
    assert settings.socket_mode == settings.umask == mode


def test_every_source_reads_660_as_the_same_mode(tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text('socket_mode = "660"\n')
    from_file = resolve({}, env={}, config_path=path).settings.socket_mode
    from_env = resolve({}, env={"ENGINE_SOCKET_MODE": "660"}).settings.socket_mode
    from_cli = resolve({"socket_mode": "660"}, env={}).settings.socket_mode
    assert from_file == from_env == from_cli == 0o660
    assert build({"socket_mode": 0o660}).socket_mode == 0o660  # Python: 0o660 is plain


# --- TLS settings that only mean something with certfile ---


@pytest.mark.parametrize(
    ("setting", "value"),
    [("ca_certs", "/etc/ssl/ca.pem"), ("tls_ciphers", "NOSUCH"), ("keyfile", "k.pem")],
)
def test_tls_settings_without_certfile_are_refused(setting: str, value: str) -> None:
    error = refused({setting: value})
    assert error.setting == setting and error.value == value
    assert error.allowed == "used with certfile"


def test_tls_settings_with_certfile_pass_the_registry() -> None:
    build({"certfile": "c.pem", "keyfile": "k.pem", "ca_certs": "ca.pem",
           "tls_ciphers": "ECDHE+AESGCM", "tls_verify_client": "required"})
