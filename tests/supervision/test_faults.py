"""Faults that must not take the service down: workers that die after booting, crash
loops after the service has served, fork() failing (issue #13 items 1-3).

Real processes, real exits: handlers that exit with chosen statuses, worker_init that
fails on command, and an unprivileged master whose RLIMIT_NPROC makes fork() fail.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.apps.prefork_apps import program
from tests.kit import exchange as tcp_exchange
from tests.kit import log_time, open_clients, recv_line, run_cli, wait_until

# A handler that exits the way the client asks, after answering once.
EXITING = """
class Exiting(StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        self.wfile.write(b'%d %s' % (os.getpid(), line))
        self.wfile.flush()
        word, _, code = line.strip().partition(b' ')
        if word == b'EXIT':
            os._exit(int(code))
        if word == b'SYSEXIT':
            raise SystemExit(int(code))
"""


def _served_by(address: object, payload: bytes) -> int:
    return int(tcp_exchange(address, payload).split()[0])


def test_booted_worker_exiting_3_is_not_a_boot_failure(engine_proc) -> None:
    engine = engine_proc(program(
        attrs="workers = 1\npool_mode = 'static'", before=EXITING, handler="Exiting",
    ))
    wait_until(lambda: len(engine.workers()) == 1, 10, "the worker")
    # Six times in a row the only worker serves, then exits 3 (or SystemExit(3)): the
    # master must read each as a death after boot, never as a failed boot (which, five
    # in a row on a pool of one, used to stop the master with exit 3).
    for n in range(6):
        victim = engine.workers()[0].pid
        word = b"EXIT 3\n" if n % 2 else b"SYSEXIT 3\n"
        assert _served_by(engine.address, word) == victim
        wait_until(lambda v=victim: f"pid {v} died: exit code 3" in engine.log(), 10,
                   "the death logged")
        wait_until(lambda v=victim: [w.pid for w in engine.workers()] not in ([], [v]), 10,
                   "a replacement")
    assert engine.proc.poll() is None, engine.log()[-3000:]
    log = engine.log()
    assert "failed to boot" not in log and "before it booted" not in log
    assert "no worker could boot" not in log
    # os._exit(0) from a handler is a death too, not a recycling.
    victim = engine.workers()[0].pid
    assert _served_by(engine.address, b"EXIT 0\n") == victim
    wait_until(lambda: f"pid {victim} died: exit code 0" in engine.log(), 10, "exit 0 logged")
    assert f"pid {victim} recycled" not in engine.log()
    assert tcp_exchange(engine.address, b"still\n").endswith(b"still\n")


BOOT_SWITCH = """
BROKEN = {flag!r}
def worker_init(self):
    if os.path.exists(self.BROKEN):
        raise RuntimeError('dependency down')
"""


def test_crash_loop_after_serving_backs_off_and_recovers(engine_proc, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    status = tmp_path / "status.sock"
    engine = engine_proc(program(
        attrs="workers = 1\npool_mode = 'static'\n"
              f"status_bind = 'unix:{status}'\n" + BOOT_SWITCH.format(flag=str(broken)),
    ))
    first = wait_until(lambda: engine.workers(), 10, "the first worker")[0].pid
    assert _served_by(engine.address, b"up\n") == first
    # The service has served. Now every new worker fails to boot: more than the five
    # that are fatal on a first start. The master must back off and keep its port.
    broken.touch()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: "crash loop: 5 workers in a row failed to boot" in engine.log(), 20,
               "the crash loop reported")
    assert engine.proc.poll() is None, engine.log()[-3000:]
    document = json.loads(run_cli(
        ["status", "--status-bind", f"unix:{status}", "--json"]).stdout)
    crash = document["master"]["crash_loop"]
    assert crash["boot_failures"] >= 5 and crash["next_spawn_in"] > 0, crash
    # The port still takes connections (they queue), and they are served once a
    # worker boots again.
    with socket.create_connection(engine.address, timeout=30) as waiting:
        waiting.sendall(b"queued\n")
        broken.unlink()
        assert recv_line(waiting, timeout=40).endswith(b"queued\n")  # within a 30 s step
    wait_until(lambda: "crash loop over" in engine.log(), 10, "the recovery logged")
    assert "no worker could boot" not in engine.log()


# Runs in the master (before serve_forever): a thread that sets the master's own soft
# RLIMIT_NPROC to each number written to a FIFO. (prlimit(2) on another user's process
# is refused in some sandboxes even to root, so the master does it to itself.)
NPROC_CONTROL = """
import pwd, resource, threading
nobody = pwd.getpwnam('nobody')
os.setgroups([]); os.setgid(nobody.pw_gid); os.setuid(nobody.pw_uid)
HARD = resource.getrlimit(resource.RLIMIT_NPROC)[1]
def _nproc_control(path={fifo!r}):
    with os.fdopen(os.open(path, os.O_RDWR), 'r') as control:
        print('NPROC control open', file=sys.stderr, flush=True)
        for line in control:
            soft = HARD if line.strip() == 'max' else int(line)
            resource.setrlimit(resource.RLIMIT_NPROC, (soft, HARD))
            print('NPROC set to', line.strip(), file=sys.stderr, flush=True)
threading.Thread(target=_nproc_control, daemon=True).start()
"""


def _control(fifo: Path, line: str) -> None:
    """Write one line to the master's control FIFO (fails at once if nobody reads it)."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory nobody can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="engine-nproc-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the engine as nobody")
def test_fork_failure_keeps_the_listeners_and_refills_later(
    engine_proc, shared_dir: Path
) -> None:
    # The master runs as nobody (RLIMIT_NPROC binds unprivileged users only). Once its
    # pool is up, its process limit goes down to 1: nobody has at least that many
    # processes (the master itself), whatever else runs as nobody on this machine, so
    # every fork() fails with EAGAIN until the limit is raised again.
    fifo = shared_dir / "nproc"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)  # whatever the umask: the master opens it as nobody
    engine = engine_proc(program(
        attrs="workers = 2\npool_mode = 'static'", before=NPROC_CONTROL.format(fifo=str(fifo)),
    ))
    workers = wait_until(lambda: len(engine.workers()) == 2 and engine.workers(), 10, "pool")
    # Both have booted (a worker killed before that is rightly a boot failure): two
    # connections held open at once are served by two workers, and only booted ones serve.
    with open_clients(engine.address, 2, timeout=30) as clients:
        for client in clients:
            client.sendall(b"booted?\n")
        served = {int(recv_line(client, timeout=30).split()[0]) for client in clients}
    assert served == {worker.pid for worker in workers}
    wait_until(lambda: "NPROC control" in engine.log(), 10, "the control thread")
    assert psutil.Process(engine.pid).uids().real == pwd.getpwnam("nobody").pw_uid
    _control(fifo, "1\n")
    wait_until(lambda: "NPROC set to 1" in engine.log(), 10, "the limit lowered")
    for worker in workers:
        os.kill(worker.pid, signal.SIGKILL)
    wait_until(lambda: engine.log().count("cannot fork a worker") >= 2, 20, "fork failures")
    assert engine.proc.poll() is None, engine.log()[-3000:]
    assert engine.workers() == []
    # The port is still open: a client connects (the kernel queues it) and is served
    # once fork works again.
    with open_clients(engine.address, 1, timeout=30) as (client,):
        client.sendall(b"waiting\n")
        tries = engine.log().count("cannot fork a worker")
        wait_until(lambda: engine.log().count("cannot fork a worker") > tries, 20, "a retry")
        _control(fifo, "max\n")
        assert recv_line(client, timeout=30).endswith(b"waiting\n")
    wait_until(lambda: len(engine.workers()) == 2, 40, "the pool refilled")
    # Logged after the batch's last fork: the processes may be seen first.
    wait_until(lambda: "fork works again" in engine.log(), 10, "the recovery line")
    log = engine.log()
    assert "no worker could boot" not in log and "failed to boot" not in log
    # One line per backoff step, not one per try: the steps double (0.1, 0.2, 0.4 ...).
    assert "next try in 0.10s" in log and "next try in 0.20s" in log
    assert log.count("next try in 0.10s") == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the engine as nobody")
