"""Make engine stand in for ``socketserver`` in this interpreter, before anything imports it.

Loaded at interpreter start-up by the ``sitecustomize`` of the scratch virtualenv that
:mod:`tests.conformance.pypi_users` builds, so that a package's own test suite, and every
server process it starts, imports the chosen ``socketserver``. ``ENGINE_STANDS_IN`` says
which:

``stdlib``
    nothing changes (the reference run);
``forking``
    the stdlib's, with ``ForkingMixIn`` and the Forking servers in place of the
    Threading ones (the reference for a server whose requests run in other processes);
``engine``
    engine's own ``socketserver`` (``engine.classic``);
``prefork``
    ``engine``, with engine's Prefork classes in place of the Forking *and* the
    Threading ones: ``ForkingMixIn``/``ThreadingMixIn`` → ``PreforkMixIn``,
    ``ForkingTCPServer``/``ThreadingTCPServer`` → ``PreforkTCPServer``, and likewise
    for UDP and the Unix variants.
"""

from __future__ import annotations

import os
import sys
import types

MODES = ("stdlib", "forking", "engine", "prefork")
TRANSPORTS = ("TCPServer", "UDPServer", "UnixStreamServer", "UnixDatagramServer")


def socketserver_module(mode: str) -> types.ModuleType | None:
    """The module to install as ``socketserver`` for *mode* (None: the stdlib's, as is)."""
    if mode == "stdlib":
        return None
    if mode == "forking":
        import socketserver

        module = types.ModuleType("socketserver", socketserver.__doc__)
        module.__dict__.update(vars(socketserver))
        module.ThreadingMixIn = socketserver.ForkingMixIn  # type: ignore[attr-defined]
        for transport in TRANSPORTS:
            forking = getattr(socketserver, f"Forking{transport}", None)
            if forking is not None:
                setattr(module, f"Threading{transport}", forking)
        return module
    import engine
    from engine import classic

    module = types.ModuleType("socketserver", classic.__doc__)
    module.__dict__.update({k: v for k, v in vars(classic).items() if not k.startswith("__")})
    module.__all__ = list(classic.__all__)  # type: ignore[attr-defined]
    module.__file__ = classic.__file__
    if mode == "prefork":
        module.ForkingMixIn = module.ThreadingMixIn = engine.PreforkMixIn  # type: ignore[attr-defined]
        for transport in TRANSPORTS:
            prefork = getattr(engine, f"Prefork{transport}")
            setattr(module, f"Forking{transport}", prefork)
            setattr(module, f"Threading{transport}", prefork)
    return module


def install(mode: str) -> None:
    """Install the ``socketserver`` of *mode* in ``sys.modules``.

    Raises:
        ValueError: *mode* is not one of :data:`MODES`, or socketserver was imported
            already (the stand-in would come too late for modules bound to it).
    """
    if mode not in MODES:
        raise ValueError(f"ENGINE_STANDS_IN={mode!r}: expected one of {', '.join(MODES)}")
    module = socketserver_module(mode)
    if module is None:
        return
    if "socketserver" in sys.modules and mode != "forking":
        raise ValueError("socketserver was imported before the stand-in was installed")
    sys.modules["socketserver"] = module


if os.environ.get("ENGINE_STANDS_IN"):
    install(os.environ["ENGINE_STANDS_IN"])
