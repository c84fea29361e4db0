"""Typed settings (#15.4): choice settings are Literal types from which the validator,
the CLI's argparse choices and the docs all derive; one CPU count for every sizing."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import typing

import pytest

from engine import cli
from engine.config import Settings, build, registry
from engine.config.docs import render
from engine.config.settings import choices
from engine.errors import ConfigError
from tests.kit import ROOT

CHOICE_SETTINGS = {"pool_mode", "tls_verify_client", "tls_min_version", "log_level"}


def test_choice_settings_are_literal_types() -> None:
    hints = typing.get_type_hints(Settings)
    literal = {
        name for name, hint in hints.items() if typing.get_origin(hint) is typing.Literal
    }
    assert literal >= CHOICE_SETTINGS
    for name in literal:
        assert choices(name) == typing.get_args(hints[name])


def test_non_choice_settings_have_no_choices() -> None:
    assert choices("workers") is None and choices("bind") is None


@pytest.mark.parametrize("name", sorted(CHOICE_SETTINGS))
def test_validator_accepts_exactly_the_literal_values(name: str) -> None:
    allowed = choices(name)
    assert allowed
    validator = next(f for f in registry() if f.name == name).metadata["validator"]
    for value in allowed:
        assert validator(name, f" {value.upper()} ") == value
    with pytest.raises(ConfigError) as info:
        build({name: "none-of-these"})
    assert all(value in info.value.allowed for value in allowed)


def test_cli_choices_come_from_the_types() -> None:
    parser = cli.build_parser()
    serve = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ).choices["serve"]
    by_dest = {action.dest: action for action in serve._actions}
    for field in registry():
        action = by_dest[field.name]
        expected = choices(field.name)
        assert (list(action.choices) if action.choices else None) == (
            list(expected) if expected else None
        ), field.name
    # Case-insensitive like every other source.
    assert cli.setting_values(parser.parse_args(["serve", "m:C", "--pool-mode", "STATIC"])) \
        == {"pool_mode": "static"}


def test_docs_list_the_choices() -> None:
    page = render()
    for name in CHOICE_SETTINGS:
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
        type_cell = row.split(" | ")[1]
        for value in choices(name) or ():
            assert f'"{value}"' in type_cell, row


# --- one CPU count: the CPUs this process may run on ---

AFFINITY_PROBE = (
    "import os\n"
    "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
    "from engine.config import Settings, resolved_workers\n"
    "from engine.config.settings import usable_cpus\n"
    "from engine.growth import cpu_count\n"
    "print(resolved_workers(Settings()), usable_cpus(), cpu_count(), os.cpu_count())\n"
)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_one_cpu_count_honours_the_affinity_mask() -> None:
    result = subprocess.run(
        [sys.executable, "-c", AFFINITY_PROBE], capture_output=True, text=True, cwd=ROOT,
        timeout=30, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    workers, usable, growth, machine = map(int, result.stdout.split())
    assert (workers, usable, growth) == (1, 1, 1), (result.stdout, machine)


def test_every_choice_validator_has_its_literal_type() -> None:
    # A new choice setting declared as `str` with v.choice(...) fails here: declare a
    # Literal alias next to PoolMode and derive the validator from it.
    for field in registry():
        words = getattr(field.metadata["validator"], "choices", None)
        if words is not None:
            assert choices(field.name) == tuple(words), field.name


def test_a_class_attribute_duration_with_a_unit() -> None:
    import engine
    from engine.examples.echo import EchoHandler

    class Server(engine.PreforkTCPServer):
        graceful_timeout = "5m"
        request_timeout = "250ms"

    server = Server(("127.0.0.1", 0), EchoHandler)
    try:
        settings = server.prefork_settings()
    finally:
        server.server_close()
    assert (settings.graceful_timeout, settings.request_timeout) == (300.0, 0.25)
