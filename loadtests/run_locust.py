"""Load-test the engine demo service with locust, in one command, and check the result.

::

    python -m loadtests.run_locust [--users 32] [--spawn-rate 32] [--run-time 20s]
        [--p99-ms 500] [--out loadtests/results/locust] [--engine-arg=--workers=4 ...]

1. starts ``python -m engine --bind 127.0.0.1:0 --log-level warning`` (the demo
   service, plus any ``--engine-arg``) in its own session and waits for its
   ``READY`` line;
2. runs locust headless on :mod:`loadtests.locustfile` for ``--run-time`` (killed if
   it overruns), writing ``locust_stats.csv`` and friends and ``locust.html`` under
   ``--out``;
3. stops the engine with SIGTERM (SIGKILL to its process group if it does not stop)
   and checks that none of its processes is left;
4. prints one summary line (requests, failures, p50 and p99 per task and aggregated).

Exits 0 only if requests were made, none failed, the aggregated p99 is at most
``--p99-ms``, locust exited 0 and the engine exited 0 with nothing left behind; 1
otherwise; 130 when interrupted (Ctrl-C or SIGTERM). Processes are cleaned up in every
case. See ``docs/loadtests.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.kit.engines import READY, ROOT, EngineError, EngineProcess
from tests.kit.processes import GONE_TIMEOUT, become_subreaper, kill_group
from tests.kit.waiting import DeadlineExceeded

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
DEFAULT_OUT = ROOT / "loadtests" / "results" / "locust"  # git-ignored
TASKS = ("short", "keepalive", "slow")
AGGREGATED = "Aggregated"
REPORT_PREFIX = "locust"

READY_TIMEOUT = 30.0  # seconds for the engine to print READY
STOP_TIMEOUT = 5  # locust --stop-timeout: seconds users get to finish their task
LOCUST_MARGIN = 45.0  # seconds locust may take beyond --run-time (start-up, reports)
ENGINE_STOP_TIMEOUT = 40.0  # > the engine's default graceful_timeout (30 s)
EXIT_INTERRUPTED = 130


class Interrupted(Exception):
    """SIGTERM (or Ctrl-C) asked this runner to stop."""


@dataclass(frozen=True)
class Row:
    """One line of locust's ``_stats.csv``: a task name, or the aggregate."""

    name: str
    requests: int
    failures: int
    p50: float | None
    p99: float | None

    def describe(self) -> str:
        """``short 123 req 0 fail p50 1 ms p99 9 ms``."""
        return (
            f"{self.name} {self.requests} req {self.failures} fail "
            f"p50 {_ms(self.p50)} p99 {_ms(self.p99)}"
        )


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g} ms"


# --- arguments ---


def parse_timespan(text: str) -> float:
    """Locust's run-time syntax (``20``, ``20s``, ``3m``, ``1h30m``) in seconds.

    Raises:
        ValueError: the text is not such a timespan.
    """
    text = text.strip().lower()
    if re.fullmatch(r"\d+", text):
        return float(text)
    parts = re.fullmatch(r"(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?", text)
    if not text or parts is None:
        raise ValueError(f"{text!r} is not a time span like 20s, 3m or 1h30m")
    hours, minutes, seconds = (int(group or 0) for group in parts.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


def _timespan(text: str) -> str:
    try:
        if parse_timespan(text) <= 0:
            raise ValueError("must be positive")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.run_locust",
        description="Start the engine demo service, load it with locust (short, keep-alive "
        "and slow TCP clients), stop it, and check failures and latency.",
    )
    parser.add_argument("--users", type=_positive_int, default=32, metavar="N",
                        help="concurrent locust users [default: 32]")
    parser.add_argument("--spawn-rate", type=float, default=32.0, metavar="R",
                        help="users started per second [default: 32]")
    parser.add_argument("--run-time", type=_timespan, default="20s", metavar="T",
                        help="how long to load, locust syntax: 20s, 2m [default: 20s]")
    parser.add_argument("--p99-ms", type=float, default=500.0, metavar="MS",
                        help="fail if the aggregated 99th percentile exceeds this "
                        "[default: 500]")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help="directory of the CSV and HTML reports "
                        "[default: loadtests/results/locust in the repository]")
    parser.add_argument("--engine-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for `python -m engine`, repeatable; write "
                        "it with = when it starts with a dash: --engine-arg=--workers=8")
    return parser


