"""What a connection waiting in a gevent worker keeps: less than in plain gevent.

A greenlet that waits keeps a copy of its C stack, so every C frame between its start
and its switch to the hub costs memory per idle connection (10,000 of them in the
capacity benchmark). Two sources of frames are avoided: ``finish_request`` creates the
handler without ``type.__call__`` (the handler's ``__init__`` then runs in the caller's
interpreter frame), and SweptSocket's reads wait without gevent's four calls around the
switch. A subprocess (a hub of its own) holds 200 waiting handlers each way and reports
what tracemalloc saw per connection.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("gevent")

PROBE = textwrap.dedent('''
    import types, tracemalloc
    import gevent, gevent.pool, gevent.socket
    from engine.classic import BaseServer, StreamRequestHandler
    from workers.cooperative import SweptSocket

    N = 200
    waiting = [0]

    class Waiting(StreamRequestHandler):
        def handle(self):
            waiting[0] += 1
            self.wfile.write(self.rfile.readline())

    server = types.SimpleNamespace(RequestHandlerClass=Waiting)

    def plain(sock):  # gevent's socket, the class called: what gevent's own servers do
        Waiting(sock, ("127.0.0.1", 1), server)

    def engine(sock):  # what the gevent worker does with a plain TCP connection
        sock.__class__ = SweptSocket
        BaseServer.finish_request(server, sock, ("127.0.0.1", 1))

    def per_connection(run):
        pairs = [gevent.socket.socketpair() for _ in range(N)]
        pool = gevent.pool.Pool()
        waiting[0] = 0
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for ours, _ in pairs:
            pool.spawn(run, ours)
        while waiting[0] < N:  # each counts itself, then waits in readline at once
            gevent.sleep(0)
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        for _, theirs in pairs:  # and each still answers
            theirs.sendall(b"line\\n")
            assert theirs.recv(10) == b"line\\n"
        pool.join(timeout=10)
        assert not pool, "every handler ends once answered"
        return held // N

    print(per_connection(plain), per_connection(engine))
''')


def test_a_waiting_connection_keeps_less_than_in_plain_gevent() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    plain, engine = map(int, out.stdout.split())
    # Measured 15,430 against 13,349 bytes (Python 3.11, gevent 26.9); before the two
    # changes the worker's way kept 15,133.
    assert engine <= plain - 1500, (plain, engine)
