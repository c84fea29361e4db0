"""Drop-in compatibility with socketserver, cases found by probing drop-in programs.

Each test is a ForkingMixIn program's expectation that PreforkMixIn (and, where the
same code path is engine's classic one, ``engine.TCPServer``) used to break: a
teardown race, an exception from ``service_actions``, a listener timeout, which child
``collect_children()`` waits for, socketserver values engine refused, a user's
attribute named like one of engine's.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

import engine
from engine import PreforkMixIn, PreforkTCPServer, StreamRequestHandler
from engine.prefork import PreforkLayer
from tests.apps.prefork_apps import program
from tests.kit import log_time, read_to_eof, recv_line, wait_until

ROOT = Path(__file__).resolve().parents[2]


class Echo(StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class PreforkOnStdlib(PreforkMixIn, socketserver.TCPServer):
    """PreforkMixIn on the stdlib's TCPServer (its closed-server error is selectors')."""


# --- shutdown(); server_close() before the serving thread reached serve_forever ------


@pytest.mark.parametrize(
    "server_class", [engine.TCPServer, engine.ForkingTCPServer, PreforkTCPServer, PreforkOnStdlib]
)
def test_serve_forever_after_shutdown_and_server_close_returns(
    no_leaks: None, server_class: type[Any]
) -> None:
    """The usual teardown, ``shutdown(); server_close(); thread.join()``, when the thread
    is scheduled late: the stdlib's shutdown() waits for the loop to run and end;
    engine's returns at once and leaves the request pending, so the late serve_forever
    must return at once too. It raised "called on a closed server" instead: the
    closed-server check came before the pending shutdown (found probing)."""
    server = server_class(("127.0.0.1", 0), Echo)
    go = threading.Event()
    outcome: list[object] = []

    def serve() -> None:
        go.wait(10)
        try:
            server.serve_forever(poll_interval=0.05)
            outcome.append("returned")
        except BaseException as error:  # the outcome is what is checked
            outcome.append(error)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        server.shutdown()  # the thread is not serving yet: returns at once
        server.server_close()
    finally:
        go.set()
        thread.join(10)
    assert not thread.is_alive()
    assert outcome == ["returned"]
    # The pending request was consumed: a closed server asked to serve again says so.
    with pytest.raises(ValueError, match=r"^serve_forever\(\) called on a closed server"):
        server.serve_forever()


# --- service_actions raising ends serve_forever, as BaseServer's ----------------------


def test_an_exception_from_service_actions_stops_the_pool_and_is_raised(
    engine_proc, tmp_path: Path
) -> None:
    """BaseServer.serve_forever lets an exception from service_actions out: the loop
    ends. The master used to log it and go on serving for ever (found probing). Now the
    pool stops gracefully (the request in flight is finished) and serve_forever raises
    it."""
    trigger = tmp_path / "trigger"
    code = program(
        before="class Maintenance(Exception): pass",
        attrs=f"""workers = 1
pool_mode = 'static'
def service_actions(self):
    super().service_actions()
    if os.path.exists({str(trigger)!r}):
        raise Maintenance('maintenance window')
def serve_forever(self, poll_interval=0.5):
    try:
        super().serve_forever(poll_interval)
    except Maintenance as error:
        print('RAISED', type(error).__name__, error, file=sys.stderr, flush=True)
    else:
        print('RETURNED', file=sys.stderr, flush=True)""",
    )
    server = engine_proc(code)
    with socket.create_connection(server.address, timeout=10) as client:
        client.sendall(b"first\n")
        assert recv_line(client).endswith(b" first\n")  # a worker serves this connection
        trigger.touch()
        wait_until(lambda: "graceful stop" in server.log(), 10, "the pool to stop")
        client.sendall(b"in flight\n")  # the connection is served to its end
        assert recv_line(client).endswith(b" in flight\n")
    assert server.wait(30) == 0
    log = server.log()
    assert "RAISED Maintenance maintenance window" in log
    assert "RETURNED" not in log
    assert "SERVED-OUT" in log
    # The stop starts in the same turn, not after that turn's sleep (up to 5 s idle).
    lines = log.splitlines()
    raised = next(line for line in lines if "service_actions raised" in line)
    stopping = next(line for line in lines if "graceful stop" in line)
    assert log_time(stopping) - log_time(raised) < 1.0, (raised, stopping)


def test_an_exception_from_service_actions_ends_the_classic_loop(no_leaks: None) -> None:
    """engine.TCPServer, the reference in-process: the exception ends serve_forever."""

    class Maintenance(Exception):
        pass

    class Server(engine.TCPServer):
        def service_actions(self) -> None:
            raise Maintenance("now")

    with Server(("127.0.0.1", 0), Echo) as server, pytest.raises(Maintenance):
        server.serve_forever(poll_interval=0.01)
    server.shutdown()  # not serving: returns at once


# --- a listener timeout set by the program survives serve_forever --------------------


def test_the_listeners_own_timeout_survives_serve_forever(engine_proc) -> None:
    """A program that sets ``server.socket.settimeout(0.4)`` has handle_request() return
    after 0.4 s. serve_forever made the listener non-blocking and then restored it
    with setblocking(True): the timeout was lost and handle_request() blocked for ever
    (found probing)."""
    code = program(
        attrs="""workers = 1