# --- processes ---


def start_engine(extra_args: Sequence[str], log_path: Path) -> EngineProcess:
    """``python -m engine --bind 127.0.0.1:0 --log-level warning EXTRA...`` (the demo
    service) in its own session; not waited for yet (see :meth:`EngineProcess.wait_ready`).
    ``ENGINE_*`` variables of this environment are passed on, like ``--engine-arg``."""
    command = [
        sys.executable, "-m", "engine", "--bind", "127.0.0.1:0", "--log-level", "warning",
        *extra_args,
    ]
    return EngineProcess(
        command, log_path=log_path, env=READY, inherit_engine_env=True, name="the engine"
    )


def stop_engine(engine: EngineProcess) -> tuple[int | None, bool]:
    """SIGTERM the master, wait, then kill the whole group if need be.

    Returns the master's exit status (``None`` if it had to be killed) and whether
    every process of the engine went away by itself.
    """
    status = engine.proc.poll()
    if status is None:
        try:
            status = engine.stop(ENGINE_STOP_TIMEOUT)
        except (subprocess.TimeoutExpired, DeadlineExceeded, ProcessLookupError):
            status = None
    # Workers that outlive a master that exited are reported even though killed.
    gone = engine.wait_gone(GONE_TIMEOUT) if status is not None else True
    left = engine.close(grace=0.0)
    return status, gone and not left


def locust_command(args: argparse.Namespace, host: str, prefix: Path) -> list[str]:
    """The headless locust command line."""
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", host, "-u", str(args.users), "-r", f"{args.spawn_rate:g}",
        "--run-time", args.run_time, "--csv", str(prefix), "--html", f"{prefix}.html",
        "--only-summary", "--stop-timeout", str(STOP_TIMEOUT),
    ]


def run_locust(command: Sequence[str], timeout: float) -> int | None:
    """Run locust in its own session; return its exit status, or ``None`` if it had to
    be killed after *timeout* seconds."""
    proc: subprocess.Popen[bytes] | None = None
    try:
        with shielded():  # a signal here is raised once proc is known to the finally
            started = proc = subprocess.Popen(
                list(command), stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True,
            )
            print(f"LOCUST_PID {started.pid}", flush=True)
        return started.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"run_locust: locust overran its {timeout:g}s; stopping it", file=sys.stderr)
        return None
    finally:
        # Overrun or interrupted: SIGTERM first, so locust still writes its reports.
        with shielded():
            if proc is not None:
                kill_group(proc.pid, proc, grace=STOP_TIMEOUT)


# --- results ---


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "N/A") else None
    except ValueError:
        return None


def read_stats(path: Path) -> dict[str, Row]:
    """The rows of locust's ``_stats.csv`` by name (tasks and ``Aggregated``)."""
    rows: dict[str, Row] = {}
    with open(path, newline="") as file:
        for record in csv.DictReader(file):
            name = record["Name"]
            rows[name] = Row(
                name=name.lower() if name == AGGREGATED else name,
                requests=int(record["Request Count"]),
                failures=int(record["Failure Count"]),
                p50=_number(record.get("50%")),
                p99=_number(record.get("99%")),
            )
    return rows


def summary_line(rows: dict[str, Row]) -> str:
    """One line: each task (in a fixed order, then any other), then the aggregate."""
    names = [name for name in TASKS if name in rows]
    names += sorted(name for name in rows if name not in TASKS and name != AGGREGATED)
    if AGGREGATED in rows:
        names.append(AGGREGATED)
    return "SUMMARY " + "; ".join(rows[name].describe() for name in names)


