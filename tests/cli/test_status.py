"""`engine status` against endpoints that misbehave or answer partially: a one-shot
listener in a thread stands in for the master's status endpoint (the real one is
exercised in test_serve.py)."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import cli


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ENGINE_"):
            monkeypatch.delenv(name)


class OneShotEndpoint:
    """Accept one connection, record its request line, answer *body*, close."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.request = b""
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.spec = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(10)
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(10)
            while not self.request.endswith(b"\n"):
                chunk = conn.recv(100)
                if not chunk:
                    break
                self.request += chunk
            conn.sendall(self.body)

    def close(self) -> None:
        self.thread.join(timeout=10)
        self.listener.close()


@pytest.fixture
def endpoint() -> Iterator[list[OneShotEndpoint]]:
    made: list[OneShotEndpoint] = []
    yield made
    for one in made:
        one.close()


def serve_once(made: list[OneShotEndpoint], body: bytes) -> OneShotEndpoint:
    one = OneShotEndpoint(body)
    made.append(one)
    return one


SNAPSHOT = {
    "master": {"pid": 7, "name": "Echo", "address": "unix:/run/a.sock", "uptime": 5.0},
    "workers": [{"slot": 3, "pid": 8, "state": "busy", "client": "127.0.0.1:9"}],
}


def test_table(endpoint: list[OneShotEndpoint], capsys: pytest.CaptureFixture[str]) -> None:
    one = serve_once(endpoint, json.dumps(SNAPSHOT).encode())
    assert cli.main(["status", "--status-bind", one.spec]) == 0
    out = capsys.readouterr().out
    assert one.request == b"json\n"
    assert "pid 7 [Echo] on unix:/run/a.sock" in out and "uptime 5.0s" in out
    row = out.splitlines()[-1].split()
    assert row[:3] == ["3", "8", "busy"] and "127.0.0.1:9" in row and row[-1] == "-"


def test_raw_json_and_prometheus(
    endpoint: list[OneShotEndpoint], capsys: pytest.CaptureFixture[str]
) -> None:
    one = serve_once(endpoint, b'{"master": {}}')
    assert cli.main(["status", "--status-bind", one.spec, "--json"]) == 0
    assert capsys.readouterr().out == '{"master": {}}\n'
    two = serve_once(endpoint, b"engine_up 1\n")
    assert cli.main(["status", "--status-bind", two.spec, "--prometheus"]) == 0
    assert two.request == b"prometheus\n"
    assert capsys.readouterr().out == "engine_up 1\n"


def test_status_bind_from_a_config_file(
    endpoint: list[OneShotEndpoint], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    one = serve_once(endpoint, json.dumps(SNAPSHOT).encode())
    config = tmp_path / "engine.toml"
    config.write_text(f'status_bind = "{one.spec}"\n')
    assert cli.main(["status", "--config", str(config)]) == 0
    assert "[Echo]" in capsys.readouterr().out


def test_invalid_json_exits_1(
    endpoint: list[OneShotEndpoint], capsys: pytest.CaptureFixture[str]
) -> None:
    one = serve_once(endpoint, b"<html>")
    assert cli.main(["status", "--status-bind", one.spec]) == 1
    assert "invalid JSON" in capsys.readouterr().err


def test_unreachable_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = f"unix:{tmp_path / 'nobody.sock'}"
    assert cli.main(["status", "--status-bind", spec]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"engine: error: cannot read the status endpoint at {spec}")


def test_unset_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status"]) == 2
    err = capsys.readouterr().err
    assert "invalid setting status_bind=None" in err and "ENGINE_STATUS_BIND" in err
