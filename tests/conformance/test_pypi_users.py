"""Well-known PyPI packages built on socketserver, run with engine standing in for it.

For each package: its own tests where they exercise its servers, and a script of ours
where its suite never uses the Forking/Threading classes (Werkzeug's suite never runs
``processes>1``) or cannot see what we check (which process served). The modes are those
of :mod:`tests.conformance.stand_in`:

* ``engine`` must give what the stdlib gives: every check passes;
* ``prefork`` (Prefork classes in place of Forking *and* Threading) must give what
  ``forking`` (the stdlib with Forking in place of Threading) gives: where a package
  depends on its requests running in threads of one process, both fail alike, and
  :data:`PROCESS_BOUND` lists those checks with the reason.

The default run covers ``engine`` and ``prefork`` against the recorded reference
outcomes; ``ENGINE_COMPAT_REFERENCE=1`` also runs ``stdlib`` and ``forking`` and checks
that the recorded references still hold (that is how docs/compatibility.md was made).
The package versions are the installed ones (pinned in pyproject's ``test`` extra); their
test sources come from their sdists (see :mod:`tests.conformance.pypi_users`).
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conformance import pypi_users
from tests.conformance.pypi_users import Run

REFERENCE = bool(os.environ.get("ENGINE_COMPAT_REFERENCE"))
MODES = ["engine", "prefork", *(["stdlib", "forking"] if REFERENCE else [])]
# What each mode is compared with: engine with the stdlib, prefork with forking.
REFERENCE_OF = {"engine": "stdlib", "stdlib": "stdlib", "prefork": "forking", "forking": "forking"}

# Checks that fail when requests run in processes rather than threads, with ForkingMixIn
# and PreforkMixIn alike (so with the `forking` and `prefork` modes), and why.
PROCESS_BOUND = {
    "jsonrpclib-pelix": {
        "tests.test_server.PooledServerTests::test_default_pool": "thread pool",
    },
    "dnslib": {"dnslib.server::dnslib.server": "handler output"},
}
WHY = {
    "thread pool": "PooledJSONRPCServer derives from ThreadingMixIn and hands requests to "
    "its process_request_thread(), a ThreadingMixIn method",
    "handler output": "the doctest expects the handler's log lines on the caller's stdout; "
    "a handler in another process prints to its own",
}

WERKZEUG_TESTS = [
    "tests/test_serving.py::test_server",  # http, https (adhoc), unix socket, reloader
    "tests/test_serving.py::test_ssl_dev_cert",
    "tests/test_serving.py::test_ssl_object",
    "tests/test_serving.py::test_500_error",
    "tests/test_serving.py::test_streaming_chunked_response",  # threaded=True
    "tests/test_serving.py::test_streaming_chunked_truncation",  # threaded=True
]


PACKAGES = ("werkzeug", "dnslib", "jsonrpclib-pelix")  # whose test sources are run


@dataclass
class Scratch:
    """The module's venv, its directory, and each package's unpacked sources (fetched
    all at once in the background: on a first run, ``pip download`` prepares each
    sdist's metadata in a build environment of its own, 3 to 11 s a package)."""

    python: Path
    where: Path
    trees: dict[str, Future[Path]]

    def sources(self, name: str) -> Path:
        return self.trees[name].result()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scratch]:
    where = tmp_path_factory.mktemp("pypi-users")
    with ThreadPoolExecutor(max_workers=len(PACKAGES)) as fetching:
        trees = {name: fetching.submit(sources, name, where) for name in PACKAGES}
        yield Scratch(pypi_users.make_venv(where / "venv"), where, trees)


def sources(name: str, where: Path) -> Path:
    return pypi_users.sdist(name, importlib.metadata.version(name), where)


def expect(package: str, mode: str, run: Run, minimum: int) -> None:
    """The run passed all but the process-bound checks of *package* (if the mode runs
    requests in processes), and ran at least *minimum* checks."""
    assert run.left_behind == [], run.left_behind
    assert len(run.outcomes) >= minimum, run.output
    bound = PROCESS_BOUND.get(package, {}) if REFERENCE_OF[mode] == "forking" else {}
    failed = set(run.failed())
    assert failed == set(bound), run.output[-6000:]
    assert all(outcome != "skipped" or "unix" in name for name, outcome in run.outcomes.items())


