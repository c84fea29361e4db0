"""A gevent worker shares gevent's modules with its master instead of importing them.

What a worker imports after fork is private memory of that worker: gevent, the gevent
worker class and what ``gevent.monkey.patch_all()`` imports were 2.8 MiB of each idle
gevent worker's USS (``loadtests/worker_memory.py``). With ``worker_class = 'gevent'``
the master imports them before forking, and patches nothing: it must stay on the
standard library (its loop is one real ``select()``).

The master reports, from its ``worker_spawned`` hook (which runs in the master), the
modules it holds and whether anything in it is patched; the worker reports the
modules it holds once patched and serving.
"""

from __future__ import annotations

import re

import pytest

from tests.apps.prefork_apps import program
from tests.kit import exchange, wait_until

pytest.importorskip("gevent")

APP = '''
import sys
import socketserver

def report(what):
    if what == "modules":
        return sorted(sys.modules)
    from gevent._config import config  # the settings gevent has read so far
    return sorted(name for name, setting in config.settings.items() if "value" in vars(setting))

class Report(socketserver.StreamRequestHandler):
    def handle(self):
        what = self.rfile.readline().strip().decode()
        self.wfile.write((" ".join(report(what)) + "\\n").encode())
'''
ATTRS = '''
worker_class = 'gevent'
pool_mode = 'static'
workers = 1
def worker_spawned(self, slot, pid):
    import socket
    monkey = sys.modules.get("gevent.monkey")
    patched = monkey is not None and monkey.is_anything_patched()
    print("MASTER-MODULES", " ".join(report("modules")), file=sys.stderr, flush=True)
    print("MASTER-SETTINGS", " ".join(report("settings")), file=sys.stderr, flush=True)
    print("MASTER-PATCHED", patched or socket.socket.__module__ != "socket",
          file=sys.stderr, flush=True)
'''


def in_master(engine, what: str) -> set[bytes]:
    """What the master reported holding (``modules`` or ``settings``) when it forked."""
    log = wait_until(lambda: "MASTER-PATCHED" in (text := engine.log()) and text, 10,
                     "the master's report")
    found = re.search(rf"MASTER-{what.upper()} (.*)", log)
    assert found, log
    return {name.encode() for name in found.group(1).split()}


def test_a_gevent_worker_imports_no_module_its_master_has_not(engine_proc) -> None:
    engine = engine_proc(program(before=APP, attrs=ATTRS, handler="Report"))
    in_worker = set(exchange(engine.address, b"modules\n").split())
    assert b"workers.cooperative" in in_worker  # it does run the gevent worker
    # Nothing imported after the fork: neither gevent's modules nor what patch_all() and
    # the hub import (_threading_local: 0.33 MiB of each idle worker's private memory)
    assert in_worker - in_master(engine, "modules") == set()
    assert "MASTER-PATCHED False" in engine.log()  # and the master was patched by none of it


PLUGIN_APP = '''
import importlib.metadata
sys.path.insert(0, {where!r})
_entry_points = importlib.metadata.entry_points

def entry_points(**params):  # who reads the installed distributions' metadata
    print("SCAN", os.getpid(), file=sys.stderr, flush=True)
    return _entry_points(**params)

importlib.metadata.entry_points = entry_points
'''


def test_a_gevent_worker_calls_gevents_plugins_without_reading_metadata(
    engine_proc, tmp_path
) -> None:
    """gevent looks up its plugins in every distribution's metadata for each event of
    patch_all() (1.2 MiB of each worker's private memory); the master looks once, and
    the worker still calls them."""
    info = tmp_path / "engine_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: engine-test-plugin\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[gevent.plugins.monkey.will_patch_all]\n"
        "engine_test = engine_test_plugin:will_patch_all\n")
    (tmp_path / "engine_test_plugin.py").write_text(
        "import os, sys\n"
        "def will_patch_all(event):\n"
        "    print('PLUGIN', os.getpid(), file=sys.stderr, flush=True)\n")
    engine = engine_proc(program(before=PLUGIN_APP.format(where=str(tmp_path)),
                                 attrs="worker_class = 'gevent'\nworkers = 1\n"
                                       "pool_mode = 'static'\n"))
    worker = int(exchange(engine.address, b"hi\n").split()[0])
    log = engine.log()
    assert f"PLUGIN {worker}" in log  # the plugin still runs, in the worker
    assert f"SCAN {engine.master}" in log  # looked up once, before the fork
    assert f"SCAN {worker}" not in log


def test_a_gevent_worker_reads_no_gevent_setting_its_master_has_not(engine_proc) -> None:
    """Making the hub reads gevent's settings (and imports what they name): read once,
    in the master, they are not 0.45 MiB of each worker's private memory."""
    engine = engine_proc(program(before=APP, attrs=ATTRS, handler="Report"))
    in_worker = set(exchange(engine.address, b"settings\n").split())
    assert b"loop" in in_worker  # the worker's hub is made
    assert in_worker - in_master(engine, "settings") == set()
