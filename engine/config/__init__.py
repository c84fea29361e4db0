"""Settings: one typed, validated registry that every front end derives from."""

from engine.config.settings import (
    ENV_PREFIX,
    SECTIONS,
    Settings,
    build,
    class_attr_names,
    cli_flag,
    connection_slots,
    env_var,
    registry,
    resolved_workers,
    validate,
)
from engine.config.sources import (
    Origin,
    Resolved,
    load_settings,
    read_env,
    read_file,
    resolve,
    with_source,
)

__all__ = [
    "ENV_PREFIX",
    "SECTIONS",
    "Origin",
    "Resolved",
    "Settings",
    "build",
    "class_attr_names",
    "cli_flag",
    "connection_slots",
    "env_var",
    "load_settings",
    "read_env",
    "read_file",
    "registry",
    "resolve",
    "resolved_workers",
    "validate",
    "with_source",
]
