"""Every command the docs show runs as shown (#13.15).

The shell commands are extracted from the fenced code blocks of docs/*.md (``console``
blocks: the lines after ``$``; unmarked blocks: lines that start with a known program),
plus the engine command lines of docs/systemd/engine.service and docs/kubernetes/
engine.yaml. Each one is run in a safe form:

* ``engine serve`` / ``engine`` (the demo) with ``--check-config`` appended: the same
  validation as the start (every rule is in the registry), without binding or forking.
  Handler paths that stand for the reader's code (``myapp.handlers:Handler``,
  ``app:Handler``) become the echo example; ``--config engine.toml`` (or a missing
  /etc/... file) reads the TOML example of docs/cli.md; ``--certfile``/``--keyfile``
  get a test certificate made by trustme.
* ``engine status`` against the address shown, where no engine runs: the options are
  accepted (exit 1, "cannot read the status endpoint", not the usage error 2).
* ``python -m loadtests.run_locust``: its options exist (``--help``), and the
  ``--engine-arg`` values are checked on the engine the runner starts, the demo with the
  runner's own arguments, with ``--check-config``.
* other ``python -m loadtests.*`` commands: their options exist (``--help``), and the
  scenario names given exist (``--list``); ``python -m engine.config.docs`` runs for real.

Commands that install packages, signal a running engine or need one to talk to are
skipped, each with its reason (``SKIPPED``).
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from engine.config.docs import render
from tests.kit import ROOT

DOCS = ROOT / "docs"
ECHO = "engine.examples.echo:EchoHandler"
SHELL_BLOCKS = {"", "console", "sh", "shell", "bash"}
PROGRAMS = {"engine", "python", "pip", "apt-get", "kill", "systemd-socket-activate",
            "printf", "curl", "nc"}
# Handler paths that stand for the reader's own code.
PLACEHOLDER_HANDLER = re.compile(r"^(myapp\.[\w.]+|mymod|app):\w+$")
# Why a command is not run, by its program.
SKIPPED = {
    "pip": "installs packages",
    "apt-get": "installs packages",
    "kill": "signals a running engine",
    "printf": "talks to a running engine's status socket",
    "curl": "talks to a running engine's status endpoint",
}
# The engine that loadtests.run_locust starts (loadtests/run_locust.py, Engine).
LOCUST_ENGINE = ["--bind", "127.0.0.1:0", "--log-level", "warning"]


@dataclass(frozen=True)
class DocCommand:
    """One command line of the docs, and where it is."""

    where: str
    text: str
    env: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.where


def _joined(lines: list[str]) -> list[tuple[int, str]]:
    """Lines with backslash continuations joined, with the first line's index."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for index, line in enumerate(lines):
        if pending is not None:
            start, text = pending
            text = text + " " + line.strip()
        else:
            start, text = index, line
        if text.rstrip().endswith("\\"):
            pending = (start, text.rstrip()[:-1])
            continue
        pending = None
        joined.append((start, text))
    return joined


