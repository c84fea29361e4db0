"""The engine's exceptions and the CLI's exit statuses."""

from __future__ import annotations

import enum
from typing import Any


class EngineError(Exception):
    """Base class for errors raised by engine itself (not by user handlers)."""


class ConfigError(EngineError, ValueError):
    """A setting has a value that is not allowed.

    Carries the setting's name, the offending value and a description of what is
    allowed, so every front end (class attributes, CLI, env, TOML) reports it alike.
    """

    def __init__(self, setting: str, value: Any, allowed: str) -> None:
        self.setting = setting
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid setting {setting}={value!r}: {allowed}")


class MasterFatalError(EngineError):
    """The master cannot go on (for example, no worker can boot) and has stopped."""


class ExitStatus(enum.IntEnum):
    """Exit statuses of the ``engine`` command."""

    OK = 0
    FAILURE = 1
    USAGE = 2  # bad command line or bad setting, as argparse uses
    NO_WORKER_BOOTS = 3  # crash loop: no worker could start
