"""Generate ``docs/settings.md`` from the registry: ``python -m engine.config.docs``.

The page is derived from :class:`~engine.config.settings.Settings` alone (sections,
types, defaults, help), like the ``--help`` of :mod:`engine.cli`, so neither can drift
from the code; ``tests/unit/test_config_docs.py`` fails when the committed page is
stale.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from engine.config import validators
from engine.config.settings import SECTIONS, choices, cli_flag, env_var, registry

HEADER = """\
# Settings

<!-- Generated from engine/config/settings.py by `python -m engine.config.docs > docs/settings.md`.
     Do not edit by hand: tests/unit/test_config_docs.py fails when this page is stale. -->

Every setting can be given four ways. From highest precedence to lowest:

1. **command line**: `engine serve MODULE:CLASS --max-children 8` (see [cli.md](cli.md));
2. **environment**: `ENGINE_MAX_CHILDREN=8`; list settings take commas
   (`ENGINE_BIND="127.0.0.1:9000,unix:/tmp/x.sock"`);
3. **config file**: `engine serve --config engine.toml`, a TOML file whose top-level
   keys are the setting names (`max_children = 8`, `bind = ["127.0.0.1:9000"]`);
   there is no `[engine]` table, and an unknown key is an error;
4. **defaults**, below, which are also the class attributes of the `Prefork*Server`
   classes (settings marked *class attribute*), overridable in a subclass or on the
   instance (how `PreforkMixIn` reads them: [classic-api.md](classic-api.md)).

**Durations** (the settings of type `float` below, in seconds, and `engine status
--timeout`) take a plain number of seconds (`30`, `0.5`) or one number with a unit:
`250ms`, `30s`, `5m`, `1h` (units are case-insensitive), from every source: `--graceful-timeout 5m`,
`ENGINE_IDLE_TIMEOUT=250ms`, `request_timeout = "1h"` in TOML, or a class attribute
`worker_timeout = "30s"`. `--check-config` shows them in seconds.

`engine serve --check-config` prints the resolved value of every setting and where it
came from. An invalid value, from any source, stops the command with exit status 2 and
a message naming the setting, the value and what is allowed.
"""


def is_boolean(field: dataclasses.Field[Any]) -> bool:
    """A yes/no setting: ``--flag`` / ``--no-flag`` on the command line."""
    return field.metadata["validator"] is validators.boolean


def is_list(field: dataclasses.Field[Any]) -> bool:
    """A list setting: a repeatable flag, a comma-separated environment variable."""
    return field.metadata["validator"] in (validators.bind_list, validators.cidr_list)


def format_value(value: Any) -> str:
    """A setting's value as a user writes it: ``none``, ``true``, ``30``, ``a, b``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ", ".join(format_value(item) for item in value)
    return str(value)


def flag_usage(field: dataclasses.Field[Any]) -> str:
    """How the command line spells a setting: ``--udp / --no-udp``, ``--bind ADDRESS``."""
    flag = cli_flag(field.name)
    if is_boolean(field):
        return f"{flag} / --no-{flag[2:]}"
    metavar = field.metadata["metavar"] or field.name.upper()
    return f"{flag} {metavar}"


def _cell(text: str) -> str:
    # A table cell is one line, and "|" would end it.
    return " ".join(text.split()).replace("|", "\\|")


def _type_name(field: dataclasses.Field[Any]) -> str:
    words = choices(field.name)
    if words is not None:  # a Literal type: its values are what a user writes
        return " | ".join(f'"{word}"' for word in words)
    return str(field.type)  # the annotation as written (postponed evaluation)


def render() -> str:
    """The whole ``docs/settings.md`` page, as Markdown."""
    lines = [HEADER]
    fields = list(registry())
    for section, title in SECTIONS.items():
        lines += [f"## {title}", ""]
        lines.append("| Setting | Type | Default | CLI flag | Env var | TOML key | Help |")
        lines.append("|---|---|---|---|---|---|---|")
        for field in fields:
            if field.metadata["section"] != section:
                continue
            help_text = field.metadata["help"]
            if field.metadata["class_attr"]:
                help_text += " *Class attribute.*"
            env_text = f"`{env_var(field.name)}`" + (" (comma-separated)" if is_list(field) else "")
            row = [
                f"`{field.name}`",
                f"`{_type_name(field)}`",
                f"`{format_value(field.default)}`",
                f"`{flag_usage(field)}`" + (" (repeatable)" if is_list(field) else ""),
                env_text,
                f"`{field.name}`",
                help_text,
            ]
            lines.append("| " + " | ".join(_cell(cell) for cell in row) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    """Print the page on stdout."""
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
