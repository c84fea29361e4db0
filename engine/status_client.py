"""The client side of the status endpoint: fetch it, check it, and print it as a table.

Used by ``engine status``; the endpoint itself is :mod:`engine.status`. The endpoint
is trusted no further than any peer: its answer is read within one deadline and a
size cap, must be a JSON object of the expected shape (or plain text, for Prometheus),
and every string from it is shown with what is not printable escaped.
"""

from __future__ import annotations

import codecs
import errno
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from engine.config.validators import parse_bind
from workers.protocol import printable

STATUS_TIMEOUT = 5.0
# The answer's size cap. A real answer is a few hundred bytes per worker (about
# 2 MiB for 4096 workers): 16 MiB leaves room, and bounds what an endpoint that
# streams without end can make the client hold.
STATUS_MAX_BYTES = 16 * 1024 * 1024
# The shell's status for "killed by SIGPIPE", as `cat` or `grep` would end: stdout
# was closed before everything was written (`engine status | head -1`).
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


class StatusError(ValueError):
    """The endpoint's answer is not a status document (the message says why)."""


def fetch_status(
    spec: str, kind: str = "json", timeout: float = STATUS_TIMEOUT,
    limit: int = STATUS_MAX_BYTES,
) -> str:
    """Send ``<kind>\\n`` to the status endpoint at *spec*; return all it sends back.

    The whole exchange (connect, send, read to EOF) must end within *timeout*
    seconds, and the answer must be at most *limit* bytes.

    Raises:
        OSError: cannot connect, no complete answer within *timeout* (TimeoutError),
            or an answer over *limit* bytes (errno EMSGSIZE).
    """
    family, address = parse_bind(spec)
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(_remaining(deadline))
            sock.connect(address)
            sock.settimeout(_remaining(deadline))
            sock.sendall(kind.encode() + b"\n")
            answer = _read_to_eof(sock, deadline, limit)
    except TimeoutError:
        raise TimeoutError(
            errno.ETIMEDOUT, f"no complete answer within {timeout:g}s"
        ) from None
    if not answer:
        raise OSError(errno.ECONNRESET, "the endpoint closed without answering")
    return answer.decode("utf-8", "replace")


def _remaining(deadline: float) -> float:
    """Seconds left until *deadline*; TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _read_to_eof(sock: socket.socket, deadline: float, limit: int) -> bytearray:
    """Everything *sock* sends until EOF, by *deadline*, at most *limit* bytes.

    The timeout is re-armed before each read: a per-read timeout alone lets an
    endpoint that sends a byte now and then keep the client for ever.
    """
    answer = bytearray()
    while True:
        sock.settimeout(_remaining(deadline))
        # One byte more than the cap tells "exactly the cap" from "over it".
        chunk = sock.recv(min(65536, limit + 1 - len(answer)))
        if not chunk:
            return answer
        answer += chunk
        if len(answer) > limit:
            raise OSError(errno.EMSGSIZE, f"the answer is larger than {_size_limit(limit)}")


def _size_limit(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit} bytes"


# --- checking the answer ---


def parse_status(body: str) -> dict[str, Any]:
    """The status document in *body*: a JSON object whose ``master`` (if there) is an
    object, and ``workers`` and ``listeners`` (if there) are arrays of objects.

    A key that is missing or null counts as absent (an older engine may not send it).

    Raises:
        StatusError: *body* is not JSON (NaN and Infinity are not JSON), is nested too
            deeply to parse, or is JSON of another shape.
    """
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise StatusError("invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise StatusError(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StatusError(f"{_json_type(data)}, not a JSON object with the engine's status")
    _check_member(data, "master", dict)
    for key in ("workers", "listeners"):
        if _check_member(data, key, list):
            for index, entry in enumerate(data[key]):
                if not isinstance(entry, dict):
                    raise StatusError(
                        f'"{key}" with {_json_type(entry)} at index {index}, not an object'
                    )
    return data


def check_prometheus(body: str) -> str:
    """*body* if it is plain text, as the Prometheus exposition format is: printable
    lines (tabs allowed). Printed as sent, an escape sequence in it would drive the
    user's terminal.

    Raises:
        StatusError: a character that is not printable, named with its line.
    """
    for number, line in enumerate(body.split("\n"), 1):
        if not line.replace("\t", " ").isprintable():
            raise StatusError(
                f"a character that is not printable text in its Prometheus answer, line "
                f"{number}: {printable(line[:200])}"
            )
    return body


def _reject_constant(name: str) -> Any:
    # Python's json reads NaN, Infinity and -Infinity; JSON has none of them, and the
    # endpoint never sends them (engine.status.render_json refuses to).
    raise ValueError(f"{name} is not a JSON value")


def _check_member(data: Mapping[str, Any], key: str, kind: type) -> bool:
    """Is ``data[key]`` there (not null)? StatusError if it is of another type than *kind*."""
    value = data.get(key)
    if value is None:
        return False
    if not isinstance(value, kind):
        expected = "an object" if kind is dict else "an array"
        raise StatusError(f'"{key}" as {_json_type(value)}, not {expected}')
    return True


def _json_type(value: Any) -> str:
    """How JSON names the type of *value*: "an array", "a string", "null"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: a bool is an int in Python
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


