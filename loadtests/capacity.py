"""Capacity benchmark: many mostly idle keep-alive clients, server by server.

``python -m loadtests.capacity [--clients 256,1024,4096,10000] [--seconds 20]
[--servers engine-gevent,engine-threads,gevent-server,asyncio,forking] [--out DIR]
[--docs]``

Each of N clients keeps one connection and sends a 32-byte line every second (one
interval, ``--interval``) for ``--seconds``; the handler is a plain
``StreamRequestHandler`` echo (:class:`loadtests.bench_servers.LineHandler`). The
client is ``loadtests/capacity_client.c`` (one thread, epoll; compiled here with the
machine's cc), which raises its fd limit to the hard limit; servers are started with
their soft fd limit raised to the hard limit too. Per N and server it reports the
clients that got every reply, p50/p99 latency, the total PSS of the server's process
tree (psutil ``memory_full_info().pss``, read in the middle of the window), its
processes and threads, and the CPU used by the server, by the client and by everything
else on the machine (the "other load": a round where it is above ``--noise`` cores is
run again, up to ``--retries`` times, and flagged if it stays noisy).

Then an HTTP keep-alive row: 32 clients (``loadtests/loadgen.c -P``, closed loop) on
``http.server``'s ``BaseHTTPRequestHandler`` with keep-alive, against gunicorn
``-k gevent`` (the equivalent WSGI app) and ForkingTCPServer: requests/s and server CPU
per request.

The servers (``--servers``; ``--http-servers`` for the HTTP row):

=================  ===============================================================
engine-gevent      ``engine serve --worker-class gevent --workers 2`` (static pool,
                   ``--worker-connections 6000``); skipped with a note when this
                   engine has no ``--worker-class``
engine-threads     ``engine serve --workers 3 --threads 4096 --pool-mode static``
engine-default     ``engine serve`` with its defaults (HTTP row only, for reference)
gevent-server      one process: gevent ``StreamServer`` running the same handler class
asyncio            one process: ``asyncio.start_server``, the echo as a coroutine
forking            stdlib ``ForkingTCPServer`` (a process per connection; skipped
                   above ``--forking-max`` clients)
gunicorn-gevent    ``gunicorn -k gevent -w 2`` (HTTP row only)
=================  ===============================================================

Outputs: a markdown table and JSON in ``--out`` (default: a new temporary directory),
and ``capacity.png``; with ``--docs`` the section "Capacity: many idle connections" of
``docs/benchmarks.md`` (between its capacity markers) and ``docs/capacity.png`` are
rewritten. The targets of issue 12 are checked and printed. The machine must be
quiet: run it alone (N = 10,000 takes about 20,000 file descriptors and all cores).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from engine.status_client import fetch_status
from loadtests import bench
from loadtests.bench import HOST, REPO, Watchdog, kill_group, machine_ticks, tree_cpu

HERE = Path(__file__).resolve().parent
CLIENT_SOURCE = HERE / "capacity_client.c"
DOCS = REPO / "docs" / "benchmarks.md"
DOCS_PLOT = REPO / "docs" / "capacity.png"
BEGIN_MARKER = "<!-- capacity:begin (written by python -m loadtests.capacity --docs) -->"
END_MARKER = "<!-- capacity:end -->"
HANDLERS = {"line": "loadtests.bench_servers:LineHandler",
            "http": "loadtests.bench_servers:HelloHandler"}
# Workers an engine row starts with (the load waits until they have booted).
ENGINE_WORKERS = {"engine-gevent": 2, "engine-threads": 3, "engine-default": 2}
GEVENT_CONNECTIONS = 6000  # per worker: 2 workers take 10,000 clients with slack
BACKLOG = "2048"  # every server's listen backlog, as in loadtests.bench_servers

DEFAULT_CLIENTS = (256, 1024, 4096, 10_000)
DEFAULT_SERVERS = ("engine-gevent", "engine-threads", "gevent-server", "asyncio", "forking")
DEFAULT_HTTP_SERVERS = ("engine-gevent", "gunicorn-gevent", "forking", "engine-default")


@dataclass(frozen=True)
class ServerDef:
    """One server of the comparison and how to start it."""

    key: str
    label: str
    protos: tuple[str, ...]
    needs_worker_class: bool = False

    def argv(self, proto: str, port: int) -> list[str]:
        """The command line that serves *proto* on 127.0.0.1:*port*."""
        py = sys.executable
        bind = f"{HOST}:{port}"
        engine = [py, "-m", "engine", "serve", HANDLERS[proto], "--bind", bind,
                  "--request-queue-size", BACKLOG, "--log-level", "warning",
                  "--status-bind", status_spec(port)]
        if self.key == "engine-gevent":
            return [*engine, "--worker-class", "gevent", "--workers", "2",
                    "--pool-mode", "static", "--worker-connections", str(GEVENT_CONNECTIONS)]
        if self.key == "engine-threads":
            return [*engine, "--workers", "3", "--threads", "4096", "--pool-mode", "static"]
        if self.key == "engine-default":
            return engine
        if self.key in ("gevent-server", "asyncio"):
            kind = "gevent" if self.key == "gevent-server" else "asyncio"
            return [py, "-m", "loadtests.capacity_servers", kind, "--port", str(port)]
        if self.key == "forking":
            return [py, "-m", "loadtests.bench_servers", "forking", "--port", str(port),
                    "--proto", proto]
        if self.key == "gunicorn-gevent":
            return [py, "-m", "gunicorn", "-k", "gevent", "-w", "2", "--worker-connections",
                    "1000", "-b", bind, "--backlog", BACKLOG, "--log-level", "warning",
                    "loadtests.bench_servers:wsgi_app"]
        raise KeyError(self.key)


SERVERS = {s.key: s for s in (
    ServerDef("engine-gevent", "engine gevent, 2 workers", ("line", "http"), True),
    ServerDef("engine-threads", "engine threads, 3x4096 static", ("line", "http")),
    ServerDef("engine-default", "engine defaults", ("line", "http")),
    ServerDef("gevent-server", "gevent StreamServer, 1 process", ("line",)),
    ServerDef("asyncio", "asyncio server, 1 process", ("line",)),
    ServerDef("forking", "ForkingTCPServer", ("line", "http")),
    ServerDef("gunicorn-gevent", "gunicorn -k gevent -w 2", ("http",)),
)}


@dataclass
class Options:
    """What to run (the command line)."""

    clients: list[int]
    seconds: float
    interval: float
    servers: list[str]
    http_servers: list[str]
    http_clients: int
    http_seconds: float
    rounds: int
    retries: int
    noise: float
    forking_max: int
    timeout: float
    out: Path
    docs: bool
    plot: bool


@dataclass
class Row:
    """One measurement: a server with N capacity clients (or the HTTP row)."""

    kind: str  # "capacity" or "http"
    server: str
    clients: int
    round: int
    ok: bool = True
    note: str = ""
    served: int = 0  # capacity: clients that got every reply; http: clients with a reply
    any_reply: int = 0
    replies: int = 0
    rps: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    max_us: float = 0.0
    timeouts: int = 0
    errors: int = 0
    pss_bytes: int = 0
    procs: int = 0
    threads: int = 0
    window_s: float = 0.0
    server_cores: float = 0.0
    client_cores: float = 0.0
    other_cores: float = 0.0
    softirq_cores: float = 0.0
    other_top: str = ""  # the other processes that used the most CPU, in cores
    cpu_per_req_us: float = 0.0
    noisy: bool = False
    attempts: int = 1
    raw: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- processes


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (a preexec_fn for servers and clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """:func:`loadtests.bench.spawn` (own session, tracked) with the fd limit raised."""
    return bench.spawn(argv, preexec_fn=raise_fd_limit, **kwargs)


def build_client() -> Path:
    """Compile loadtests/capacity_client.c with the machine's cc (cached by source hash)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("capacity: no C compiler (cc or gcc) found; install gcc")
    flags = ["-O2"]
    digest = hashlib.sha256(CLIENT_SOURCE.read_bytes() + " ".join([cc, *flags]).encode())
    binary = bench.cache_dir() / f"capacity-client-{digest.hexdigest()[:16]}"
    if not binary.exists():
        tmp = binary.with_suffix(f".tmp{os.getpid()}")
        subprocess.run([cc, *flags, "-o", str(tmp), str(CLIENT_SOURCE)], check=True)
        tmp.replace(binary)
    return binary


