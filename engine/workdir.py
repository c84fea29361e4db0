"""The ``engine`` command's working directory: paths made absolute, then ``chdir``.

The master must not depend on the directory it was started from: a SIGUSR2 upgrade
re-executes Python, and a working directory another user can write could otherwise
hand root a planted module (issue 17). So ``engine serve``:

1. resolves every relative path it was given (``--config``, ``pidfile``, ``log_file``,
   ``access_log``, ``certfile``, ``keyfile``, ``ca_certs``, ``unix:`` addresses,
   ``chdir`` itself) against the directory it was started from, its *base*;
2. imports the handler (a module in the base directory is found, as before);
3. changes to ``chdir`` (``/`` by default).

A master started by an upgrade gets the base directory of the first one (in
``ENGINE_BASE_DIR``), so the same relative command line means the same files.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import TypeVar

from engine.errors import ConfigError

BASE_VARIABLE = "ENGINE_BASE_DIR"
PATH_SETTINGS = ("pidfile", "log_file", "access_log", "certfile", "keyfile", "ca_certs", "chdir")
ADDRESS_SETTINGS = ("bind", "status_bind")

T = TypeVar("T")


def base_directory() -> str:
    """Where relative paths are resolved from: the directory ``engine`` was started in.

    A master re-executed by an upgrade reads it from ``ENGINE_BASE_DIR`` (taken out of
    the environment, so workers and handlers' children do not see it).
    """
    handed = os.environ.pop(BASE_VARIABLE, "")
    if handed and os.path.isabs(handed):
        return handed
    return logical_cwd()


def logical_cwd() -> str:
    """The current directory as the shell named it (``$PWD``) when that is where we are.

    With a deploy that swaps a symlink (``/srv/app/current`` -> a new release), ``$PWD``
    keeps the link's name, so an upgrade looks through the link again and finds the
    new release, where ``os.getcwd()`` would name the old release's directory.
    """
    here = os.getcwd()
    logical = os.environ.get("PWD", "")
    if logical and os.path.isabs(logical) and logical != here:
        try:
            if os.path.samefile(logical, here):
                return logical
        except OSError:
            pass
    return here


def absolute(path: str, base: str) -> str:
    """*path* made absolute against *base* (``-``, stderr, stays as it is)."""
    if path == "-" or os.path.isabs(path):
        return path
    # No normpath: `..` after a symlink must mean what the kernel makes of it.
    return os.path.join(base, path)


def _absolute_address(spec: str, base: str) -> str:
    if not spec.startswith("unix:"):
        return spec
    return "unix:" + absolute(spec[len("unix:"):], base)


def with_absolute_paths(settings: T, base: str) -> T:
    """*settings* (a Settings) with every relative path made absolute against *base*."""
    changes: dict[str, object] = {}
    for name in PATH_SETTINGS:
        value = getattr(settings, name, None)
        if isinstance(value, str):
            changes[name] = absolute(value, base)
    for name in ADDRESS_SETTINGS:
        value = getattr(settings, name, None)
        if isinstance(value, str):
            changes[name] = _absolute_address(value, base)
        elif isinstance(value, tuple):
            changes[name] = tuple(_absolute_address(item, base) for item in value)
    return dataclasses.replace(settings, **changes)  # type: ignore[type-var]


def change_to(directory: str) -> None:
    """``chdir`` to *directory*.

    Raises:
        ConfigError: it is not a directory this process can enter (setting ``chdir``).
    """
    try:
        os.chdir(directory)
    except OSError as exc:
        raise ConfigError(
            "chdir", directory, f"a directory the engine can enter ({exc.strerror or exc})"
        ) from None


def module_directory(module_name: str, base: str) -> str | None:
    """*base*, if the top-level package of *module_name* was imported from it.

    That is the one directory an upgraded master must search for the handler (at the
    end of ``sys.path``, after the installed packages); None when the handler is
    installed elsewhere, so nothing from the working directory is ever searched.
    """
    top = sys.modules.get(module_name.partition(".")[0])
    location = getattr(top, "__file__", None)
    if not location:
        return None
    directory = os.path.dirname(os.path.abspath(location))
    if os.path.basename(location).startswith("__init__."):
        directory = os.path.dirname(directory)
    try:
        same = os.path.samefile(directory, base)
    except OSError:
        return None
    return base if same else None
