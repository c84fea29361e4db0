"""The standard library's own functions, even when gevent has monkey-patched them.

The master must never run on gevent: its loop is one ``select()`` on real file
descriptors, and its signals go through a real wakeup fd. A handler module may call
``gevent.monkey.patch_all()`` at import, before the master starts; the master then
takes the originals from here, looked up at call time (patching can happen after
engine is imported). Without gevent loaded, these are the plain stdlib functions.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


def original(module: str, name: str) -> Any:
    """``module.name`` as it was before gevent patched it (or as it is, if unpatched)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original(module, name)
    return getattr(importlib.import_module(module), name)


def default_selector() -> Any:
    """A new ``selectors.DefaultSelector`` (epoll on Linux), never gevent's."""
    return original("selectors", "DefaultSelector")()


def new_poll() -> Any:
    """A new ``select.poll`` object, never gevent's."""
    return original("select", "poll")()


def set_signal(signum: int, handler: Any) -> Any:
    """``signal.signal``: gevent's replacement installs no real handler for SIGCHLD."""
    return original("signal", "signal")(signum, handler)


def fork() -> int:
    """``os.fork``: gevent's replacement watches the child from its hub, which never runs
    in the master, so the master's ``waitpid`` would never see the child exit."""
    pid: int = original("os", "fork")()
    return pid
