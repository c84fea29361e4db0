"""loadtests.capacity: the paced C client against real servers (one that answers, one
that never accepts), the targets' verdicts, the tables and the docs section rewrite."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests import capacity
from loadtests.bench import free_port, probe
from loadtests.capacity import Options, Row
from tests.kit import ROOT, kill_group, wait_until

needs_cc = pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler"
)


def run_client(port: int, clients: int) -> dict[str, float]:
    binary = capacity.build_client()
    out = subprocess.run(
        [str(binary), "-p", str(port), "-c", str(clients), "-d", "0.6", "-i", "0.2",
         "-r", "0.2", "-T", "0.5"],
        capture_output=True, timeout=30, check=True,
    )
    lines = out.stdout.decode().splitlines()
    assert lines[0] == "start"
    result: dict[str, float] = json.loads(lines[1])
    return result


@pytest.fixture
def asyncio_server() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtests.capacity_servers", "asyncio", "--port", str(port)],
        cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: probe("line", port), 20, "the asyncio server")
        yield port
    finally:
        assert not kill_group(proc.pid, proc, grace=5.0)


@needs_cc
def test_client_counts_clients_that_got_every_reply(asyncio_server: int) -> None:
    result = run_client(asyncio_server, 50)
    assert result["clients_all_replies"] == 50 and result["connected"] == 50
    # 0.6 s window, one line per 0.2 s per client: about 3 each (window edges vary).
    assert 100 <= result["replies"] <= 200
    assert result["timeouts"] == result["missed"] == result["io_errors"] == 0
    assert 0 < result["p50_us"] <= result["p99_us"]


@needs_cc
def test_client_counts_unanswered_clients() -> None:
    # A listener that never accepts: every client connects (the kernel's backlog)
    # and waits; none is served, every one times out.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        result = run_client(listener.getsockname()[1], 20)
    assert result["clients_all_replies"] == 0 and result["clients_any_reply"] == 0
    assert result["replies"] == 0 and result["timeouts"] + result["unanswered"] >= 20


def opts(tmp_path: Path) -> Options:
    return Options(
        clients=[4096, 10_000], seconds=20, interval=1, servers=["engine-gevent",
        "gevent-server"], http_servers=["engine-gevent", "forking"], http_clients=32,
        http_seconds=10, rounds=3, retries=0, noise=0.25, forking_max=4096, timeout=5,
        out=tmp_path, docs=False, plot=False,
    )


def row(server: str, clients: int, rnd: int, **fields: float) -> Row:
    kind = "http" if clients == 32 else "capacity"
    result = Row(kind, server, clients, rnd)
    for name, value in fields.items():
        setattr(result, name, value)
    return result


def test_targets_are_judged_on_the_median_round(tmp_path: Path) -> None:
    rows = [
        # engine gevent at 10,000: rounds with p99 4, 9 and 30 ms -> median 9 ms.
        *(row("engine-gevent", 10_000, r, served=10_000, p99_us=p99, pss_bytes=150e6)
          for r, p99 in ((1, 4000), (2, 9000), (3, 30000))),
        row("engine-gevent", 4096, 1, served=4096, p99_us=3000),
        row("gevent-server", 4096, 1, served=4096, p99_us=2500),
        row("engine-gevent", 32, 1, served=32, rps=6000),
        row("forking", 32, 1, served=32, rps=4000),
    ]
    chosen = capacity.median_rows(rows)
    assert chosen["capacity", "engine-gevent", 10_000].round == 2
    verdicts = [t.verdict for t in capacity.evaluate_targets(chosen, 32)]
    assert verdicts == ["PASS", "FAIL", "PASS"]  # 3.0 ms > 2.5 ms at 4,096; 1.5x
    table = "\n".join(capacity.capacity_table(chosen, opts(tmp_path)))
    assert "| engine gevent, 2 workers | 10,000 | 10,000/10,000 | 0.00 | 9.00 | 150 |" in table
    assert "| 6,000 |" in "\n".join(capacity.http_table(chosen, opts(tmp_path)))


def test_targets_not_measured_or_failed(tmp_path: Path) -> None:
    assert [t.verdict for t in capacity.evaluate_targets({}, 32)] == ["N/A"] * 3
    rows = [row("engine-gevent", 10_000, 1, served=9_999, p99_us=1000, pss_bytes=1e8),
            row("engine-gevent", 32, 1, served=32, rps=4700),
            row("forking", 32, 1, served=32, rps=4000)]
    targets = capacity.evaluate_targets(capacity.median_rows(rows), 32)
    assert [t.verdict for t in targets] == ["FAIL", "N/A", "FAIL"]  # 9,999; 1.18x
    assert "9,999/10,000" in targets[0].detail and "1.18x" in targets[2].detail


def test_docs_section_is_replaced_between_its_markers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Benchmarks\nkept\n{capacity.BEGIN_MARKER}\nold\n"
                    f"{capacity.END_MARKER}\ntail kept\n")
    monkeypatch.setattr(capacity, "DOCS", docs)
    capacity.write_docs("## Capacity: many idle connections\nnew\n")
    text = docs.read_text()
    assert "old" not in text and "new" in text
    assert text.startswith("# Benchmarks\nkept\n") and text.endswith("tail kept\n")
    capacity.write_docs("again\n")
    assert docs.read_text().count(capacity.BEGIN_MARKER) == 1


def test_the_repository_docs_have_the_markers() -> None:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    assert capacity.BEGIN_MARKER in text and capacity.END_MARKER in text
    assert "## Capacity: many idle connections" in text


def test_server_command_lines() -> None:
    gevent = capacity.SERVERS["engine-gevent"].argv("line", 9000)
    assert gevent[1:4] == ["-m", "engine", "serve"]
    assert "--worker-class" in gevent and gevent[gevent.index("--workers") + 1] == "2"
    threads = capacity.SERVERS["engine-threads"].argv("line", 9000)
    assert threads[threads.index("--threads") + 1] == "4096"
    forking = capacity.SERVERS["forking"].argv("http", 9000)
    assert forking[forking.index("--proto") + 1] == "http"
    assert "loadtests.bench_servers:HelloHandler" in capacity.SERVERS["engine-gevent"].argv(
        "http", 9000)
    gunicorn = capacity.SERVERS["gunicorn-gevent"].argv("http", 9000)
    assert gunicorn[gunicorn.index("-k") + 1] == "gevent"
