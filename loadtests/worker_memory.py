"""What one worker process costs in memory: the engine against a forked child and the floor.

    python -m loadtests.worker_memory [--proto http|line] [--requests 200]
        [--servers engine,engine-static,forking,floor,gunicorn,engine-gevent] [--maps]
        [--json]

Every server is the benchmark's (``loadtests.bench_servers``: same handler, 2 workers)
and gets the same small load: *requests* connections of one request each, one at a
time, then one keep-alive connection that makes one request and stays open (so that
ForkingTCPServer has a child to measure: it only has one while a client is connected).
``engine-gevent`` (not in the default list) is the engine's static pool with
``worker_class = "gevent"``; ``engine-ksm`` its static pool with ``ksm = true``, measured
when the kernel's KSM daemon is on (``/sys/kernel/mm/ksm/run`` is 1), once it has
scanned everything 4 times after the load.
Once the processes' memory stops changing, each worker's USS (pages no other process
maps) and PSS (every page divided by the number of processes mapping it) are read with
psutil. The workers are the server's descendants: the engine's and the floor's workers,
ForkingTCPServer's one child, gunicorn's workers.

``--maps`` adds, per server, which mappings the private pages of one worker are in
(from ``/proc/PID/smaps``): *anon* is mostly pymalloc's arenas (the Python objects),
*heap* is malloc's brk heap (large objects, code objects, buffers), *libpython* is the
interpreter's own writable data (static objects such as ``None``, the runtime state),
*stack* the main thread's stack.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from engine import ksm
from tests.kit import kill_group

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SERVERS = ("engine", "engine-static", "engine-ksm", "forking", "floor", "gunicorn",
           "engine-gevent")
DEFAULT_SERVERS = SERVERS[:6]  # engine-gevent on request: its worker is another kind
LABELS = {
    "engine": "engine (default pool)",
    "engine-static": "engine static",
    "engine-ksm": "engine static, ksm = true",
    "forking": "ForkingTCPServer child",
    "floor": "floor",
    "gunicorn": "gunicorn sync",
    "engine-gevent": "engine gevent (static)",
}
REFERENCE = "forking"  # the target: a worker costs what a forked child costs
LINE = b"x" * 64 + b"\n"
HTTP_CLOSE = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
HTTP_KEEP = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
BODY_END = b"Hello, world!\n"
# The memory is "settled" once two readings this far apart agree to the page.
SETTLE_STEP = 0.2
SETTLE_LIMIT = 5.0
KSM_FULL_SCANS = Path("/sys/kernel/mm/ksm/full_scans")
KSM_SCANS = 4  # full scans of the KSM daemon to wait for after the load (engine-ksm)
KSM_LIMIT = 120.0  # seconds for them
KIB = 1024


@dataclass
class ProcessMemory:
    """One process's memory, in KiB."""

    pid: int
    uss: int
    pss: int
    rss: int
    maps: dict[str, int] = field(default_factory=dict)  # private KiB per mapping kind


@dataclass
class ServerMemory:
    """A server's workers (and its parent) after the load."""

    server: str
    proto: str
    requests: int
    workers: list[ProcessMemory]
    parent: ProcessMemory | None = None
    note: str = ""

    @property
    def uss_kib(self) -> float:
        """Mean USS per worker."""
        return statistics.mean(w.uss for w in self.workers) if self.workers else float("nan")

    @property
    def pss_kib(self) -> float:
        """Mean PSS per worker."""
        return statistics.mean(w.pss for w in self.workers) if self.workers else float("nan")


def map_kind(path: str) -> str:
    """The kind of a mapping, from the path column of smaps."""
    if not path:
        return "anon"
    if path in ("[heap]", "[stack]"):
        return path.strip("[]")
    name = path.rsplit("/", 1)[-1]
    if name.startswith("libpython"):
        return "libpython"
    if path.startswith("["):
        return "other"
    if ".so" in name or name.startswith("python"):
        return "other libraries"
    return "files and shared memory"  # the scoreboard's mmap, sockets, /dev/zero


def private_by_kind(smaps: str) -> dict[str, int]:
    """Private (clean + dirty) KiB per mapping kind, from the text of /proc/PID/smaps."""
    out: dict[str, int] = {}
    kind = "anon"
    for line in smaps.splitlines():
        head, _, rest = line.partition(" ")
        if not head.endswith(":"):  # a mapping's header: "start-end perms off dev inode path"
            fields = line.split(None, 5)
            kind = map_kind(fields[5].strip() if len(fields) > 5 else "")
        elif head in ("Private_Clean:", "Private_Dirty:"):
            out[kind] = out.get(kind, 0) + int(rest.split()[0])
    return out


