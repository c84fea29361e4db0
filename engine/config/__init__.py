"""Settings: one typed, validated registry that every front end derives from."""

from engine.config.settings import (
    ENV_PREFIX,
    SECTIONS,
    Settings,
    build,
    class_attr_names,
    cli_flag,
    env_var,
    registry,
    resolved_workers,
    validate,
)

__all__ = [
    "ENV_PREFIX",
    "SECTIONS",
    "Settings",
    "build",
    "class_attr_names",
    "cli_flag",
    "env_var",
    "registry",
    "resolved_workers",
    "validate",
]
