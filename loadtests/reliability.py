"""The reliability suite: real engines under fire, one command.

::

    python -m loadtests.reliability [--short] [--scenario NAME ...] [--out DIR] [--list]

Runs each scenario (all by default; see ``--list``) against a real engine started as
``python -m engine serve ...`` in its own process group, under continuous load on
127.0.0.1, and prints ONE line of figures per scenario, ending in PASS or FAIL (with the
targets not met). The results go to ``DIR/reliability-{short,long}.json`` and
``DIR/reliability-{short,long}.md`` (a markdown table that ``docs/reliability.md``
quotes). ``--short`` runs the versions the test suite runs (seconds each); the default
long versions take about 8 minutes in all on 2 cores.

Bounded: every load loop stops at a request count and at a time limit, every wait
has a deadline. Clean: every engine is stopped and its process group killed on every
exit path (errors, Ctrl-C, SIGTERM), this process adopts and reaps orphaned workers (it
is a child subreaper), and at the end it checks that it has no child left and no fd
leaked; any leftover is reported and fails the run.

Exit status: 0 when every target of every scenario was met, 1 otherwise, 130 when
interrupted. See ``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from loadtests.reliability_scenarios import SCENARIOS, Context, Result, run
from tests.kit.engines import ROOT
from tests.kit.processes import become_subreaper, checked_self

DEFAULT_OUT = ROOT / "loadtests" / "results" / "reliability"  # git-ignored
EXIT_INTERRUPTED = 130


class Interrupted(BaseException):
    """SIGTERM asked this command to stop."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.reliability",
        description="Run the reliability scenarios against real engines on 127.0.0.1 and "
        "print one line of figures per scenario.",
    )
    parser.add_argument("--short", action="store_true",
                        help="the short versions (as the test suite runs them)")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        metavar="NAME", help="run only this scenario (repeatable); "
                        f"one of: {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help=f"where to write the JSON and markdown results [default: "
                        f"{DEFAULT_OUT.relative_to(ROOT)}]")
    parser.add_argument("--seed", type=int, default=1, help="random seed [default: 1]")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser


def markdown(results: Sequence[Result], short: bool) -> str:
    """The results as a markdown table: scenario, figures, targets, verdict."""
    lines = [
        f"Results of `python -m loadtests.reliability{' --short' if short else ''}` "
        f"({datetime.datetime.now().isoformat(timespec='seconds')}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}).",
        "",
        "| scenario | figures | targets | met |",
        "|---|---|---|---|",
    ]
    for result in results:
        figures = "<br>".join(f"{k} = {_cell(v)}" for k, v in result.figures.items())
        targets = "<br>".join(_cell(t.describe()) for t in result.targets)
        if result.error:
            targets += f"<br>error: {_cell(result.error)}"
        verdict = "yes" if result.met else "**no**"
        if result.skipped:
            verdict = f"skipped: {_cell(result.skipped)}"
        lines.append(f"| {result.scenario} | {figures} | {targets} | {verdict} |")
    notes = [(r.scenario, n) for r in results for n in r.notes]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"* {scenario}: {_cell(note)}" for scenario, note in notes]
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    from loadtests.reliability_scenarios import _fmt

    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def write_results(results: Sequence[Result], out: Path, short: bool) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = "reliability-short" if short else "reliability-long"
    data = {
        "command": "python -m loadtests.reliability" + (" --short" if short else ""),
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "results": [r.as_dict() for r in results],
    }
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    md_path.write_text(markdown(results, short))
    return json_path, md_path


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for name, function in SCENARIOS.items():
            print(f"{name}: {(function.__doc__ or '').strip()}")
        return 0
    names = args.scenario or list(SCENARIOS)
    become_subreaper()  # workers of a killed master come back to us, to be reaped
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    results: list[Result] = []
    try:
        with tempfile.TemporaryDirectory(prefix="reliability-") as tmp, \
                checked_self() as report:
            ctx = Context(short=args.short, log_dir=Path(tmp), seed=args.seed)
            for name in names:
                result = run(name, ctx)
                results.append(result)
                print(result.line(), flush=True)
        leaks = report["leaked_fds"] or report["children_left"]
        if leaks:
            print(f"LEFTOVERS in this process: fds {report['leaked_fds']}, children "
                  f"{report['children_left']}", flush=True)
    except (KeyboardInterrupt, Interrupted):
        print("interrupted: engines stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    json_path, md_path = write_results(results, args.out, args.short)
    ok = all(r.met for r in results) and not leaks
    print(f"RESULT {'PASS' if ok else 'FAIL'}: {sum(r.met for r in results)}/{len(results)} "
          f"scenarios met their targets; results in {json_path} and {md_path}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