# --- writing it out ---


def write_output(text: str) -> int:
    """Write *text* (and a final newline if it lacks one) to stdout and flush it.

    Returns 0, or :data:`EXIT_BROKEN_PIPE`, quietly, when stdout was closed before
    everything was written (the reader of a pipe exited): like the usual command-line
    tools, which SIGPIPE ends without a message; 1 (said on stderr) when the process
    was started with no stdout at all.
    """
    if sys.stdout is None:  # started with fd 1 closed (`>&-`): nowhere to write
        print("engine: error: standard output is closed", file=sys.stderr)
        return 1
    if not text.endswith("\n"):
        text += "\n"
    # A stdout that cannot encode all of it (a Latin-1 or ASCII locale) gets escapes,
    # not a UnicodeEncodeError.
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    text = text.encode(encoding, _UNENCODABLE).decode(encoding)
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python's recipe: stdout to /dev/null, so the flush at exit, which would
        # find the same data still buffered, does not fail again with a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return 0


def _u_escapes(error: UnicodeError) -> tuple[str, int]:
    """A codec error handler: what cannot be encoded as ``\\uXXXX`` (a surrogate pair
    above U+FFFF). Those are JSON's own escapes, and non-ASCII text is only in strings
    in JSON: ``--json`` output escaped so still reads back the same."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    escaped = []
    for char in error.object[error.start:error.end]:
        code = ord(char)
        if code > 0xFFFF:
            code -= 0x10000
            escaped.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            escaped.append(f"\\u{code:04x}")
    return "".join(escaped), error.end


_UNENCODABLE = "engine.status_client.u-escapes"
codecs.register_error(_UNENCODABLE, _u_escapes)


# --- the table ---


# No count, size or duration in a status document comes near this (in seconds, 31
# million years): a larger one is shown as "-", not as a number hundreds of digits long.
_LARGEST_SHOWN = 1e15


def _number(value: Any) -> float | None:
    """*value* as a float the table can show, or None: not a number, not finite, or
    beyond :data:`_LARGEST_SHOWN`."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return number if abs(number) < _LARGEST_SHOWN else None  # nan and inf fail too


def _duration(value: Any) -> str:
    seconds = _number(value)
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}m{secs:02d}s"


def _size(value: Any) -> str:
    count = _number(value)
    if count is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if abs(count) < 1024 or unit == "G":
            return f"{count:.0f}{unit}" if unit == "B" else f"{count:.1f}{unit}"
        count /= 1024
    return "-"  # pragma: no cover - the loop always returns


def _plain(value: Any) -> str:
    """A value as one printable cell: ``-`` for none, floats to one decimal."""
    if value is None or value == "":
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = _number(value)
        if number is None:
            return "-"
        return f"{value:.1f}" if isinstance(value, float) else str(value)
    return printable(str(value))


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
    # Connections in flight: a gevent or threads worker serves many, CLIENT shows one.
    # Last, so that scripts reading the columns before it by position keep working.
    ("CONNS", "active", _plain, True),
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
            queues.append(f"{name}{_plain(entry['queued'])} "
                          f"(max {_plain(entry.get('max_queued'))}, "
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

