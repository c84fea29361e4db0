"""`engine status` against a hostile or broken status endpoint, run as the real CLI.

A fake endpoint (a thread with a real listening socket, TCP on 127.0.0.1 or a Unix
socket in tmp_path) answers what a test chooses: JSON of the wrong shape, NaN, deep
nesting, a stream without end, a slow drip, terminal escapes. ``python -m engine
status`` runs as a subprocess against it: each answer must end in one clear
``engine: error:`` line and exit status 1 (or, for odd strings, an escaped table),
never a traceback, within ``--timeout`` and a bounded amount of memory.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kit.engines import ROOT, engine_env, run_cli
from tests.kit.processes import kill_group

MiB = 1024 * 1024
STATUS_CAP = 16 * MiB  # engine.status_client.STATUS_MAX_BYTES, as documented
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as documented

Answer = Callable[[socket.socket, threading.Event], None]


class FakeEndpoint:
    """Accept one connection, read its request line, then let *answer* talk to it.

    *answer* gets the connection and a stop event (set by :meth:`close`), so an answer
    that never ends on its own (a drip) still ends with the test.
    """

    def __init__(self, answer: Answer, unix_path: Path | None = None) -> None:
        self.answer = answer
        self.request = b""
        self.stop = threading.Event()
        if unix_path is None:
            self.listener = socket.create_server(("127.0.0.1", 0))
            self.spec = f"127.0.0.1:{self.listener.getsockname()[1]}"
        else:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(str(unix_path))
            self.listener.listen()
            self.spec = f"unix:{unix_path}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(30)
        try:
            conn, _ = self.listener.accept()
        except OSError:  # closed by close(), or nobody came
            return
        with conn:
            conn.settimeout(30)
            try:
                while not self.request.endswith(b"\n"):
                    chunk = conn.recv(100)
                    if not chunk:
                        return
                    self.request += chunk
                self.answer(conn, self.stop)
            except OSError:  # the client gave up first: what some tests want
                pass

    def close(self) -> None:
        """End the answer, wait for the thread, close the listener."""
        self.stop.set()
        self.listener.close()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the fake endpoint did not stop"


@pytest.fixture
def endpoint() -> Iterator[Callable[..., FakeEndpoint]]:
    """``endpoint(answer, unix_path=None)`` starts a fake endpoint, closed at teardown."""
    made: list[FakeEndpoint] = []

    def start(answer: Answer, unix_path: Path | None = None) -> FakeEndpoint:
        made.append(FakeEndpoint(answer, unix_path))
        return made[-1]

    yield start
    for one in made:
        one.close()


def sends(body: bytes) -> Answer:
    """An answer: *body*, then close."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(body)

    return answer


