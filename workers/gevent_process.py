"""Preparing a gevent worker's process: what the master reads before it forks, and the
patching the worker does after.

The master is never patched and makes no hub; but what gevent would otherwise look up in
every worker (its plugins, its hub's settings) is looked up once, in the master, so that
each worker shares it instead of making its own private copy (docs/benchmarks.md, "What a
worker costs in memory"). Importing this module does it; with ``worker_class = "gevent"``
the master imports it before its first fork (``engine.children.GEVENT_MODULES``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import warnings
from typing import Any

import gevent
import gevent.events
import gevent.monkey


def find_gevent_plugins() -> dict[str, tuple[Any, ...]] | None:
    """gevent's plugins (entry points in its ``gevent.plugins.*`` groups) by group, or
    None if the installed distributions cannot be read."""
    try:
        found = importlib.metadata.entry_points()
        return {group: tuple(found.select(group=group))
                for group in found.groups if group.startswith("gevent.plugins.")}
    except Exception:  # a broken distribution: let gevent look (and report) itself
        return None


# Found once, at import: in the master before it forks when worker_class is gevent.
GEVENT_PLUGINS = find_gevent_plugins()


# The gevent settings a worker's hub reads when it is made (gevent.get_hub()).
HUB_SETTINGS = ("loop", "libev_backend", "format_context", "disable_watch_children",
                "monitor_thread", "track_greenlet_tree")


def resolve_hub_settings() -> None:
    """Have gevent read the settings its hub will read (environment variables, and the
    modules they name: the loop's, and pprint for ``format_context``) now, in the master
    before it forks, instead of in each worker: 0.45 MiB of each worker's private memory.
    Nothing is patched and no hub is made. A setting that fails is left to the worker,
    which fails on it as it did."""
    config = gevent.config
    for name in HUB_SETTINGS:
        with contextlib.suppress(Exception):
            getattr(config, name)


resolve_hub_settings()  # at import: in the master before it forks when worker_class is gevent


def notify_known_plugins(event: Any) -> None:
    """gevent's ``notify_and_call_entry_points`` over :data:`GEVENT_PLUGINS`.

    gevent reads every installed distribution's metadata again for each event it
    notifies (ten times while patching); in a worker that was 1.2 MiB of private
    memory, the pages its garbage landed in. The same subscribers and plugins are called.
    """
    gevent.events.notify(event)
    assert GEVENT_PLUGINS is not None
    for plugin in GEVENT_PLUGINS.get(getattr(event, "ENTRY_POINT_NAME", ""), ()):
        plugin.load()(event)


def patch_process() -> None:
    """Monkey-patch this (freshly forked) process for gevent, quietly.

    Modules the master imported before (ssl, threading...) trigger gevent's "imported
    before patching" warnings: expected in a prefork server, and not the user's doing.
    """
    if GEVENT_PLUGINS is not None and hasattr(gevent.events, "notify_and_call_entry_points"):
        gevent.events.notify_and_call_entry_points = notify_known_plugins
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gevent.monkey.patch_all()
    gevent.reinit()  # a hub inherited from a master that patched at import: renew it


