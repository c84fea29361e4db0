"""Process titles, as ``ps`` shows them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import setproctitle

from workers.protocol import format_address

__all__ = ["format_address", "master_title", "titled", "worker_title"]


def master_title(name: str, address: Any) -> str:
    return f"engine: master [{name}] {format_address(address)}"


def worker_title(slot: int, name: str) -> str:
    return f"engine: worker {slot} [{name}]"


@contextlib.contextmanager
def titled(title: str) -> Iterator[None]:
    """Set this process's title for the duration of the block, then restore it."""
    try:
        before: str | None = setproctitle.getproctitle()
    except UnicodeDecodeError:  # argv holds bytes that are not UTF-8: leave it be
        before = None
    setproctitle.setproctitle(title)
    try:
        yield
    finally:
        if before is not None:
            setproctitle.setproctitle(before)