def test_a_dead_worker_is_replaced_at_once_while_forks_are_backing_off(
    engine_proc, shared_dir: Path
) -> None:
    """Forks failing for a while (a process limit) had the master wait out the whole
    backoff, up to 30 s, before replacing a worker that died meanwhile, with a free
    process slot and no worker left (found probing with RLIMIT_NPROC)."""
    fifo = shared_dir / "nproc"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    engine = engine_proc(program(
        attrs="workers = 1\npool_mode = 'static'",
        before=NPROC_CONTROL.format(fifo=str(fifo)),
    ))
    [worker] = wait_until(lambda: engine.workers(), 10, "the worker")
    assert _served_by(engine.address, b"hi\n") == worker.pid  # booted: it served
    wait_until(lambda: "NPROC control" in engine.log(), 10, "the control thread")
    _control(fifo, "1\n")
    wait_until(lambda: "NPROC set to 1" in engine.log(), 10, "the limit lowered")
    os.kill(engine.pid, signal.SIGTTIN)  # one more worker: its fork fails, again and again
    wait_until(lambda: "next try in 6.40s" in engine.log(), 30, "a long backoff")
    _control(fifo, "max\n")
    wait_until(lambda: "NPROC set to max" in engine.log(), 10, "the limit raised")
    os.kill(worker.pid, signal.SIGKILL)
    replacement = wait_until(
        lambda: [w for w in engine.workers() if w.pid != worker.pid], 30, "a replacement"
    )
    spawned_text = f"pid {replacement[0].pid} (generation"
    wait_until(lambda: spawned_text in engine.log(), 10, "the replacement's log line")
    lines = engine.log().splitlines()
    backing_off = next(line for line in lines if "next try in 6.40s" in line)
    spawned = next(line for line in lines if spawned_text in line)
    # By the master's own clock: not the 6.4 s the backoff had left.
    waited = log_time(spawned) - log_time(backing_off)
    assert waited < 5.0, (backing_off, spawned)
    assert _served_by(engine.address, b"again\n") != worker.pid
    assert engine.proc.poll() is None


