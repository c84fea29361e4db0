"""The client side of the status endpoint: fetch it, and print it as a table.

Used by ``engine status``; the endpoint itself is :mod:`engine.status`.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Mapping
from typing import Any

from engine.config.validators import parse_bind

STATUS_TIMEOUT = 5.0


def fetch_status(spec: str, kind: str = "json", timeout: float = STATUS_TIMEOUT) -> str:
    """Send ``<kind>\\n`` to the status endpoint at *spec*; return all it sends back.

    Raises:
        OSError: cannot connect, or no complete answer within *timeout*.
    """
    family, address = parse_bind(spec)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(kind.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    if not chunks:
        raise OSError(errno.ECONNRESET, "the endpoint closed without answering")
    return b"".join(chunks).decode("utf-8", "replace")


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}m{secs:02d}s"


def _size(count: Any) -> str:
    if not isinstance(count, (int, float)) or isinstance(count, bool):
        return "-"
    for unit in ("B", "K", "M", "G"):
        if abs(count) < 1024 or unit == "G":
            return f"{count:.0f}{unit}" if unit == "B" else f"{count:.1f}{unit}"
        count /= 1024
    return "-"  # pragma: no cover - the loop always returns


def _plain(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


# (heading, JSON key, formatter, right-aligned)
_COLUMNS: list[tuple[str, str, Callable[[Any], str], bool]] = [
    ("SLOT", "slot", _plain, True),
    ("PID", "pid", _plain, True),
    ("STATE", "state", _plain, False),
    ("REQS", "requests", _plain, True),
    ("IN", "bytes_in", _size, True),
    ("OUT", "bytes_out", _size, True),
    ("CLIENT", "client", _plain, False),
    ("REQ AGE", "request_age", _duration, True),
    ("AGE", "age", _duration, True),
    ("RSS", "rss", _size, True),
    ("CPU%", "cpu_percent", _plain, True),
]


def _capacity_summary(master: Mapping[str, Any], listeners: Any) -> str:
    """PHP-FPM's "listen queue" and "max children reached", appended to the workers line.

    Empty for an engine from before these counters. On the same line, not new ones:
    scripts that read the table by line number keep working.
    """
    if "max_children_reached" not in master:
        return ""
    parts = []
    if master.get("pool_full"):
        parts.append("POOL FULL" + (", clients waiting" if master.get("clients_waiting") else ""))
    parts.append(f"max children reached {_plain(master.get('max_children_reached'))}")
    entries = [e for e in listeners if isinstance(e, Mapping)] if isinstance(
        listeners, list) else []
    queues = []
    for entry in entries:
        name = f"{_plain(entry.get('address'))} " if len(entries) > 1 else ""
        if entry.get("queued") is None:
            queues.append(f"{name}not reported")
        else:
            queues.append(f"{name}{entry['queued']} (max {_plain(entry.get('max_queued'))}, "
                          f"backlog {_plain(entry.get('backlog'))})")
    if queues:
        parts.append("listen queue " + ", ".join(queues))
    return "; " + "; ".join(parts)


def format_status(data: Mapping[str, Any]) -> str:
    """The status JSON as a summary line and one row per worker; missing values are ``-``."""
    master = data.get("master") or {}
    workers = [w for w in data.get("workers") or [] if isinstance(w, Mapping)]
    states: dict[str, int] = {}
    for worker in workers:
        state = _plain(worker.get("state"))
        states[state] = states.get(state, 0) + 1
    summary = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    lines = [
        f"engine master pid {_plain(master.get('pid'))} [{_plain(master.get('name'))}] "
        f"on {_plain(master.get('address'))}: {_plain(master.get('state'))}, "
        f"{_plain(master.get('pool_mode'))} pool, version {_plain(master.get('version'))}",
        f"uptime {_duration(master.get('uptime'))}, generation "
        f"{_plain(master.get('generation'))}, target {_plain(master.get('target'))} "
        f"workers (max {_plain(master.get('max_children'))}), master RSS "
        f"{_size(master.get('rss'))}",
        f"{len(workers)} workers" + (f": {summary}" if summary else "")
        + _capacity_summary(master, data.get("listeners")),
        "",
    ]
    table = [[heading for heading, *_ in _COLUMNS]]
    table += [[fmt(worker.get(key)) for _, key, fmt, _ in _COLUMNS] for worker in workers]
    widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS))]
    for row in table:
        cells = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, (*_, right) in zip(row, widths, _COLUMNS, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)