pool_mode = 'static'
def serve_forever(self, poll_interval=0.5):
    self.socket.settimeout(0.4)
    self.timeout = None  # only the socket's timeout applies
    super().serve_forever(poll_interval)
    print('LISTENER TIMEOUT', self.socket.gettimeout(), file=sys.stderr, flush=True)
    self.handle_request()  # no client: handle_timeout() after 0.4 s
    print('HANDLE_REQUEST RETURNED', file=sys.stderr, flush=True)""",
    )
    server = engine_proc(code)
    server.wait_workers(1)
    server.signal(15)  # SIGTERM: a graceful stop, serve_forever returns
    wait_until(lambda: "LISTENER TIMEOUT" in server.log(), 30, "serve_forever to return")
    assert "LISTENER TIMEOUT 0.4" in server.log()
    wait_until(lambda: "HANDLE_REQUEST RETURNED" in server.log(), 10, "handle_request")
    assert server.wait(10) == 0


# --- collect_children() at max_children waits for whichever child ends first ---------


class Gated(StreamRequestHandler):
    """Writes ``started <pid>``, waits for a line, writes ``done``."""

    def handle(self) -> None:
        import os

        self.wfile.write(b"started %d\n" % os.getpid())
        self.rfile.readline()
        self.wfile.write(b"done\n")


@pytest.mark.parametrize("server_class", [engine.ForkingTCPServer, PreforkTCPServer])
def test_collect_children_at_max_children_waits_for_the_first_to_finish(
    no_leaks: None, server_class: type[Any]
) -> None:
    """ForkingMixIn waits with waitpid(-1): any child that finishes frees a slot.
    PreforkMixIn waited for the lowest pid, however long that child ran (found
    probing). Here the child with the higher pid finishes; the other stays busy."""
    server = server_class(("127.0.0.1", 0), Gated)
    server.max_children = 2
    clients = [socket.create_connection(server.server_address, timeout=10) for _ in range(2)]
    collecting = None
    try:
        pids = []
        for client in clients:
            server.handle_request()
            line = recv_line(client)
            assert line.startswith(b"started "), line
            pids.append(int(line.split()[1]))
        assert server.active_children == set(pids)
        busy, quick = sorted(zip(pids, clients, strict=True))  # the lower pid stays busy
        quick[1].sendall(b"go\n")
        assert read_to_eof(quick[1]) == b"done\n"
        collecting = threading.Thread(target=server.collect_children)
        collecting.start()
        wait_until(lambda: not collecting.is_alive(), 10, "collect_children to return")
        assert server.active_children == {busy[0]}
        assert psutil.Process(busy[0]).status() != psutil.STATUS_ZOMBIE
        busy[1].sendall(b"go\n")
        assert read_to_eof(busy[1]) == b"done\n"
    finally:
        for client in clients:
            client.close()
        server.server_close()  # block_on_close: waits for the children
        if collecting is not None:
            collecting.join(10)
    assert not server.active_children


# --- socketserver values engine accepts ----------------------------------------------


@pytest.mark.parametrize("backlog", [0, -1])
def test_a_request_queue_size_the_stdlib_accepts_is_accepted(
    no_leaks: None, backlog: int
) -> None:
    """listen() takes any backlog (Python makes a negative one 0, the kernel caps it at
    somaxconn); ForkingTCPServer accepts 0 and -1, PreforkMixIn refused them (found
    probing). The base class's server_activate() listens with the attribute itself;
    the settings record reports it within the registry's range."""
    server_class = type("Server", (PreforkTCPServer,), {"request_queue_size": backlog})
    with server_class(("127.0.0.1", 0), Echo) as server:
        assert server.request_queue_size == backlog
        assert server.prefork_settings().request_queue_size == 1
        with socket.create_connection(server.server_address, timeout=10) as client:
            client.sendall(b"queued\n")
            server.handle_request()
            assert read_to_eof(client) == b"queued\n"


