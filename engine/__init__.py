"""engine: a prefork worker-pool server engine with the whole socketserver API.

``engine`` implements every class of the standard library's ``socketserver`` (see
:mod:`engine.classic`) and adds :class:`PreforkMixIn` and the ``Prefork*`` servers: a
master that binds once, preforks a bounded pool of workers, and supervises them.
Replacing ``ForkingTCPServer`` by ``PreforkTCPServer`` is the whole migration.
"""

from __future__ import annotations

from engine.classic import *  # noqa: F403 - the classic API is re-exported whole
from engine.classic import __all__ as _classic_all
from engine.errors import ConfigError, EngineError, MasterFatalError
from engine.prefork import (
    PreforkMixIn,
    PreforkTCPServer,
    PreforkUDPServer,
    PreforkUnixDatagramServer,
    PreforkUnixStreamServer,
)
from engine.version import __version__ as __version__

__all__ = [
    *_classic_all,
    "ConfigError",
    "EngineError",
    "MasterFatalError",
    "PreforkMixIn",
    "PreforkTCPServer",
    "PreforkUDPServer",
    "PreforkUnixDatagramServer",
    "PreforkUnixStreamServer",
]