def engine_has_worker_class() -> bool:
    """Whether this engine's CLI has ``--worker-class`` (the gevent worker class)."""
    out = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--help"], capture_output=True, text=True,
        cwd=REPO, env=_env(), timeout=60, check=False,
    )
    return "--worker-class" in out.stdout


def have_module(name: str) -> bool:
    """Whether *name* imports in this interpreter (gevent, gunicorn)."""
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    ))


def status_spec(port: int) -> str:
    """The status endpoint of the engine serving *port* (a Unix socket in /tmp)."""
    return f"unix:/tmp/engine-capacity-{port}.sock"


def engine_booted(port: int, workers: int) -> bool:
    """Have *workers* of the engine on *port* booted (idle or busy in its status)?

    Load starts only then: keep-alive clients that connect while a worker still boots
    would all stay on the others, and the run would measure the start-up, not the pool.
    """
    try:
        document = json.loads(fetch_status(status_spec(port), timeout=2.0))
    except (OSError, ValueError):
        return False
    states = [worker.get("state") for worker in document.get("workers", [])]
    return sum(state in ("idle", "busy") for state in states) >= workers


@contextlib.contextmanager
def running_server(key: str, proto: str, log: Path) -> Iterator[tuple[int, int]]:
    """Start server *key*; yield (pid, port) once it answers a request (an engine: once
    its workers have booted); stop its group."""
    port = bench.free_port()
    with log.open("ab") as log_file:
        proc = spawn(SERVERS[key].argv(proto, port), cwd=REPO, env=_env(),
                     stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30.0
        booted = ENGINE_WORKERS.get(key, 0)
        while not (bench.probe(proto, port) and (not booted or engine_booted(port, booted))):
            if proc.poll() is not None:
                raise RuntimeError(f"{key} exited at start-up:\n{bench.tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{key} did not answer (or boot its workers) within "
                                   f"30s:\n{bench.tail(log)}")
            time.sleep(0.05)  # polling a start-up, bounded by the deadline
        yield proc.pid, port
    finally:
        kill_group(proc)


def tree_memory(pid: int) -> tuple[int, int, int]:
    """(total PSS bytes, processes, threads) of *pid*'s process tree."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0
    pss = count = threads = 0
    for proc in procs:
        try:
            with proc.oneshot():
                pss += int(getattr(proc.memory_full_info(), "pss", 0))
                threads += proc.num_threads()
            count += 1
        except psutil.Error:
            continue
    return pss, count, threads


def process_cpu(proc: psutil.Process | None) -> float:
    """CPU seconds of one process (0 if it is gone)."""
    if proc is None:
        return 0.0
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def own_cpu() -> float:
    """This harness's CPU seconds so far (its threads included)."""
    times = os.times()
    return times.user + times.system


def other_processes(exclude: set[int]) -> dict[tuple[int, float], tuple[str, float]]:
    """CPU seconds so far of every process not in *exclude*, by (pid, create time)."""
    seen = {}
    for proc in psutil.process_iter(["name", "cpu_times", "create_time"]):
        info = proc.info
        if proc.pid in exclude or info.get("cpu_times") is None:
            continue
        times = info["cpu_times"]
        seen[proc.pid, info.get("create_time") or 0.0] = (
            info.get("name") or "?", float(times.user + times.system))
    return seen


def tree_pids(pid: int) -> set[int]:
    """*pid* and its descendants."""
    try:
        root = psutil.Process(pid)
        return {pid, *(p.pid for p in root.children(recursive=True))}
    except psutil.Error:
        return {pid}


class CpuWindow:
    """CPU used over a window by the server tree, the client, this harness and the rest.

    The rest is the machine's busy time (``/proc/stat``) less the others; the processes
    that used the most of it are named from a psutil scan at each end of the window.
    """

    def __init__(self, server_pid: int, client: psutil.Process | None) -> None:
        self.server_pid, self.client = server_pid, client
        self.exclude = {os.getpid(), client.pid if client else -1, *tree_pids(server_pid)}
        self.others0 = other_processes(self.exclude)
        self.t0 = time.monotonic()
        self.server0, _ = tree_cpu(server_pid)
        self.client0 = process_cpu(client)
        self.own0 = own_cpu()
        self.ticks0 = machine_ticks()

    def close(self, row: Row) -> None:
        """Fill *row*'s window and CPU figures (cores: CPU seconds per second)."""
        ticks1 = machine_ticks()
        server1, _ = tree_cpu(self.server_pid)
        client1 = process_cpu(self.client)
        own1 = own_cpu()
        window = time.monotonic() - self.t0
        hz = os.sysconf("SC_CLK_TCK")
        # softirq time (the loopback TCP work of this very test, mostly) is charged to
        # no process: leave it out of the "other load", report it on its own.
        softirq = (ticks1[1] - self.ticks0[1]) / hz
        machine = (ticks1[0] - self.ticks0[0]) / hz - softirq
        server, client, own = server1 - self.server0, client1 - self.client0, own1 - self.own0
        row.window_s = window
        if window > 0:
            row.server_cores = server / window
            row.client_cores = client / window
            row.other_cores = max(0.0, machine - server - client - own) / window
            row.softirq_cores = softirq / window
        if row.replies:
            row.cpu_per_req_us = server / row.replies * 1e6
        self.exclude |= tree_pids(self.server_pid)  # workers forked during the window
        used = []
        for key, (name, cpu) in other_processes(self.exclude).items():
            delta = cpu - self.others0.get(key, (name, 0.0))[1]
            if delta > 0.01 * window:
                used.append((delta, f"{name}[{key[0]}]"))
        used.sort(reverse=True)
        row.other_top = ", ".join(f"{name} {delta / window:.2f}" for delta, name in used[:3])


# --------------------------------------------------------------------------- one cell


def measure_capacity(
    opts: Options, client_bin: Path, key: str, clients: int, rnd: int, work: Path
) -> Row:
    """One server with *clients* capacity clients."""
    row = Row("capacity", key, clients, rnd)
    log = work / f"{key}-{clients}.log"
    try:
        with running_server(key, "line", log) as (pid, port):
            ramp = max(1.0, clients / 5000)
            argv = [str(client_bin), "-p", str(port), "-c", str(clients),
                    "-d", f"{opts.seconds:g}", "-i", f"{opts.interval:g}", "-r", f"{ramp:g}",
                    "-T", f"{opts.timeout:g}", "-H"]
            with log.open("ab") as log_file:
                gen = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=log_file)
            assert gen.stdout is not None and gen.stdin is not None
            try:
                limit = ramp + opts.interval + opts.seconds + opts.timeout + 60.0
                with Watchdog(gen, limit):
                    start = gen.stdout.readline()
                    if start.strip() != b"start":
                        raise RuntimeError(f"the client did not start: {start!r}\n"
                                           f"{bench.tail(log)}")
                    window = CpuWindow(pid, _process(gen.pid))
                    memory = _MidWindow(pid, opts.seconds / 2)
                    result = gen.stdout.readline()
                    window.close(row)
                    memory.join()
                    gen.stdin.close()  # now the client may close its connections
                    gen.wait(30.0)
            finally:
                kill_group(gen, grace=1.0)
    except (RuntimeError, OSError, ValueError) as exc:
        row.ok, row.note = False, str(exc).splitlines()[0] if str(exc) else repr(exc)
        return row
    if not result.startswith(b"{"):
        row.ok, row.note = False, f"no result from the client ({result!r}); see {log}"
        return row
    data = json.loads(result)
    row.raw = data
    row.served, row.any_reply = int(data["clients_all_replies"]), int(data["clients_any_reply"])
    row.replies, row.rps = int(data["replies"]), float(data["rps"])
    row.p50_us, row.p99_us, row.max_us = (float(data[k]) for k in ("p50_us", "p99_us", "max_us"))
    row.timeouts = int(data["timeouts"])
    row.errors = sum(int(data[k]) for k in ("io_errors", "connect_errors", "bad_replies"))
    row.pss_bytes, row.procs, row.threads = memory.figures
    if row.replies:
        row.cpu_per_req_us = row.server_cores * row.window_s / row.replies * 1e6
    return row