# --- a user's attribute named like one of engine's -----------------------------------


def test_a_user_may_assign_handed_off(no_leaks: None) -> None:
    """``handed_off`` was a read-only property: ``self.handed_off = ...`` in a user's
    __init__ raised AttributeError (found probing). Now the user's value shadows it;
    engine keeps its own state under a private name."""

    class Server(PreforkTCPServer):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.handed_off = "the user's"

    with Server(("127.0.0.1", 0), Echo) as server:
        assert server.handed_off == "the user's"
        server.shutdown()
        server.serve_forever()  # pending shutdown: returns at once
        assert server.handed_off == "the user's"
    with PreforkTCPServer(("127.0.0.1", 0), Echo) as plain:
        assert plain.handed_off is False


def test_classic_api_lists_every_name_engine_adds_to_the_server() -> None:
    """docs/classic-api.md names every public attribute the layer adds (settings, hooks,
    methods), and every optional hook engine calls on the server."""
    text = (ROOT / "docs" / "classic-api.md").read_text()
    section = text.split("### Every name engine adds to the server class", 1)[1]
    section = section.split("\n## ", 1)[0].split("\n### ", 1)[0]
    documented = set(re.findall(r"`([a-z_]+)[`(]", section))  # `name` or `name(...)`
    added = {name for name in vars(PreforkLayer) if not name.startswith("_")}
    added.add("reopen_logs")  # called on SIGUSR1 if the server has it
    assert added - documented == set()


# --- server_close() while serve_forever() runs in another thread ----------------------

CLOSED_WHILE_SERVING = """
import logging, os, signal, sys, threading
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s [%(process)d] %(levelname)s %(message)s")
import psutil
import engine
from tests.apps.prefork_apps import PidEcho, PidDatagram
close_now = threading.Event()
signal.signal(signal.SIGUSR1, lambda *_: close_now.set())
class Server(engine.{server}):
    allow_reuse_address = True
    workers = 2
    pool_mode = 'static'
srv = Server(('127.0.0.1', 0), {handler})
outcome = []
def serve():
    try:
        srv.serve_forever()
        outcome.append('returned')
    except BaseException as error:
        outcome.append(repr(error))
thread = threading.Thread(target=serve)
thread.start()
print("READY", repr(srv.server_address), flush=True)
close_now.wait()
srv.server_close()  # a `with` block left by an exception, the loop in another thread
print("CLOSED, workers left:", len(psutil.Process().children()), file=sys.stderr, flush=True)
thread.join(30)
print("THREAD", "alive" if thread.is_alive() else "ended", outcome, file=sys.stderr, flush=True)
srv.shutdown()
print("SHUTDOWN returned", file=sys.stderr, flush=True)
"""


@pytest.mark.parametrize(("server", "handler"), [
    ("PreforkTCPServer", "PidEcho"), ("PreforkUDPServer", "PidDatagram"),
])
def test_server_close_while_serving_in_a_thread_stops_the_pool(
    engine_proc, server: str, handler: str
) -> None:
    """server_close() from the main thread while serve_forever() runs in another: it
    killed the workers, and the master forked new ones that died at once on the closed
    socket (ValueError: fd -1), hundreds a second until shutdown() (found probing).
    Now the pool stops: no fork, no traceback, and serve_forever returns."""
    engine_run = engine_proc(CLOSED_WHILE_SERVING.format(server=server, handler=handler))
    wait_until(lambda: engine_run.log().count("spawned worker") == 2, 10, "the pool")
    os.kill(engine_run.pid, signal.SIGUSR1)
    wait_until(lambda: "SHUTDOWN returned" in engine_run.log(), 40, "the program's end")
    log = engine_run.log()
    assert "CLOSED, workers left: 0" in log, log
    assert "THREAD ended ['returned']" in log, log
    assert "Traceback" not in log and "Error" not in log, log
    assert log.count("spawned worker") == 2, log  # none forked after the close
    assert engine_run.wait(10) == 0
