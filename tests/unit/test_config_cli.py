"""The command-line front end of the registry (engine.cli), in process: the parser is
derived from the settings, --check-config output, handler import errors, the server
class built from settings, and the status table."""

from __future__ import annotations

import argparse
import socket
import socketserver
from pathlib import Path
from typing import Any

import pytest

import engine
from engine import cli
from engine.config import SECTIONS, Settings, cli_flag, env_var, registry, resolve
from engine.config.sources import tomllib  # tomli on 3.10
from engine.examples.echo import EchoHandler


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads os.environ: keep the runner's ENGINE_* variables out."""
    import os

    for name in list(os.environ):
        if name.startswith("ENGINE_"):
            monkeypatch.delenv(name)


def subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = action.choices[name]
    return found


def test_every_setting_has_a_flag_in_its_section_group() -> None:
    parser = subparser("serve")
    groups = {g.title: g for g in parser._action_groups}
    for field in registry():
        group = groups[SECTIONS[field.metadata["section"]]]
        flags = [opt for action in group._group_actions for opt in action.option_strings]
        assert cli_flag(field.name) in flags, field.name
    help_text = parser.format_help()
    for title in SECTIONS.values():
        assert title in help_text
    assert "--no-gc-freeze" in help_text and "ENGINE_MAX_CHILDREN" in help_text


def test_only_given_flags_are_values() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(
        ["serve", "m:C", "--workers", "3", "--no-gc-freeze", "--bind", "127.0.0.1:1",
         "--bind", "unix:/tmp/a", "--udp"],
    )
    assert cli.setting_values(args) == {
        "workers": "3", "gc_freeze": False, "bind": ["127.0.0.1:1", "unix:/tmp/a"],
        "udp": True,
    }
    assert cli.setting_values(parser.parse_args(["serve", "m:C"])) == {}
    status = parser.parse_args(["status", "--status-bind", "unix:/x"])
    assert cli.setting_values(status) == {"status_bind": "unix:/x"}


def test_check_config_in_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "engine.toml"
    config.write_text("threads = 2\nmax_requests = 5\nmax_spare = 6\n")
    monkeypatch.setenv("ENGINE_MAX_REQUESTS", "6")
    monkeypatch.setenv("ENGINE_MAX_SPARE", "7")
    status = cli.main([
        "serve", "engine.examples.echo:EchoHandler", "--config", str(config),
        "--max-spare", "8", "--check-config",
    ])
    out = capsys.readouterr().out
    assert status == 0
    lines = {line.split(" =")[0]: line for line in out.splitlines() if " = " in line}
    assert lines["threads"].endswith(f"# file {config}")
    assert "= 6" in lines["max_requests"]
    assert lines["max_requests"].endswith("# env ENGINE_MAX_REQUESTS")
    assert "= 8" in lines["max_spare"] and lines["max_spare"].endswith("# cli --max-spare")
    assert lines["max_children"].endswith("# default")
    # The output is a valid config file (unset settings are commented out).
    assert tomllib.loads(out)["max_spare"] == 8


def test_render_resolved_round_trips_through_toml(tmp_path: Path) -> None:
    resolved = resolve({"bind": ["127.0.0.1:1", "[::1]:2"], "proc_name": 'a "q"'}, env={})
    text = cli.render_resolved(resolved)
    path = tmp_path / "round.toml"
    path.write_text(text)
    again = resolve({}, env={}, config_path=path)
    assert again.settings == resolved.settings


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("engine.examples.echo", "must be MODULE:CLASS"),
        (":EchoHandler", "must be MODULE:CLASS"),
        ("no_such_module_xyz:Handler", "No module named 'no_such_module_xyz'"),
        ("engine.examples.no_such:Handler", "No module named 'engine.examples.no_such'"),
        ("engine.examples.echo:Nope", "has no attribute 'Nope'"),
        ("engine.examples.demo:MAX_LINE", "is not a class"),
    ],
)
def test_bad_handler_paths(path: str, message: str) -> None:
    with pytest.raises(cli.HandlerError, match=message) as info:
        cli.import_handler(path)
    assert repr(path) in str(info.value)


def test_handler_import() -> None:
    assert cli.import_handler("engine.examples.echo:EchoHandler") is EchoHandler
    assert cli.import_handler("engine.examples:echo.EchoHandler") is EchoHandler


class NotAHandler:
    def __init__(self, request: Any) -> None:
        self.request = request