class _MidWindow:
    """Reads the server tree's memory once, *delay* seconds into the window (a thread)."""

    def __init__(self, pid: int, delay: float) -> None:
        self.figures = (0, 0, 0)
        self._pid, self._delay = pid, delay
        self._thread = threading.Thread(target=self._run, name="mid-window", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        time.sleep(self._delay)  # a measurement point in the window, not synchronisation
        self.figures = tree_memory(self._pid)

    def join(self) -> None:
        self._thread.join(120.0)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def measure_http(
    opts: Options, loadgen: Path, key: str, rnd: int, work: Path
) -> Row:
    """The HTTP keep-alive row: req/s and CPU per request with 32 closed-loop clients."""
    row = Row("http", key, opts.http_clients, rnd)
    log = work / f"{key}-http.log"
    try:
        with running_server(key, "http", log) as (pid, port):
            argv = [str(loadgen), "-P", "-p", str(port), "-c", str(opts.http_clients),
                    "-m", "keepalive", "-w", "1", "-d", f"{opts.http_seconds:g}",
                    "-T", "2", "-H"]
            with log.open("ab") as log_file:
                gen = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=log_file)
            assert gen.stdout is not None and gen.stdin is not None
            try:
                with Watchdog(gen, opts.http_seconds + 60.0):
                    start = gen.stdout.readline()
                    if start.strip() != b"start":
                        raise RuntimeError(f"loadgen did not start: {start!r}")
                    window = CpuWindow(pid, _process(gen.pid))
                    memory = _MidWindow(pid, opts.http_seconds / 2)
                    result = gen.stdout.readline()
                    data = json.loads(result) if result.startswith(b"{") else {}
                    row.replies = int(data.get("replies", 0))
                    window.close(row)
                    memory.join()
                    gen.stdin.close()
                    gen.wait(30.0)
            finally:
                kill_group(gen, grace=1.0)
    except (RuntimeError, OSError, ValueError) as exc:
        row.ok, row.note = False, str(exc).splitlines()[0] if str(exc) else repr(exc)
        return row
    if not data:
        row.ok, row.note = False, f"no result from loadgen; see {log}"
        return row
    row.raw = data
    row.served = row.any_reply = int(data["clients_served"])
    row.rps = float(data["rps"])
    row.p50_us, row.p99_us = float(data["p50_us"]), float(data["p99_us"])
    row.errors, row.timeouts = int(data["errors"]), int(data["timeouts"])
    row.pss_bytes, row.procs, row.threads = memory.figures
    return row