def verdict(rows: dict[str, Row], p99_limit: float) -> list[str]:
    """Why the load test failed (empty when it passed)."""
    total = rows.get(AGGREGATED)
    if total is None or total.requests == 0:
        return ["no request was made"]
    problems = []
    if total.failures:
        problems.append(
            f"{total.failures} of {total.requests} requests failed "
            f"(see {REPORT_PREFIX}_failures.csv)"
        )
    if total.p99 is None or total.p99 > p99_limit:
        problems.append(f"aggregated p99 {_ms(total.p99)} exceeds --p99-ms {p99_limit:g}")
    return problems


# --- main ---

_shield = {"active": False, "pending": False}


def _on_signal(signum: int, frame: object) -> None:
    """SIGTERM and SIGINT: stop the run, but never in the middle of a clean-up."""
    if _shield["active"]:
        _shield["pending"] = True
        return
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Defer SIGTERM/SIGINT until the block is done (process start-up and clean-up),
    then raise :class:`Interrupted` if one came."""
    outer = _shield["active"]
    _shield["active"] = True
    try:
        yield
    finally:
        _shield["active"] = outer
    if not outer and _shield["pending"]:
        _shield["pending"] = False
        raise Interrupted("signal during start-up or clean-up")


def load_test(args: argparse.Namespace) -> int:
    """Run the whole load test; return the exit status. Cleans up in every case."""
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / REPORT_PREFIX
    stats_path = Path(f"{prefix}_stats.csv")
    html_path = Path(f"{prefix}.html")
    for stale in (*out.glob(f"{REPORT_PREFIX}_*.csv"), html_path):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()  # never read, or show, a previous run's figures
    problems: list[str] = []
    engine: EngineProcess | None = None
    try:
        with shielded():  # a signal here is raised once engine is known to the finally
            engine = start_engine(args.engine_arg, out / "engine.log")
            print(f"ENGINE_PID {engine.pid}", flush=True)
        # The demo prints a banner after READY: drain keeps the pipe from filling.
        host, port = engine.wait_ready(READY_TIMEOUT, drain=True)
        print(f"ENGINE_ADDRESS {host}:{port}", flush=True)
        timeout = parse_timespan(args.run_time) + STOP_TIMEOUT + LOCUST_MARGIN
        status = run_locust(locust_command(args, f"tcp://{host}:{port}", prefix), timeout)
        if status is None:
            problems.append(f"locust did not finish within {timeout:g}s")
        elif status != 0:
            problems.append(f"locust exited with status {status}")
    except EngineError as exc:
        problems.append(str(exc).split("; log:", 1)[0])  # the log's tail is printed below
    finally:
        with shielded():
            engine_status, gone = stop_engine(engine) if engine is not None else (None, True)
    assert engine is not None  # start_engine() raised otherwise, and the finally re-raised
    if engine_status != 0:
        problems.append(
            "the engine had to be killed" if engine_status is None
            else f"the engine exited with status {engine_status}"
        )
    if not gone:
        problems.append(f"processes of the engine (process group {engine.pid}) were left")
    if engine_status != 0 or not gone or not stats_path.exists():
        print(f"engine log ({engine.log_path}):\n{engine.log_tail()}", file=sys.stderr)
    if stats_path.exists():
        rows = read_stats(stats_path)
        print(summary_line(rows), flush=True)
        problems += verdict(rows, args.p99_ms)
        missing = [name for name in TASKS if rows.get(name, Row(name, 0, 0, None, None))
                   .requests == 0]
        if missing and rows.get(AGGREGATED):
            print(f"note: no request of task(s) {', '.join(missing)}", file=sys.stderr)
    else:
        problems.append(f"no statistics: {stats_path} was not written")
    reports = [str(path) for path in (stats_path, html_path) if path.exists()]
    if reports:
        print(f"reports: {', '.join(reports)}", flush=True)
    for problem in dict.fromkeys(problems):
        print(f"FAIL: {problem}", file=sys.stderr)
    print("RESULT " + ("FAIL" if problems else "PASS"), flush=True)
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run the load test; return the exit status."""
    args = build_parser().parse_args(argv)
    become_subreaper()
    previous = {signum: signal.signal(signum, _on_signal)
                for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        return load_test(args)
    except Interrupted as exc:
        print(f"run_locust: interrupted ({exc}); processes cleaned up", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
