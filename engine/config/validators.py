"""Pure parse-and-validate functions for settings.

Each takes the setting's name and a raw value (a Python object from class attributes
or TOML, or a string from the CLI or the environment) and returns the typed value, or
raises :class:`~engine.errors.ConfigError` naming the setting, the value and what is
allowed.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from engine.errors import ConfigError

Validator = Callable[[str, Any], Any]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def boolean(name: str, value: Any) -> bool:
    """true/false, yes/no, on/off, 1/0."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(name, value, "a boolean (true/false, yes/no, on/off, 1/0)")


def _integer(name: str, value: Any, allowed: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(name, value, allowed)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip(), 0)
        except ValueError:
            pass
    raise ConfigError(name, value, allowed)


def int_range(low: int, high: int | None = None) -> Validator:
    """An integer in ``[low, high]`` (no upper bound when *high* is None)."""
    allowed = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def check(name: str, value: Any) -> int:
        number = _integer(name, value, allowed)
        if number < low or (high is not None and number > high):
            raise ConfigError(name, value, allowed)
        return number

    check.__doc__ = allowed
    return check


def optional(inner: Validator, none_words: Sequence[str] = ("", "none", "off")) -> Validator:
    """None (or one of *none_words* as a string), else what *inner* accepts."""

    words = "/".join(word for word in none_words if word) or "none"

    def check(name: str, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in none_words):
            return None
        try:
            return inner(name, value)
        except ConfigError as error:
            raise ConfigError(name, value, f"{error.allowed}, or {words}") from None

    check.__doc__ = f"{inner.__doc__}, or {words}"
    check.__wrapped__ = inner  # type: ignore[attr-defined]  # lets front ends see the kind
    return check


# The longest duration: beyond it a timeout no longer fits the kernel's and Python's
# clocks (select(), settimeout() take at most ~292 years in nanoseconds).
DURATION_MAX = 1e9


_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(
    r"\s*(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)\s*(?P<unit>ms|s|m|h)?\s*",
    re.ASCII | re.IGNORECASE,
)


def duration(low: float = 0.0, *, exclusive: bool = False, why: str = "") -> Validator:
    """A duration above *low*, at most DURATION_MAX: seconds, or a number with a unit.

    ``30`` and ``30s`` are 30 seconds; ``250ms``, ``5m`` and ``1h`` are what they say
    (one number and one unit; units are case-insensitive). *why* explains the floor in
    the error message.
    """
    sign = ">" if exclusive else ">="
    reason = f" ({why})" if why else ""
    allowed = (
        f"a number of seconds {sign} {low:g}{reason} and <= {DURATION_MAX:g}, or a number "
        "with a unit: ms, s, m, h (e.g. 250ms, 30s, 5m, 1h)"
    )

    def check(name: str, value: Any) -> float:
        if isinstance(value, bool):
            raise ConfigError(name, value, allowed)
        try:
            if isinstance(value, str):
                match = _DURATION.fullmatch(value)
                if match is None:
                    raise ValueError(value)
                unit = _DURATION_UNITS[(match.group("unit") or "").lower()]
                seconds = float(match.group("number")) * unit
            else:
                seconds = float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: a huge int
            raise ConfigError(name, value, allowed) from None
        if not math.isfinite(seconds) or seconds < low or (exclusive and seconds == low) \
                or seconds > DURATION_MAX:
            raise ConfigError(name, value, allowed)
        return seconds

    check.__doc__ = allowed
    return check


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def byte_size(name: str, value: Any) -> int:
    """A size in bytes: an integer >= 0, or a string with a K/M/G suffix (0 is off)."""
    allowed = "a size in bytes >= 0 (suffixes K, M, G allowed; 0 is off)"
    if isinstance(value, bool):
        raise ConfigError(name, value, allowed)
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d{1,30})\s*([kKmMgG]?)i?[bB]?\s*", value)
        if match:  # 30 digits: far above any memory size, far below int()'s limit
            return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    raise ConfigError(name, value, allowed)