def with_retries(opts: Options, measure: Any, label: str) -> Row:
    """Run *measure* (returns a Row); again while the machine was noisy, up to --retries."""
    row: Row = measure()
    attempts = 1
    while row.ok and row.other_cores > opts.noise and attempts <= opts.retries:
        print(f"  {label}: other load {row.other_cores:.2f} cores > {opts.noise:g}; "
              "running it again", flush=True)
        row = measure()
        attempts += 1
    row.attempts = attempts
    row.noisy = row.ok and row.other_cores > opts.noise
    return row


# --------------------------------------------------------------------------- report


def median_rows(rows: Sequence[Row]) -> dict[tuple[str, str, int], Row]:
    """Per (kind, server, clients): the round with the median p99 (or req/s for HTTP)."""
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.kind, row.server, row.clients), []).append(row)
    chosen = {}
    for key, group in groups.items():
        good = [r for r in group if r.ok] or group
        metric = (lambda r: r.rps) if key[0] == "http" else (lambda r: r.p99_us)
        good.sort(key=metric)
        chosen[key] = good[(len(good) - 1) // 2]
    return chosen


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}" if us < 10_000 else f"{us / 1000:.0f}"


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f}" if size else "-"


@dataclass(frozen=True)
class Target:
    """One target of the issue and whether this run met it."""

    text: str
    verdict: str  # PASS, FAIL or N/A
    detail: str


