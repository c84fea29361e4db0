"""Drop-in compatibility: stdlib-style programs, transports, hooks, errors."""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import sys
import threading
from typing import Any

import psutil
import pytest

from engine import PreforkMixIn, PreforkTCPServer, StreamRequestHandler
from tests.apps.prefork_apps import program
from tests.kit import exchange as tcp_exchange
from tests.kit import read_to_eof, wait_until

STDLIB_STYLE = """
import socketserver, sys, threading
import engine

class MyTCPHandler(socketserver.BaseRequestHandler):
    def handle(self):
        self.data = self.request.recv(1024).strip()
        self.request.sendall(self.server.prefix + self.data.upper())

if __name__ == "__main__":
    HOST, PORT = "127.0.0.1", 0
    with {server}((HOST, PORT), MyTCPHandler) as server:
        server.prefix = b"> "
        print("READY", repr(server.server_address), flush=True)
        server.serve_forever()
"""


@pytest.mark.parametrize("server", ["socketserver.ForkingTCPServer", "engine.PreforkTCPServer"])
def test_stdlib_program_switched_to_prefork_works_unchanged(engine_proc, server: str) -> None:
    engine = engine_proc(STDLIB_STYLE.format(server=server))
    for word in (b"hello", b"world"):
        assert tcp_exchange(engine.address, word) == b"> " + word.upper()


def test_prefork_mixin_on_the_stdlib_tcpserver(engine_proc) -> None:
    code = program(
        server="engine.PreforkMixIn, socketserver.TCPServer",
        before="import socketserver",
        attrs="workers = 2",
    )
    engine = engine_proc(code)
    assert tcp_exchange(engine.address, b"stdlib base\n").endswith(b"stdlib base\n")
    wait_until(lambda: len(engine.workers()) >= 2, 10, "pool")


def test_ipv6(engine_proc) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("IPv6 loopback is not available")
    engine = engine_proc(
        program(address="('::1', 0)", attrs="address_family = socket.AF_INET6\nworkers = 1")
    )
    assert tcp_exchange(engine.address[:2], b"six\n").endswith(b"six\n")


def test_udp(engine_proc) -> None:
    engine = engine_proc(
        # static: the answering pids must be the two seen here (a dynamic pool may
        # fork a spare while a datagram is being answered)
        program(server="PreforkUDPServer", handler="PidDatagram",
                attrs="workers = 2\npool_mode = 'static'")
    )
    workers = wait_until(lambda: len(engine.workers()) == 2 and engine.workers(), 10, "pool")
    pids = {str(p.pid).encode() for p in workers}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        for n in range(20):
            client.sendto(b"dgram %d" % n, engine.address)
            reply, _ = client.recvfrom(1000)
            pid, body = reply.split(b" ", 1)
            assert body == b"dgram %d" % n and pid in pids


def test_unix_stream(engine_proc, tmp_path) -> None:
    path = str(tmp_path / "s.sock")
    engine = engine_proc(
        program(server="PreforkUnixStreamServer", address=repr(path), attrs="workers = 2")
    )
    assert engine.address == path
    assert tcp_exchange(path, b"unix\n").endswith(b"unix\n")


