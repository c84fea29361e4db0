"""Drop-in compatibility: stdlib-style programs, transports, hooks, errors."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from tests.apps.prefork_apps import program
from tests.kit import exchange as tcp_exchange
from tests.kit import wait_until

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
