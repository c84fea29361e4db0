"""Build the workers' connection intake (PROXY header, access lists, TLS, client timeout).

:func:`build_intake` is called once by the master, before it forks and before it drops
privileges; the :class:`workers.intake.Intake` it returns is inherited by every worker,
which calls ``admit()`` on each connection before ``verify_request``.
"""

from __future__ import annotations

import socket
from typing import Any

from engine import tls
from engine.config import Settings
from engine.config.settings import check_stream_only
from engine.errors import ConfigError
from workers.intake import Intake, set_listener_timeout


def build_intake(settings: Settings, server: Any) -> Intake | None:
    """The intake for *server*, or None when no intake setting is in use.

    None keeps the worker's hot path exactly as without this feature. For a datagram
    server only ``allow_from`` / ``deny_from`` apply (``client_timeout`` is a
    per-connection socket timeout: a datagram server has one shared socket).

    Raises:
        engine.errors.ConfigError: a TLS file is missing or invalid (naming
            ``certfile``, ``keyfile`` or ``ca_certs``), or TLS / PROXY protocol is
            asked of a datagram server.
    """
    context = tls.server_context(settings, server)
    if getattr(server, "socket_type", socket.SOCK_STREAM) == socket.SOCK_DGRAM:
        return _datagram_intake(settings, context)
    enabled = (
        context is not None
        or settings.proxy_protocol
        or settings.allow_from
        or settings.deny_from
        or settings.client_timeout is not None
    )
    listeners = [
        sock for sock in (getattr(server, "socket", None), *getattr(server, "extra_listeners", ()))
        if isinstance(sock, socket.socket)
    ]
    if not enabled:
        set_listener_timeout(listeners, None)  # an earlier master's, inherited
        return None
    intake = Intake(
        handshake_timeout=settings.handshake_timeout,
        proxy_protocol=settings.proxy_protocol,
        proxy_allow_from=settings.proxy_allow_from,
        allow_from=settings.allow_from,
        deny_from=settings.deny_from,
        client_timeout=settings.client_timeout,
        ssl_context=context,
    )
    # Now, before "serving": a connection takes its listener's SO_RCVTIMEO when the
    # kernel queues it, and one queued before the first worker boots must have it too.
    # Every worker sets it again at its boot (an upgrade may have changed it).
    intake.inherit_timeout(listeners, blocking=settings.worker_class == "sync")
    return intake


def _datagram_intake(settings: Settings, context: Any) -> Intake | None:
    check_stream_only(settings, datagram=True)  # the registry's rule
    if context is not None:  # not a setting: an ssl_context given in code
        raise ConfigError(
            "ssl_context", context, "unset for a datagram server (it applies to stream "
            "connections)",
        )
    if not (settings.allow_from or settings.deny_from):
        return None
    return Intake(allow_from=settings.allow_from, deny_from=settings.deny_from)
