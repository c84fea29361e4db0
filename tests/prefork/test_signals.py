"""Lifecycle and signals: TERM, INT, HUP; shutdown() from a thread; handler restore."""

from __future__ import annotations

import signal
import socket

from tests.apps.prefork_apps import program
from tests.kit import LoadGen, recv_line, wait_until
from tests.kit import exchange as tcp_exchange


def test_sigterm_lets_slow_inflight_request_finish(engine_proc) -> None:
    engine = engine_proc(program(attrs="workers = 2\npool_mode = 'static'"))
    wait_until(lambda: len(engine.workers()) == 2, 10, "pool")
    with socket.create_connection(engine.address, timeout=15) as client:
        client.sendall(b"SLEEP 1.5\n")
        client.shutdown(socket.SHUT_WR)
        wait_until(lambda: _busy_workers(engine) == 1, 5, "request in flight")
        engine.signal(signal.SIGTERM)
        reply = recv_line(client, timeout=15)
    assert reply.endswith(b"SLEEP 1.5\n")
    assert engine.wait(15) == 0
    assert "graceful stop" in engine.log()
    assert "SERVED-OUT" in engine.log()


def _busy_workers(engine) -> int:
    """Workers in a request: their CPU state is sleeping but they hold a connection."""
    count = 0
    for proc in engine.workers():
        try:
            conns = proc.net_connections(kind="tcp")
        except Exception:
            continue
        count += any(c.status != "LISTEN" for c in conns)
    return count


def test_sigint_stops_quickly_and_raises_keyboard_interrupt(engine_proc) -> None:
    code = program(attrs="workers = 2\npool_mode = 'static'").replace(
        "    srv.serve_forever()",
        "    try:\n        srv.serve_forever()\n    except KeyboardInterrupt:\n"
        "        print('INTERRUPTED', file=sys.stderr, flush=True)",
    )
    engine = engine_proc(code)
    workers = wait_until(lambda: len(engine.workers()) == 2 and engine.workers(), 10, "pool")
    with socket.create_connection(engine.address, timeout=15) as client:
        client.sendall(b"SLEEP 30\n")
        wait_until(lambda: _busy_workers(engine) == 1, 5, "request in flight")
        engine.signal(signal.SIGINT)
        assert engine.wait(5) == 0
        assert client.recv(100) == b""  # the in-flight request was cut short
    assert "INTERRUPTED" in engine.log()
    assert all(not p.is_running() for p in workers)


def test_sighup_replaces_every_worker_under_load_without_failures(engine_proc) -> None:
    engine = engine_proc(program(attrs="workers = 3\npool_mode = 'static'"))
    old = wait_until(
        lambda: len(engine.workers()) == 3 and {p.pid for p in engine.workers()}, 10, "pool"
    )
    with LoadGen(engine.address, clients=4, max_requests=20_000, max_seconds=60,
                 reply=None) as load:
        wait_until(lambda: load.ok >= 200, 20, "load flowing")
        for round_ in range(3):
            engine.signal(signal.SIGHUP)
            wait_until(
                lambda r=round_: engine.log().count("graceful restart") == r + 1, 10, "HUP seen"
            )
            seen = load.ok
            wait_until(lambda s=seen: load.ok >= s + 200, 20, "load after HUP")
        wait_until(
            lambda: len(engine.workers()) == 3
            and not ({p.pid for p in engine.workers()} & old),
            20,
            "old generation gone",
        )
    assert load.refused == 0, "connections refused during SIGHUP"
    assert not load.failures, load.failures
    assert load.ok > 600


def test_shutdown_from_another_thread_leaves_signals_alone(engine_proc) -> None:
    code = """
import signal, sys, threading
import engine
from tests.apps.prefork_apps import PidEcho
from tests.kit import exchange as tcp_exchange

class Server(engine.PreforkTCPServer):
    workers = 2
    pool_mode = 'static'

before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)}
srv = Server(('127.0.0.1', 0), PidEcho)
thread = threading.Thread(target=srv.serve_forever)
thread.start()
reply = None
for _ in range(200):
    try:
        reply = tcp_exchange(srv.server_address, b'x\\n', 5)
        break
    except OSError:
        threading.Event().wait(0.05)
assert reply and reply.endswith(b'x\\n'), reply
during = {s: signal.getsignal(s) for s in before}
srv.shutdown()
thread.join(10)
assert not thread.is_alive()
srv.server_close()
assert during == before, (during, before)
srv.shutdown()  # not serving any more: returns at once
print("READY 'done'", flush=True)
"""
    engine = engine_proc(code)
    assert engine.address == "done"
    assert engine.wait(20) == 0


def test_signal_handlers_are_restored_after_serve_forever(engine_proc) -> None:
    code = program(
        attrs="workers = 1\npool_mode = 'static'",
        before="before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, "
        "signal.SIGINT, signal.SIGCHLD)}\nwakeup_before = signal.set_wakeup_fd(-1)",
        after="after = {s: signal.getsignal(s) for s in before}\n"
        "assert after == before, (after, before)\n"
        "assert signal.set_wakeup_fd(-1) == wakeup_before\n"
        "print('RESTORED', file=sys.stderr, flush=True)",
    )
    engine = engine_proc(code)
    wait_until(lambda: len(engine.workers()) == 1, 10, "pool")
    engine.signal(signal.SIGTERM)
    assert engine.wait(15) == 0
    assert "RESTORED" in engine.log()


def test_workers_ignore_master_only_signals(engine_proc) -> None:
    engine = engine_proc(program(attrs="workers = 1\npool_mode = 'static'"))
    worker = wait_until(lambda: engine.workers(), 10, "pool")[0]
    wait_until(lambda: "worker 0" in " ".join(worker.cmdline()), 5, "worker set up")
    for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2, signal.SIGWINCH):
        worker.send_signal(sig)
    assert tcp_exchange(engine.address, b"alive\n").startswith(str(worker.pid).encode())
    assert worker.is_running()


def test_listener_timeouts_are_cleared_after_serve_forever(engine_proc) -> None:
    """client_timeout lives on the listener while serving (its connections inherit it);
    after serve_forever() the socket is the caller's again: a blocking accept() on it
    must not time out."""
    code = """
import socket, struct, threading
import engine
from tests.apps.prefork_apps import PidEcho
from tests.kit import exchange as tcp_exchange

class Server(engine.PreforkTCPServer):
    workers = 1
    pool_mode = 'static'
    client_timeout = 0.2

def kernel_timeouts(sock):
    return [struct.unpack('@ll', sock.getsockopt(socket.SOL_SOCKET, option, 16))
            for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO)]

srv = Server(('127.0.0.1', 0), PidEcho)
thread = threading.Thread(target=srv.serve_forever)
thread.start()
for _ in range(200):
    try:
        tcp_exchange(srv.server_address, b'x\\n', 5)
        break
    except OSError:
        threading.Event().wait(0.05)
serving = kernel_timeouts(srv.socket)
srv.shutdown()
thread.join(10)
after = kernel_timeouts(srv.socket)
srv.server_close()
assert serving == [(0, 200000), (0, 200000)], serving
assert after == [(0, 0), (0, 0)], after
print("READY 'done'", flush=True)
"""
    engine = engine_proc(code)
    assert engine.address == "done"
    assert engine.wait(20) == 0