def status(spec: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``python -m engine status --status-bind SPEC ARGS`` to completion."""
    return run_cli(["status", "--status-bind", spec, *args], timeout=timeout)


def assert_clean_failure(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit status 1, one ``engine: error:`` line naming *words*, no traceback, no output."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result
    assert result.stderr.startswith("engine: error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert result.stdout == ""


# --- a) valid JSON, but not a status document ---


@pytest.mark.parametrize("output", [[], ["--json"]], ids=["table", "json"])
@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b"[]", "an array"),
        (b"null", "null"),
        (b'"hi"', "a string"),
        (b"5", "a number"),
        (b"true", "a boolean"),
        (b'{"master": "x"}', '"master"'),
        (b'{"master": {}, "workers": "y"}', '"workers"'),
        (b'{"master": {}, "workers": [1, {"pid": 2}]}', '"workers"'),
        (b'{"master": {}, "workers": [], "listeners": {}}', '"listeners"'),
    ],
)
def test_json_that_is_not_a_status_document_is_a_clear_error(
    endpoint: Callable[..., FakeEndpoint], body: bytes, what: str, output: list[str]
) -> None:
    one = endpoint(sends(body))
    assert_clean_failure(status(one.spec, *output), "status endpoint", what)


# --- b) what Python's json module takes but is not JSON, or too deep to parse ---


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b'{"master": {"uptime": NaN}, "workers": []}', "NaN"),
        (b'{"master": {}, "workers": [{"age": Infinity}]}', "Infinity"),
        (b'{"master": {"rss": -Infinity}}', "Infinity"),
        (b"[" * 100_000 + b"]" * 100_000, "deep"),
        (b'{"master": {}, "workers": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}", "deep"),
    ],
    ids=["nan", "infinity", "minus-infinity", "deep", "deep-inside"],
)
def test_non_json_numbers_and_deep_nesting_are_a_clear_error(
    endpoint: Callable[..., FakeEndpoint], body: bytes, what: str
) -> None:
    one = endpoint(sends(body))
    assert_clean_failure(status(one.spec), "invalid JSON", what)


def test_numbers_too_large_for_the_table_show_as_missing(
    endpoint: Callable[..., FakeEndpoint],
) -> None:
    huge = "9" * 400  # valid JSON; a float cannot hold it
    body = (
        f'{{"master": {{"pid": 1, "uptime": {huge}, "rss": {huge}}}, '
        f'"workers": [{{"slot": 0, "state": "idle", "rss": {huge}, "bytes_in": {huge}, '
        f'"age": 1e308, "request_age": {huge}, "requests": 1{"0" * 30}}}]}}'
    ).encode()
    result = status(endpoint(sends(body)).spec)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result
    row = result.stdout.splitlines()[-1].split()
    assert row[:3] == ["0", "-", "idle"]
    assert "uptime -" in result.stdout and "master RSS -" in result.stdout
    # A float's range is not the limit: 1e308 seconds was printed as a 300-digit age.
    assert max(len(word) for word in result.stdout.split()) < 40, result.stdout


# --- c) the whole exchange within --timeout, the answer within a size cap ---


def drip(conn: socket.socket, stop: threading.Event) -> None:
    """One byte every 0.1 s, until the client goes or the test ends."""
    while not stop.wait(0.1):  # pacing the drip, not synchronisation
        conn.sendall(b" ")


def test_timeout_bounds_the_whole_exchange(endpoint: Callable[..., FakeEndpoint]) -> None:
    one = endpoint(drip)
    started = time.monotonic()
    result = status(one.spec, "--timeout", "1", timeout=20)
    elapsed = time.monotonic() - started
    assert_clean_failure(result, f"cannot read the status endpoint at {one.spec}", "within 1s")
    # The drip would go on for ever: ending at all is the point; the bound is generous
    # for interpreter start-up on a loaded machine.
    assert elapsed < 10, elapsed


def test_timeout_bounds_a_unix_socket_exchange_too(
    endpoint: Callable[..., FakeEndpoint], tmp_path: Path
) -> None:
    one = endpoint(drip, unix_path=tmp_path / "status.sock")
    result = status(one.spec, "--json", "--timeout", "500ms", timeout=20)
    assert_clean_failure(result, "within 0.5s")


def stream(total: int) -> Answer:
    """An answer of *total* bytes of blanks, sent as fast as the client reads."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        block = b" " * MiB
        sent = 0
        while sent < total and not stop.is_set():
            conn.sendall(block[: total - sent])
            sent += min(len(block), total - sent)

    return answer


@pytest.mark.parametrize("output", [[], ["--json"], ["--prometheus"]])
def test_an_answer_over_the_cap_is_a_clear_error(
    endpoint: Callable[..., FakeEndpoint], output: list[str]
) -> None:
    # Twice the cap, then EOF: a client without a cap reads it all (and, from an
    # endpoint that never stops, would read until memory runs out).
    one = endpoint(stream(2 * STATUS_CAP))
    result = status(one.spec, *output, "--timeout", "20")
    assert_clean_failure(result, "larger than 16 MiB")


def test_an_answer_of_exactly_the_cap_is_read(endpoint: Callable[..., FakeEndpoint]) -> None:
    document = json.dumps({"master": {"pid": 7}, "workers": []}).encode()
    body = document + b" " * (STATUS_CAP - len(document))
    result = status(endpoint(sends(body)).spec, "--timeout", "20")
    assert result.returncode == 0, result
    assert "engine master pid 7" in result.stdout


# --- d) stdout closed early ---


def run_into_closed_pipe(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``python -m engine ARGS`` with stdout a pipe nobody reads any more (as in
    ``engine status | head -0``): its read end is closed before the command starts,
    so the first write fails whatever the timing."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", *args], cwd=ROOT, env=engine_env(),
            stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
    finally:
        os.close(write_end)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        kill_group(proc.pid, proc)
        assert proc.stderr is not None
        proc.stderr.close()
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


@pytest.mark.parametrize("output", [[], ["--json"], ["--prometheus"]])
def test_a_closed_stdout_exits_quietly(
    endpoint: Callable[..., FakeEndpoint], output: list[str]
) -> None:
    body = b"engine_up 1\n" if output == ["--prometheus"] else b'{"master": {"pid": 7}}'
    one = endpoint(sends(body))
    result = run_into_closed_pipe(["status", "--status-bind", one.spec, *output])
    assert result.stderr == ""
    assert result.returncode == EXIT_BROKEN_PIPE


def test_check_config_into_a_closed_stdout_exits_quietly() -> None:
    """``engine serve ... --check-config | head -0``: was a BrokenPipeError traceback."""
    result = run_into_closed_pipe(["serve", "engine.examples.echo:EchoHandler", "--bind",
                                   "127.0.0.1:0", "--check-config"])
    assert result.stderr == ""
    assert result.returncode == EXIT_BROKEN_PIPE


def test_no_stdout_at_all_is_said_once_without_a_traceback() -> None:
    """Started with fd 1 closed (``>&-``): sys.stdout is None (was an AttributeError
    traceback)."""
    result = subprocess.run(
        ["sh", "-c", 'exec "$0" -m engine serve engine.examples.echo:EchoHandler '
         "--bind 127.0.0.1:0 --check-config >&-", sys.executable],
        cwd=ROOT, env=engine_env(), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=30,
    )
    assert result.returncode == 1, result
    assert result.stderr == "engine: error: standard output is closed\n"


# --- e) what the endpoint says is shown escaped ---


def test_strings_from_the_endpoint_are_escaped_in_the_table(
    endpoint: Callable[..., FakeEndpoint],
) -> None:
    snapshot = {
        "master": {"pid": 7, "name": "\x1b[31mRED\x1b[0m", "address": "a\nforged line",
                   "state": "running\r", "version": "\u202eevil", "max_children_reached": 0},
        "workers": [
            {"slot": 0, "pid": 8, "state": "busy\x07", "client": "\x1b]0;pwned\x07"},
            {"slot": 1, "pid": 9, "state": "idle", "client": "\ud800:1"},
        ],
        "listeners": [{"address": "x\ny", "queued": "\x1b[2J", "backlog": 1},
                      {"address": "b", "queued": 0}],
    }
    body = json.dumps(snapshot).encode()  # ensure_ascii: \u escapes, valid JSON
    result = status(endpoint(sends(body)).spec)
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr, result.stderr
    out = result.stdout
    assert all(c.isprintable() or c == "\n" for c in out), repr(out)
    lines = out.splitlines()
    assert len(lines) == 7, out  # three summary lines, a blank, the heading, two rows
    assert "[\\x1b[31mRED\\x1b[0m]" in lines[0] and "a\\nforged line" in lines[0]
    assert "running\\r" in lines[0] and "\\u202eevil" in lines[0]
    assert "x\\ny" in lines[2] and "\\x1b[2J" in lines[2]
    assert "\\x1b]0;pwned\\x07" in lines[5] and "busy\\x07" in lines[5]
    assert "\\ud800:1" in lines[6]


@pytest.mark.parametrize("output", [[], ["--json"]], ids=["table", "json"])
def test_what_stdout_cannot_encode_is_escaped_not_a_traceback(
    endpoint: Callable[..., FakeEndpoint], output: list[str]
) -> None:
    name = "caf\u00e9 \u4e2d \U0001f600"  # the emoji: a surrogate pair in JSON
    body = json.dumps({"master": {"pid": 7, "name": name}}, ensure_ascii=False)
    one = endpoint(sends(body.encode()))
    result = run_cli(["status", "--status-bind", one.spec, *output],
                     env={"PYTHONIOENCODING": "ascii"})
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result
    assert "caf\\u00e9 \\u4e2d \\ud83d\\ude00" in result.stdout
    if output:  # the escapes are JSON's own: the document reads back the same
        assert json.loads(result.stdout)["master"]["name"] == name


@pytest.mark.parametrize(
    "body",
    [b"engine_workers 2\n\x1b]0;pwned\x07engine_up 1\n", b"engine_up 1\r\nx 2\n",
     b"engine_up\x00 1\n", "engine_up{a=\"\u202e\"} 1\n".encode()],
    ids=["osc-escape", "carriage-return", "nul", "bidi-override"],
)
def test_prometheus_text_that_is_not_plain_text_is_a_clear_error(
    endpoint: Callable[..., FakeEndpoint], body: bytes
) -> None:
    """--prometheus printed whatever the endpoint sent: a terminal escape in it drove
    the user's terminal. The exposition format is plain printable lines."""
    one = endpoint(sends(body))
    assert_clean_failure(status(one.spec, "--prometheus"), "status endpoint", "line ")


def test_plain_prometheus_text_is_printed_as_sent(
    endpoint: Callable[..., FakeEndpoint],
) -> None:
    body = '# HELP engine_up 1 if up\n# TYPE engine_up gauge\nengine_up{name="caf\u00e9\\n"}\t1\n'
    result = status(endpoint(sends(body.encode())).spec, "--prometheus")
    assert result.returncode == 0 and result.stdout == body, result