def evaluate_targets(chosen: dict[tuple[str, str, int], Row], http_clients: int) -> list[Target]:
    """The issue's three targets, judged on this run's medians."""
    targets = []
    big = chosen.get(("capacity", "engine-gevent", 10_000))
    text = "engine gevent, 2 workers: 10,000/10,000 served, p99 ≤ 10 ms, PSS ≤ 200 MB"
    if big is None or not big.ok:
        targets.append(Target(text, "N/A", "not measured" if big is None else big.note))
    else:
        ok = big.served == 10_000 and big.p99_us <= 10_000 and 0 < big.pss_bytes <= 200e6
        targets.append(Target(text, "PASS" if ok else "FAIL", (
            f"{big.served:,}/10,000, p99 {_ms(big.p99_us)} ms, PSS {_mb(big.pss_bytes)} MB")))
    ours = chosen.get(("capacity", "engine-gevent", 4096))
    theirs = chosen.get(("capacity", "gevent-server", 4096))
    text = "at 4,096: engine gevent p99 ≤ one-process gevent StreamServer p99"
    if ours is None or theirs is None or not (ours.ok and theirs.ok):
        targets.append(Target(text, "N/A", "not measured"))
    else:
        ok = ours.served == 4096 and ours.p99_us <= theirs.p99_us
        targets.append(Target(text, "PASS" if ok else "FAIL", (
            f"{_ms(ours.p99_us)} ms ({ours.served:,} served) vs {_ms(theirs.p99_us)} ms")))
    ours = chosen.get(("http", "engine-gevent", http_clients))
    forking = chosen.get(("http", "forking", http_clients))
    text = (f"HTTP keep-alive: engine gevent serves {http_clients}/{http_clients} at "
            "≥ 1.2x ForkingTCPServer's req/s")
    if ours is None or forking is None or not (ours.ok and forking.ok) or not forking.rps:
        targets.append(Target(text, "N/A", "not measured"))
    else:
        ratio = ours.rps / forking.rps
        ok = ours.served == http_clients and ratio >= 1.2
        targets.append(Target(text, "PASS" if ok else "FAIL", (
            f"{ours.served}/{http_clients}, {ours.rps:,.0f} vs {forking.rps:,.0f} req/s "
            f"({ratio:.2f}x)")))
    return targets