# Runs in each master before serve_forever (the new master of an upgrade too): join
# the test's pids cgroup, whose limit the test sets once the pool is up.
JOIN_CGROUP = """
with open({procs!r}, 'w') as procs:
    procs.write(str(os.getpid()))
"""


@pytest.fixture
def pids_cgroup() -> Iterator[Path]:
    """A cgroup (v1 pids controller) of its own: a process limit that binds root too,
    as systemd's TasksMax= does. Request it before engine_proc, so that it is removed
    after the engines in it are gone."""
    parent = Path("/sys/fs/cgroup/pids")
    path = parent / f"engine-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"no pids cgroup to create here: {exc}")
    yield path
    (path / "pids.max").write_text("max")
    wait_until(lambda: not (path / "cgroup.procs").read_text().strip(), 10, "an empty cgroup")
    path.rmdir()


def test_the_new_master_forks_as_soon_as_the_old_master_has_exited(
    pids_cgroup: Path, engine_proc
) -> None:
    """A SIGUSR2 upgrade where the new master cannot fork (a process limit) until the
    old master and its workers are gone. When the operator stopped the old master, the
    new one waited out its fork backoff (up to 30 s) with no worker at all: the old
    workers were not its children, so their exits did not wake it (found probing: 6.2 s).
    Now the old master's exit (it is the new master's parent) ends the backoff."""
    engine = engine_proc(program(
        attrs="workers = 1\npool_mode = 'static'",
        before=JOIN_CGROUP.format(procs=str(pids_cgroup / "cgroup.procs")),
    ))
    [old_worker] = wait_until(lambda: engine.workers(), 10, "the old master's worker")
    # Room for one more process: the new master, which then cannot fork its worker.
    tasks = int((pids_cgroup / "pids.current").read_text())
    (pids_cgroup / "pids.max").write_text(str(tasks + 1))
    os.kill(engine.pid, signal.SIGUSR2)
    started = wait_until(lambda: re.search(r"started new master pid (\d+)", engine.log()),
                         20, "the new master")
    new_master = int(started.group(1))
    engine.seen_pids.add(new_master)
    wait_until(lambda: "next try in 3.20s" in engine.log(), 30, "the new master backing off")
    assert engine.proc.poll() is None  # the old master still serves meanwhile
    assert _served_by(engine.address, b"old\n") == old_worker.pid
    engine.signal(signal.SIGTERM)  # the operator stops the old master
    engine.proc.wait(timeout=20)
    exited = time.monotonic()
    engine.adopt_master(new_master)
    [new_worker] = wait_until(lambda: engine.workers(), 10, "the new master's worker")
    # Not the 3.2 s the backoff had left.
    assert time.monotonic() - exited < 1.5, engine.log_tail()
    assert _served_by(engine.address, b"new\n") == new_worker.pid
    wait_until(lambda: "taking over" in engine.log(), 10, "the take-over logged")
    assert engine.stop() == 0


