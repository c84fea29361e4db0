"""Process titles, as ``ps`` shows them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import setproctitle


def format_address(address: Any) -> str:
    """``127.0.0.1:8000``, ``[::1]:8000`` or ``unix:/run/app.sock``."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(address, bytes):
        address = address.decode("utf-8", "replace")
    return f"unix:{address}"


def master_title(name: str, address: Any) -> str:
    return f"engine: master [{name}] {format_address(address)}"


def worker_title(slot: int, name: str) -> str:
    return f"engine: worker {slot} [{name}]"


@contextlib.contextmanager
def titled(title: str) -> Iterator[None]:
    """Set this process's title for the duration of the block, then restore it."""
    before = setproctitle.getproctitle()
    setproctitle.setproctitle(title)
    try:
        yield
    finally:
        setproctitle.setproctitle(before)
