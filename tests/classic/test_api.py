"""The public surface: every socketserver name exists in engine, as engine's own object."""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
from pathlib import Path

import pytest

import engine
import engine.classic

ROOT = Path(__file__).resolve().parents[2]

CLASSIC_NAMES = {
    "BaseServer",
    "TCPServer",
    "UDPServer",
    "ThreadingUDPServer",
    "ThreadingTCPServer",
    "BaseRequestHandler",
    "StreamRequestHandler",
    "DatagramRequestHandler",
    "ThreadingMixIn",
}
if hasattr(os, "fork"):
    CLASSIC_NAMES |= {"ForkingUDPServer", "ForkingTCPServer", "ForkingMixIn"}
UNIX_NAMES = {
    "UnixStreamServer",
    "UnixDatagramServer",
    "ThreadingUnixStreamServer",
    "ThreadingUnixDatagramServer",
}
FORKING_UNIX_NAMES = {"ForkingUnixStreamServer", "ForkingUnixDatagramServer"}


def expected_names() -> set[str]:
    names = set(CLASSIC_NAMES)
    if hasattr(engine.classic.socket, "AF_UNIX"):
        names |= UNIX_NAMES
        if hasattr(os, "fork"):
            names |= FORKING_UNIX_NAMES  # 3.12+ names, offered on every supported Python
    return names


def test_classic_all_is_exactly_the_classic_names() -> None:
    assert set(engine.classic.__all__) == expected_names()
    assert len(engine.classic.__all__) == len(set(engine.classic.__all__)), "no duplicates"


def test_engine_all_contains_every_classic_name() -> None:
    assert expected_names() <= set(engine.__all__)
    assert set(engine.classic.__all__) <= set(engine.__all__)


def test_engine_all_contains_every_stdlib_name() -> None:
    missing = set(socketserver.__all__) - set(engine.__all__)
    assert not missing, f"names of socketserver.__all__ missing from engine: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(expected_names()))
def test_each_name_is_engines_own_class(name: str) -> None:
    obj = getattr(engine, name)
    assert obj is getattr(engine.classic, name)
    assert isinstance(obj, type)
    assert obj.__module__ == "engine.classic"
    if hasattr(socketserver, name):
        assert obj is not getattr(socketserver, name)
        assert not issubclass(obj, getattr(socketserver, name))


def test_no_stdlib_class_in_any_mro() -> None:
    for name in engine.classic.__all__:
        for base in getattr(engine, name).__mro__:
            assert base.__module__ in ("engine.classic", "builtins"), (name, base)


def test_engine_is_not_socketserver() -> None:
    assert engine.TCPServer is not socketserver.TCPServer
    assert engine.classic is not socketserver


def test_classic_does_not_import_socketserver_or_engine() -> None:
    """Loaded from its file in a fresh interpreter, classic.py pulls in neither
    ``socketserver`` nor any other part of engine."""
    code = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("classic_probe", {str(engine.classic.__file__)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps({{
    "socketserver": "socketserver" in sys.modules,
    "engine": sorted(m for m in sys.modules if m == "engine" or m.startswith("engine.")),
    "has_tcp": hasattr(module, "TCPServer"),
}}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == {"socketserver": False, "engine": [], "has_tcp": True}


def test_package_ships_py_typed() -> None:
    assert (Path(engine.__file__).parent / "py.typed").is_file()


def test_class_attributes_match_the_stdlib_defaults() -> None:
    assert engine.BaseServer.timeout is None
    assert engine.TCPServer.address_family == socketserver.TCPServer.address_family
    assert engine.TCPServer.socket_type == socketserver.TCPServer.socket_type
    assert engine.TCPServer.request_queue_size == 5
    assert engine.TCPServer.allow_reuse_address is False
    assert engine.TCPServer.allow_reuse_port is False
    assert engine.UDPServer.socket_type == socketserver.UDPServer.socket_type
    assert engine.UDPServer.max_packet_size == socketserver.UDPServer.max_packet_size
    assert engine.ThreadingMixIn.daemon_threads is False
    assert engine.ThreadingMixIn.block_on_close is True
    if hasattr(os, "fork"):
        assert engine.ForkingMixIn.max_children == 40
        assert engine.ForkingMixIn.timeout == 300
        assert engine.ForkingMixIn.block_on_close is True
        assert engine.ForkingMixIn.active_children is None


def test_stdlib_method_names_all_exist() -> None:
    """Every public method of each stdlib class exists on engine's class of that name."""
    for name in socketserver.__all__:
        ours, theirs = getattr(engine, name), getattr(socketserver, name)
        public = {attr for attr in dir(theirs) if not attr.startswith("_")}
        missing = public - set(dir(ours))
        assert not missing, f"{name} lacks {sorted(missing)}"