def choice(*choices: str) -> Validator:
    """One of a fixed set of words (case-insensitive): a Literal type's values."""
    allowed = "one of " + ", ".join(choices)

    def check(name: str, value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise ConfigError(name, value, allowed)

    check.__doc__ = allowed
    check.choices = choices  # type: ignore[attr-defined]
    return check


def text(name: str, value: Any) -> str:
    """A non-empty string (without NUL: every text setting ends up as a path or a C string)."""
    if isinstance(value, str) and value.strip() and "\0" not in value:
        return value.strip()
    raise ConfigError(name, value, "a non-empty string without NUL characters")


def utf8_text(name: str, value: Any) -> str:
    """A non-empty string in UTF-8 (a name shown in titles and status, an OpenSSL string).

    Paths may hold any bytes (argv and the environment carry the ones that are not
    UTF-8 as surrogates); these settings may not.
    """
    checked = text(name, value)
    try:
        checked.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(name, value, "a non-empty string in UTF-8") from None
    return checked


def log_level(*levels: str) -> Validator:
    """A logging level name among *levels* (case-insensitive), or its number (20)."""
    words = choice(*levels)

    def check(name: str, value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            named = logging.getLevelName(value)
            if isinstance(named, str) and named.lower() in levels:
                return named.lower()
        return str(words(name, value))

    check.__doc__ = words.__doc__ + " (or a level number, e.g. 20)"  # type: ignore[operator]
    check.choices = levels  # type: ignore[attr-defined]
    return check


# A Unix socket path is bound through sockaddr_un.sun_path: 108 bytes on Linux,
# including the final NUL.
UNIX_PATH_MAX = 107


def bind_address(name: str, value: Any) -> str:
    """HOST:PORT, [IPv6]:PORT or unix:PATH."""
    allowed = "HOST:PORT, [IPV6]:PORT or unix:PATH (port 0-65535)"
    if not isinstance(value, str) or "\0" in value:
        raise ConfigError(name, value, allowed)
    spec = value.strip()
    if spec.startswith("unix:@"):
        # Not an abstract socket (engine binds file paths only): a file named @NAME in
        # the working directory, which nobody meant.
        raise ConfigError(
            name, value, f"{allowed}; abstract sockets (unix:@NAME) are not supported"
        )
    if spec.startswith("unix:") and len(spec) > len("unix:"):
        try:
            size = len(os.fsencode(spec[len("unix:"):]))
        except UnicodeError:
            raise ConfigError(name, value, allowed) from None
        if size > UNIX_PATH_MAX:
            raise ConfigError(
                name, value, f"unix:PATH with a PATH of at most {UNIX_PATH_MAX} bytes"
            )
        return spec
    # The host is an IP literal or a DNS name (ASCII: the resolver is asked at bind).
    match = re.fullmatch(
        r"(\[[0-9A-Fa-f:.]+(%[\w.-]+)?\]|[A-Za-z0-9._-]*):(\d{1,5})", spec, re.ASCII
    )
    if not match or int(match.group(3)) > 65535:
        raise ConfigError(name, value, allowed)
    return spec


LOOPBACK_ONLY = (
    "unix:PATH or a loopback HOST:PORT (127.0.0.1, ::1 or localhost); the status "
    "endpoint has no authentication, so put a proxy in front of it to expose it"
)


def status_address(name: str, value: Any) -> str:
    """unix:PATH, or a loopback HOST:PORT (the status endpoint has no authentication)."""
    import ipaddress

    spec = bind_address(name, value)
    if spec.startswith("unix:"):
        return spec
    host = parse_bind(spec)[1][0]
    if host.lower() == "localhost":
        return spec  # the status server binds it as 127.0.0.1, with no resolver call
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise ConfigError(name, value, LOOPBACK_ONLY) from None
    if not ip.is_loopback:
        raise ConfigError(name, value, LOOPBACK_ONLY)
    return spec


def bind_list(name: str, value: Any) -> tuple[str, ...]:
    """One or more bind addresses (a list, or a comma-separated string)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(name, value, "a list of HOST:PORT, [IPV6]:PORT or unix:PATH")
    return tuple(bind_address(name, item) for item in items)


def parse_bind(spec: str) -> tuple[int, Any]:
    """Turn a validated bind spec into ``(address_family, address)``."""
    import socket

    if spec.startswith("unix:"):
        return socket.AF_UNIX, spec[len("unix:"):]
    host, _, port = spec.rpartition(":")
    if host.startswith("["):
        return socket.AF_INET6, (host[1:-1], int(port))
    return socket.AF_INET, (host or "0.0.0.0", int(port))


def cidr_list(name: str, value: Any) -> tuple[str, ...]:
    """Networks in CIDR notation (``10.0.0.0/8``, ``::1/128``, or a bare address).

    A list, or a comma-separated string; an empty list (or string) means none.
    """
    import ipaddress

    allowed = "a list of networks in CIDR notation, e.g. 127.0.0.1/32,10.0.0.0/8,::1/128"
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(name, value, allowed)
    networks = []
    for item in items:
        if isinstance(item, str) and not item.strip() and isinstance(value, str):
            continue  # "a,,b" or "" from an environment variable
        if not isinstance(item, str):
            raise ConfigError(name, value, allowed)
        try:
            networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise ConfigError(name, item, allowed) from None
    return tuple(networks)


def file_mode(name: str, value: Any) -> int:
    """Permission bits, octal: ``0660``, ``"660"``, ``"0o660"`` (or an int <= 0o7777)."""
    allowed = "octal permission bits from 0 to 7777, e.g. 0660"
    if isinstance(value, bool):
        raise ConfigError(name, value, allowed)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*(0o?)?[0-7]{1,4}\s*", value):
        digits = value.strip().removeprefix("0o")
        number = int(digits, 8)
    else:
        raise ConfigError(name, value, allowed)
    if not 0 <= number <= 0o7777:
        raise ConfigError(name, value, allowed)
    return number


# uid_t and gid_t are 32 bits; (uid_t)-1 means "no change" to setuid(), so it is no id.
MAX_ID = 2**32 - 2


def account(name: str, value: Any) -> str:
    """A user or group: a name or a numeric id (checked against the system at start)."""
    allowed = f"a user or group name, or a numeric id from 0 to {MAX_ID}"
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?", value.strip()):
        word = value.strip()
        if word.isdigit() and (len(word) > 10 or int(word) > MAX_ID):
            raise ConfigError(name, value, allowed)
        return word
    raise ConfigError(name, value, allowed)
