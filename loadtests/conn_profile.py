"""Where one HTTP connection's time goes in a worker: its syscalls and its Python time.

    python -m loadtests.conn_profile [--requests 2000] [--seconds 4]
        [--servers engine-static,floor,gunicorn] [--no-strace] [--no-py-spy]

Every server runs ONE worker (engine ``pool_mode=static``, the floor, ``gunicorn -w 1``)
serving the benchmark's HTTP handler (``loadtests.bench_servers``: ``HelloHandler``,
for gunicorn the equivalent WSGI app), one connection per request
(``Connection: close``).

* Syscalls: ``strace -c -f`` attached to the worker while this process makes exactly
  *requests* requests, one after the other, so that the counts divide into calls per
  connection exactly (a few wake-ups of an idle timer aside).
* Python time: ``py-spy record --gil`` samples the worker (``--nonblocking``; only
  samples holding the GIL, so time in blocking or slow syscalls, which release it, is
  left out: the worker's user and system CPU per connection are printed beside it)
  while ``loadgen -P`` (the benchmark's generator, 8 clients) keeps it busy for
  *seconds*; each sample is charged to the layer of its innermost Python frame:
  the engine's own code (``engine/``, ``workers/``), the stdlib's server classes
  (``socketserver``), ``http.server``'s parsing and response, the header parser
  (``email``, ``http.client``), the socket and io layers, or the handler itself.

Root is needed for ptrace (strace, py-spy); both tools must be installed
(``apt-get install strace``, ``pip install py-spy``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from loadtests import worker_memory
from tests.kit import kill_group
from tests.kit.processes import read_first_line

SERVERS = ("engine-static", "floor", "gunicorn")
# Which layer a frame's file belongs to (the first pattern that matches wins).
REPO = Path(__file__).resolve().parent.parent
LAYERS: tuple[tuple[str, str], ...] = (
    ("engine", "^" + re.escape(str(REPO)) + r"/(engine|workers)/"),
    ("handler (bench_servers)", r"bench_servers\.py"),
    ("gunicorn", r"/gunicorn/"),
    ("socketserver", r"socketserver\.py"),
    ("http.server", r"http/server\.py"),
    ("header parsing (email, http.client)", r"/email/|http/client\.py"),
    ("socket and io", r"/socket\.py|/_?pyio\.py|/selectors\.py"),
    ("floor loop", r"loadtests/floor\.py"),
)
# "function (path:line)" in py-spy's raw output.
FRAME = re.compile(r"^(?P<func>.*) \((?P<path>.*?)(?::\d+)?\)$")


def layer_of(path: str) -> str:
    """The layer a source file belongs to."""
    for name, pattern in LAYERS:
        if re.search(pattern, path):
            return name
    return "other stdlib"


def parse_strace_summary(text: str) -> dict[str, int]:
    """Calls per syscall from the table ``strace -c`` writes."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(fields) >= 5 and fields[0].replace(".", "", 1).isdigit():
            name = fields[-1]
            if name == "total":
                continue
            with contextlib.suppress(ValueError):
                calls[name] = int(fields[3])
    return calls


def parse_py_spy_raw(
    text: str,
) -> tuple[collections.Counter[str], collections.Counter[str], set[str]]:
    """Samples per layer (innermost Python frame) and per leaf function, from raw output,
    and which leaves are the engine's.

    Each raw line is ``frame;frame;...;frame COUNT``, outermost first.
    """
    engine: set[str] = set()
    layers: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        leaf = stack.split(";")[-1]
        match = FRAME.match(leaf)
        path = match.group("path") if match else leaf
        func = match.group("func") if match else leaf
        layer = layer_of(path)
        name = f"{func} ({path.rsplit('/', 1)[-1]})"
        layers[layer] += count
        leaves[name] += count
        if layer == "engine":
            engine.add(name)
    return layers, leaves, engine


@contextlib.contextmanager
def one_worker(server: str, log: Path) -> Iterator[tuple[int, int]]:
    """Run *server* with one worker; yield (worker pid, port)."""
    with worker_memory.running(server, "http", 1, log) as (root, port):
        pids = worker_memory.worker_pids(root)
        if server == "engine-static":
            pids = [p for p in pids if "worker" in " ".join(psutil.Process(p).cmdline())]
        if len(pids) != 1:
            raise RuntimeError(f"{server}: expected one worker, found {pids}")
        yield pids[0], port


