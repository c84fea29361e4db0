"""Side-by-side benchmark: the engine against stdlib servers, a hand-written floor, gunicorn.

One run serves the same handler with every server, in interleaved rounds (server A, B,
C, ..., then B, C, ..., A: each round starts one server later, so that no server always
runs first or right after the same neighbour) and reports per-scenario medians:

* ``tcp-keepalive`` / ``tcp-close``: a line protocol (64 bytes and a newline, echoed
  back), driven by ``loadtests/loadgen.c`` (compiled here with the machine's cc);
* ``http-keepalive`` / ``http-close``: ``http.server`` handlers (and gunicorn's sync
  workers with the equivalent WSGI app), driven by ``wrk``.

After the rounds, each target's pair of servers (:data:`PAIRS`) is measured again in
blocks that run both servers and alternate the load between them every second, A B B A,
and the targets are judged on those ratios: the host's speed moves too much between
minutes for a ratio of cells a minute apart to hold 5%.

For each server and scenario it reports requests/s, p50/p99 latency, errors, how many
of the clients got at least one reply, the server's CPU time per request (its whole
process tree, exited children included) and the ratios to the engine; then each
worker's memory (loadtests/worker_memory.py) and the user-space instructions per
connection of the floor and the engine (loadtests/conn_overhead.py, valgrind); it writes
``docs/benchmarks.md`` and ``docs/benchmark.png``. The C reference server (a one-thread
epoll server inside the generator's binary) gives the load generator's own ceiling.

Usage::

    python -m loadtests.bench [--quick] [--rounds N] [--duration S] [--pair-blocks N] [--out DIR]

Every process it starts runs in its own session and is killed by process group when
its cell ends, and on any exit path (exception, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.kit import processes
from tests.kit.net import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SYSTEM_PACKAGES = HERE / "system_packages.sh"  # installs wrk (as root, with apt-get)
LOADGEN_SOURCE = HERE / "loadgen.c"
WRK_SCRIPT = HERE / "wrk_report.lua"
HOST = "127.0.0.1"
REFERENCE = "engine"  # the row every ratio is taken against
# --quick: a smoke test of every code path (loadgen, wrk, the engine, the floor,
# gunicorn) in about ten seconds; widen it with --servers / --scenarios.
QUICK_SERVERS = ("engine", "floor", "gunicorn")
QUICK_SCENARIOS = ("tcp-keepalive", "tcp-close", "http-close")
# A cell is measured on a busy machine when load that is neither the server, the
# generator nor the kernel's loopback work (softirq) takes more than this many cores
# over its window (another process, a build, a test run). Such a cell is re-run, up
# to RERUNS times, so that a few per cent between two servers means something.
BUSY_OTHER_CORES = 0.05
RERUNS = 2
# The machine itself changes speed between minutes (a shared host: 15-20% with nothing
# else visible from inside). Before and after each cell the bench times a fixed CPU task;
# a cell whose machine ran it more than SLOW_FACTOR times slower than the run's median so
# far is re-run like a busy one (and flagged "slow" if it stays so). Against the median,
# not the fastest: the machine spends most of a run some 10% below its best minute.
SLOW_FACTOR = 1.10
SPEED_PROBE = b"x" * 4096
SPEED_PROBE_ROUNDS = 8000  # 32 MB of SHA-256: about 20 ms on this kind of machine


@dataclass(frozen=True)
class ServerSpec:
    """One server configuration: a row of the results."""

    key: str
    label: str
    description: str
    protos: tuple[str, ...] = ("line", "http")


SERVERS: dict[str, ServerSpec] = {
    spec.key: spec
    for spec in (
        ServerSpec(
            "engine", "engine", "PreforkTCPServer, workers=2, default pool (dynamic, "
            "min_spare 2, max_spare 8, max_children 40)",
        ),
        ServerSpec("engine-static", "engine static", "PreforkTCPServer, workers=2, "
                   "pool_mode=static"),
        ServerSpec("floor", "floor", "hand-written prefork loop (loadtests/floor.py): "
                   "2 processes in blocking accept(), handler called directly"),
        ServerSpec("forking", "ForkingTCPServer", "stdlib socketserver: one process per "
                   "connection (max_children 40)"),
        ServerSpec("threading", "ThreadingTCPServer", "stdlib socketserver: one thread per "
                   "connection"),
        ServerSpec("gunicorn", "gunicorn sync", "gunicorn -k sync -w 2, the equivalent "
                   "WSGI app", ("http",)),
        ServerSpec("c-ref", "C reference", "one-thread epoll server in C (loadgen -L): "
                   "the load generator's ceiling, not a contender"),
    )
}


@dataclass(frozen=True)
class Scenario:
    """A protocol and a connection mode."""

    key: str
    proto: str  # "line" or "http"
    mode: str  # "keepalive" or "close"
    title: str


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("tcp-keepalive", "line", "keepalive", "Raw TCP, keep-alive"),
        Scenario("tcp-close", "line", "close", "Raw TCP, one connection per request"),
        Scenario("http-keepalive", "http", "keepalive", "HTTP, keep-alive"),
        Scenario("http-close", "http", "close", "HTTP, one connection per request"),
    )
}


# The targets' pairs (scenario, server A, server B), measured again after the rounds in
# blocks of alternating runs: the machine's speed moves by tens of per cent between
# minutes with no load visible from inside, and a ratio of runs a second apart (linear
# drift cancelled by the A B B A order) holds where one of cells a minute apart does not.
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("tcp-close", "engine", "floor"),
    ("tcp-close", "engine-static", "floor"),
    ("http-close", "engine", "floor"),
    ("http-close", "engine-static", "gunicorn"),
    ("http-close", "engine", "gunicorn"),
)
PAIR_BLOCKS = 5
# A block runs both servers at once and alternates the load between them in runs of
# PAIR_RUN_S seconds, A B B A, PAIR_SWITCHES times: the host's speed moves within tens of
# seconds, and runs one second apart see nearly the same machine.
PAIR_SWITCHES = 3
PAIR_RUN_S = 1


def abba(a: str, b: str) -> tuple[str, str, str, str]:
    """The order of one A B B A switch of a paired block's runs."""
    return (a, b, b, a)


def alternation(a: str, b: str, switches: int = PAIR_SWITCHES) -> list[str]:
    """The order of one paired block's runs: *switches* times A B B A."""
    return list(abba(a, b)) * switches


def merge_runs(runs: Sequence[Sample]) -> Sample:
    """One server's runs of a paired block as one sample: totals for the counts, the
    CPU and the windows, rates over the summed windows, the runs' median latencies."""
    first = runs[0]
    merged = Sample(first.scenario, first.server, first.round, clients=first.clients,
                    pair=first.pair)
    done = [r for r in runs if r.ok]
    if len(done) < len(runs):
        failed = next(r for r in runs if not r.ok)
        merged.ok, merged.note = False, failed.note
    if not done:
        return merged
    merged.requests = sum(r.requests for r in done)
    busy_s = sum(r.requests / r.rps for r in done if r.rps > 0)
    merged.rps = merged.requests / busy_s if busy_s else 0.0
    merged.p50_us = statistics.median(r.p50_us for r in done)
    merged.p99_us = statistics.median(r.p99_us for r in done)
    merged.errors = sum(r.errors for r in done)
    merged.timeouts = sum(r.timeouts for r in done)
    merged.closed_by_server = sum(r.closed_by_server for r in done)
    served = [r.served for r in done if r.served is not None]
    merged.served = min(served) if served else None
    merged.window_s = sum(r.window_s for r in done)
    merged.server_cpu_s = sum(r.server_cpu_s for r in done)
    if merged.requests:
        merged.cpu_per_req_us = merged.server_cpu_s / merged.requests * 1e6
    if merged.window_s:
        for name in ("server_cores", "gen_cores", "machine_cores", "softirq_cores"):
            setattr(merged, name,
                    sum(getattr(r, name) * r.window_s for r in done) / merged.window_s)
    merged.procs = max(r.procs for r in done)
    return merged


def paired_ratios(samples: Sequence[Sample], scenario: str, a: str, b: str,
                  field_name: str) -> list[float]:
    """Per block (a sample's ``round``) of the pair *a*/*b* in *scenario*: the mean of
    A's *field_name* over the mean of B's. Blocks missing a server, or with a failed
    sample, are left out."""
    tag = f"{a}/{b}"
    blocks: dict[int, dict[str, list[float]]] = {}
    for sample in samples:
        if sample.pair == tag and sample.scenario == scenario:
            blocks.setdefault(sample.round, {}).setdefault(sample.server, []).append(
                getattr(sample, field_name) if sample.ok else math.nan
            )
    ratios = []
    for _, cells in sorted(blocks.items()):
        xs, ys = cells.get(a, []), cells.get(b, [])
        if xs and ys:
            r = ratio(statistics.fmean(xs), statistics.fmean(ys))
            if not math.isnan(r):
                ratios.append(r)
    return ratios


@dataclass
class Options:
    """What the command line asked for."""

    rounds: int
    duration: float
    warmup: float
    clients: int
    workers: int
    timeout: float
    max_requests: int
    wrk_threads: int
    servers: list[str]
    scenarios: list[str]
    out: Path
    quick: bool
    plot: bool
    busy_limit: float = BUSY_OTHER_CORES
    reruns: int = RERUNS
    memory: bool = True
    instructions: bool = True
    pair_blocks: int = PAIR_BLOCKS


