"""docs/settings.md is generated from the registry and must be current."""

from __future__ import annotations

import re
from pathlib import Path

from engine.config import cli_flag, env_var, registry, resolve
from engine.config.docs import render
from tests.kit import ROOT

SETTINGS_PAGE = ROOT / "docs" / "settings.md"


def test_settings_page_is_current() -> None:
    assert SETTINGS_PAGE.read_text() == render(), (
        "docs/settings.md is stale: regenerate it with "
        "`python -m engine.config.docs > docs/settings.md`"
    )


def test_every_setting_is_documented_with_its_spellings() -> None:
    page = render()
    for field in registry():
        row = next(line for line in page.splitlines() if line.startswith(f"| `{field.name}` |"))
        assert cli_flag(field.name) in row and env_var(field.name) in row
        assert field.metadata["help"].split()[0] in row


def test_generator_runs_as_a_module() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "engine.config.docs"], capture_output=True, check=True,
        cwd=ROOT, timeout=30,
    )
    assert result.stdout.decode() == render()


def test_cli_page_config_example_is_valid(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.S)
    assert example, "docs/cli.md has a TOML example"
    path = tmp_path / "example.toml"
    path.write_text(example.group(1))
    settings = resolve({}, env={}, config_path=path).settings
    assert settings.bind == ("127.0.0.1:9000",)