class KeywordHandler:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args


@pytest.mark.parametrize(
    ("cls", "message"),
    [(dict, "is not a request handler"), (NotAHandler, "is not a request handler"),
     (engine.PreforkTCPServer, "is a server class"),
     (socketserver.TCPServer, "is a server class")],
)
def test_classes_that_are_not_request_handlers_are_refused(cls: type, message: str) -> None:
    with pytest.raises(cli.HandlerError, match=message):
        cli.check_handler_class("m:C", cls)


def test_any_class_called_as_a_handler_is_accepted() -> None:
    cli.check_handler_class("m:C", KeywordHandler)
    cli.check_handler_class("m:C", EchoHandler)


def test_bad_handler_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "nope_nope:X"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("engine: error: cannot import handler 'nope_nope:X'")


def test_server_class_from_settings() -> None:
    settings = resolve({"max_children": "7", "threads": "2"}, env={}).settings
    tcp = cli.server_class(settings, socket.AF_INET, udp=False)
    assert issubclass(tcp, engine.PreforkTCPServer) and issubclass(tcp, cli.CommandLineServer)
    assert tcp.max_children == 7 and tcp.threads == 2  # type: ignore[attr-defined]
    six = cli.server_class(settings, socket.AF_INET6, udp=False)
    assert six.address_family == socket.AF_INET6  # type: ignore[attr-defined]
    udp = cli.server_class(Settings(udp=True), socket.AF_INET, udp=True)
    assert issubclass(udp, engine.PreforkUDPServer)
    unix = cli.server_class(Settings(), socket.AF_UNIX, udp=False)
    assert issubclass(unix, engine.PreforkUnixStreamServer)
    assert issubclass(
        cli.server_class(Settings(udp=True), socket.AF_UNIX, udp=True),
        engine.PreforkUnixDatagramServer,
    )


def test_udp_listener_does_not_reuse_the_address() -> None:
    # SO_REUSEADDR on UDP would let a second server bind the port and take datagrams.
    from engine import listeners

    with listeners.open_listener("127.0.0.1:0", Settings(udp=True)) as udp:
        assert udp.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
    with listeners.open_listener("127.0.0.1:0", Settings()) as tcp:
        assert tcp.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert tcp.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    with listeners.open_listener("127.0.0.1:0", Settings(reuse_port=True)) as shared:
        assert shared.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1


def test_ready_callback_runs_once() -> None:
    calls: list[int] = []
    server: Any = cli.CommandLineServer.__new__(cli.CommandLineServer)
    server.on_ready = lambda: calls.append(1)
    server._ready()
    server._ready()
    assert calls == [1] and server.on_ready is None


def test_status_table_prints_missing_values_as_dashes() -> None:
    data = {
        "master": {"pid": 10, "name": "Demo", "address": "127.0.0.1:8000", "uptime": 3725.0,
                   "generation": 1, "target": 2},
        "workers": [
            {"slot": 0, "pid": 11, "state": "busy", "requests": 5, "bytes_in": 2048,
             "bytes_out": 10, "client": "127.0.0.1:5000", "request_age": 1.25, "age": 70.0,
             "rss": 12 * 1024 * 1024, "cpu_percent": 12.5, "active": 150},
            {"slot": 1, "pid": 12, "state": "idle"},
        ],
    }
    text = cli.format_status(data)
    lines = text.splitlines()
    assert "pid 10 [Demo] on 127.0.0.1:8000" in lines[0]
    assert "uptime 1:02:05" in lines[1] and "generation 1" in lines[1]
    assert lines[2] == "2 workers: 1 busy, 1 idle"
    header = lines[4].split()
    assert header[:4] == ["SLOT", "PID", "STATE", "REQS"]
    assert header[-3:] == ["RSS", "CPU%", "CONNS"]  # a worker's connections in flight, last
    busy, idle = lines[5].split(), lines[6].split()
    assert busy == ["0", "11", "busy", "5", "2.0K", "10B", "127.0.0.1:5000", "1.2s",
                    "1m10s", "12.0M", "12.5", "150"]
    assert idle[:3] == ["1", "12", "idle"] and set(idle[3:]) == {"-"}
    assert "workers" in cli.format_status({})  # nothing at all still prints


def test_env_var_help_mentions_every_variable() -> None:
    help_text = subparser("serve").format_help()
    for field in registry():
        assert env_var(field.name) in help_text, field.name