def test_unix_datagram(engine_proc, tmp_path) -> None:
    path = str(tmp_path / "d.sock")
    engine_proc(
        program(
            server="PreforkUnixDatagramServer",
            handler="PidDatagram",
            address=repr(path),
            attrs="workers = 2",
        )
    )
    client_path = str(tmp_path / "client.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.bind(client_path)
        client.settimeout(5)
        client.sendto(b"hello", path)
        reply, _ = client.recvfrom(1000)
    assert reply.endswith(b" hello")


def test_raising_handler_goes_to_handle_error_and_worker_keeps_serving(engine_proc) -> None:
    code = program(
        attrs="""workers = 1
pool_mode = 'static'
def handle_error(self, request, client_address):
    print('HANDLE_ERROR', os.getpid(), sys.exc_info()[0].__name__, file=sys.stderr, flush=True)""",
        before="""
class Boom(StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        if line.startswith(b'boom'):
            raise ValueError('boom')
        self.wfile.write(b'%d %s' % (os.getpid(), line))
""",
        handler="Boom",
    )
    engine = engine_proc(code)
    assert tcp_exchange(engine.address, b"boom\n") == b""
    reply = tcp_exchange(engine.address, b"fine\n")
    pid = reply.split()[0].decode()
    assert f"HANDLE_ERROR {pid} ValueError" in engine.log()
    assert len(engine.workers()) == 1


def test_handle_error_runs_on_the_open_connection_and_it_is_shut_down_once(
    engine_proc, tmp_path
) -> None:
    """As in ForkingMixIn's child: finish_request, handle_error (which may still answer
    the client), then shutdown_request, once. The worker used to shut the request down
    first (handle_error wrote to a closed socket: OSError, the client got nothing) and
    then again after handle_error (found probing drop-in programs)."""
    record = tmp_path / "hooks"
    code = program(
        attrs=f"""workers = 1
pool_mode = 'static'
def handle_error(self, request, client_address):
    open({str(record)!r}, 'a').write('handle_error\\n')
    request.sendall(b'ERR ' + sys.exc_info()[0].__name__.encode() + b'\\n')
def shutdown_request(self, request):
    open({str(record)!r}, 'a').write('shutdown_request\\n')
    super().shutdown_request(request)""",
        before="""
class Boom(StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        raise ValueError('boom')
""",
        handler="Boom",
    )
    engine = engine_proc(code)
    assert tcp_exchange(engine.address, b"boom\n") == b"ERR ValueError\n"
    wait_until(lambda: record.exists() and record.read_text().count("\n") >= 2, 10,
               "the hooks")
    assert tcp_exchange(engine.address, b"again\n") == b"ERR ValueError\n"  # after both
    assert record.read_text().splitlines() == ["handle_error", "shutdown_request"] * 2


def test_what_the_program_printed_before_the_forks_is_written_once(
    engine_proc, tmp_path
) -> None:
    """sys.stdout to a file is block-buffered: a line not yet flushed when the workers
    are forked was in each worker's copy of the buffer, and each worker flushes its
    stdout at exit, so it was written once more per worker (found probing)."""
    out = tmp_path / "stdout"
    code = program(
        attrs=f"""workers = 2
pool_mode = 'static'
def serve_forever(self, poll_interval=0.5):
    sys.stdout = open({str(out)!r}, 'w')  # after the READY line: a file, buffered
    print('parent: before serving')
    super().serve_forever(poll_interval)""",
    )
    engine = engine_proc(code)
    wait_until(lambda: len(engine.workers()) == 2, 10, "the workers")
    engine.signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0
    assert out.read_text() == "parent: before serving\n"


def test_verify_request_false_closes_unserved(engine_proc) -> None:
    code = program(
        attrs="workers = 1\ndef verify_request(self, request, client_address):\n    return False"
    )
    engine = engine_proc(code)
    assert tcp_exchange(engine.address, b"let me in\n") == b""


def test_hooks_run_in_the_right_processes(engine_proc, tmp_path) -> None:
    record = tmp_path / "hooks"
    code = program(
        attrs=f"""workers = 2
pool_mode = 'static'
def _note(self, text):
    with open({str(record)!r}, 'a') as f:
        f.write(text + '\\n')
def worker_init(self):
    self._note(f'init {{os.getpid()}} parent {{os.getppid()}}')
def worker_exit(self):
    self._note(f'exit {{os.getpid()}}')
def worker_spawned(self, slot, pid):
    self._note(f'spawned {{slot}} {{pid}} by {{os.getpid()}}')
def worker_exited(self, slot, pid, exitcode):
    self._note(f'exited {{slot}} {{pid}} {{exitcode}} by {{os.getpid()}}')"""
    )
    engine = engine_proc(code)
    master = engine.pid
    pids = wait_until(
        lambda: len(engine.workers()) == 2 and sorted(p.pid for p in engine.workers()), 10, "pool"
    )
    wait_until(lambda: record.exists() and record.read_text().count("init") == 2, 5, "inits")
    os.kill(pids[0], signal.SIGKILL)
    wait_until(lambda: "exited" in record.read_text(), 5, "exited hook")
    engine.signal(signal.SIGTERM)
    assert engine.wait(15) == 0
    lines = record.read_text().splitlines()
    assert f"init {pids[0]} parent {master}" in lines
    assert any(line.startswith("spawned ") and line.endswith(f"by {master}") for line in lines)
    assert f"exited 0 {pids[0]} -9 by {master}" in lines or any(
        line.startswith("exited ") and f" {pids[0]} -9 by {master}" in line for line in lines
    )
    assert f"exit {pids[1]}" in lines  # graceful stop ran worker_exit


# --- ForkingMixIn's surface, with its meaning ---------------------------------------
# In-process: handle_request() from the test's only thread (no fork while another runs).


class GatedReport(StreamRequestHandler):
    """Writes ``started <pid>``, waits for a line from the client, then raises
    ``server.raise_this`` if set (after writing ``done``)."""

    def handle(self) -> None:
        self.wfile.write(b"started %d\n" % os.getpid())
        self.rfile.readline()
        self.wfile.write(b"done\n")
        if self.server.raise_this is not None:
            raise self.server.raise_this("from the handler")


class ReportingServer(PreforkTCPServer):
    raise_this: type[BaseException] | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        request.sendall(b"handled %s\n" % type(sys.exc_info()[1]).__name__.encode())


def started_pid(client: socket.socket) -> int:
    line = client.makefile("rb").readline()
    assert line.startswith(b"started "), line
    return int(line.split()[1])


def test_prefork_has_forkingmixins_public_surface_and_defaults() -> None:
    for name in ("active_children", "max_children", "block_on_close", "timeout"):
        assert hasattr(PreforkMixIn, name), name
    assert PreforkMixIn.active_children is None
    assert PreforkMixIn.block_on_close is True
    assert PreforkMixIn.timeout == socketserver.ForkingMixIn.timeout == 300
    assert PreforkMixIn.max_children == socketserver.ForkingMixIn.max_children == 40
    for name in ("collect_children", "handle_timeout", "service_actions", "process_request",
                 "server_close"):
        assert name in vars(PreforkMixIn), name


@pytest.mark.parametrize("raised", [None, ValueError, SystemExit, KeyboardInterrupt])
def test_handle_request_serves_in_a_child_and_nothing_escapes(
    no_leaks: None, raised: type[BaseException] | None
) -> None:
    server = ReportingServer(("127.0.0.1", 0), GatedReport)
    server.raise_this = raised
    try:
        with socket.create_connection(server.server_address, timeout=10) as client:
            server.handle_request()  # returns once the child is forked: nothing escapes
            child = started_pid(client)
            assert child != os.getpid()
            assert server.active_children == {child}
            client.sendall(b"go\n")
            reply = read_to_eof(client)
        expected = b"done\n" + (b"handled ValueError\n" if raised is ValueError else b"")
        assert reply == expected  # handle_error for Exceptions only, in the child
    finally:
        server.server_close()  # block_on_close: waits for the child
    assert not server.active_children
    assert not psutil.pid_exists(child) or psutil.Process(child).ppid() != os.getpid()


@pytest.mark.parametrize("block_on_close", [True, False])
def test_server_close_waits_for_request_children_as_block_on_close_says(
    no_leaks: None, block_on_close: bool
) -> None:
    server = ReportingServer(("127.0.0.1", 0), GatedReport)
    server.block_on_close = block_on_close
    with socket.create_connection(server.server_address, timeout=10) as client:
        server.handle_request()
        child = started_pid(client)
        closing = threading.Thread(target=server.server_close)
        closing.start()
        # A wait for something that must NOT happen: bounded, then checked.
        closing.join(0.5)
        assert closing.is_alive() is block_on_close
        assert psutil.Process(child).status() != psutil.STATUS_ZOMBIE  # still at the gate
        client.sendall(b"go\n")
        assert read_to_eof(client) == b"done\n"
        closing.join(10)
        assert not closing.is_alive()
    if block_on_close:
        assert not server.active_children  # reaped by server_close itself
    else:
        assert server.active_children == {child}
        server.collect_children(blocking=True)
        assert not server.active_children


def test_collect_children_blocks_at_max_children(no_leaks: None) -> None:
    server = ReportingServer(("127.0.0.1", 0), GatedReport)
    server.max_children = 1
    try:
        with socket.create_connection(server.server_address, timeout=10) as client:
            server.handle_request()
            child = started_pid(client)
            collecting = threading.Thread(target=server.collect_children)
            collecting.start()
            collecting.join(0.5)
            assert collecting.is_alive()  # one child running, max_children 1: it waits
            client.sendall(b"go\n")
            collecting.join(10)
            assert not collecting.is_alive()
            assert server.active_children == set()
            assert not psutil.pid_exists(child) or psutil.Process(child).ppid() != os.getpid()
    finally:
        server.server_close()


def test_handle_timeout_reaps_finished_children(no_leaks: None) -> None:
    server = ReportingServer(("127.0.0.1", 0), GatedReport)
    try:
        with socket.create_connection(server.server_address, timeout=10) as client:
            server.handle_request()
            child = started_pid(client)
            client.sendall(b"go\n")
            assert read_to_eof(client) == b"done\n"
        wait_until(lambda: psutil.Process(child).status() == psutil.STATUS_ZOMBIE, 10, "exit")
        assert server.active_children == {child}
        server.timeout = 0.01
        server.handle_request()  # no request: handle_timeout → collect_children
        assert server.active_children == set()
    finally:
        server.server_close()


def test_the_pool_calls_service_actions_and_serves_in_its_workers(engine_proc, tmp_path) -> None:
    record = tmp_path / "actions"
    code = program(
        attrs=f"""workers = 1
pool_mode = 'static'
def service_actions(self):
    super().service_actions()
    if not os.path.exists({str(record)!r}):
        with open({str(record)!r}, 'w') as f:
            f.write(str(os.getpid()))""",
    )
    engine = engine_proc(code)
    worker = wait_until(lambda: engine.workers(), 10, "pool")[0]
    # The file is created empty, then written: wait for its content.
    written = wait_until(lambda: record.exists() and record.read_text(), 10, "service_actions")
    assert written == str(engine.pid)  # in the master
    # In a worker, a request is served right there: no child per request.
    reply = tcp_exchange(engine.address, b"in the worker\n")
    assert reply.split()[0] == str(worker.pid).encode()
    assert worker.children() == []