@pytest.fixture(scope="module")
def werkzeug_runs(scratch: Scratch) -> dict[str, Run]:
    """Werkzeug's tests in every mode, two runs at a time: a run mostly waits (each test
    starts a dev server in a new interpreter and polls it every 0.1 s until it answers);
    its dev servers take free ports, and each run writes its own report."""
    python, source = scratch.python, scratch.sources("werkzeug")

    def run(mode: str) -> Run:
        return pypi_users.run_pytest(python, mode, source,
                                     [*WERKZEUG_TESTS, "-k", "not reloader"], timeout=240)

    with ThreadPoolExecutor(max_workers=2) as runs:
        return dict(zip(MODES, runs.map(run, MODES), strict=True))


@pytest.mark.parametrize("mode", MODES)
def test_werkzeug_dev_server_suite(werkzeug_runs: dict[str, Run], mode: str) -> None:
    expect("werkzeug", mode, werkzeug_runs[mode], minimum=8)


WERKZEUG_SERVER = """
import os, ssl, sys
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

@Request.application
def app(request):
    return Response(str(os.getpid()))

context = None
if sys.argv[1] != "-":
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1])
server = make_server("127.0.0.1", 0, app, processes=2, ssl_context=context)
print(server.port, flush=True)
server.serve_forever()   # Werkzeug's: catches KeyboardInterrupt, then server_close()
print("CLOSED" if server.socket.fileno() == -1 else "STILL OPEN", flush=True)
"""

WERKZEUG_SCRIPT = """
import http.client, os, signal, ssl, subprocess, sys
import psutil, trustme

ca = trustme.CA()
pem = os.path.abspath("werkzeug-server.pem")
ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(pem)
client_context = ssl.create_default_context()
ca.configure_trust(client_context)

for scheme in ("http", "https"):
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, pem if scheme == "https" else "-"],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        port = int(server.stdout.readline())
        pids = set()
        for n in range(4):
            if scheme == "https":
                conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                                   context=client_context)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.status == 200, response.status
            pids.add(int(response.read()))
            conn.close()
        print("OK", scheme, "processes=2: 4 requests answered", flush=True)
        if server.pid not in pids:
            print("OK", scheme, "processes=2: served by other processes than the server's",
                  flush=True)
        family = {p.pid for p in psutil.Process(server.pid).children(recursive=True)}
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C
        assert server.wait(15) == 0, server.returncode
        assert server.stdout.read().strip() == "CLOSED"
        print("OK", scheme, "Ctrl-C: serve_forever returned, server_close ran, exit 0",
              flush=True)
        left = [p for p in family if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert not left, left
        print("OK", scheme, "no process left", flush=True)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
"""

# With processes>1 Werkzeug uses ForkingWSGIServer: ForkingMixIn, or PreforkMixIn.
WERKZEUG_CHECKS = {
    f"{scheme} {check}"
    for scheme in ("http", "https")
    for check in (
        "processes=2: 4 requests answered",
        "processes=2: served by other processes than the server's",
        "Ctrl-C: serve_forever returned, server_close ran, exit 0",
        "no process left",
    )
}


@pytest.mark.parametrize("mode", MODES)
def test_werkzeug_multiprocess_and_tls_script(scratch: Scratch, mode: str) -> None:
    python, where = scratch.python, scratch.where
    code = f"SERVER = {WERKZEUG_SERVER!r}\n" + WERKZEUG_SCRIPT
    run = pypi_users.run_script(python, mode, where, code, timeout=120)
    assert run.returncode == 0, run.output
    assert run.left_behind == [], run.left_behind
    assert set(run.outcomes) == WERKZEUG_CHECKS, run.output


@pytest.mark.parametrize("mode", MODES)
def test_dnslib_server_doctests(scratch: Scratch, mode: str) -> None:
    python, source = scratch.python, scratch.sources("dnslib")
    run = pypi_users.run_pytest(
        python, mode, source,
        ["--doctest-modules", "--doctest-continue-on-failure", "dnslib/server.py",
         "-o", "doctest_optionflags=ELLIPSIS"],
        timeout=120,
    )
    expect("dnslib", mode, run, minimum=1)


