"""Where settings come from, and the one function that merges them.

Four sources, highest precedence first:

1. the command line (``--max-children 8``), as parsed by :mod:`engine.cli`;
2. environment variables ``ENGINE_<NAME>`` (``ENGINE_MAX_CHILDREN=8``,
   ``ENGINE_BIND="127.0.0.1:9000,unix:/tmp/x.sock"``);
3. a TOML file (``--config FILE``) whose **top-level keys** are setting names
   (``max_children = 8``, ``bind = ["127.0.0.1:9000"]``); there is no ``[engine]``
   table, so a file is exactly the output of ``engine serve --check-config``;
4. the registry defaults (:class:`~engine.config.settings.Settings`).

:func:`resolve` merges them in that order and validates the result with
:func:`~engine.config.settings.build`, so every bad value, from any source, is a
:class:`~engine.errors.ConfigError` naming the setting, the value, what is allowed and
(in the text of *allowed*) which source supplied it.
"""

from __future__ import annotations

import importlib
import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.config.settings import Settings, build, cli_flag, env_var, registry
from engine.config.validators import file_mode
from engine.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10 only; imported by name so mypy needs no tomli stubs
    tomllib = importlib.import_module("tomli")

SourceKind = Literal["default", "file", "env", "cli"]

# The pseudo-setting named in errors about the config file itself (it is a CLI option,
# not a setting, but errors must still name what to fix).
CONFIG_OPTION = "config"
MAX_CONFIG_BYTES = 1 << 20  # 1 MiB


@dataclass(frozen=True)
class Origin:
    """Where one resolved value came from: its source and the exact key there."""

    kind: SourceKind
    detail: str = ""  # the flag, the variable, or the file path

    def __str__(self) -> str:
        return f"{self.kind} {self.detail}" if self.detail else self.kind


@dataclass(frozen=True)
class Resolved:
    """Validated settings plus, for every setting, the source its value came from."""

    settings: Settings
    origins: Mapping[str, Origin]