def read_process(pid: int, maps: bool = False) -> ProcessMemory:
    """USS, PSS and RSS of *pid* (and its private KiB per mapping kind if *maps*)."""
    info = psutil.Process(pid).memory_full_info()
    by_kind: dict[str, int] = {}
    if maps:
        with contextlib.suppress(OSError):
            by_kind = private_by_kind(Path(f"/proc/{pid}/smaps").read_text())
    return ProcessMemory(pid, info.uss // KIB, info.pss // KIB, info.rss // KIB, by_kind)


def server_argv(server: str, proto: str, port: int, workers: int) -> list[str]:
    """The benchmark's command line for *server*."""
    if server == "gunicorn":
        return [
            sys.executable, "-m", "gunicorn", "-k", "sync", "-w", str(workers),
            "-b", f"{HOST}:{port}", "--log-level", "warning",
            "loadtests.bench_servers:wsgi_app",
        ]
    argv = [sys.executable, "-m", "loadtests.bench_servers"]
    if server == "engine-gevent":
        argv += ["engine", "--pool-mode", "static", "--worker-class", "gevent"]
    elif server == "engine-ksm":
        argv += ["engine", "--pool-mode", "static", "--ksm"]
    elif server.startswith("engine"):
        argv += ["engine", "--pool-mode", "static" if server == "engine-static" else "dynamic"]
    else:
        argv.append(server)
    return [*argv, "--port", str(port), "--proto", proto, "--workers", str(workers)]


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def one_request(port: int, proto: str, sock: socket.socket | None = None) -> socket.socket:
    """One request and its whole reply; closes the connection unless *sock* is given.

    With *sock* (an open connection), the request is a keep-alive one and the
    connection stays open.
    """
    keep = sock is not None
    conn = sock if sock is not None else socket.create_connection((HOST, port), timeout=5.0)
    try:
        if proto == "line":
            conn.sendall(LINE)
            if not keep:
                conn.shutdown(socket.SHUT_WR)
            want = LINE
        else:
            conn.sendall(HTTP_KEEP if keep else HTTP_CLOSE)
            want = BODY_END
        reply = b""
        while not reply.endswith(want):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
        if not reply.endswith(want):
            raise RuntimeError(f"short reply: {reply[-80:]!r}")
    finally:
        if not keep:
            conn.close()
    return conn


@contextlib.contextmanager
def running(server: str, proto: str, workers: int, log: Path) -> Iterator[tuple[int, int]]:
    """Start *server*, wait until it answers; yield (pid, port); stop its process group."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    ))
    with log.open("ab") as log_file:
        proc = subprocess.Popen(
            server_argv(server, proto, port, workers), cwd=REPO, env=env,
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20.0
        while True:
            try:
                one_request(port, proto)
                break
            except (OSError, RuntimeError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{server} did not start (see {log})") from None
                time.sleep(0.05)
        yield proc.pid, port
    finally:
        kill_group(proc.pid, proc)


def worker_pids(root: int) -> list[int]:
    """The live descendants of *root* (the workers; gunicorn's arbiter is *root*)."""
    pids = []
    for child in psutil.Process(root).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.append(child.pid)
    return sorted(pids)


def settled(root: int) -> list[int]:
    """Wait (bounded) until the workers and their USS stop changing; return their pids."""
    deadline = time.monotonic() + SETTLE_LIMIT
    last: dict[int, int] = {}
    while True:
        now: dict[int, int] = {}
        for pid in worker_pids(root):
            with contextlib.suppress(psutil.Error):
                now[pid] = psutil.Process(pid).memory_full_info().uss
        if (now and now == last) or time.monotonic() > deadline:
            return sorted(now)
        last = now
        time.sleep(SETTLE_STEP)  # a reading interval, not a synchronisation


def ksm_scans() -> int:
    """How many full scans the kernel's KSM daemon has made (-1: no KSM here)."""
    try:
        return int(KSM_FULL_SCANS.read_text())
    except (OSError, ValueError):
        return -1


def ksm_merged(scans_before: int) -> None:
    """Wait (bounded) until the KSM daemon has scanned all memory KSM_SCANS times since
    *scans_before*: a page is merged at the earliest on the second scan that finds it
    unchanged, and the first scans after a load are short (measured: the workers' USS
    stopped falling after 3 or 4)."""
    deadline = time.monotonic() + KSM_LIMIT
    while ksm_scans() < scans_before + KSM_SCANS:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the KSM daemon made no {KSM_SCANS} full scans in {KSM_LIMIT:.0f} s"
            )
        time.sleep(SETTLE_STEP)  # a kernel counter: nothing to wait on


def measure(
    server: str, proto: str = "http", requests: int = 200, workers: int = 2,
    maps: bool = False, log: Path | None = None,
) -> ServerMemory:
    """Load *server* with *requests* one-request connections, then read its workers.

    ``engine-ksm`` needs the kernel's KSM daemon on (RuntimeError otherwise): its
    workers are read once the daemon has had time to merge their pages.
    """
    if server == "engine-ksm" and ksm.daemon_state() != "1":
        raise RuntimeError(
            f"the kernel's KSM daemon is off ({ksm.KSM_RUN} is "
            f"{ksm.daemon_state() or 'missing'}; as root: echo 1 > {ksm.KSM_RUN})"
        )
    log = log or Path(os.devnull)
    with running(server, proto, workers, log) as (root, port):
        for _ in range(requests):
            one_request(port, proto)
        with socket.create_connection((HOST, port), timeout=5.0) as held:
            one_request(port, proto, held)
            if server == "engine-ksm":
                ksm_merged(ksm_scans())
            pids = settled(root)
            found = []
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    found.append(read_process(pid, maps))
            parent = read_process(root, maps)
    return ServerMemory(server, proto, requests, found, parent)


def ratio(value: float, reference: float) -> float:
    """value / reference, NaN when there is no reference."""
    return value / reference if reference else float("nan")


def table(results: Sequence[ServerMemory]) -> list[str]:
    """A markdown table: USS and PSS per worker, and the USS ratio to a forked child."""
    ref = next((r.uss_kib for r in results if r.server == REFERENCE), float("nan"))
    lines = [
        "| server | workers measured | USS per worker (MiB) | x forked child | "
        "PSS per worker (MiB) | parent USS / PSS (MiB) |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        parent = (
            f"{r.parent.uss / KIB:.2f} / {r.parent.pss / KIB:.2f}" if r.parent else "-"
        )
        lines.append(
            f"| {LABELS.get(r.server, r.server)} | {len(r.workers)} | {r.uss_kib / KIB:.2f} | "
            f"{ratio(r.uss_kib, ref):.2f}x | {r.pss_kib / KIB:.2f} | {parent} |"
        )
    return lines


def maps_table(results: Sequence[ServerMemory]) -> list[str]:
    """Private KiB per mapping kind of each server's first worker."""
    kinds: list[str] = []
    for r in results:
        for w in r.workers[:1]:
            kinds += [k for k in w.maps if k not in kinds]
    order = ["anon", "heap", "libpython", "stack", "other libraries"]
    kinds = [k for k in order if k in kinds] + sorted(k for k in kinds if k not in order)
    lines = [
        "| server | " + " | ".join(kinds) + " | total |",
        "|---|" + "--:|" * (len(kinds) + 1),
    ]
    for r in results:
        if not r.workers:
            continue
        m = r.workers[0].maps
        cells = " | ".join(str(m.get(k, 0)) for k in kinds)
        lines.append(f"| {LABELS.get(r.server, r.server)} | {cells} | {sum(m.values())} |")
    return lines


def have_gunicorn() -> bool:
    """Whether gunicorn can be run with this interpreter."""
    import importlib.util

    return importlib.util.find_spec("gunicorn") is not None


def servers_arg(parser: argparse.ArgumentParser, value: str, known: Sequence[str]) -> list[str]:
    """The servers a ``--servers a,b`` option names; a parser error for an unknown one."""
    servers = [s for s in value.split(",") if s]
    unknown = [s for s in servers if s not in known]
    if unknown:
        parser.error(f"--servers: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    return servers


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the servers asked for and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto", choices=("http", "line"), default="http")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS))
    parser.add_argument("--maps", action="store_true", help="private KiB per mapping kind")
    parser.add_argument("--json", action="store_true", help="raw figures as JSON")
    args = parser.parse_args(argv)
    servers = servers_arg(parser, args.servers, SERVERS)
    if args.proto == "line" and "gunicorn" in servers:
        servers.remove("gunicorn")  # a WSGI server: HTTP only
    if "gunicorn" in servers and not have_gunicorn():
        servers.remove("gunicorn")
    if "engine-ksm" in servers and ksm.daemon_state() != "1":
        servers.remove("engine-ksm")
        print(f"engine-ksm left out: the kernel's KSM daemon is off ({ksm.KSM_RUN})",
              file=sys.stderr)
    results = [
        measure(s, args.proto, args.requests, args.workers, args.maps) for s in servers
    ]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))
        return 0
    print(f"{args.proto}: {args.requests} connections of one request each, then one "
          f"keep-alive connection held open; {args.workers} workers")
    print("\n".join(table(results)))
    if args.maps:
        print("\nPrivate KiB of one worker, per mapping kind:\n")
        print("\n".join(maps_table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