DNSLIB_SCRIPT = """
import os, threading
import psutil
from dnslib import DNSRecord, QTYPE, RR, TXT
from dnslib.server import BaseResolver, DNSLogger, DNSServer

class PidResolver(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(str(os.getpid())), ttl=60))
        return reply

for transport in ("udp", "tcp"):
    server = DNSServer(PidResolver(), port=0, address="127.0.0.1", tcp=transport == "tcp",
                       logger=DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data"))
    port = server.server.server_address[1]
    server.start_thread()
    pids = set()
    for n in range(4):
        question = DNSRecord.question(f"q{n}.example", "TXT")
        answer = DNSRecord.parse(question.send("127.0.0.1", port, tcp=transport == "tcp",
                                               timeout=10))
        assert answer.header.id == question.header.id
        pids.add(int(str(answer.rr[0].rdata).strip('"')))
    print("OK", transport, "4 queries answered", flush=True)
    if os.getpid() not in pids:
        print("OK", transport, "served by other processes", flush=True)
    server.stop()
    server.thread.join(10)
    server.server.server_close()
    assert not server.thread.is_alive()
    left = [p for p in psutil.Process().children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE]
    assert not left and not psutil.Process().children(), left
    print("OK", transport, "stopped, no process left", flush=True)
"""


@pytest.mark.parametrize("mode", MODES)
def test_dnslib_server_script(scratch: Scratch, mode: str) -> None:
    python, where = scratch.python, scratch.where
    run = pypi_users.run_script(python, mode, where, DNSLIB_SCRIPT, timeout=120)
    assert run.returncode == 0, run.output
    assert run.left_behind == [], run.left_behind
    checks = {f"{t} {c}" for t in ("udp", "tcp") for c in ("4 queries answered",
                                                          "stopped, no process left")}
    if REFERENCE_OF[mode] == "forking":  # DNSServer's servers are Threading ones
        checks |= {"udp served by other processes", "tcp served by other processes"}
    assert set(run.outcomes) == checks, run.output


# Its other two PooledServerTests are the same test with other thread pools (and 6 s long).
POOLED_TEST = "tests/test_server.py::PooledServerTests::test_default_pool"


@pytest.mark.parametrize("mode", MODES)
def test_jsonrpclib_server_suite(scratch: Scratch, mode: str) -> None:
    python, source = scratch.python, scratch.sources("jsonrpclib-pelix")
    run = pypi_users.run_pytest(python, mode, source,
                                ["tests/test_unix.py", POOLED_TEST], timeout=120)
    expect("jsonrpclib-pelix", mode, run, minimum=3)


JSONRPCLIB_SCRIPT = """
import os, socketserver, threading
import psutil
from jsonrpclib import ServerProxy
from jsonrpclib.SimpleJSONRPCServer import SimpleJSONRPCServer

class ForkingJSONRPCServer(socketserver.ForkingMixIn, SimpleJSONRPCServer):
    pass

server = ForkingJSONRPCServer(("127.0.0.1", 0), logRequests=False)
server.register_function(os.getpid, "pid")
server.register_function(lambda a, b: a + b, "add")
thread = threading.Thread(target=server.serve_forever)
thread.start()
try:
    proxy = ServerProxy("http://127.0.0.1:%d" % server.server_address[1])
    assert proxy.add(2, 3) == 5
    pids = {proxy.pid() for n in range(4)}
    print("OK calls answered", flush=True)
    if os.getpid() not in pids:
        print("OK served by other processes", flush=True)
finally:
    server.shutdown()
    thread.join(10)
    server.server_close()
assert not thread.is_alive()
left = [p for p in psutil.Process().children(recursive=True) if p.status() != "zombie"]
assert not left and not server.active_children, left
print("OK stopped, no process left", flush=True)
"""


@pytest.mark.parametrize("mode", MODES)
def test_jsonrpclib_forking_server_script(scratch: Scratch, mode: str) -> None:
    python, where = scratch.python, scratch.where
    run = pypi_users.run_script(python, mode, where, JSONRPCLIB_SCRIPT, timeout=60)
    assert run.returncode == 0, run.output
    assert run.left_behind == [], run.left_behind
    assert set(run.outcomes) == {
        "calls answered", "served by other processes", "stopped, no process left"
    }, run.output


def test_process_bound_checks_say_why() -> None:
    assert all(why in WHY for bound in PROCESS_BOUND.values() for why in bound.values())
