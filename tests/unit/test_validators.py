"""The pure validators of engine.config.validators: accepted forms, typed results,
and errors that name the setting, the value and what is allowed."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.config import validators as v
from engine.errors import ConfigError


def rejects(validator: v.Validator, value: Any, *allowed_words: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validator("some_setting", value)
    error = info.value
    assert error.setting == "some_setting" and error.value == value
    assert str(error).startswith(f"invalid setting some_setting={value!r}: ")
    for word in allowed_words:
        assert word in error.allowed
    return error


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(True, True), (False, False), ("yes", True), (" ON ", True), ("1", True),
     ("true", True), ("no", False), ("Off", False), ("0", False), ("FALSE", False)],
)
def test_boolean_accepts(raw: Any, expected: bool) -> None:
    assert v.boolean("x", raw) is expected


@pytest.mark.parametrize("raw", ["", "maybe", 1, 0, None, 2.0])
def test_boolean_rejects(raw: Any) -> None:
    rejects(v.boolean, raw, "boolean")


def test_int_range() -> None:
    check = v.int_range(1, 10)
    assert check("x", 1) == 1 and check("x", "10") == 10 and check("x", " 0x5 ") == 5
    for bad in (0, 11, "0", "abc", "", 1.5, True, None):
        rejects(check, bad, "from 1 to 10")
    unbounded = v.int_range(0)
    assert unbounded("x", 10**12) == 10**12
    rejects(unbounded, -1, ">= 0")


@given(st.integers(min_value=-(10**6), max_value=10**6))
def test_int_range_matches_its_bounds(number: int) -> None:
    check = v.int_range(-5, 5)
    if -5 <= number <= 5:
        assert check("x", number) == number == check("x", str(number))
    else:
        with pytest.raises(ConfigError):
            check("x", str(number))


def test_optional() -> None:
    check = v.optional(v.int_range(1, 3))
    assert check("x", None) is None and check("x", "none") is None and check("x", "") is None
    assert check("x", " OFF ") is None and check("x", "2") == 2
    rejects(check, "7", "from 1 to 3", "none/off")
    custom = v.optional(v.int_range(0, 3), none_words=("auto",))
    assert custom("x", "auto") is None
    rejects(custom, "none")


def test_duration() -> None:
    check = v.duration(0.0)
    assert check("x", 0) == 0.0 and check("x", "1.5") == 1.5 and check("x", 2) == 2.0
    for bad in (-1, "-0.1", "nan", "inf", "soon", True, None, [1]):
        rejects(check, bad, "seconds >= 0")
    exclusive = v.duration(0.0, exclusive=True)
    rejects(exclusive, 0, "seconds > 0")
    assert exclusive("x", "0.001") == 0.001


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(0, 0), (512, 512), ("512", 512), ("4K", 4096), ("4kb", 4096), ("2M", 2 * 1024**2),
     ("1GiB", 1024**3), (" 3 g ", 3 * 1024**3)],
)
def test_byte_size_accepts(raw: Any, expected: int) -> None:
    assert v.byte_size("x", raw) == expected


@pytest.mark.parametrize("raw", [-1, "1T", "-5M", "M", "1.5G", True, None, 2.0])
def test_byte_size_rejects(raw: Any) -> None:
    rejects(v.byte_size, raw, "size in bytes")


def test_choice() -> None:
    check = v.choice("static", "dynamic")
    assert check("x", " Static ") == "static"
    rejects(check, "elastic", "one of static, dynamic")
    rejects(check, 1)


def test_text() -> None:
    assert v.text("x", "  name ") == "name"
    for bad in ("", "   ", 5, None):
        rejects(v.text, bad, "non-empty string")


def test_log_level() -> None:
    log_level = v.log_level("debug", "info", "warning", "error", "critical")
    assert log_level("x", "WARNING") == "warning"
    assert log_level("x", logging.DEBUG) == "debug"
    for bad in ("verbose", 5, True, None):
        rejects(log_level, bad, "debug", "critical")


@pytest.mark.parametrize(
    "spec",
    ["127.0.0.1:8000", "localhost:0", ":9000", "[::1]:8000", "[fe80::1%eth0]:80",
     "unix:/tmp/x.sock", "127.0.0.1:65535"],
)
def test_bind_address_accepts(spec: str) -> None:
    assert v.bind_address("bind", spec) == spec


@pytest.mark.parametrize(
    "spec", ["127.0.0.1", "127.0.0.1:65536", "unix:", "::1:80", "host:port", "", 8000, None],
)
def test_bind_address_rejects(spec: Any) -> None:
    rejects(v.bind_address, spec, "HOST:PORT", "unix:PATH")


def test_bind_list() -> None:
    assert v.bind_list("bind", "127.0.0.1:1,unix:/tmp/a") == ("127.0.0.1:1", "unix:/tmp/a")
    assert v.bind_list("bind", ["[::1]:2"]) == ("[::1]:2",)
    assert v.bind_list("bind", ("127.0.0.1:3",)) == ("127.0.0.1:3",)
    rejects(v.bind_list, [], "list")
    rejects(v.bind_list, 8000, "list")
    with pytest.raises(ConfigError) as info:
        v.bind_list("bind", "127.0.0.1:1,nope")
    assert info.value.setting == "bind" and info.value.value == "nope"


def test_parse_bind() -> None:
    assert v.parse_bind("127.0.0.1:80") == (socket.AF_INET, ("127.0.0.1", 80))
    assert v.parse_bind(":80") == (socket.AF_INET, ("0.0.0.0", 80))
    assert v.parse_bind("[::1]:81") == (socket.AF_INET6, ("::1", 81))
    assert v.parse_bind("unix:/run/a.sock") == (socket.AF_UNIX, "/run/a.sock")


# --- values that passed validation and then failed (or crashed) at start (#13.8) ---


@pytest.mark.parametrize(
    "spec",
    ["unix:/" + "x" * 107, "h\u00e9te:80", "exa mple:80", "*:80", "\udcff:80", "a\0b:80",
     "unix:/tmp/a\0b"],
)
def test_bind_addresses_that_cannot_be_bound_are_refused(spec: str) -> None:
    rejects(v.bind_address, spec)


def test_the_longest_unix_path_is_accepted() -> None:
    spec = "unix:/" + "x" * 106
    assert v.bind_address("bind", spec) == spec


@pytest.mark.parametrize("value", ["a\0b", "\0"])
def test_text_with_nul_is_refused(value: str) -> None:
    rejects(v.text, value, "NUL")


@pytest.mark.parametrize("value", [1e10, "1e10", 10**12])
def test_durations_beyond_the_clocks_are_refused(value: Any) -> None:
    rejects(v.duration(0.0), value, "<= 1e+09")


# --- durations with units (#13.14) ---


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("250ms", 0.25), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), (" 1.5 h ", 5400.0),
     ("2H", 7200.0), ("0.5", 0.5), ("10", 10.0), ("1e3ms", 1.0), ("90S", 90.0)],
)
def test_durations_take_an_optional_unit(raw: str, seconds: float) -> None:
    assert v.duration(0.0)("t", raw) == seconds


@pytest.mark.parametrize("raw", ["5 minutes", "1h30m", "ms", "5x", "-1s", "1e400ms", "5mm",
                                 "nanms", "infh"])
def test_durations_with_bad_units_are_refused(raw: str) -> None:
    rejects(v.duration(0.0), raw, "ms, s, m, h")


def test_durations_with_units_from_every_source(tmp_path: Any) -> None:
    from engine import cli
    from engine.config import build, resolve

    config = tmp_path / "engine.toml"
    config.write_text('graceful_timeout = "5m"\n')
    settings = resolve(
        {"request_timeout": "1h"}, env={"ENGINE_IDLE_TIMEOUT": "250ms"}, config_path=config,
    ).settings
    assert (settings.graceful_timeout, settings.request_timeout, settings.idle_timeout) == (
        300.0, 3600.0, 0.25)
    assert build({"worker_timeout": "30s"}).worker_timeout == 30.0  # a class attribute
    assert cli.STATUS_TIMEOUT_VALIDATOR("timeout", "500ms") == 0.5  # engine status --timeout


@pytest.mark.parametrize("value", ["4294967295", "99999999999999999999", 2**32, 2**64])
def test_numeric_ids_beyond_uid_t_are_refused(value: Any) -> None:
    # Found by hand: accepted, then os.initgroups() raised OverflowError at start.
    rejects(v.account, value, "4294967294")


def test_the_largest_numeric_id_is_accepted() -> None:
    assert v.account("group", "4294967294") == "4294967294"
    assert v.account("group", 0) == "0"
