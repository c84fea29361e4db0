"""A gevent worker shares gevent's modules with its master instead of importing them.

What a worker imports after fork is private memory of that worker: gevent, the gevent
worker class and what ``gevent.monkey.patch_all()`` imports were 2.8 MiB of each idle
gevent worker's USS (``loadtests/worker_memory.py``). With ``worker_class = 'gevent'``
the master imports them before forking, and patches nothing: it must stay on the
standard library (its loop is one real ``select()``).

The master reports, from its ``worker_spawned`` hook (which runs in the master), the
gevent modules it holds and whether anything in it is patched; the worker reports the
gevent modules it holds once patched and serving.
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

def gevent_modules():
    return sorted(m for m in sys.modules if m.startswith("gevent") or m == "workers.cooperative")

class Modules(socketserver.StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        self.wfile.write((" ".join(gevent_modules()) + "\\n").encode())
'''
ATTRS = '''
worker_class = 'gevent'
pool_mode = 'static'
workers = 1
def worker_spawned(self, slot, pid):
    import socket
    monkey = sys.modules.get("gevent.monkey")
    patched = monkey is not None and monkey.is_anything_patched()
    print("MASTER-MODULES", " ".join(gevent_modules()), file=sys.stderr, flush=True)
    print("MASTER-PATCHED", patched or socket.socket.__module__ != "socket",
          file=sys.stderr, flush=True)
'''


def test_a_gevent_worker_imports_no_gevent_module_its_master_has_not(engine_proc) -> None:
    engine = engine_proc(program(before=APP, attrs=ATTRS, handler="Modules"))
    in_worker = set(exchange(engine.address, b"modules\n").split())
    assert b"workers.cooperative" in in_worker  # it does run the gevent worker
    log = wait_until(lambda: "MASTER-PATCHED" in (text := engine.log()) and text, 10,
                     "the master's report")
    found = re.search(r"MASTER-MODULES (.*)", log)
    assert found, log
    in_master = {name.encode() for name in found.group(1).split()}
    assert in_worker - in_master == set()  # nothing gevent imported after the fork
    assert "MASTER-PATCHED False" in log  # and the master was patched by none of it
