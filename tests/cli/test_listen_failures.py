"""A start that cannot listen on one of its addresses leaves nothing behind, and says
why in words that fit (found probing: a socket file of an earlier address stayed, and
a regular file at a unix: path was "address already in use")."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.kit import run_cli

ECHO = "engine.examples.echo:EchoHandler"


def test_the_socket_files_of_the_addresses_bound_before_are_removed(tmp_path: Path) -> None:
    first, second = tmp_path / "first.sock", tmp_path / "second.sock"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["serve", ECHO, "--bind", f"unix:{first}", "--bind", f"unix:{second}",
                          "--bind", f"127.0.0.1:{port}"])
    assert result.returncode == 1, result.stderr
    assert f"engine: error: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert list(tmp_path.iterdir()) == []  # both files bound first are gone again


def test_a_path_that_is_not_a_socket_is_named_as_such(tmp_path: Path) -> None:
    for path in (tmp_path / "file", tmp_path / "directory"):
        if path.name == "file":
            path.write_text("data\n")
        else:
            path.mkdir()
        result = run_cli(["serve", ECHO, "--bind", f"unix:{path}"])
        # Refused with the other paths, before anything is bound (--check-config too).
        assert result.returncode == 2, result.stderr
        assert (f"engine: error: invalid setting bind='unix:{path}': a path that is free or "
                "a stale socket (this one exists and is not a socket)") in result.stderr
        assert "Traceback" not in result.stderr
    assert (tmp_path / "file").read_text() == "data\n"  # left as it was
