"""systemd's notification protocol (sd_notify(3)), for ``Type=notify`` services.

The master sends ``READY=1`` once its first workers serve, ``RELOADING=1`` on SIGHUP,
``STOPPING=1`` on a stop, and, after a SIGUSR2 upgrade, the new master sends
``MAINPID=<its pid>`` so that systemd follows it (needs ``NotifyAccess=all``).
Without ``$NOTIFY_SOCKET`` every call does nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket


def notify(*fields: str) -> bool:
    """Send ``KEY=VALUE`` lines to ``$NOTIFY_SOCKET``; True if a message was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto("\n".join(fields).encode(), address)
        return True
    return False
