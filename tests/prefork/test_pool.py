"""The prefork pool: size, titles, replacement, max_children, crash loops, master death."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import psutil
import pytest

from tests.apps.prefork_apps import program
from tests.kit import LoadGen, PoolWatcher, open_clients, wait_until
from tests.kit import exchange as tcp_exchange


def worker_pids(engine) -> set[int]:
    return {p.pid for p in engine.workers()}


def title(proc: psutil.Process) -> str:
    return " ".join(proc.cmdline()).strip()


def worker_titles(engine) -> list[str]:
    try:
        return sorted(title(p) for p in engine.workers())
    except psutil.NoSuchProcess:
        return []


def test_pool_size_and_process_titles(engine_proc) -> None:
    engine = engine_proc(program(attrs="workers = 3\npool_mode = 'static'\nproc_name = 'demo'"))
    expected = [f"engine: worker {n} [demo]" for n in range(3)]
    wait_until(lambda: worker_titles(engine) == expected, 10, f"titles {expected}")
    host, port = engine.address
    assert title(psutil.Process(engine.pid)) == f"engine: master [demo] {host}:{port}"
    workers = engine.workers()
    # Each answer names its worker; the master itself never serves.
    served = {tcp_exchange(engine.address, b"hello\n").split()[0] for _ in range(20)}
    assert served <= {str(p.pid).encode() for p in workers}


def test_default_title_names_the_handler(engine_proc) -> None:
    engine = engine_proc(program(attrs="workers = 1\npool_mode = 'static'"))
    wait_until(
        lambda: worker_titles(engine) == ["engine: worker 0 [PidEcho]"], 10, "worker title"
    )


def test_killed_worker_is_replaced_and_reaped(engine_proc) -> None:
    engine = engine_proc(program(attrs="workers = 2\npool_mode = 'static'"))
    before = wait_until(lambda: len(worker_pids(engine)) == 2 and worker_pids(engine), 10, "pool")
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    after = wait_until(
        lambda: (pids := worker_pids(engine)) and len(pids) == 2 and victim not in pids and pids,
        5, "replacement",
    )
    assert len(after - before) == 1
    # Reaped: the victim is not even a zombie any more.
    wait_until(lambda: not psutil.pid_exists(victim), 5, "victim reaped")
    assert tcp_exchange(engine.address, b"still here\n").endswith(b"still here\n")
    assert "died: killed by SIGKILL" in engine.log()


def test_max_children_is_never_exceeded_under_ttin_storm(engine_proc) -> None:
    engine = engine_proc(program(attrs="workers = 2\nmax_children = 4\npool_mode = 'static'"))
    wait_until(lambda: len(engine.workers()) == 2, 10, "pool")
    with PoolWatcher(engine, interval=0) as watch:
        # Signals of one kind coalesce while pending, so send one at a time and wait
        # for its effect; past max_children the extra ones must change nothing.
        sent = 0
        for expected in (3, 4, 4, 4, 4):
            os.kill(engine.pid, signal.SIGTTIN)
            sent += 1
            wait_until(lambda n=sent: _scale_lines(engine) == n, 10, "TTIN handled")
            wait_until(lambda e=expected: len(engine.workers()) == e, 10, f"{expected} workers")
        assert engine.log().count("workers 4 -> 4") == 3
        for expected in (3, 2, 1, 1, 1):
            os.kill(engine.pid, signal.SIGTTOU)
            sent += 1
            wait_until(lambda n=sent: _scale_lines(engine) == n, 10, "TTOU handled")
            wait_until(lambda e=expected: len(engine.workers()) == e, 10, f"{expected} workers")
        assert engine.log().count("workers 1 -> 1") == 2
    peak = watch.peak_children
    assert peak <= 4, f"saw {peak} worker processes with max_children=4"
    assert len(engine.workers()) == 1  # never below one worker


def _scale_lines(engine) -> int:
    return len(re.findall(r"workers \d+ -> \d+", engine.log()))


def test_crash_loop_backs_off_then_fails_fast(engine_proc) -> None:
    engine = engine_proc(
        program(attrs="workers = 2\ndef worker_init(self):\n    raise RuntimeError('no db')")
    )
    code = engine.wait(timeout=30)
    log = engine.log()
    assert code != 0
    assert "no worker could boot" in log
    assert "RuntimeError: no db" in log
    assert "next spawn in 0.10s" in log and "next spawn in 0.20s" in log  # backoff grows


def test_worker_that_fails_to_boot_a_few_times_recovers(engine_proc, tmp_path) -> None:
    counter = tmp_path / "boots"
    engine = engine_proc(
        program(
            attrs=f"""workers = 1