@dataclass
class Sample:
    """One measurement: one server, one scenario, one round."""

    scenario: str
    server: str
    round: int
    ok: bool = True
    note: str = ""
    requests: int = 0
    rps: float = 0.0
    p50_us: float = math.nan
    p99_us: float = math.nan
    errors: int = 0
    timeouts: int = 0
    closed_by_server: int = 0  # wrk's "read" errors: the server closed the connection
    clients: int = 0
    served: int | None = None  # clients with at least one reply (loadgen only)
    window_s: float = 0.0
    server_cpu_s: float = 0.0
    cpu_per_req_us: float = math.nan
    server_cores: float = 0.0
    gen_cores: float = 0.0
    machine_cores: float = 0.0  # all CPUs' busy time (softirq included) per second
    softirq_cores: float = 0.0  # loopback TCP work in softirq: no process is charged
    procs: int = 0
    attempts: int = 1  # measurements of this cell (re-runs when the machine was busy)
    busy: bool = False  # still busy after every re-run: kept, and flagged
    speed_ms: float = math.nan  # the speed probe around the cell (machine_speed_ms)
    slow: bool = False  # the machine still slow after every re-run: kept, and flagged
    pair: str = ""  # "A/B" for a cell of the paired phase (measure_pairs), else ""

    @property
    def other_cores(self) -> float:
        """Busy CPU over the window that neither the server, the generator nor softirq
        explains: other work on the machine, in cores."""
        rest = self.machine_cores - self.server_cores - self.gen_cores - self.softirq_cores
        return max(0.0, rest)


@dataclass
class Summary:
    """The medians of one server's samples in one scenario."""

    scenario: str
    server: str
    rounds: int
    rps: float
    rps_min: float
    rps_max: float
    p50_us: float
    p99_us: float
    errors: float
    timeouts: float
    served_min: int | None
    clients: int
    cpu_per_req_us: float
    cpu_min: float
    cpu_max: float
    server_cores: float
    gen_cores: float
    machine_cores: float
    softirq_cores: float
    procs: int
    per_round_rps: list[float] = field(default_factory=list)
    per_round_cpu: list[float] = field(default_factory=list)
    busy_rounds: int = 0  # rounds kept although the machine stayed busy
    slow_rounds: int = 0  # rounds kept although the machine stayed slow
    reruns: int = 0  # cells measured again because the machine was busy or slow

    @property
    def rps_spread(self) -> float:
        """(max - min) / median of the rounds' requests/s."""
        return spread(self.per_round_rps)

    @property
    def cpu_spread(self) -> float:
        """(max - min) / median of the rounds' CPU per request."""
        return spread(self.per_round_cpu)

    @property
    def other_cores(self) -> float:
        """Busy CPU that neither the server, the generator nor softirq explains."""
        rest = self.machine_cores - self.server_cores - self.gen_cores - self.softirq_cores
        return max(0.0, rest)

    @property
    def quality(self) -> str:
        """The rounds' spread and how many were re-run or stayed busy, for the tables."""
        text = f"{self.rps_spread:.0%} / {self.cpu_spread:.0%}" if self.rounds > 1 else "-"
        if self.reruns:
            text += f", {self.reruns} re-run"
        if self.busy_rounds:
            text += f", **{self.busy_rounds} busy**"
        if self.slow_rounds:
            text += f", **{self.slow_rounds} slow**"
        return text


# --------------------------------------------------------------------------- processes

_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start *argv* in a new session (its own process group), tracked for clean-up."""
    proc = subprocess.Popen(list(argv), start_new_session=True, **kwargs)
    with _live_lock:
        _live.add(proc)
    return proc


def kill_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Stop *proc*'s process group (:func:`tests.kit.processes.kill_group`); untrack it."""
    processes.kill_group(proc.pid, proc, grace=grace)
    with _live_lock:
        _live.discard(proc)


def kill_everything() -> None:
    """SIGKILL every process group still tracked (the exit path's safety net)."""
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        processes.kill_group(proc.pid, proc, term_first=False)
        with _live_lock:
            _live.discard(proc)


def tree_cpu(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) of *pid*'s process tree, and its process count.

    Each live process contributes its own times plus the cumulative times of its
    children that exited and were reaped (``children_user``/``children_system``), so
    processes that came and went during the window (ForkingTCPServer's, retired
    engine workers) are counted too.
    """
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0
    total = 0.0
    count = 0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
        count += 1
    return total, count


def machine_ticks() -> tuple[int, int]:
    """(busy, softirq) clock ticks of all CPUs so far, from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user..steal; guest time is already in user
    return busy, fields[6] if len(fields) > 6 else 0


def set_machine(sample: Sample, before: tuple[int, int], after: tuple[int, int]) -> None:
    """Fill the sample's machine-wide CPU use over its window."""
    hz = os.sysconf("SC_CLK_TCK")
    if sample.window_s > 0:
        sample.machine_cores = (after[0] - before[0]) / hz / sample.window_s
        sample.softirq_cores = (after[1] - before[1]) / hz / sample.window_s


def probe(proto: str, port: int) -> bool:
    """One real request: True once the server answers it."""
    try:
        with socket.create_connection((HOST, port), timeout=2.0) as sock:
            if proto == "line":
                sock.sendall(b"probe\n")
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        return False
                    reply += chunk
                return True
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
            return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]
    except OSError:
        return False


