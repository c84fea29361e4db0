"""Every reliability scenario, short version, against real engines: its targets are met.

Each scenario starts ``python -m engine serve ...`` subprocesses in their own process
groups, loads them on 127.0.0.1, and on the way out stops them, kills their groups and
checks that nothing is left (``leftovers`` is a target of every scenario). The figures
are printed, so ``pytest -s`` shows the same lines as ``python -m loadtests.reliability
--short``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.reliability_scenarios import SCENARIOS, Context, Result, run


def explain(result: Result, log_dir: Path) -> str:
    lines = [result.line()]
    lines += [f"  target {t.describe()}" for t in result.targets if not t.met]
    lines += [f"  note: {note}" for note in result.notes]
    if result.error:
        lines.append(f"  error: {result.error}")
    for log in sorted(log_dir.glob("*.log")):
        text = log.read_text(errors="replace")
        lines.append(f"  --- {log.name} (last 3000 chars) ---\n{text[-3000:]}")
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_meets_its_targets(name: str, tmp_path: Path, no_leaks: None) -> None:
    result = run(name, Context(short=True, log_dir=tmp_path))
    print(result.line())
    if result.skipped:
        pytest.skip(result.skipped)
    assert result.met, explain(result, tmp_path)
    assert result.figures["leftovers"] == 0