def markdown_commands(path: Path) -> list[DocCommand]:
    """The shell commands of *path*'s fenced code blocks."""
    text = path.read_text()
    found = []
    for block in re.finditer(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", text, re.S | re.M):
        if block.group(1) not in SHELL_BLOCKS:
            continue
        first_line = text[: block.start(2)].count("\n") + 1
        for index, line in _joined(block.group(2).splitlines()):
            stripped = line.strip()
            if block.group(1) == "console":
                if not stripped.startswith("$ "):
                    continue  # output
                stripped = stripped[2:]
            words = stripped.split()
            program = next((w for w in words if "=" not in w), "")
            if program not in PROGRAMS:
                continue  # output, or a diagram
            found.append(DocCommand(f"{path.relative_to(ROOT)}:{first_line + index}",
                                    stripped))
    return found


def systemd_commands() -> list[DocCommand]:
    path = DOCS / "systemd" / "engine.service"
    found = []
    for index, line in _joined(path.read_text().splitlines()):
        if line.startswith("ExecStart="):
            command = line[len("ExecStart="):]
            found.append(DocCommand(f"{path.relative_to(ROOT)}:{index + 1}",
                                    command.replace("/srv/myapp/venv/bin/engine", "engine")))
    return found


def kubernetes_commands() -> list[DocCommand]:
    path = DOCS / "kubernetes" / "engine.yaml"
    found = []
    for document in yaml.safe_load_all(path.read_text()):
        containers = (document or {}).get("spec", {}).get("template", {}).get(
            "spec", {}).get("containers", [])
        for container in containers:
            env = {item["name"]: str(item["value"]) for item in container.get("env", [])}
            argv = [*container.get("command", []), *container.get("args", [])]
            where = f"{path.relative_to(ROOT)}: container {container['name']}"
            found.append(DocCommand(where, shlex.join(argv), env))
            probe = container.get("livenessProbe", {}).get("exec", {}).get("command")
            if probe:
                found.append(DocCommand(where + " livenessProbe", shlex.join(probe)))
    return found


def doc_commands() -> list[DocCommand]:
    commands = [c for md in sorted(DOCS.glob("*.md")) for c in markdown_commands(md)]
    return commands + systemd_commands() + kubernetes_commands()


COMMANDS = doc_commands()


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run(
        argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@functools.cache
def module_help(module: str) -> str:
    result = run([sys.executable, "-m", module, "--help"], ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def check_engine(args: list[str], env: dict[str, str], cwd: Path) -> None:
    """``engine ARGS`` as the docs show it, in its safe form (see the module docstring)."""
    args = _with_test_certificate([_config_path(arg, cwd) for arg in args], cwd)
    if args[:1] == ["status"]:
        result = run([sys.executable, "-m", "engine", *args], cwd, env)
        assert result.returncode == 1, result.stderr
        assert "cannot read the status endpoint" in result.stderr, result.stderr
        return
    if args[:1] == ["serve"] and len(args) > 1 and PLACEHOLDER_HANDLER.match(args[1]):
        args = ["serve", ECHO, *args[2:]]
    if "--check-config" not in args:
        args = [*args, "--check-config"]
    result = run([sys.executable, "-m", "engine", *args], cwd, env)
    assert result.returncode == 0, result.stderr
    assert "(imports fine)" in result.stdout


def _with_test_certificate(args: list[str], cwd: Path) -> list[str]:
    """The reader's certificate and key (``--certfile /etc/ssl/site.pem``) become a
    test certificate made by trustme."""
    if "--certfile" not in args:
        return args
    import trustme

    leaf = trustme.CA().issue_cert("localhost")
    files = {"--certfile": cwd / "site.pem", "--keyfile": cwd / "site.key"}
    leaf.cert_chain_pems[0].write_to_path(str(files["--certfile"]))
    leaf.private_key_pem.write_to_path(str(files["--keyfile"]))
    return [
        str(files[args[i - 1]]) if i > 0 and args[i - 1] in files else arg
        for i, arg in enumerate(args)
    ]


def _config_path(arg: str, cwd: Path) -> str:
    """A config file of the reader's machine (/etc/app/engine.toml) becomes the
    docs/cli.md example in *cwd*."""
    if arg.endswith(".toml") and arg.startswith("/") and not Path(arg).exists():
        return str(cwd / "engine.toml")
    return arg


def check_loadtests(module: str, args: list[str], cwd: Path) -> None:
    """Options that exist; for run_locust, engine arguments the engine accepts."""
    usage = module_help(module)
    for arg in args:
        if arg.startswith("--"):
            option = arg.split("=", 1)[0]
            assert re.search(rf"{re.escape(option)}\b", usage), f"{module} has no {option}"
    if module == "loadtests.run_locust":
        engine_args = [arg.split("=", 1)[1] for arg in args if arg.startswith("--engine-arg=")]
        check_engine([*LOCUST_ENGINE, *engine_args], {}, cwd)
    if module == "loadtests.reliability":
        listed = run([sys.executable, "-m", module, "--list"], ROOT)
        assert listed.returncode == 0, listed.stderr
        names = {line.split(":", 1)[0] for line in listed.stdout.splitlines()}
        for option, value in itertools.pairwise(args):
            if option == "--scenario":
                assert value in names, f"no scenario {value!r}: {sorted(names)}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory holding docs/cli.md's TOML example as engine.toml."""
    example = re.search(r"```toml\n(.*?)```", (DOCS / "cli.md").read_text(), re.S)
    assert example, "docs/cli.md has a TOML example"
    (tmp_path / "engine.toml").write_text(example.group(1))
    return tmp_path


def test_the_docs_have_commands_to_check() -> None:
    programs = {shlex.split(c.text, comments=True)[0] for c in COMMANDS}
    assert {"engine", "python"} <= programs
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_doc_command_runs(command: DocCommand, workdir: Path) -> None:
    words = shlex.split(command.text.replace("[", "").replace("]", "").replace("<tmp>", "out"),
                        comments=True)
    env = dict(command.env)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if "|" in words or "&&" in words:
        words = words[: min(words.index(s) for s in ("|", "&&") if s in words)]
    program = words[0]
    if program in SKIPPED:
        pytest.skip(SKIPPED[program])
    if program == "systemd-socket-activate":  # the wrapped command is what we check
        words = words[words.index("python"):]
        program = "python"
    if program == "engine":
        check_engine(words[1:], env, workdir)
    elif program == "python" and words[1] == "-m":
        module, args = words[2], words[3:]
        if module == "engine":
            check_engine(args, env, workdir)
        elif module == "engine.config.docs":
            result = run([sys.executable, "-m", module], workdir, env)
            assert result.returncode == 0 and result.stdout == render(), result.stderr
        elif module.startswith("loadtests."):
            check_loadtests(module, args, workdir)
        else:
            pytest.fail(f"no safe form for python -m {module}: add one")
    else:
        pytest.fail(f"no safe form for {program}: add one, or a reason to SKIPPED")