def tail(path: Path, lines: int = 15) -> str:
    """The last *lines* lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Watchdog:
    """Kill a process group if it outlives its deadline (a stuck generator)."""

    def __init__(self, proc: subprocess.Popen[bytes], seconds: float) -> None:
        self._timer = threading.Timer(seconds, self._fire, args=(proc,))
        self._timer.daemon = True
        self.fired = False

    def _fire(self, proc: subprocess.Popen[bytes]) -> None:
        self.fired = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


# --------------------------------------------------------------------------- tools


def cache_dir() -> Path:
    """Where the compiled generator is kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "engine-loadtests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_loadgen() -> Path:
    """Compile loadtests/loadgen.c with the machine's cc (cached by source hash)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("bench: no C compiler (cc or gcc) found; install gcc")
    flags = ["-O2", "-pthread"]
    digest = hashlib.sha256(LOADGEN_SOURCE.read_bytes() + " ".join([cc, *flags]).encode())
    binary = cache_dir() / f"loadgen-{digest.hexdigest()[:16]}"
    if not binary.exists():
        tmp = binary.with_suffix(f".tmp{os.getpid()}")
        subprocess.run([cc, *flags, "-o", str(tmp), str(LOADGEN_SOURCE)], check=True)
        tmp.replace(binary)
    return binary


def tool_version(argv: Sequence[str]) -> str:
    """The first line a tool prints about its version, or ''."""
    try:
        out = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else ""


def have_gunicorn() -> bool:
    """Whether gunicorn is importable by this interpreter."""
    return importlib.util.find_spec("gunicorn") is not None


# --------------------------------------------------------------------------- one cell


class Bench:
    """Runs the cells and keeps the samples."""

    def __init__(self, opts: Options, loadgen: Path, wrk: str | None, work: Path) -> None:
        self.opts = opts
        self.loadgen = loadgen
        self.wrk = wrk
        self.work = work
        self.samples: list[Sample] = []
        self.paired: list[Sample] = []  # the paired phase's cells (measure_pairs)
        self.discarded: list[Sample] = []  # busy or slow attempts a re-run replaced
        self.probes: list[float] = []  # every speed probe of the run so far, ms

    def server_argv(self, key: str, proto: str, port: int) -> list[str]:
        """The command line that starts server *key* for *proto* on *port*."""
        workers = str(self.opts.workers)
        if key == "c-ref":
            return [str(self.loadgen), "-L", str(port), *(["-P"] if proto == "http" else [])]
        if key == "gunicorn":
            argv = [
                sys.executable, "-m", "gunicorn", "-k", "sync", "-w", workers,
                "-b", f"{HOST}:{port}", "--backlog", "2048", "--log-level", "warning",
            ]
            if Path("/dev/shm").is_dir():  # gunicorn's advice for its heartbeat files
                argv += ["--worker-tmp-dir", "/dev/shm"]
            return [*argv, "loadtests.bench_servers:wsgi_app"]
        argv = [sys.executable, "-m", "loadtests.bench_servers"]
        if key.startswith("engine"):
            pool_mode = "static" if key == "engine-static" else "dynamic"
            argv += ["engine", "--pool-mode", pool_mode]
        else:
            argv += [key]
        return [*argv, "--port", str(port), "--proto", proto, "--workers", workers]

    @contextlib.contextmanager
    def server(self, key: str, proto: str, log: Path) -> Iterator[tuple[int, int]]:
        """Start a server, wait until it answers a request; yield (pid, port)."""
        port = free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        ))
        with log.open("ab") as log_file:
            proc = spawn(
                self.server_argv(key, proto, port), cwd=REPO, env=env,
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 20.0
            while not probe(proto, port):
                if proc.poll() is not None:
                    raise RuntimeError(f"{key} exited at start-up:\n{tail(log)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{key} did not answer within 20s:\n{tail(log)}")
                time.sleep(0.05)
            yield proc.pid, port
        finally:
            kill_group(proc)

    def run_cell(self, scenario: Scenario, key: str, rnd: int) -> Sample:
        """Measure one server in one scenario; again while the machine is busy or slow
        (:meth:`until_quiet`)."""
        (sample,) = self.until_quiet(f"{scenario.key} {key}",
                                     lambda: [self.measure_cell(scenario, key, rnd)])
        self.samples.append(sample)
        return sample

    def until_quiet(self, label: str, measure: Callable[[], list[Sample]]) -> list[Sample]:
        """Take *measure*'s samples (a cell's, or a paired block's two); again while the
        machine was busy or slow, at most ``reruns`` times (:func:`needs_rerun`).

        An attempt is judged by its busiest sample, and the one kept is chosen by
        :func:`choose_sample`; the others go to the raw samples as discarded.
        """
        attempts: list[list[Sample]] = []
        judged: list[Sample] = []
        while True:
            before = machine_speed_ms()
            attempt = measure()
            after = machine_speed_ms()
            for sample in attempt:
                sample.speed_ms = (before + after) / 2
            self.probes += [before, after]
            usual = usual_speed_ms(self.probes)
            attempts.append(attempt)
            judged.append(max(attempt, key=lambda s: s.other_cores))
            if not needs_rerun(judged, self.opts.busy_limit, self.opts.reruns, usual):
                break
            print(f"  {where(judged[-1])} {label}: machine busy or slow (other load "
                  f"{judged[-1].other_cores:.2f} cores, speed probe "
                  f"{judged[-1].speed_ms:.1f} ms against a usual {usual:.1f}): "
                  "measuring again", flush=True)
        chosen = choose_sample(judged, self.opts.busy_limit, usual)
        kept = next(a for a, j in zip(attempts, judged, strict=True) if j is chosen)
        for sample in kept:
            sample.attempts = len(attempts)
            sample.busy = is_busy(sample, self.opts.busy_limit)
            sample.slow = is_slow(sample, usual)
        self.discarded += [s for attempt in attempts if attempt is not kept for s in attempt]
        return kept

    def measure_pairs(self) -> None:
        """After the rounds: each target's pair (:data:`PAIRS`) in ``pair_blocks``
        blocks (:meth:`run_pair_block`), into :attr:`paired`."""
        opts = self.opts
        for scenario_key, a, b in PAIRS:
            if scenario_key not in opts.scenarios or not {a, b} <= set(opts.servers):
                continue
            for block in range(1, opts.pair_blocks + 1):
                for sample in self.run_pair_block(SCENARIOS[scenario_key], a, b, block):
                    print_cell(sample)

    def run_pair_block(self, scenario: Scenario, a: str, b: str, block: int) -> list[Sample]:
        """One block of the pair *a*/*b* (:meth:`measure_pair_block`); again while the
        machine is busy or slow (:meth:`until_quiet`). Keeps one sample per server."""
        kept = self.until_quiet(f"{scenario.key} {a}/{b}",
                                lambda: self.measure_pair_block(scenario, a, b, block))
        self.paired += kept
        return kept

    def measure_pair_block(self, scenario: Scenario, a: str, b: str, block: int
                           ) -> list[Sample]:
        """Start *a* and *b*, warm each up, then alternate runs of ``PAIR_RUN_S``
        seconds between them; one merged sample per server (:func:`merge_runs`)."""
        runs: dict[str, list[Sample]] = {a: [], b: []}
        warm: dict[str, int | None] = {}
        try:
            with contextlib.ExitStack() as stack:
                live = {key: stack.enter_context(self.server(
                    key, scenario.proto, self.log_path(key, scenario))) for key in (a, b)}
                for key, (pid, port) in live.items():  # the warm-up, as a cell's
                    log = self.log_path(key, scenario)
                    if scenario.proto == "line":
                        warm[key] = None
                        self._drive_loadgen(Sample(scenario.key, key, block), scenario,
                                            pid, port, log, seconds=self.opts.warmup)
                    else:
                        warm[key] = self._http_served(scenario, port, log)
                for key in alternation(a, b):
                    runs[key].append(self._pair_run(scenario, key, block, live[key]))
        except (RuntimeError, OSError, ValueError) as exc:
            note = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"  ! {a}/{b} {scenario.key}: {exc}", file=sys.stderr)
            failed = [Sample(scenario.key, key, block, ok=False, note=note,
                             clients=self.opts.clients) for key in (a, b)]
            for sample in failed:
                sample.pair = f"{a}/{b}"
            return failed
        merged = []
        for key in (a, b):
            sample = merge_runs(runs[key])
            sample.pair = f"{a}/{b}"
            if warm[key] is not None:
                sample.served = warm[key]
            merged.append(sample)
        return merged

    def _pair_run(self, scenario: Scenario, key: str, block: int,
                  live: tuple[int, int]) -> Sample:
        """One run of a paired block: ``PAIR_RUN_S`` seconds of load on a running server."""
        pid, port = live
        run = Sample(scenario.key, key, block, clients=self.opts.clients)
        log = self.log_path(key, scenario)
        if scenario.proto == "line":
            self._drive_loadgen(run, scenario, pid, port, log, seconds=PAIR_RUN_S, warmup=0)
        else:
            self._drive_wrk(run, scenario, pid, port, log, seconds=PAIR_RUN_S, warm=False)
        return run

    def log_path(self, key: str, scenario: Scenario) -> Path:
        """Where server *key* and its load generator write in *scenario*."""
        return self.work / f"{key}-{scenario.key}.log"

    def measure_cell(self, scenario: Scenario, key: str, rnd: int) -> Sample:
        """Measure one server in one scenario, once."""
        sample = Sample(scenario.key, key, rnd, clients=self.opts.clients)
        log = self.log_path(key, scenario)
        try:
            with self.server(key, scenario.proto, log) as (pid, port):
                if scenario.proto == "line":
                    self._drive_loadgen(sample, scenario, pid, port, log)
                else:
                    self._drive_wrk(sample, scenario, pid, port, log)
        except (RuntimeError, OSError, ValueError) as exc:
            sample.ok = False
            sample.note = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"  ! {key} {scenario.key}: {exc}", file=sys.stderr)
        if sample.requests:
            sample.cpu_per_req_us = sample.server_cpu_s / sample.requests * 1e6
        return sample

    def _drive_loadgen(
        self, sample: Sample, scenario: Scenario, pid: int, port: int, log: Path,
        seconds: float | None = None, warmup: float | None = None,
    ) -> None:
        opts = self.opts
        seconds = opts.duration if seconds is None else seconds
        warmup = opts.warmup if warmup is None else warmup
        argv = [
            str(self.loadgen), "-p", str(port), "-c", str(opts.clients),
            "-m", scenario.mode, "-d", f"{seconds:g}", "-w", f"{warmup:g}",
            "-n", str(opts.max_requests), "-T", f"{opts.timeout:g}", "-H",
        ]
        with log.open("ab") as log_file:
            gen = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file)
        assert gen.stdout is not None and gen.stdin is not None
        try:
            with Watchdog(gen, warmup + seconds + 30.0):
                start_line = gen.stdout.readline()
                cpu0, _ = tree_cpu(pid)
                ticks0 = machine_ticks()
                t0 = time.monotonic()
                if start_line.strip() != b"start":
                    raise RuntimeError(f"loadgen failed to start: {start_line!r}")
                result_line = gen.stdout.readline()
                ticks1 = machine_ticks()
                cpu1, procs = tree_cpu(pid)
                t1 = time.monotonic()
                gen.stdin.close()  # the generator may now close its connections
                gen.wait(30.0)
        finally:
            kill_group(gen, grace=1.0)
        if not result_line.startswith(b"{"):
            raise RuntimeError(f"loadgen gave no result ({result_line!r}); see {log}")
        result = json.loads(result_line)
        sample.requests = int(result["replies"])
        sample.rps = float(result["rps"])
        sample.p50_us = float(result["p50_us"])
        sample.p99_us = float(result["p99_us"])
        sample.errors = int(result["errors"])
        sample.timeouts = int(result["timeouts"])
        sample.served = int(result["clients_served"])
        sample.window_s = t1 - t0
        sample.server_cpu_s = cpu1 - cpu0
        sample.server_cores = sample.server_cpu_s / sample.window_s if sample.window_s else 0
        sample.gen_cores = float(result["cpu_s"]) / max(float(result["elapsed"]), 1e-9)
        sample.procs = procs
        set_machine(sample, ticks0, ticks1)

    def _http_served(self, scenario: Scenario, port: int, log: Path) -> int:
        """Warm the server up with loadgen's HTTP mode; return how many clients it served.

        wrk cannot say which connections got answers (and counts no error for a request
        that never gets one), so this run, which doubles as the warm-up, does: ``warmup``
        seconds of warm-up, as the raw TCP cells, then a window of ``max(warmup, 0.3)``
        seconds whose served clients it reports.
        """
        opts = self.opts
        window = max(opts.warmup, 0.3)
        argv = [
            str(self.loadgen), "-P", "-p", str(port), "-c", str(opts.clients),
            "-m", scenario.mode, "-w", f"{opts.warmup:g}", "-d", f"{window:g}",
            "-T", f"{opts.timeout:g}",
        ]
        with log.open("ab") as log_file:
            gen = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file)
        assert gen.stdout is not None
        try:
            with Watchdog(gen, opts.warmup + window + 30.0):
                output = gen.stdout.read()
                gen.wait()
        finally:
            kill_group(gen, grace=1.0)
        lines = [ln for ln in output.splitlines() if ln.startswith(b"{")]
        if not lines:
            raise RuntimeError(f"loadgen -P gave no result: {output[-300:]!r}")
        return int(json.loads(lines[-1])["clients_served"])

    def _wrk_argv(self, scenario: Scenario, port: int, seconds: int) -> list[str]:
        assert self.wrk is not None
        argv = [
            self.wrk, "-t", str(self.opts.wrk_threads), "-c", str(self.opts.clients),
            "-d", f"{seconds}s", "--timeout", f"{max(1, round(self.opts.timeout))}s",
            "-s", str(WRK_SCRIPT),
        ]
        if scenario.mode == "close":
            argv += ["-H", "Connection: close"]
        return [*argv, f"http://{HOST}:{port}/"]

    def _drive_wrk(
        self, sample: Sample, scenario: Scenario, pid: int, port: int, log: Path,
        seconds: float | None = None, warm: bool = True,
    ) -> None:
        opts = self.opts
        # wrk counts whole seconds
        seconds = max(1, round(opts.duration if seconds is None else seconds))
        if warm:
            sample.served = self._http_served(scenario, port, log)
        cpu0, _ = tree_cpu(pid)
        ticks0 = machine_ticks()
        t0 = time.monotonic()
        with log.open("ab") as log_file:
            gen = spawn(
                self._wrk_argv(scenario, port, seconds),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file,
            )
        assert gen.stdout is not None
        try:
            with Watchdog(gen, seconds + 30.0):
                output = gen.stdout.read()
                _, status, usage = os.wait4(gen.pid, 0)
                gen.returncode = os.waitstatus_to_exitcode(status)
                t1 = time.monotonic()
                ticks1 = machine_ticks()
                cpu1, procs = tree_cpu(pid)
        finally:
            kill_group(gen, grace=1.0)
        lines = [ln for ln in output.splitlines() if ln.startswith(b"{")]
        if not lines:
            raise RuntimeError(f"wrk gave no result: {output[-300:]!r}")
        result = json.loads(lines[-1])
        duration = result["duration_us"] / 1e6
        sample.requests = int(result["requests"])
        sample.rps = sample.requests / duration if duration else 0.0
        sample.p50_us = float(result["p50_us"])
        sample.p99_us = float(result["p99_us"])
        sample.timeouts = int(result["timeout"])
        sample.closed_by_server = int(result["read"])
        sample.errors = int(result["connect"] + result["write"] + result["status"])
        sample.errors += sample.timeouts
        sample.window_s = t1 - t0
        sample.server_cpu_s = cpu1 - cpu0
        sample.server_cores = sample.server_cpu_s / sample.window_s if sample.window_s else 0
        gen_cpu = usage.ru_utime + usage.ru_stime
        sample.gen_cores = gen_cpu / sample.window_s if sample.window_s else 0.0
        sample.procs = procs
        set_machine(sample, ticks0, ticks1)


# --------------------------------------------------------------------------- results


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def spread(values: Sequence[float]) -> float:
    """(max - min) / median of *values*: 0.04 means the rounds lie within 4%."""
    finite = [v for v in values if not math.isnan(v)]
    if len(finite) < 2:
        return 0.0 if finite else math.nan
    middle = statistics.median(finite)
    return (max(finite) - min(finite)) / middle if middle else math.nan


def is_busy(sample: Sample, limit: float) -> bool:
    """Whether other work took more than *limit* cores during the sample's window."""
    return sample.ok and sample.window_s > 0 and sample.other_cores > limit


def round_order(servers: list[str], rnd: int) -> list[str]:
    """The servers in the order round *rnd* (from 1) runs them: the list rotated by
    ``rnd - 1``, so that each server's position (first, after whom) changes."""
    shift = (rnd - 1) % len(servers) if servers else 0
    return servers[shift:] + servers[:shift]


def machine_speed_ms(rounds: int = 3) -> float:
    """How long this machine takes for a fixed CPU task now: the best of *rounds* times
    (ms) of SHA-256 over 32 MB. Higher is slower."""
    best = math.inf
    for _ in range(rounds):
        started = time.perf_counter()
        digest = hashlib.sha256()
        for _ in range(SPEED_PROBE_ROUNDS):
            digest.update(SPEED_PROBE)
        best = min(best, (time.perf_counter() - started) * 1000)
    return best


def usual_speed_ms(probes: Sequence[float], least: int = 6) -> float:
    """The run's usual speed probe so far: the median of *probes*, once there are at
    least *least* of them (inf before: no judgement on the first cells)."""
    return statistics.median(probes) if len(probes) >= least else math.inf


def is_slow(sample: Sample, usual_ms: float, factor: float = SLOW_FACTOR) -> bool:
    """Whether the machine ran the speed probe around *sample* more than *factor* times
    slower than usual (*usual_ms*: see usual_speed_ms)."""
    return sample.ok and sample.speed_ms > usual_ms * factor


def needs_rerun(
    attempts: Sequence[Sample], limit: float, reruns: int, usual_ms: float = math.inf
) -> bool:
    """Whether to measure the cell again: the last attempt was busy (or on a slow
    machine), and re-runs remain.

    A failed attempt is not re-run (a failure is a result, reported as such).
    """
    if not attempts or len(attempts) > reruns:
        return False
    last = attempts[-1]
    return is_busy(last, limit) or is_slow(last, usual_ms)


def choose_sample(
    attempts: Sequence[Sample], limit: float, usual_ms: float = math.inf
) -> Sample:
    """The attempt a cell keeps: the first on a quiet machine at speed, else the least
    busy, then the fastest.

    The kept sample records how many attempts there were, and is flagged ``busy`` or
    ``slow`` when none was quiet or at speed.
    """
    good = [a for a in attempts
            if a.ok and not is_busy(a, limit) and not is_slow(a, usual_ms)]
    ok = [a for a in attempts if a.ok]
    if good:
        chosen = good[0]
    elif ok:
        chosen = min(ok, key=lambda a: (
            a.other_cores if is_busy(a, limit) else 0.0,
            a.speed_ms if not math.isnan(a.speed_ms) else math.inf,
        ))
    else:
        chosen = attempts[-1]
    chosen.busy = is_busy(chosen, limit)
    chosen.slow = is_slow(chosen, usual_ms)
    chosen.attempts = len(attempts)
    return chosen


def summarize(samples: Sequence[Sample]) -> dict[tuple[str, str], Summary]:
    """Medians per (scenario, server) over the rounds that succeeded."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        if s.ok:
            groups.setdefault((s.scenario, s.server), []).append(s)
    out: dict[tuple[str, str], Summary] = {}
    for (scenario, server), group in groups.items():
        served = [s.served for s in group if s.served is not None]
        out[scenario, server] = Summary(
            scenario=scenario,
            server=server,
            rounds=len(group),
            rps=_median([s.rps for s in group]),
            rps_min=min(s.rps for s in group),
            rps_max=max(s.rps for s in group),
            p50_us=_median([s.p50_us for s in group]),
            p99_us=_median([s.p99_us for s in group]),
            errors=_median([float(s.errors) for s in group]),
            timeouts=_median([float(s.timeouts) for s in group]),
            served_min=min(served) if served else None,
            clients=group[0].clients,
            cpu_per_req_us=_median([s.cpu_per_req_us for s in group]),
            cpu_min=min((s.cpu_per_req_us for s in group), default=math.nan),
            cpu_max=max((s.cpu_per_req_us for s in group), default=math.nan),
            server_cores=_median([s.server_cores for s in group]),
            gen_cores=_median([s.gen_cores for s in group]),
            machine_cores=_median([s.machine_cores for s in group]),
            softirq_cores=_median([s.softirq_cores for s in group]),
            procs=max(s.procs for s in group),
            per_round_rps=[s.rps for s in group],
            per_round_cpu=[s.cpu_per_req_us for s in group],
            busy_rounds=sum(1 for s in group if s.busy),
            slow_rounds=sum(1 for s in group if s.slow),
            reruns=sum(s.attempts - 1 for s in group),
        )
    return out


def ratio(value: float, reference: float) -> float:
    """value / reference, NaN when either is missing or the reference is 0."""
    if math.isnan(value) or math.isnan(reference) or reference == 0:
        return math.nan
    return value / reference


def fmt_ratio(value: float) -> str:
    """A ratio as '1.23x' (or a dash)."""
    return "-" if math.isnan(value) else f"{value:.2f}x"


def fmt_ms(us: float) -> str:
    """Microseconds as milliseconds with sensible precision."""
    if math.isnan(us):
        return "-"
    ms = us / 1000
    return f"{ms:.2f}" if ms < 10 else f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}"


def scenario_table(
    scenario: Scenario, summaries: dict[tuple[str, str], Summary], servers: Sequence[str]
) -> list[str]:
    """The markdown table of one scenario."""
    ref = summaries.get((scenario.key, REFERENCE))
    lines = [
        "| server | req/s | xengine | p50 ms | p99 ms | xengine | errors | clients served "
        "| CPU µs/req | xengine | server CPU | generator CPU | softirq | other load "
        "| processes | spread req/s / CPU |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key in servers:
        s = summaries.get((scenario.key, key))
        if s is None:
            continue
        served = "-" if s.served_min is None else f"{s.served_min}/{s.clients}"
        lines.append(
            f"| {SERVERS[key].label} | {s.rps:,.0f} "
            f"| {fmt_ratio(ratio(s.rps, ref.rps) if ref else math.nan)} "
            f"| {fmt_ms(s.p50_us)} | {fmt_ms(s.p99_us)} "
            f"| {fmt_ratio(ratio(s.p99_us, ref.p99_us) if ref else math.nan)} "
            f"| {s.errors:,.0f} | {served} | {s.cpu_per_req_us:,.1f} "
            f"| {fmt_ratio(ratio(s.cpu_per_req_us, ref.cpu_per_req_us) if ref else math.nan)} "
            f"| {s.server_cores:.2f} | {s.gen_cores:.2f} | {s.softirq_cores:.2f} "
            f"| {s.other_cores:.2f} | {s.procs} | {s.quality} |"
        )
    return lines


@dataclass
class Target:
    """One of the issue's targets, evaluated."""

    text: str
    met: bool | None  # None: not measured
    evidence: str


def evaluate_targets(
    summaries: dict[tuple[str, str], Summary], clients: int, memory: Sequence[Any] = (),
    paired: Sequence[Sample] = (),
) -> list[Target]:
    """Check the targets of the benchmark's issues (#16 and before) against the medians;
    a target with paired cells (:data:`PAIRS`) is judged on the median of its ABBA
    blocks' ratios, and the rounds' figures are given beside it."""
    def get(scenario: str, key: str) -> Summary | None:
        return summaries.get((scenario, key))

    def rounds(a: Summary, b: Summary, what: str) -> str:
        per_round = [ratio(x, y) for x, y in zip(getattr(a, what), getattr(b, what),
                                                  strict=False)]
        text = ", ".join(f"{r:.2f}" for r in per_round)
        if len(per_round) > 1:
            text += f"; spread {spread(per_round):.0%}"
        if a.busy_rounds or b.busy_rounds:
            text += (f"; **rounds measured on a busy machine: {a.busy_rounds} and "
                     f"{b.busy_rounds}**")
        if a.slow_rounds or b.slow_rounds:
            text += (f"; **rounds measured on a slow machine: {a.slow_rounds} and "
                     f"{b.slow_rounds}**")
        return text

    def compare(scenario: str, key: str, other: str, what: str, label: str,
                limit: float, at_least: bool) -> None:
        a, b = get(scenario, key), get(scenario, other)
        if a is None or b is None:
            return
        field_name, unit, per_round = {
            "rps": ("rps", "req/s", "per_round_rps"),
            "cpu": ("cpu_per_req_us", "µs", "per_round_cpu"),
            "p99": ("p99_us", "µs p99", ""),
        }[what]
        x, y = getattr(a, field_name), getattr(b, field_name)
        r = ratio(x, y)
        digits = 0 if what == "rps" else 1
        evidence = f"{x:,.{digits}f} vs {y:,.{digits}f} {unit} = {r:.2f}x"
        if per_round:
            evidence += f" (per round: {rounds(a, b, per_round)})"
        blocks = paired_ratios(paired, scenario, key, other, field_name)
        if blocks:
            r = statistics.median(blocks)
            evidence = (
                f"side by side, {r:.2f}x (median of {len(blocks)} ABBA blocks: "
                + ", ".join(f"{b:.2f}" for b in blocks)
                + (f"; spread {spread(blocks):.0%}" if len(blocks) > 1 else "")
                + f"); the rounds: {evidence}"
            )
        met = (r >= limit) if at_least else (r <= limit)
        targets.append(Target(label, None if math.isnan(r) else met, evidence))

    targets: list[Target] = []
    # #16.3: CPU per connection within 5% of the floor, in both pool modes.
    for key, label in (("engine", "engine (default pool)"), ("engine-static", "engine static")):
        compare("tcp-close", key, "floor", "cpu",
                f"TCP, one connection per request: {label} CPU/request ≤ 1.05x the floor's",
                1.05, at_least=False)
    # #16.1: the default pool under HTTP churn, against the floor.
    compare("http-close", "engine", "floor", "p99",
            "HTTP, one connection per request: engine (default pool) p99 ≤ 1.2x the floor's",
            1.2, at_least=False)
    compare("http-close", "engine", "floor", "rps",
            "HTTP, one connection per request: engine (default pool) req/s ≥ 1.0x the "
            "floor's", 1.0, at_least=True)
    # #16.2: against gunicorn sync (2 fixed workers): static at the same worker count.
    compare("http-close", "engine-static", "gunicorn", "rps",
            "HTTP, one connection per request: engine static (2 fixed workers, as gunicorn "
            "-w 2) req/s ≥ 1.8x gunicorn sync's", 1.8, at_least=True)
    compare("http-close", "engine", "gunicorn", "rps",
            "HTTP, one connection per request: engine (default pool) req/s ≥ 1.6x gunicorn "
            "sync's", 1.6, at_least=True)
    # What the dynamic pool is for, and the earlier targets.
    for scenario, title in (("tcp-keepalive", "TCP"), ("http-keepalive", "HTTP")):
        eng = get(scenario, "engine")
        if eng and eng.served_min is not None:
            floor = get(scenario, "floor")
            targets.append(Target(
                f"{title} keep-alive: engine serves all {clients} clients",
                eng.served_min == eng.clients,
                f"{eng.served_min}/{eng.clients} clients got replies in the worst round "
                f"(the floor: {floor.served_min if floor else '-'}/{clients})",
            ))
    compare("tcp-close", "engine", "floor", "rps",
            "TCP, one connection per request: engine (default pool) req/s ≥ 1.0x the "
            "floor's", 1.0, at_least=True)
    compare("tcp-keepalive", "engine", "forking", "rps",
            "TCP keep-alive: engine req/s ≥ 1.0x ForkingTCPServer's", 1.0, at_least=True)
    # #16.5: a worker costs what a forked child costs.
    by_server = {m.server: m for m in memory}
    child = by_server.get("forking")
    for key, label in (("engine", "engine (default pool)"), ("engine-static", "engine static"),
                       ("engine-ksm", "engine static with ksm = true")):
        eng_mem = by_server.get(key)
        if eng_mem is None or child is None:
            continue
        r = ratio(eng_mem.uss_kib, child.uss_kib)
        targets.append(Target(
            f"Memory: an idle {label} worker's USS ≤ 1.25x a ForkingTCPServer child's",
            None if math.isnan(r) else r <= 1.25,
            f"{eng_mem.uss_kib / 1024:.2f} vs {child.uss_kib / 1024:.2f} MiB = {r:.2f}x "
            f"(PSS {eng_mem.pss_kib / 1024:.2f} vs {child.pss_kib / 1024:.2f} MiB)",
        ))
    return targets


def context_lines(summaries: dict[tuple[str, str], Summary]) -> list[str]:
    """The floor against the stdlib servers (the issue's expectation of the machine)."""
    lines = []
    floor = summaries.get(("tcp-close", "floor"))
    for key in ("forking", "threading"):
        other = summaries.get(("tcp-close", key))
        if floor and other:
            lines.append(
                f"- TCP, one connection per request: the floor does "
                f"{ratio(floor.rps, other.rps):.1f}x the requests/s of {SERVERS[key].label}."
            )
    return lines


def generator_lines(
    summaries: dict[tuple[str, str], Summary], scenarios: Sequence[Scenario],
    opts: Options,
) -> list[str]:
    """What the reference server says about the load generator's ceiling."""
    lines = []
    for scenario in scenarios:
        cref = summaries.get((scenario.key, "c-ref"))
        contenders = [
            s for (sc, key), s in summaries.items() if sc == scenario.key and key != "c-ref"
        ]
        if not contenders:
            continue
        best = max(contenders, key=lambda s: s.rps)
        gen = max(contenders, key=lambda s: s.gen_cores)
        tool = "loadgen (1 thread)" if scenario.proto == "line" else (
            f"wrk ({opts.wrk_threads} threads)"
        )
        threads = 1 if scenario.proto == "line" else opts.wrk_threads
        if cref:
            head = (
                f"- **{scenario.title}** ({tool}): ceiling {cref.rps:,.0f} req/s against the "
                f"C server (generator at {cref.gen_cores:.2f} cores, C server at "
                f"{cref.server_cores:.2f})."
            )
        else:
            head = f"- **{scenario.title}** ({tool}): no reference run."
        saturated = gen.gen_cores >= 0.9 * threads
        head += (
            f" Fastest Python server: {SERVERS[best.server].label}, {best.rps:,.0f} req/s"
            + (f" = {best.rps / cref.rps:.0%} of the ceiling" if cref else "")
            + f" (CPUs in that run: server {best.server_cores:.2f}, generator "
            f"{best.gen_cores:.2f}, softirq {best.softirq_cores:.2f}, other "
            f"{best.other_cores:.2f}, of {os.cpu_count()})"
            + f". Highest generator CPU in a Python server's run: {gen.gen_cores:.2f} cores "
            f"({SERVERS[gen.server].label}) of the {threads} it can use: "
            + ("**saturated**, that row is generator-bound." if saturated else "not saturated.")
        )
        lines.append(head)
    return lines


def environment() -> dict[str, str]:
    """The facts about this machine the results depend on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gunicorn_version = ""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        gunicorn_version = importlib.metadata.version("gunicorn")
    commit = tool_version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "engine", "workers"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()
    return {
        "commit": (commit + (" with local changes to engine/ or workers/" if dirty else ""))
        if commit else "unknown",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "gunicorn": gunicorn_version,
        "wrk": tool_version(["wrk", "--version"]).split(" Copyright")[0],
        "cc": tool_version([os.environ.get("CC") or "cc", "--version"]),
    }


def where(sample: Sample) -> str:
    """Which part of the run a sample belongs to: "round N" or "pair A/B block N"."""
    if sample.pair:
        return f"pair {sample.pair} block {sample.round}"
    return f"round {sample.round}"


def busy_notes(
    samples: Sequence[Sample], discarded: Sequence[Sample], opts: Options
) -> list[str]:
    """Lines for the notes: the cells re-run, and those that stayed busy."""
    lines = []
    if discarded:
        cells = sorted({(where(s), s.scenario, s.server) for s in discarded})
        lines.append(
            f"- {len(discarded)} measurement(s) taken while other load exceeded "
            f"{opts.busy_limit:g} cores, or while the machine ran slow, were replaced by a "
            "re-run: "
            + ", ".join(f"{w} {sc} {sv}" for w, sc, sv in cells) + "."
        )
    for s in samples:
        if s.busy:
            lines.append(
                f"- {where(s)}, {s.server}, {s.scenario}: the machine stayed busy "
                f"after {s.attempts} attempts (other load {s.other_cores:.2f} cores); "
                "kept, and flagged."
            )
        if s.slow:
            lines.append(
                f"- {where(s)}, {s.server}, {s.scenario}: the machine stayed slow "
                f"after {s.attempts} attempts (speed probe {s.speed_ms:.1f} ms); kept, "
                "and flagged."
            )
    probes = [s.speed_ms for s in [*samples, *discarded] if not math.isnan(s.speed_ms)]
    if probes:
        lines.append(
            f"- Machine speed over the run (the speed probe, ms; lower is faster): fastest "
            f"{min(probes):.1f}, median {statistics.median(probes):.1f}, slowest "
            f"{max(probes):.1f}."
        )
    return lines


def measure_memory(opts: Options, work: Path) -> list[Any]:
    """USS and PSS per worker after a small HTTP load (loadtests/worker_memory.py)."""
    from engine import ksm
    from loadtests import worker_memory

    servers = [k for k in worker_memory.SERVERS if k in opts.servers or k == "forking"]
    if "gunicorn" in servers and not have_gunicorn():
        servers.remove("gunicorn")
    if "engine-static" in servers and ksm.daemon_state() == "1":
        # ksm = true only helps where root turned the kernel's daemon on: measured then.
        servers.insert(servers.index("engine-static") + 1, "engine-ksm")
    results = []
    for key in servers:
        try:
            results.append(worker_memory.measure(
                key, "http", workers=opts.workers, log=work / f"{key}-memory.log"
            ))
        except (RuntimeError, OSError, psutil.Error) as exc:
            print(f"  ! memory of {key}: {exc}", file=sys.stderr)
    return results


def memory_lines(memory: Sequence[Any]) -> list[str]:
    """The memory section: what it measured, and the table."""
    from loadtests import worker_memory

    requests = memory[0].requests if memory else 0
    return [
        f"`python -m loadtests.worker_memory`: HTTP, {requests} connections of one request "
        "each, then one keep-alive connection held open (ForkingTCPServer has a child "
        "only while a client is connected); then each worker's USS (pages no other "
        "process maps) and PSS (pages divided among the processes mapping them). "
        "Target: an engine worker's USS ≤ 1.25x a forked child's.",
        "",
        *worker_memory.table(memory),
        "",
        ("*engine static, ksm = true*: the kernel merged identical pages (KSM daemon on, "
         "read after its fourth full scan following the load; `ksm` is off by default, "
         "see docs/operations.md)."
         if any(m.server == "engine-ksm" for m in memory) else
         "*engine with `ksm = true`* was not measured: the kernel's KSM daemon was off "
         "(`/sys/kernel/mm/ksm/run`)."),
    ]


# The hot path counted, not timed: these variants of loadtests/conn_overhead.py, each
# at INSTRUCTION_CONNS and twice that many queued connections, per protocol.
INSTRUCTION_VARIANTS = ("floor", "floor + SHUT_WR", "engine (default)")
INSTRUCTION_CONNS = 200
PROTO_TITLES = {"line": "echo (raw TCP)", "http": "HTTP"}


def measure_instructions(opts: Options) -> dict[str, dict[str, float]]:
    """User-space instructions per connection by protocol and variant ({} without
    valgrind: it says so, and the report leaves the section out)."""
    from loadtests import conn_overhead

    if not opts.instructions:
        return {}
    protos = [p for p in PROTO_TITLES if any(SCENARIOS[k].proto == p for k in opts.scenarios)]
    counts: dict[str, dict[str, float]] = {}
    for proto in protos:
        try:
            counted = conn_overhead.count_instructions(
                INSTRUCTION_CONNS, 1, proto, INSTRUCTION_VARIANTS)
        except conn_overhead.ValgrindMissing as exc:
            print(f"  ! instructions per connection: {exc}", file=sys.stderr)
            break  # the same for every protocol: said once
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"  ! instructions per connection, {proto}: {exc}", file=sys.stderr)
            continue
        counts[proto] = {name: values[0] for name, values in counted.items()}
    return counts


def instruction_lines(counts: dict[str, dict[str, float]]) -> list[str]:
    """The instructions section: what was counted, and one table."""
    protos = list(counts)
    head = "| variant | " + " | ".join(
        f"{PROTO_TITLES[p]} | x floor" for p in protos) + " |"
    out = [
        "`python -m loadtests.conn_overhead --instructions`: each variant serves "
        f"{INSTRUCTION_CONNS} and then {2 * INSTRUCTION_CONNS} queued loopback "
        "connections in a child under valgrind's callgrind; the difference over "
        f"{INSTRUCTION_CONNS} is the user-space instructions per connection. Unlike the "
        "CPU times above, the count does not move with the machine's speed (repeated "
        "runs agree to a few instructions). The kernel's side is the same system calls "
        "for all three but for the half-close's one `shutdown`.",
        "",
        head,
        "|---|" + "--:|--:|" * len(protos),
    ]
    for name in INSTRUCTION_VARIANTS:
        cells = []
        for proto in protos:
            value, floor = counts[proto].get(name), counts[proto].get("floor")
            cells += ["-", "-"] if value is None else [
                f"{value:,.0f}", fmt_ratio(ratio(value, floor or math.nan))]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


KEEP_MARKER = "<!-- hand-written: everything below this line survives re-runs of the bench -->"


def write_markdown(
    path: Path, opts: Options, summaries: dict[tuple[str, str], Summary],
    scenarios: Sequence[Scenario], targets: Sequence[Target], env: dict[str, str],
    notes: Sequence[str], command: str, memory: Sequence[Any] = (),
    instructions: dict[str, dict[str, float]] | None = None,
) -> None:
    """Write docs/benchmarks.md, keeping the hand-written part below KEEP_MARKER."""
    kept = ""
    with contextlib.suppress(OSError):
        previous = path.read_text()
        if KEEP_MARKER in previous:
            kept = previous[previous.index(KEEP_MARKER):]
    servers = [k for k in SERVERS if k in opts.servers]
    out = [
        "# Benchmarks",
        "",
        "Install the load-test extras, wrk and valgrind, then run the benchmark (about 20 "
        "minutes, of which 8 for the side-by-side pairs, `--pair-blocks 0` to skip them; "
        "`--quick` is a smoke test of about ten seconds that writes to a temporary "
        "directory unless `--out` is given):",
        "",
        "```",
        "bash loadtests/system_packages.sh && pip install -e '.[load]'",
        "python -m loadtests.bench [--quick] [--rounds N] [--duration S] [--pair-blocks N]",
        "```",
        "",
        f"The tables and `benchmark.png` below were written by `{command}` on "
        f"{env['date']}, engine at commit {env['commit']}. Raw samples go to "
        "`loadtests/results/` (not versioned).",
        "",
        "## Method",
        "",
        f"- Machine: {env['cpus']} CPUs ({env['cpu']}), Linux {env['kernel']}, "
        f"Python {env['python']}, gunicorn {env['gunicorn'] or '-'}, "
        f"{env['wrk'] or 'no wrk'}. Servers and load generator share the machine and "
        "talk over 127.0.0.1.",
        f"- {opts.clients} concurrent clients; {opts.rounds} interleaved rounds (every "
        "server once per scenario, then the next scenario, then again; each round starts "
        "one server later in the list, so that none always runs first or after the same "
        "neighbour); each cell starts "
        f"its server fresh, waits until it answers a request, warms up {opts.warmup:g} s "
        f"and measures {opts.duration:g} s. The tables show the median over the rounds "
        "of each metric; the plot's whiskers span the rounds.",
        "- Raw TCP: the client sends 64 bytes and a newline, the server echoes the line. "
        "Every server runs the same `socketserver.StreamRequestHandler` subclass "
        "(`loadtests/bench_servers.py`), which loops over lines until EOF. Generator: "
        "`loadtests/loadgen.c` (one thread, epoll; compiled at bench time). Its latency "
        "includes the connect when there is one connection per request. A request "
        f"unanswered for {opts.timeout:g} s counts as a timeout (an error) and its client "
        "reconnects. *Clients served* counts the clients that got at least one reply "
        "inside the measured window, in the worst round; latencies are those of the "
        "replies that came.",
        "- HTTP: the same `http.server.BaseHTTPRequestHandler` subclass everywhere "
        "(HTTP/1.1, a 14-byte body, no access log, `wbufsize = -1` so that headers and "
        "body leave in one write: unbuffered, Nagle's algorithm and delayed ACKs add "
        "40 ms to every keep-alive request), and gunicorn's sync workers serving the "
        f"equivalent WSGI app. Generator: wrk with {opts.wrk_threads} threads (installed "
        "by `loadtests/system_packages.sh`, which the bench runs when wrk is missing; "
        "without wrk it stops before measuring anything rather than leave the HTTP "
        "scenarios out); one "
        "connection per request means `Connection: close`. wrk's latency leaves out the "
        "connect, and wrk counts each connection the server closes as a read error: "
        "those are not errors here (errors = connect + write + timeouts + non-2xx). wrk "
        "counts a timeout only when a late answer arrives, and cannot tell which clients "
        "were served: the warm-up before each wrk run is therefore done by loadgen's HTTP "
        f"mode (`-P`): {opts.warmup:g} s, then a {max(opts.warmup, 0.3):g} s window "
        "whose served clients are the HTTP rows' *clients served*. gunicorn's sync "
        "worker closes every connection, keep-alive or not.",
        "- Every server listens with a backlog of 2048 (the engine's default; with the "
        "stdlib's default of 5, 32 clients would measure SYN retransmission timers). "
        f"The engine, the floor and gunicorn run {opts.workers} workers.",
        "- *CPU µs/req*: user + system CPU time of the server's whole process tree over "
        "the measured window (live processes, plus the exited children they reaped) "
        "divided by the replies counted; steadier than requests/s on a shared machine. "
        "The last columns split the machine's busy CPUs, in cores (CPU-seconds per "
        "second), between the server, the generator, *softirq* (the loopback TCP work "
        "the kernel charges to no process, and so to neither column) and *other load* "
        "(whatever else ran on the machine meanwhile).",
        "- *Other load*, per cell: the machine's busy CPU (`/proc/stat`) minus the "
        "server's tree, the generator and softirq. A cell whose other load exceeded "
        f"{opts.busy_limit:g} cores was measured again (at most {opts.reruns} times); "
        "*spread* is (max - min) / median over the rounds of req/s and of CPU µs/req, "
        "with the cells re-run and any kept although still busy.",
        f"- *Side by side*: after the rounds, each target's pair of servers (engine and "
        "floor, engine static and floor, engine static and gunicorn, engine and gunicorn) "
        f"is measured again in {opts.pair_blocks} block(s). A block starts both servers, "
        f"warms each up as a cell does, then alternates the load between them in runs of "
        f"{PAIR_RUN_S} s, A B B A, {PAIR_SWITCHES} times; each server's runs add up to one "
        "sample (requests over the runs' time, CPU over requests, the runs' median "
        "latencies), and the target is judged on the median over the blocks of A's over "
        "B's. Cells a minute apart in the rounds can differ by tens of per cent on this "
        "shared host with no load visible from inside, runs a second apart much less, and "
        "the A B B A order cancels a steady drift. The rounds' figures are given beside "
        "them."
        if opts.pair_blocks else "- *Side by side*: off (`--pair-blocks 0`): the targets "
        "are judged on the rounds' medians.",
        "- *Machine speed*: the machine's own speed moves between minutes (a shared host) "
        "with no other load visible from inside. Before and after each cell the bench "
        "times a fixed CPU task (SHA-256 of 32 MB, best of 3); a cell whose machine ran "
        f"it more than {SLOW_FACTOR - 1:.0%} slower than the run's median so far was "
        "measured again as well, and is flagged *slow* if it stayed so.",
        "- *xengine*: the row's median divided by the engine row's (the default dynamic "
        "pool). Higher is better for req/s, lower for p99 and CPU.",
        "- Servers and generator compete for the same CPUs, and the scheduler shares CPU "
        "time per process: a server running many processes (the dynamic pool, "
        "ForkingTCPServer) takes a larger share from the generator than one running 2. "
        "CPU µs/req compares efficiency; req/s is what the clients saw on this machine.",
        "",
        "Servers:",
        "",
    ]
    out += [f"- **{SERVERS[k].label}**: {SERVERS[k].description}" for k in servers]
    out += ["", "## Targets", ""]
    for t in targets:
        mark = "not measured" if t.met is None else ("met" if t.met else "**not met**")
        out.append(f"- {t.text}: {mark}. {t.evidence}.")
    ctx = context_lines(summaries)
    if ctx:
        out += ["", "For context (the issue expects about 10x and 4x on this kind of "
                "machine):", "", *ctx]
    out += ["", "## Load generator ceiling", ""]
    out += generator_lines(summaries, scenarios, opts)
    out += ["", "## Results", "", "![benchmark](benchmark.png)", ""]
    for scenario in scenarios:
        out += [f"### {scenario.title}", ""]
        out += scenario_table(scenario, summaries, servers)
        out.append("")
    if memory:
        out += ["## Memory per worker", ""]
        out += memory_lines(memory)
        out.append("")
    if instructions:
        out += ["## Instructions per connection", ""]
        out += instruction_lines(instructions)
        out.append("")
    if notes:
        out += ["## Notes", "", *notes, ""]
    text = "\n".join(out)
    path.write_text(text + ("\n" + kept if kept else ""))


def _plot_label(label: str) -> str:
    """A server's label on two short lines."""
    if label.endswith("TCPServer"):
        return label[: -len("TCPServer")] + "\nTCPServer"
    return label.replace(" ", "\n", 1)


def plot(
    path: Path, summaries: dict[tuple[str, str], Summary], scenarios: Sequence[Scenario],
    servers: Sequence[str], opts: Options,
) -> bool:
    """Bar charts of req/s and CPU µs/request per server and scenario (C reference left out).

    A bar far above the others (ForkingTCPServer's CPU) is clipped, its value written
    at the top, so that the rest stay readable.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("bench: matplotlib is not installed (pip install -e '.[load]'): no plot",
              file=sys.stderr)
        return False
    keys = [k for k in servers if k != "c-ref"]
    cmap = plt.get_cmap("tab10")
    colors = {key: cmap(index % 10) for index, key in enumerate(keys)}
    fig, axes = plt.subplots(
        len(scenarios), 2, figsize=(11.5, 3.6 * len(scenarios) + 0.8), squeeze=False
    )
    for line, scenario in enumerate(scenarios):
        rows = [(k, summaries[scenario.key, k]) for k in keys if (scenario.key, k) in summaries]
        labels = [_plot_label(SERVERS[k].label) for k, _ in rows]
        x = list(range(len(rows)))
        for col, (metric, lo, hi, ylabel) in enumerate((
            ("rps", "rps_min", "rps_max", "requests/s"),
            ("cpu_per_req_us", "cpu_min", "cpu_max", "server CPU µs per request"),
        )):
            ax = axes[line][col]
            values = [0.0 if math.isnan(v) else v for v in (getattr(s, metric) for _, s in rows)]
            if not values:
                continue
            errs = [
                [max(0.0, v - getattr(s, lo)) for v, (_, s) in zip(values, rows, strict=True)],
                [max(0.0, getattr(s, hi) - v) for v, (_, s) in zip(values, rows, strict=True)],
            ]
            bars = ax.bar(x, values, color=[colors[k] for k, _ in rows], yerr=errs,
                          capsize=3, error_kw={"elinewidth": 1})
            ax.set_xticks(x, labels, fontsize=8)
            ax.set_ylabel(ylabel, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
            ax.yaxis.set_major_formatter(
                matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}")
            )
            ax.set_title(f"{scenario.title}: {ylabel}", fontsize=10)
            others = sorted(values)[: max(1, len(values) - 1)]
            cap = 3.0 * max(others)
            top = max(
                (v + e for v, e in zip(values, errs[1], strict=True) if v <= cap),
                default=cap,
            )
            ax.set_ylim(0, top * 1.22)
            for bar, (_, s), v in zip(bars, rows, values, strict=True):
                text = f"{v:,.0f}"
                if metric == "rps" and s.served_min is not None and s.served_min < s.clients:
                    text += f"\n{s.served_min}/{s.clients} served"
                y = v
                if v > top:
                    text = f"{text} (clipped)"
                    y = top
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, y),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                            textcoords="offset points",
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                  "alpha": 0.8})
    fig.suptitle(
        f"{opts.clients} concurrent clients, {opts.workers} workers, loopback; medians of "
        f"{opts.rounds} round{'s' if opts.rounds != 1 else ''} of {opts.duration:g} s, "
        "whiskers: min-max over the rounds\n(the C reference server is in the tables only)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def print_tables(summaries: dict[tuple[str, str], Summary], scenarios: Sequence[Scenario],
                 servers: Sequence[str], targets: Sequence[Target]) -> None:
    """The results on stdout."""
    for scenario in scenarios:
        print(f"\n{scenario.title}")
        for line in scenario_table(scenario, summaries, servers):
            print(line)
    print()
    for t in targets:
        mark = "not measured" if t.met is None else ("MET" if t.met else "NOT MET")
        print(f"[{mark}] {t.text}: {t.evidence}")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> Options:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench", description=__doc__.splitlines()[0]
    )
    p.add_argument("--quick", action="store_true",
                   help="one short round (a smoke test); writes to a temporary directory")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 4; quick 1)")
    p.add_argument("--duration", type=float, help="measured seconds per cell (default 3)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per cell (default 1)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=2.0, help="request timeout, seconds")
    p.add_argument("--max-requests", type=int, default=5_000_000,
                   help="bound on the replies counted per cell (loadgen)")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--servers", help=f"comma-separated subset of: {', '.join(SERVERS)} "
                   f"(default all; quick: {','.join(QUICK_SERVERS)})")
    p.add_argument("--scenarios", help=f"comma-separated subset of: {', '.join(SCENARIOS)} "
                   f"(default all; quick: {','.join(QUICK_SCENARIOS)})")
    p.add_argument("--out", type=Path, help="where to write benchmarks.md and benchmark.png "
                   "(default docs/; with --quick a temporary directory)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--busy-limit", type=float, default=BUSY_OTHER_CORES,
                   help="other load (cores) above which a cell is measured again "
                   f"(default {BUSY_OTHER_CORES})")
    p.add_argument("--reruns", type=int, default=RERUNS,
                   help=f"re-runs of a cell measured on a busy machine (default {RERUNS})")
    p.add_argument("--pair-blocks", type=int,
                   help=f"blocks per target pair after the rounds (default {PAIR_BLOCKS}; "
                   "quick 0; 0 judges the targets on the rounds alone)")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the memory per worker (loadtests/worker_memory.py)")
    p.add_argument("--no-instructions", action="store_true",
                   help="skip the instructions per connection (conn_overhead --instructions, "
                   "valgrind; about two minutes)")
    a = p.parse_args(argv)
    quick = bool(a.quick)
    servers_arg = a.servers or ",".join(QUICK_SERVERS if quick else SERVERS)
    scenarios_arg = a.scenarios or ",".join(QUICK_SCENARIOS if quick else SCENARIOS)
    servers = [s for s in servers_arg.split(",") if s]
    scenarios = [s for s in scenarios_arg.split(",") if s]
    for name in servers:
        if name not in SERVERS:
            p.error(f"unknown server {name!r}")
    for name in scenarios:
        if name not in SCENARIOS:
            p.error(f"unknown scenario {name!r}")
    out = a.out or (Path(tempfile.mkdtemp(prefix="engine-bench-")) if quick else REPO / "docs")
    return Options(
        rounds=a.rounds or (1 if quick else 4),
        duration=a.duration or (0.5 if quick else 3.0),
        warmup=a.warmup if a.warmup is not None else (0.3 if quick else 1.0),
        clients=a.clients, workers=a.workers, timeout=a.timeout,
        max_requests=a.max_requests, wrk_threads=a.wrk_threads,
        servers=servers, scenarios=scenarios, out=out, quick=quick, plot=not a.no_plot,
        busy_limit=a.busy_limit, reruns=max(0, a.reruns), memory=not a.no_memory,
        instructions=not (a.no_instructions or quick),
        pair_blocks=max(0, a.pair_blocks if a.pair_blocks is not None
                        else (0 if quick else PAIR_BLOCKS)),
    )


def print_cell(s: Sample) -> None:
    """One line of progress: a cell's figures."""
    served = "" if s.served is None else f" served {s.served}/{s.clients}"
    print(
        f"{where(s)} {s.scenario:15} {s.server:14} {s.rps:10,.0f} req/s "
        f"p99 {fmt_ms(s.p99_us):>6} ms  cpu {s.cpu_per_req_us:8.1f} µs/req "
        f"errors {s.errors}{served} procs {s.procs} other {s.other_cores:.2f} cores"
        + (f" (BUSY after {s.attempts} attempts)" if s.busy else "")
        + ("" if s.ok else f"  FAILED: {s.note}"),
        flush=True,
    )


def find_wrk() -> str | None:
    """wrk's path; when it is missing, loadtests/system_packages.sh installs it first
    (as root, with apt-get; otherwise it says what to install and nothing changes)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        print(f"bench: wrk not found; running {SYSTEM_PACKAGES.relative_to(REPO)}",
              file=sys.stderr)
        subprocess.run(["bash", str(SYSTEM_PACKAGES)], stdin=subprocess.DEVNULL,
                       timeout=900, check=False)
        wrk = shutil.which("wrk")
    return wrk


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    opts = parse_args(argv)
    command = "python -m loadtests.bench " + " ".join(
        sys.argv[1:] if argv is None else list(argv)
    )
    notes: list[str] = []
    scenarios = [SCENARIOS[k] for k in opts.scenarios]
    wrk = None
    if any(s.proto == "http" for s in scenarios):
        wrk = find_wrk()
        if wrk is None:
            tcp = ",".join(k for k, s in SCENARIOS.items() if s.proto != "http")
            print("bench: the HTTP scenarios need wrk, and it is not installed; run "
                  f"`bash {SYSTEM_PACKAGES.relative_to(REPO)}` as root (it installs it), "
                  f"or leave them out: --scenarios {tcp}", file=sys.stderr)
            return 1
    loadgen = build_loadgen()
    if "gunicorn" in opts.servers and not have_gunicorn():
        message = "gunicorn is not installed (pip install -e '.[load]'): its rows are skipped"
        print(f"bench: {message}", file=sys.stderr)
        notes.append(f"- {message}.")
        opts.servers.remove("gunicorn")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    env = environment()  # the engine's commit as the run starts
    previous = signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="engine-bench-logs-"))
    bench = Bench(opts, loadgen, wrk, work)
    started = time.monotonic()
    try:
        for rnd in range(1, opts.rounds + 1):
            for scenario in scenarios:
                for key in round_order(list(SERVERS), rnd):
                    if key not in opts.servers or scenario.proto not in SERVERS[key].protos:
                        continue
                    print_cell(bench.run_cell(scenario, key, rnd))
        bench.measure_pairs()
    except KeyboardInterrupt:
        print("bench: interrupted; no results written", file=sys.stderr)
        return 130
    finally:
        kill_everything()
        signal.signal(signal.SIGTERM, previous)
    memory: list[Any] = []
    if opts.memory:
        memory = measure_memory(opts, work)
    instructions = measure_instructions(opts)
    elapsed = time.monotonic() - started

    summaries = summarize(bench.samples)
    targets = evaluate_targets(summaries, opts.clients, memory, bench.paired)
    servers = [k for k in SERVERS if k in opts.servers]
    print_tables(summaries, scenarios, servers, targets)
    if memory:
        print("\nMemory per worker\n" + "\n".join(memory_lines(memory)[2:]))
    if instructions:
        print("\nInstructions per connection\n" + "\n".join(instruction_lines(instructions)[2:]))
    failed = [s for s in [*bench.samples, *bench.paired] if not s.ok]
    for s in failed:
        notes.append(f"- {where(s)}, {s.server}, {s.scenario}: failed: {s.note}")
    notes += busy_notes([*bench.samples, *bench.paired], bench.discarded, opts)
    opts.out.mkdir(parents=True, exist_ok=True)
    raw_dir = HERE / "results"
    raw_dir.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    raw = raw_dir / f"bench-{stamp}.json"
    commit_now = environment()["commit"]
    if commit_now != env["commit"]:  # others commit to this tree while the bench runs
        env["commit"] += f" (then {commit_now}, before the run ended)"
        notes.append(f"- The engine changed during the run: {env['commit']}.")
    raw.write_text(json.dumps({
        "options": {k: str(v) for k, v in asdict(opts).items()},
        "environment": env,
        "samples": [dict(asdict(s), other_cores=s.other_cores) for s in bench.samples],
        "paired": [dict(asdict(s), other_cores=s.other_cores) for s in bench.paired],
        "discarded_busy": [dict(asdict(s), other_cores=s.other_cores)
                           for s in bench.discarded],
        "memory": [asdict(m) for m in memory],
        "instructions": instructions,
    }, indent=1))
    write_markdown(opts.out / "benchmarks.md", opts, summaries, scenarios, targets,
                   env, notes, command.strip(), memory, instructions)
    plotted = opts.plot and plot(opts.out / "benchmark.png", summaries, scenarios, servers, opts)
    print(f"\nwrote {opts.out / 'benchmarks.md'}"
          + (f" and {opts.out / 'benchmark.png'}" if plotted else "")
          + f"; raw samples in {raw}; server logs in {work}; {elapsed:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
