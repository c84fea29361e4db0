"""Standard-library users of ``socketserver`` run unchanged on engine.

Each check runs in a fresh interpreter that sets ``sys.modules['socketserver'] = engine``
*before* importing ``http.server``, ``xmlrpc.server`` or ``wsgiref.simple_server``, so those
modules subclass engine's servers. The child serves in a thread, makes a real request over
127.0.0.1, shuts down, and prints one JSON line that the test checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

PRELUDE = """
import json
import sys
import threading

import engine

sys.modules["socketserver"] = engine


def serve(server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    return thread


def stop(server, thread):
    server.shutdown()
    thread.join(10)
    assert not thread.is_alive(), "serve_forever did not stop"
    server.server_close()
"""


def run_child(body: str, cwd: Path) -> dict[str, Any]:
    code = PRELUDE + textwrap.dedent(body)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"child failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_http_server_on_engine(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello from engine\n")
    result = run_child(
        """
        import functools
        import http.server
        import urllib.request

        assert http.server.socketserver is engine
        assert issubclass(http.server.HTTPServer, engine.TCPServer)
        assert issubclass(http.server.ThreadingHTTPServer, engine.ThreadingMixIn)

        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=".")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = serve(server)
        try:
            url = "http://127.0.0.1:%d/hello.txt" % server.server_address[1]
            with urllib.request.urlopen(url, timeout=10) as response:
                status, body = response.status, response.read().decode()
        finally:
            stop(server, thread)
        print(json.dumps({"status": status, "body": body, "repr": repr(server)}))
        """,
        tmp_path,
    )
    assert result["status"] == 200
    assert result["body"] == "hello from engine\n"
    assert result["repr"].startswith("<ThreadingHTTPServer ('127.0.0.1', ")


def test_xmlrpc_server_on_engine(tmp_path: Path) -> None:
    result = run_child(
        """
        import xmlrpc.client
        import xmlrpc.server

        assert xmlrpc.server.socketserver is engine
        assert issubclass(xmlrpc.server.SimpleXMLRPCServer, engine.TCPServer)

        server = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False)
        server.register_function(lambda a, b: a + b, "add")
        thread = serve(server)
        try:
            url = "http://127.0.0.1:%d/" % server.server_address[1]
            with xmlrpc.client.ServerProxy(url) as proxy:
                total = proxy.add(40, 2)
        finally:
            stop(server, thread)
        print(json.dumps({"total": total}))
        """,
        tmp_path,
    )
    assert result == {"total": 42}


def test_wsgiref_on_engine(tmp_path: Path) -> None:
    result = run_child(
        """
        import http.server
        import urllib.request
        import wsgiref.simple_server

        # wsgiref builds on http.server, which is what imports socketserver.
        assert http.server.socketserver is engine
        assert issubclass(wsgiref.simple_server.WSGIServer, engine.TCPServer)

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [("path=%s" % environ["PATH_INFO"]).encode()]

        class QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
            def log_message(self, *args):
                pass

        server = wsgiref.simple_server.make_server(
            "127.0.0.1", 0, app, handler_class=QuietHandler
        )
        thread = serve(server)
        try:
            url = "http://127.0.0.1:%d/ping" % server.server_address[1]
            with urllib.request.urlopen(url, timeout=10) as response:
                status, body = response.status, response.read().decode()
        finally:
            stop(server, thread)
        print(json.dumps({"status": status, "body": body}))
        """,
        tmp_path,
    )
    assert result == {"status": 200, "body": "path=/ping"}