def strace_counts(server: str, requests: int, log: Path) -> dict[str, int]:
    """Syscalls of the worker over exactly *requests* connections."""
    with one_worker(server, log) as (pid, port), tempfile.TemporaryDirectory() as tmp:
        for _ in range(50):  # warm-up, untraced
            worker_memory.one_request(port, "http")
        out = Path(tmp) / "strace.txt"
        tracer = subprocess.Popen(
            ["strace", "-c", "-f", "-o", str(out), "-p", str(pid)],
            stderr=subprocess.PIPE, start_new_session=True,
        )
        try:
            assert tracer.stderr is not None
            first = read_first_line(tracer.stderr.fileno(), 10.0)
            if b"attached" not in first:
                raise RuntimeError(f"strace did not attach: {first!r}")
            for _ in range(requests):
                worker_memory.one_request(port, "http")
        finally:
            with contextlib.suppress(ProcessLookupError):
                tracer.send_signal(signal.SIGINT)  # detach and write the summary
            tracer.wait(10.0)
        return parse_strace_summary(out.read_text())


@dataclass
class Profile:
    """One worker's Python profile and CPU over a window of load."""

    layers: collections.Counter[str]
    leaves: collections.Counter[str]
    engine_leaves: set[str]
    connections: int  # connections the generator completed in the window
    user_s: float
    system_s: float


def py_spy_profile(server: str, seconds: float, loadgen: Path, log: Path) -> Profile:
    """py-spy samples (GIL held) of the worker, and its CPU, over loadgen's window."""
    with one_worker(server, log) as (pid, port), tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.txt"
        whole = max(1, round(seconds))
        gen = subprocess.Popen(
            [str(loadgen), "-P", "-p", str(port), "-c", "8", "-m", "close",
             "-w", "0.5", "-d", str(whole), "-T", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        worker = psutil.Process(pid)
        try:
            assert gen.stdout is not None
            if read_first_line(gen.stdout.fileno(), 10.0) != b"start":
                raise RuntimeError("loadgen did not start")
            before = worker.cpu_times()
            spy = subprocess.Popen(
                ["py-spy", "record", "-p", str(pid), "-d", str(whole), "-r", "1000",
                 "-f", "raw", "--nonblocking", "--gil", "--full-filenames", "-o", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            result = read_first_line(gen.stdout.fileno(), whole + 10.0)
            after = worker.cpu_times()
            spy.wait(whole + 30.0)
        finally:
            kill_group(gen.pid, gen, grace=1.0)
        layers, leaves, own = parse_py_spy_raw(out.read_text())
        return Profile(layers, leaves, own, int(json.loads(result)["replies"]),
                       after.user - before.user, after.system - before.system)


def main(argv: Sequence[str] | None = None) -> int:
    """Profile the servers asked for and print what was found."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--no-strace", action="store_true")
    parser.add_argument("--no-py-spy", action="store_true")
    args = parser.parse_args(argv)
    servers = [s for s in args.servers.split(",") if s]
    unknown = [s for s in servers if s not in worker_memory.SERVERS]
    if unknown:
        parser.error(f"--servers: unknown {', '.join(unknown)}")
    if "gunicorn" in servers and not worker_memory.have_gunicorn():
        servers.remove("gunicorn")
    log = Path(tempfile.mkdtemp(prefix="engine-conn-profile-")) / "servers.log"
    if not args.no_strace:
        if shutil.which("strace") is None:
            parser.error("strace is not installed")
        counts = {s: strace_counts(s, args.requests, log) for s in servers}
        names = sorted({n for c in counts.values() for n in c},
                       key=lambda n: -max(c.get(n, 0) for c in counts.values()))
        print(f"syscalls per connection ({args.requests} connections, strace -c -f "
              "on the one worker)\n")
        print("| syscall | " + " | ".join(servers) + " |")
        print("|---|" + "--:|" * len(servers))
        for name in names:
            cells = " | ".join(f"{counts[s].get(name, 0) / args.requests:.2f}" for s in servers)
            print(f"| {name} | {cells} |")
        totals = " | ".join(
            f"**{sum(counts[s].values()) / args.requests:.2f}**" for s in servers
        )
        print(f"| total | {totals} |\n")
    if not args.no_py_spy:
        if shutil.which("py-spy") is None:
            parser.error("py-spy is not installed (pip install py-spy)")
        from loadtests.bench import build_loadgen

        loadgen = build_loadgen()
        for server in servers:
            prof = py_spy_profile(server, args.seconds, loadgen, log)
            conns = max(prof.connections, 1)
            total = sum(prof.layers.values()) or 1
            print(f"{server}: {prof.connections} connections; worker CPU per connection "
                  f"{prof.user_s / conns * 1e6:.1f} µs user + "
                  f"{prof.system_s / conns * 1e6:.1f} µs system; {total} py-spy samples "
                  "holding the GIL, by the layer of the innermost Python frame:")
            for name, count in prof.layers.most_common():
                print(f"  {count / total:6.1%}  {name}")
            print("  top functions (self):")
            for name, count in prof.leaves.most_common(14):
                print(f"  {count / total:6.1%}  {name}")
            own = [(n, c) for n, c in prof.leaves.most_common() if n in prof.engine_leaves]
            if own:
                print("  the engine's own functions (self):")
                for name, count in own:
                    print(f"  {count / total:6.1%}  {name}")
            print()
    print(f"server logs: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