def _setting_names() -> list[str]:
    return [f.name for f in registry()]


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML config file: top-level keys are setting names.

    Values keep their TOML types (validators accept them as well as strings).

    Raises:
        ConfigError: the file is missing, unreadable or not TOML (named ``config``),
            or has a key that is not a setting (named by that key).
    """
    try:
        # Not a blocking read of a FIFO, nor an endless one of /dev/zero: a regular
        # file, read up to a size no config file comes near.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb", buffering=0) as file:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise IsADirectoryError(0, "not a regular file")
            _check_owner(path, info)
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            CONFIG_OPTION, str(path), f"a readable TOML file ({exc.strerror or exc})"
        ) from None
    except ConfigError:
        raise  # _check_owner's, already naming the file
    except ValueError as exc:  # a NUL in the path
        raise ConfigError(CONFIG_OPTION, str(path), f"a file path ({exc})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            CONFIG_OPTION, str(path), f"a TOML file of at most {MAX_CONFIG_BYTES} bytes"
        )
    try:
        data: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            CONFIG_OPTION, str(path), f"a TOML file in UTF-8 (byte {exc.start} is not)"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(CONFIG_OPTION, str(path), f"a valid TOML file ({exc})") from None
    known = set(_setting_names())
    for key, value in data.items():
        if key not in known:
            hint = (
                " at the top level (no table)" if isinstance(value, dict) else ""
            )
            raise ConfigError(
                key, value, f"a known setting{hint}; {path} has an unknown key {key!r} "
                "(settings are listed in docs/settings.md)",
            )
        if key in _mode_settings() and isinstance(value, int) and not isinstance(value, bool):
            # TOML reads 660 as decimal and 0o660 as 432: the file cannot say which
            # was meant, where the flag and the variable read "660" as octal.
            raise ConfigError(
                key, value, f'a string of octal digits, e.g. "0660", in a TOML file (an '
                f"integer is ambiguous: TOML reads {value} as decimal, and 0o660 as 432) "
                f"(from {_origin('file', key, path)})",
            )
    return data


def _mode_settings() -> set[str]:
    """Settings of permission bits (octal): ``umask``, ``socket_mode``."""
    return {
        f.name for f in registry()
        if getattr(f.metadata["validator"], "__wrapped__", f.metadata["validator"])
        is file_mode
    }


def _check_owner(path: str | os.PathLike[str], info: os.stat_result) -> None:
    """As root, refuse a config file another user could have written: it names the
    user to run as (``user``), the files root opens, the code to import. Checked on the
    file as opened, so no swap of a path on the way changes what is checked."""
    if os.geteuid() != 0:
        return
    writers = []
    if info.st_uid != 0:
        writers.append(f"uid {info.st_uid}, its owner")
    if info.st_mode & stat.S_IWGRP and info.st_gid != 0:
        writers.append(f"group {info.st_gid}")
    if info.st_mode & stat.S_IWOTH:
        writers.append("every user")
    if writers:
        raise ConfigError(
            CONFIG_OPTION, str(path), "a file only root can write, when engine starts as "
            f"root (this one is writable by {' and '.join(writers)}; see docs/security.md)",
        )


def read_env(env: Mapping[str, str]) -> dict[str, str]:
    """The settings set by ``ENGINE_<NAME>`` variables in *env*, as raw strings.

    Other ``ENGINE_*`` variables are not settings (``ENGINE_READY_LINE``,
    ``ENGINE_HTTP_DIR``...) and are ignored, so the environment cannot be checked for
    typos the way a config file is.
    """
    return {name: env[env_var(name)] for name in _setting_names() if env_var(name) in env}


def resolve(
    cli_values: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
) -> Resolved:
    """Merge the sources (CLI > env > file > defaults) and validate the result.

    Args:
        cli_values: setting name → raw value, only for the flags actually given.
        env: the environment to read ``ENGINE_*`` from (default: ``os.environ``).
        config_path: a TOML file to read, or None for none.

    Raises:
        ConfigError: a value is invalid, an unknown setting is given, or the config
            file cannot be read. The message names the setting and its source.
    """
    if env is None:
        env = os.environ
    values: dict[str, Any] = {}
    origins: dict[str, Origin] = {name: Origin("default") for name in _setting_names()}
    layers: list[tuple[Mapping[str, Any], SourceKind]] = []
    if config_path is not None:
        layers.append((read_file(config_path), "file"))
    layers.append((read_env(env), "env"))
    layers.append((dict(cli_values or {}), "cli"))
    for layer, kind in layers:  # lowest precedence first: later layers overwrite
        for name, value in layer.items():
            values[name] = value
            origins[name] = _origin(kind, name, config_path)
    try:
        settings = build(values)
    except ConfigError as error:
        raise with_source(error, origins) from None
    return Resolved(settings, origins)


def with_source(error: ConfigError, origins: Mapping[str, Origin]) -> ConfigError:
    """*error*, its message ending ``(from SOURCE)`` when someone gave the value
    (not for a default, nor twice). The checks made later, against the system (the
    user exists, the pidfile's directory...), name the source this way too."""
    origin = origins.get(error.setting)
    if origin is None or origin.kind == "default" or " (from " in error.allowed:
        return error
    return ConfigError(error.setting, error.value, f"{error.allowed} (from {origin})")


def load_settings(
    cli_values: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
) -> Settings:
    """The validated settings from every source; see :func:`resolve`."""
    return resolve(cli_values, env, config_path).settings


def _origin(
    kind: SourceKind, name: str, config_path: str | os.PathLike[str] | None
) -> Origin:
    if kind == "file":
        return Origin("file", str(Path(config_path or "")))
    if kind == "env":
        return Origin("env", env_var(name))
    return Origin("cli", cli_flag(name))