def capacity_table(chosen: dict[tuple[str, str, int], Row], opts: Options) -> list[str]:
    """The markdown table of the capacity rows."""
    lines = [
        "| server | N | got every reply | p50 ms | p99 ms | PSS MB | procs | threads "
        "| server cores | client cores | other load | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in opts.clients:
        for key in opts.servers:
            row = chosen.get(("capacity", key, n))
            if row is None:
                continue
            label = SERVERS[key].label
            if not row.ok:
                lines.append(f"| {label} | {n:,} | - | - | - | - | - | - | - | - | - "
                             f"| {row.note} |")
                continue
            note = f"noisy machine: {row.other_top}" if row.noisy else ""
            lines.append(
                f"| {label} | {n:,} | {row.served:,}/{n:,} | {_ms(row.p50_us)} "
                f"| {_ms(row.p99_us)} | {_mb(row.pss_bytes)} | {row.procs} | {row.threads} "
                f"| {row.server_cores:.2f} | {row.client_cores:.2f} | {row.other_cores:.2f} "
                f"| {note} |"
            )
    return lines


def http_table(chosen: dict[tuple[str, str, int], Row], opts: Options) -> list[str]:
    """The markdown table of the HTTP keep-alive row."""
    lines = [
        "| server | clients served | req/s | CPU µs/req | p99 ms | procs | PSS MB "
        "| other load | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key in opts.http_servers:
        row = chosen.get(("http", key, opts.http_clients))
        if row is None:
            continue
        label = SERVERS[key].label
        if not row.ok:
            lines.append(f"| {label} | - | - | - | - | - | - | - | {row.note} |")
            continue
        lines.append(
            f"| {label} | {row.served}/{opts.http_clients} | {row.rps:,.0f} "
            f"| {row.cpu_per_req_us:.0f} | {_ms(row.p99_us)} | {row.procs} "
            f"| {_mb(row.pss_bytes)} | {row.other_cores:.2f} "
            f"| {f'noisy machine: {row.other_top}' if row.noisy else ''} |"
        )
    return lines


def report(
    chosen: dict[tuple[str, str, int], Row], opts: Options, targets: Sequence[Target],
    env: dict[str, str], notes: Sequence[str], command: str, plot_name: str | None,
) -> str:
    """The markdown section: method, tables, targets, notes."""
    lines = [
        "## Capacity: many idle connections",
        "",
        f"Run of {env.get('date', '?')} on {env.get('cpus', '?')} CPUs "
        f"({env.get('cpu', '?')}), kernel {env.get('kernel', '?')}, Python "
        f"{env.get('python', '?')}, engine {env.get('commit', '?')}; command: `{command}`.",
        "",
        f"N clients each keep one TCP connection and send a 32-byte line every "
        f"{opts.interval:g} s for {opts.seconds:g} s (`loadtests/capacity_client.c`: one "
        "thread, epoll). The handler is `loadtests.bench_servers:LineHandler`, a plain "
        "`StreamRequestHandler` echo. \"Got every reply\" counts clients that were "
        f"answered for every line they sent in the window, each within {opts.timeout:g} s "
        "and before their next line was due. PSS is the sum over the server's process "
        "tree in the middle of the window. \"Other load\" is the CPU, in cores, used by "
        "everything on the machine except the server, the client, the harness and "
        "the kernel's softirq work (mostly this loopback traffic, in the JSON); "
        f"rounds above {opts.noise:g} cores were run again (up to {opts.retries} times).",
        "",
        *capacity_table(chosen, opts),
        "",
        f"HTTP keep-alive: {opts.http_clients} clients, closed loop, "
        f"{opts.http_seconds:g} s (`loadtests/loadgen.c -P`), `BaseHTTPRequestHandler` "
        "with keep-alive (gunicorn: the equivalent WSGI app).",
        "",
        *http_table(chosen, opts),
        "",
        "Targets (issue 12):",
        "",
        *(f"- **{t.verdict}** {t.text}: {t.detail}" for t in targets),
    ]
    if plot_name:
        lines += ["", f"![capacity: p99 and memory per client count]({plot_name})"]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def plot(path: Path, chosen: dict[tuple[str, str, int], Row], opts: Options) -> bool:
    """p99 latency and total PSS against N, one line per server."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("capacity: matplotlib is not installed: no plot", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = (
        ("p99 latency (ms)", lambda r: r.p99_us / 1000, True),
        ("total PSS (MB)", lambda r: r.pss_bytes / 1e6, True),
        ("clients that got every reply (%)", lambda r: 100 * r.served / r.clients, False),
    )
    for ax, (title, value, log_y) in zip(axes, panels, strict=True):
        for key in opts.servers:
            points = [
                (n, value(row)) for n in opts.clients
                if (row := chosen.get(("capacity", key, n))) is not None and row.ok
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", label=SERVERS[key].label)
        ax.set_xscale("log")
        ax.set_xticks(opts.clients, [f"{n:,}" for n in opts.clients])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if log_y:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("clients (N)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_docs(section: str) -> None:
    """Replace the capacity section of docs/benchmarks.md (between its markers)."""
    text = DOCS.read_text()
    block = f"{BEGIN_MARKER}\n{section}{END_MARKER}"
    if BEGIN_MARKER in text and END_MARKER in text:
        head, rest = text.split(BEGIN_MARKER, 1)
        tail = rest.split(END_MARKER, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOCS.write_text(text)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> Options:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m loadtests.capacity",
                                description=__doc__.splitlines()[0])
    p.add_argument("--clients", default=",".join(str(n) for n in DEFAULT_CLIENTS),
                   help="comma-separated client counts (default %(default)s)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window, seconds")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between two lines of one client")
    p.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                   help=f"capacity servers, of: {', '.join(SERVERS)}")
    p.add_argument("--http-servers", default=",".join(DEFAULT_HTTP_SERVERS),
                   help="servers of the HTTP keep-alive row ('' to skip it)")
    p.add_argument("--http-clients", type=int, default=32)
    p.add_argument("--http-seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (median kept)")
    p.add_argument("--retries", type=int, default=2,
                   help="re-runs of a round whose other load is above --noise")
    # As loadtests.bench's: a round at 4,096 clients with 0.13 cores of other load (the
    # hypervisor's steal time counts) had twice the usual server CPU and a 14 ms p99.
    p.add_argument("--noise", type=float, default=0.05,
                   help="other load (cores) above which a round is noisy")
    p.add_argument("--forking-max", type=int, default=4096,
                   help="skip ForkingTCPServer above this many clients (a process each)")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="a reply later than this many seconds is a timeout")
    p.add_argument("--out", type=Path, help="directory for capacity.md/.json/.png "
                   "(default: a new temporary directory)")
    p.add_argument("--docs", action="store_true",
                   help="also rewrite the capacity section of docs/benchmarks.md")
    p.add_argument("--no-plot", action="store_true")
    a = p.parse_args(argv)
    servers = [s for s in a.servers.split(",") if s]
    http_servers = [s for s in a.http_servers.split(",") if s]
    for name in servers:
        if name not in SERVERS or "line" not in SERVERS[name].protos:
            p.error(f"unknown capacity server {name!r}")
    for name in http_servers:
        if name not in SERVERS or "http" not in SERVERS[name].protos:
            p.error(f"unknown HTTP server {name!r}")
    try:
        clients = [int(n) for n in a.clients.split(",") if n]
    except ValueError:
        p.error(f"--clients: comma-separated integers, not {a.clients!r}")
    if not clients or min(clients) < 1 or a.seconds <= 0 or a.interval <= 0:
        p.error("--clients, --seconds and --interval must be positive")
    out = a.out or Path(tempfile.mkdtemp(prefix="engine-capacity-"))
    return Options(
        clients=clients, seconds=a.seconds, interval=a.interval, servers=servers,
        http_servers=http_servers, http_clients=a.http_clients, http_seconds=a.http_seconds,
        rounds=max(1, a.rounds), retries=max(0, a.retries), noise=a.noise,
        forking_max=a.forking_max, timeout=a.timeout, out=out, docs=a.docs,
        plot=not a.no_plot,
    )


def skipped_servers(opts: Options, notes: list[str]) -> set[str]:
    """Servers this machine or this engine cannot run, each with a note."""
    skip = set()
    wanted = set(opts.servers) | set(opts.http_servers)
    if any(SERVERS[k].needs_worker_class for k in wanted) and not engine_has_worker_class():
        skip |= {k for k in wanted if SERVERS[k].needs_worker_class}
        notes.append("- engine gevent: this engine has no `--worker-class` yet "
                     "(the gevent worker class is not merged): its rows are skipped.")
    if not have_module("gevent"):
        skip |= {k for k in wanted if "gevent" in k}
        notes.append("- gevent is not installed (`pip install gevent`): gevent rows skipped.")
    if "gunicorn-gevent" in wanted and not have_module("gunicorn"):
        skip.add("gunicorn-gevent")
        notes.append("- gunicorn is not installed: its row is skipped.")
    return skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0, or 1 if a cell failed."""
    opts = parse_args(argv)
    command = "python -m loadtests.capacity " + " ".join(
        sys.argv[1:] if argv is None else list(argv))
    raise_fd_limit()
    notes: list[str] = []
    skip = skipped_servers(opts, notes)
    client_bin = build_client()
    loadgen = bench.build_loadgen() if opts.http_servers else None
    env = bench.environment()
    work = Path(tempfile.mkdtemp(prefix="engine-capacity-logs-"))
    rows: list[Row] = []

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        for rnd in range(1, opts.rounds + 1):
            for n in opts.clients:
                for key in opts.servers:
                    if key in skip:
                        continue
                    if key == "forking" and n > opts.forking_max:
                        note = (f"- ForkingTCPServer skipped at {n:,} clients (a process "
                                f"per connection; --forking-max {opts.forking_max}).")
                        if note not in notes:
                            notes.append(note)
                        continue
                    row = with_retries(opts, lambda k=key, n=n, r=rnd: measure_capacity(
                        opts, client_bin, k, n, r, work), f"{key} N={n}")
                    rows.append(row)
                    print(_progress(row), flush=True)
            for key in opts.http_servers:
                if key in skip or loadgen is None:
                    continue
                row = with_retries(opts, lambda k=key, r=rnd: measure_http(
                    opts, loadgen, k, r, work), f"{key} http")
                rows.append(row)
                print(_progress(row), flush=True)
    except KeyboardInterrupt:
        print("capacity: interrupted; no results written", file=sys.stderr)
        return 130
    finally:
        bench.kill_everything()
        signal.signal(signal.SIGTERM, previous)

    chosen = median_rows(rows)
    targets = evaluate_targets(chosen, opts.http_clients)
    for row in rows:
        if not row.ok:
            notes.append(f"- round {row.round}, {row.server}, {row.kind} N={row.clients}: "
                         f"failed: {row.note}")
        elif row.noisy:
            notes.append(f"- round {row.round}, {row.server}, {row.kind} N={row.clients}: "
                         f"still noisy after {row.attempts} attempts "
                         f"(other load {row.other_cores:.2f} cores: {row.other_top}).")
    opts.out.mkdir(parents=True, exist_ok=True)
    plotted = opts.plot and plot(opts.out / "capacity.png", chosen, opts)
    section = report(chosen, opts, targets, env, notes, command.strip(),
                     "capacity.png" if plotted else None)
    (opts.out / "capacity.md").write_text(section)
    (opts.out / "capacity.json").write_text(json.dumps({
        "options": {k: str(v) for k, v in asdict(opts).items()},
        "environment": env, "targets": [asdict(t) for t in targets],
        "rows": [asdict(r) for r in rows],
    }, indent=1))
    print()
    print("\n".join(capacity_table(chosen, opts)))
    print()
    print("\n".join(http_table(chosen, opts)))
    print()
    for target in targets:
        print(f"target {target.verdict:4} {target.text}: {target.detail}")
    for note in notes:
        print(note)
    if opts.docs:
        write_docs(section)
        if plotted:
            shutil.copyfile(opts.out / "capacity.png", DOCS_PLOT)
    print(f"\nwrote {opts.out}/capacity.md, capacity.json"
          + (", capacity.png" if plotted else "")
          + (f"; updated {DOCS}" if opts.docs else "") + f"; server logs in {work}")
    return 1 if any(not r.ok for r in rows) else 0


def _progress(row: Row) -> str:
    if not row.ok:
        return f"round {row.round} {row.kind:8} {row.server:15} N={row.clients:<6} FAILED: " \
               f"{row.note}"
    if row.kind == "http":
        return (f"round {row.round} http     {row.server:15} {row.served}/{row.clients} "
                f"{row.rps:9,.0f} req/s {row.cpu_per_req_us:6.0f} µs/req "
                f"other {row.other_cores:.2f} {row.other_top}")
    return (f"round {row.round} capacity {row.server:15} N={row.clients:<6} served "
            f"{row.served}/{row.clients} p50 {_ms(row.p50_us)} p99 {_ms(row.p99_us)} ms "
            f"PSS {_mb(row.pss_bytes)} MB procs {row.procs} threads {row.threads} "
            f"client {row.client_cores:.2f} other {row.other_cores:.2f} {row.other_top}")


if __name__ == "__main__":
    sys.exit(main())