# Runs in the master before serve_forever: become a uid no other process has, so that
# RLIMIT_NPROC (which counts every task of the real uid) counts only this engine's.
LONE_UID = """
import resource
os.setgroups([]); os.setgid(45679); os.setuid(45679)
"""

# The worker lets itself start 2 more threads than it and its master have now.
TWO_THREADS_ONLY = """
workers = 1
pool_mode = 'static'
threads = 8
def worker_init(self):
    tasks = len(os.listdir('/proc/self/task')) + len(os.listdir(f'/proc/{os.getppid()}/task'))
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    resource.setrlimit(resource.RLIMIT_NPROC, (tasks + 2, hard))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the engine as another user")
def test_threads_that_cannot_start_leave_the_worker_serving_with_fewer(engine_proc) -> None:
    """threads = 8 where only 2 can start: the third connection used to raise
    "can't start new thread" in the accept loop, and the worker died with every
    connection it held (found probing with RLIMIT_NPROC). Now it waits for a thread."""
    engine = engine_proc(program(attrs=TWO_THREADS_ONLY, before=LONE_UID))
    [worker] = wait_until(lambda: engine.workers(), 20, "the worker")
    with open_clients(engine.address, 6, timeout=30) as clients:
        for client in clients:
            client.sendall(b"hello\n")
        answered = []
        for pair in (clients[:2], clients[2:4], clients[4:]):  # 2 threads: 2 at a time
            for client in pair:
                answered.append(int(recv_line(client, timeout=30).split()[0]))
            for client in pair:
                client.close()  # frees the thread for a waiting connection
    assert answered == [worker.pid] * 6
    assert engine.workers() == [worker]
    log = engine.log()
    assert "died" not in log and "Traceback" not in log, log[-2000:]
    assert "cannot start another request thread (can't start new thread; 1 times)" in log


HOLDING = """
class Holding(StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            if line.startswith(b'SYSEXIT'):
                raise SystemExit(3)
            self.wfile.write(b'%d %s' % (os.getpid(), line))
            self.wfile.flush()
"""


def test_a_thread_s_system_exit_gets_the_worker_replaced_before_it_has_drained(
    engine_proc,
) -> None:
    """threads > 1: a handler's SystemExit makes the worker take no more connections and
    exit once its others finish, which may take up to graceful_timeout. Its replacement
    used to be forked only after that: a pool of 1 had nobody accepting meanwhile."""
    engine = engine_proc(program(
        attrs="workers = 1\npool_mode = 'static'\nthreads = 2", before=HOLDING,
        handler="Holding",
    ))
    with open_clients(engine.address, 1, timeout=30) as (held,):
        held.sendall(b"first\n")
        first = int(recv_line(held, timeout=30).split()[0])
        assert tcp_exchange(engine.address, b"SYSEXIT\n") == b""
        # The held connection keeps the first worker draining; a new client is served.
        with open_clients(engine.address, 1, timeout=30) as (late,):
            late.sendall(b"late\n")
            assert int(recv_line(late, timeout=15).split()[0]) != first
        held.sendall(b"still\n")  # the draining worker still serves what it holds
        assert int(recv_line(held, timeout=30).split()[0]) == first
    wait_until(lambda: first not in {w.pid for w in engine.workers()}, 30, "the drain")
    assert "SystemExit(3) in a pool thread" in engine.log()