pool_mode = 'static'
def worker_init(self):
    with open({str(counter)!r}, 'a+') as f:
        f.write('x')
        f.seek(0)
        if len(f.read()) <= 2:
            raise RuntimeError('not yet')"""
        )
    )
    wait_until(lambda: len(engine.workers()) == 1 and "not yet" in engine.log(), 10, "boot")
    assert tcp_exchange(engine.address, b"up\n").endswith(b"up\n")
    assert counter.read_text() == "xxx"


def test_workers_die_within_a_second_of_master_kill(engine_proc) -> None:
    engine = engine_proc(program(attrs="workers = 3\npool_mode = 'static'"))
    pids = wait_until(lambda: len(worker_pids(engine)) == 3 and worker_pids(engine), 10, "pool")
    # One worker is busy in a long request: it must go too.
    with socket.create_connection(engine.address, timeout=5) as busy:
        busy.sendall(b"SLEEP 30\n")
        os.kill(engine.pid, signal.SIGKILL)
        engine.wait(5)
        start = time.monotonic()
        # Dead means dead or a zombie: they are our adopted orphans, reaped afterwards.
        wait_until(
            lambda: all(not _running(p) for p in pids), 1.0, "orphaned workers to die"
        )
    assert time.monotonic() - start < 1.0


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_keepalive_clients_beyond_cpu_count_are_all_served(engine_proc) -> None:
    """32 keep-alive clients on a 2-worker start: the dynamic pool grows to serve all."""
    engine = engine_proc(program(attrs="workers = 2"))
    with open_clients(engine.address, 32, timeout=15) as clients:
        for rnd in range(3):
            for sock in clients:
                sock.sendall(b"round %d\n" % rnd)
            for sock in clients:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(100)
                    assert chunk, "server closed a keep-alive connection"
                    data += chunk
                assert data.endswith(b"round %d\n" % rnd)
        assert 32 <= len(engine.workers()) <= 40


def test_idle_dynamic_pool_shrinks_back(engine_proc) -> None:
    engine = engine_proc(
        program(attrs="workers = 1\nmin_spare = 1\nmax_spare = 2\nidle_timeout = 0.2")
    )
    with open_clients(engine.address, 6, timeout=10) as clients:
        for sock in clients:
            sock.sendall(b"hi\n")
            assert sock.recv(100).endswith(b"hi\n")
        grown = len(engine.workers())
        assert grown >= 6
    # All idle now: surplus above max_spare retires, one per tick.
    wait_until(lambda: len(engine.workers()) <= 2, 15, "pool to shrink to max_spare")


def test_replacement_time_is_short(engine_proc) -> None:
    """A SIGKILLed worker is replaced well within a second (target: under 100 ms)."""
    engine = engine_proc(program(attrs="workers = 2\npool_mode = 'static'"))
    pids = wait_until(lambda: len(worker_pids(engine)) == 2 and worker_pids(engine), 10, "pool")
    victim = min(pids)
    start = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(worker_pids(engine) - pids) == 1, 2, "replacement")
    assert time.monotonic() - start < 2.0


def test_master_reaps_only_its_own_children(engine_proc) -> None:
    """A subprocess of the same program is left to its owner, exit status intact."""
    engine = engine_proc(
        program(
            attrs="workers = 1\npool_mode = 'static'",
            before="import subprocess\nchild = subprocess.Popen([sys.executable, '-c', "
            "'import sys; sys.stdin.read(); sys.exit(7)'], stdin=subprocess.PIPE)",
            after="print('CHILD', child.wait(), file=sys.stderr, flush=True)",
        )
    )
    wait_until(lambda: len(engine.workers()) == 2, 10, "pool and foreign child")
    foreign = [p for p in engine.workers() if "sys.exit(7)" in " ".join(p.cmdline())]
    assert len(foreign) == 1
    workers = {p.pid for p in engine.workers()} - {foreign[0].pid}
    # Let the foreign child exit while the master runs, then kill a worker to make the
    # master reap: it must not take the foreign child's status.
    foreign[0].send_signal(signal.SIGTERM)
    wait_until(lambda: foreign[0].status() == psutil.STATUS_ZOMBIE, 5, "foreign zombie")
    os.kill(workers.pop(), signal.SIGKILL)
    wait_until(lambda: "died: killed by SIGKILL" in engine.log(), 5, "worker reaped")
    assert foreign[0].status() == psutil.STATUS_ZOMBIE  # still waiting for its owner
    engine.signal(signal.SIGTERM)
    assert engine.wait(15) == 0
    assert "CHILD -15" in engine.log()


@pytest.mark.parametrize(
    "attrs, setting",
    [
        ("workers = 0", "workers"),
        ("workers = 5\nmax_children = 4", "workers"),
        ("min_spare = 5\nmax_spare = 2", "min_spare"),
        ("max_children = -1", "max_children"),
        ("pool_mode = 'elastic'", "pool_mode"),
        ("idle_timeout = 'soon'", "idle_timeout"),
    ],
)
def test_inconsistent_settings_fail_at_construction(attrs: str, setting: str) -> None:
    import engine
    from tests.apps.prefork_apps import PidEcho

    namespace: dict[str, object] = {}
    exec(attrs, namespace)
    namespace.pop("__builtins__")
    server_class = type("Bad", (engine.PreforkTCPServer,), namespace)
    with pytest.raises(engine.ConfigError) as error:
        server_class(("127.0.0.1", 0), PidEcho)
    assert error.value.setting == setting
    assert f"invalid setting {setting}=" in str(error.value)


def test_load_is_spread_over_workers(engine_proc) -> None:
    engine = engine_proc(program(attrs="workers = 2\npool_mode = 'static'"))
    wait_until(lambda: len(engine.workers()) == 2, 10, "pool")
    with LoadGen(engine.address, clients=4, max_requests=400, max_seconds=30, reply=None) as load:
        wait_until(lambda: load.total >= 400, 30, "load done")
    assert not load.failures and load.refused == 0
    assert load.ok == 400
