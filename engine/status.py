"""Live status of the pool, served by the master: JSON and Prometheus text.

:class:`StatusServer` listens on ``status_bind`` (``unix:PATH`` or a loopback
``HOST:PORT``) and is driven by the master's own selector loop: the master registers
:meth:`StatusServer.fileno` for reading and calls :meth:`StatusServer.handle_ready`
when it is readable. There are no threads (the master forks) and nothing blocks for
long: every connection accepted in one call is read and answered through a private
selector, all of them within one short deadline (``client_timeout``, 0.2 s); a client
that is slow to send its request or to read its answer is dropped.

Two protocols share the socket, told apart by the first line:

* a plain line: ``json``, ``prometheus`` (or ``metrics``), or an empty line / EOF
  (which means ``json``); the answer is the document, then the server closes;
* an HTTP/1.x request: ``GET /status`` or ``/status.json`` (JSON), ``GET /metrics``
  (Prometheus text format 0.0.4), anything else 404; ``HEAD`` works too. Answers are
  HTTP/1.0 with ``Content-Length``, then the server closes.

The documents are built by :func:`build_snapshot` (a plain dict, also what JSON
shows) and rendered by :func:`render_json` and :func:`render_prometheus`. The
Prometheus text is written here, not with ``prometheus-client``: the master only
needs to print a few dozen lines in a stable, documented format, and the engine's
runtime dependencies stay psutil and setproctitle (see ``docs/status.md``).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import math
import os
import re
import selectors
import socket
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine import unpatched
from engine.config.validators import parse_bind, status_address
from engine.errors import ConfigError
from engine.health import WorkerHealth
from workers.protocol import WorkerState
from workers.scoreboard import SlotRecord

log = logging.getLogger("engine.status")

SETTING = "status_bind"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"

# Every connection accepted in one handle_ready() call must be answered within this
# many seconds, or it is dropped: the master's loop is stalled at most this long.
CLIENT_TIMEOUT = 0.2
# A request (line, or HTTP request line and headers) longer than this is dropped.
MAX_REQUEST = 8192
# Connections taken per call; more stay in the backlog (the listener stays readable,
# so the master's next select() returns at once and calls handle_ready() again).
MAX_CLIENTS_PER_CALL = 32
BACKLOG = 64

# Worker states that appear in engine_workers{state=...}, always all of them, so a
# state's series does not vanish when its count drops to 0.
COUNTED_STATES = (
    WorkerState.STARTING, WorkerState.IDLE, WorkerState.BUSY, WorkerState.DRAINING,
)

Snapshot = dict[str, Any]


# --- the snapshot ---


def build_snapshot(
    master: Mapping[str, Any],
    records: Sequence[SlotRecord],
    health: Mapping[int, WorkerHealth],
    now: float,
    *,
    master_health: WorkerHealth | None = None,
    capacity: Mapping[str, Any] | None = None,
) -> Snapshot:
    """The status document: the master, then every non-EMPTY scoreboard slot.

    *master* is copied as given, except that a ``started`` value (the master's
    ``time.monotonic()`` at start) becomes ``uptime`` in seconds: a monotonic clock
    reading means nothing outside this machine. The master's own health comes from
    *master_health*, or else from ``health[master["pid"]]``. Worker health fields are
    ``None`` for a worker not sampled yet. *now* is ``time.monotonic()``.

    *capacity* is :meth:`engine.capacity.CapacityMonitor.snapshot`: its counters go
    into ``master`` (with ``listen_queue``, the connections waiting on all listeners,
    ``None`` if no listener reports it) and its listeners become ``listeners``.
    """
    master_out = dict(master)
    started = master_out.pop("started", None)
    if isinstance(started, (int, float)) and "uptime" not in master_out:
        master_out["uptime"] = _seconds(now - started)
    if master_health is None:
        pid = master_out.get("pid")
        master_health = health.get(pid) if isinstance(pid, int) else None
    master_out.update(_health_fields(master_health))

    workers = []
    for record in records:
        if record.state == WorkerState.EMPTY:
            continue
        # request_start is 0.0 outside a request (idle() resets it); a worker told to
        # drain keeps it while it finishes the request it is serving.
        in_request = record.request_start > 0 and record.state in (
            WorkerState.BUSY, WorkerState.DRAINING,
        )
        workers.append({
            "slot": record.slot,
            "pid": record.pid,
            "state": record.state.name.lower(),
            "requests": record.requests,
            "bytes_in": record.bytes_in,
            "bytes_out": record.bytes_out,
            "active": record.active,
            # The scoreboard keeps the last client after the request: hide it then.
            "client": record.client if in_request else "",
            "request_age": _seconds(now - record.request_start) if in_request else None,
            "age": _seconds(now - record.started) if record.started > 0 else None,
            "heartbeat_age": _seconds(now - record.heartbeat) if record.heartbeat > 0 else None,
            **_health_fields(health.get(record.pid)),
        })
    snapshot: Snapshot = {"master": master_out, "workers": workers}
    if capacity is not None:
        listeners = [dict(entry) for entry in capacity.get("listeners", ())]
        known = [entry["queued"] for entry in listeners if entry.get("queued") is not None]
        master_out.update({
            "listen_queue": sum(known) if known else None,
            "max_children_reached": capacity.get("max_children_reached", 0),
            "pool_full": bool(capacity.get("pool_full")),
            "clients_waiting": bool(capacity.get("clients_waiting")),
        })
        snapshot["listeners"] = listeners
    return snapshot


def _seconds(value: float) -> float:
    # Millisecond precision is plenty, and keeps the JSON readable.
    return round(max(value, 0.0), 3)


def _health_fields(health: WorkerHealth | None) -> dict[str, Any]:
    if health is None:
        return {"rss": None, "uss": None, "cpu_percent": None, "open_fds": None,
                "num_threads": None, "ksm_merged": None}
    return {
        "rss": health.rss,
        "uss": health.uss,
        "cpu_percent": round(health.cpu_percent, 1),
        "open_fds": health.open_fds,
        "num_threads": health.num_threads,
        "ksm_merged": health.ksm_merged,
    }


def render_json(snapshot: Snapshot) -> bytes:
    """The snapshot as UTF-8 JSON, one document ending with a newline.

    Raises ValueError for a non-finite float (JSON has no NaN) rather than emit
    something a strict parser rejects.
    """
    text = json.dumps(snapshot, allow_nan=False, default=str, separators=(",", ":"))
    return text.encode("utf-8") + b"\n"


# --- Prometheus text exposition format 0.0.4 ---


@dataclass
class _Family:
    """One metric family: HELP and TYPE once, then all of its samples together."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: Any, **labels: Any) -> None:
        """Add a sample; a missing value (None, not yet sampled) is left out."""
        if value is None or isinstance(value, str):
            return
        self.samples.append(({k: str(v) for k, v in labels.items()}, value))

    def render(self) -> str:
        lines = [
            f"# HELP {self.name} {_escape_help(self.help)}",
            f"# TYPE {self.name} {self.kind}",
        ]
        for labels, value in self.samples:
            if labels:
                pairs = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                lines.append(f"{self.name}{{{pairs}}} {_format_value(value)}")
            else:
                lines.append(f"{self.name} {_format_value(value)}")
        return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    # HELP text escapes backslash and newline (not quotes).
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    # Label values escape backslash, double quote and newline. The format has no escape
    # for other characters that are not printable (a control character in a socket's
    # path): they become U+FFFD, so that the text is safe on a terminal.
    if not text.isprintable():
        text = "".join(c if c.isprintable() or c == "\n" else "\ufffd" for c in text)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))  # shortest round-trip form, which Go's ParseFloat reads


def render_prometheus(snapshot: Snapshot) -> str:
    """The snapshot in the Prometheus text exposition format (version 0.0.4).

    Each metric name is one family with its HELP and TYPE lines and all its samples
    contiguous. Per-worker series are labelled ``slot`` and ``pid``: a replaced worker
    starts new series, so its counters never appear to go backwards.
    """
    master = snapshot.get("master", {})
    workers = snapshot.get("workers", [])
    families: list[_Family] = []

    def family(name: str, kind: str, help: str) -> _Family:
        fam = _Family(name, kind, help)
        families.append(fam)
        return fam

    info = family("engine_info", "gauge", "Constant 1, labelled with the server's "
                  "name, engine version and pool mode.")
    info_labels = {
        key: master[key] for key in ("name", "version", "pool_mode") if key in master
    }
    info.add(1, **info_labels)
    family("engine_generation", "gauge", "Generation of the worker pool; each graceful "
           "restart (SIGHUP) adds one.").add(master.get("generation"))
    family("engine_uptime_seconds", "gauge", "Seconds since the master started."
           ).add(master.get("uptime"))
    family("engine_workers_target", "gauge", "The pool's floor: workers the master "
           "keeps (changed by SIGTTIN/SIGTTOU).").add(master.get("target"))
    family("engine_max_children", "gauge", "Hard cap on live worker processes."
           ).add(master.get("max_children"))
    family("engine_master_rss_bytes", "gauge", "Resident set size of the master."
           ).add(master.get("rss"))
    family("engine_master_uss_bytes", "gauge", "Unique set size of the master "
           "(memory only it uses).").add(master.get("uss"))
    family("engine_master_cpu_percent", "gauge", "CPU use of the master since the "
           "previous health sample, percent of one core.").add(master.get("cpu_percent"))
    family("engine_master_open_fds", "gauge", "File descriptors open in the master."
           ).add(master.get("open_fds"))

    crash_loop = master.get("crash_loop") or {}
    family("engine_crash_loop_boot_failures", "gauge", "Workers in a row that exited "
           "before they booted (the crash-loop backoff's count; 0 once one boots)."
           ).add(crash_loop.get("boot_failures"))
    family("engine_crash_loop_fork_failures", "gauge", "fork() failures in a row "
           "(EAGAIN, ENOMEM); 0 once a fork succeeds.").add(crash_loop.get("fork_failures"))
    family("engine_crash_loop_next_spawn_seconds", "gauge", "Seconds until the master "
           "may fork again (0: not backing off).").add(crash_loop.get("next_spawn_in"))
    family("engine_max_children_reached_total", "counter", "Times the pool became full: "
           "every worker busy with no free connection slot and the pool at its limit "
           "(PHP-FPM's max children reached).").add(master.get("max_children_reached"))
    family("engine_pool_full", "gauge", "1 while every connection slot of the pool is "
           "busy and the pool cannot grow.").add(master.get("pool_full"))
    queue = family("engine_listen_queue", "gauge", "Connections waiting in the "
                   "listener's accept queue (Linux TCP and Unix stream sockets).")
    queue_max = family("engine_listen_queue_max", "gauge", "Most connections seen "
                       "waiting in the listener's accept queue since the master started.")
    backlog = family("engine_listen_backlog", "gauge", "Limit of the listener's accept "
                     "queue (listen backlog, capped by net.core.somaxconn).")
    for listener in snapshot.get("listeners", ()):
        address = listener.get("address", "")
        queue.add(listener.get("queued"), listener=address)
        queue_max.add(listener.get("max_queued"), listener=address)
        backlog.add(listener.get("backlog"), listener=address)

    counts = family("engine_workers", "gauge", "Worker processes by scoreboard state.")
    for counted in COUNTED_STATES:
        name = counted.name.lower()
        counts.add(sum(1 for w in workers if w.get("state") == name), state=name)

    states = family("engine_worker_state", "gauge", "Constant 1 for each worker, "
                   "labelled with its current state.")
    per_worker = [
        ("engine_worker_requests_total", "counter", "requests",
         "Connections (or datagrams) the worker has served."),
        ("engine_worker_bytes_in_total", "counter", "bytes_in",
         "Bytes the worker has received from clients."),
        ("engine_worker_bytes_out_total", "counter", "bytes_out",
         "Bytes the worker has sent to clients."),
        ("engine_worker_active_connections", "gauge", "active",
         "Connections the worker is serving now."),
        ("engine_worker_request_age_seconds", "gauge", "request_age",
         "Seconds the worker has spent in its current request (only busy workers)."),
        ("engine_worker_age_seconds", "gauge", "age", "Seconds since the worker started."),
        ("engine_worker_heartbeat_age_seconds", "gauge", "heartbeat_age",
         "Seconds since the worker last wrote to its scoreboard slot."),
        ("engine_worker_rss_bytes", "gauge", "rss", "Resident set size of the worker."),
        ("engine_worker_uss_bytes", "gauge", "uss",
         "Unique set size of the worker: memory freed if it exited."),
        ("engine_worker_cpu_percent", "gauge", "cpu_percent",
         "CPU use of the worker since the previous health sample, percent of one core."),
        ("engine_worker_open_fds", "gauge", "open_fds",
         "File descriptors open in the worker."),
        ("engine_worker_threads", "gauge", "num_threads", "Threads in the worker process."),
        ("engine_worker_ksm_merged_bytes", "gauge", "ksm_merged",
         "Memory of the worker the kernel's KSM daemon has merged (only with ksm on)."),
    ]
    worker_families = [(family(name, kind, text), key) for name, kind, key, text in per_worker]
    for worker in workers:
        labels = {"slot": worker.get("slot"), "pid": worker.get("pid")}
        states.add(1, **labels, state=worker.get("state"))
        for fam, key in worker_families:
            fam.add(worker.get(key), **labels)
    return "".join(fam.render() for fam in families if fam.samples)


# --- the server ---


@dataclass
class _Client:
    """One accepted connection inside a handle_ready() call."""

    sock: socket.socket
    received: bytearray = field(default_factory=bytearray)
    answer: memoryview | None = None


class _Documents:
    """The documents of one handle_ready() call: one snapshot, each format rendered once."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot_fn = snapshot
        self._snapshot: Snapshot | None = None
        self._bodies: dict[str, bytes | None] = {}

    def get(self, kind: str) -> bytes | None:
        """The "json" or "prometheus" document; None if building it failed."""
        if kind not in self._bodies:
            self._bodies[kind] = self._build(kind)
        return self._bodies[kind]

    def _build(self, kind: str) -> bytes | None:
        try:
            if self._snapshot is None:
                self._snapshot = self._snapshot_fn()
            if kind == "json":
                return render_json(self._snapshot)
            return render_prometheus(self._snapshot).encode("utf-8")
        except Exception:
            # A bug in the snapshot must cost an error answer, never the master.
            log.exception("status: building the %s document failed", kind)
            return None


_HTTP_REQUEST_LINE = re.compile(rb"([A-Z]+) (\S+) HTTP/1\.\d")
_HTTP_REASONS = {200: "OK", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
                 500: "Internal Server Error"}


class StatusServer:
    """The master's status listener (see the module docstring for the protocol).

    *bind* is the ``status_bind`` setting; *snapshot* returns the current status
    document (a :func:`build_snapshot` dict). It is called at most once per
    :meth:`handle_ready`, only when some client asked for something.

    Raises:
        ConfigError: *bind* is malformed, or a TCP address that is not loopback, or a
            unix socket path that another live process is listening on or that is
            not a socket at all.
        OSError: the address cannot be bound.
    """

    def __init__(
        self, bind: str, snapshot: Callable[[], Snapshot],
        handed_in: socket.socket | None = None,
    ) -> None:
        self.bind = bind
        self.snapshot = snapshot
        self.client_timeout = CLIENT_TIMEOUT
        self.path: str | None = None  # the unix socket file we created
        self._owner_pid = os.getpid()
        self._socket_id: tuple[int, int] | None = None  # (st_dev, st_ino) of our file
        family, address = _parse_status_bind(bind)
        if handed_in is not None:
            self._adopt(handed_in)
            return
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_UNIX:
                self._bind_unix(sock, address)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
            # Python sockets are close-on-exec already (PEP 446); say so explicitly,
            # since a status socket leaking into an exec'd program would keep it open.
            sock.set_inheritable(False)
        except BaseException:
            sock.close()
            self._unlink()
            raise
        self._sock = sock
        self.address: Any = sock.getsockname()
        """The bound address: the unix path, or (host, port) with the real port."""

    def _adopt(self, sock: socket.socket) -> None:
        """Serve a listener handed over by the previous master (SIGUSR2 upgrade)."""
        sock.setblocking(False)
        sock.set_inheritable(False)
        self._sock = sock
        self.address = sock.getsockname()

    def claim(self) -> None:
        """The old master is gone: a unix socket file handed in is now ours to remove.

        Not before: a new master that fails during the upgrade must leave the file to
        the old master, which goes on serving.
        """
        if isinstance(self.address, str) and self.address and self.path is None:
            with contextlib.suppress(OSError):
                st = os.stat(self.address)
                self.path, self._socket_id = self.address, (st.st_dev, st.st_ino)

    def hand_off(self) -> None:
        """Leave the unix socket file in place: a new master serves this listener now."""
        self.path = None

    def _bind_unix(self, sock: socket.socket, path: str) -> None:
        _remove_stale_socket(path)
        # On Linux bind() creates the file with the socket inode's mode (minus the
        # umask), so fchmod first: the file is 0600 from its first instant, with no
        # window where another user may connect, and without touching the
        # process-wide umask (other threads of the program may be creating files).
        # Never chmod by path afterwards: as root, in a directory the service user can
        # write, the path may be a symlink to another file by then.
        os.fchmod(sock.fileno(), 0o600)
        sock.bind(path)
        self.path = path
        st = os.stat(path)
        self._socket_id = (st.st_dev, st.st_ino)

    @property
    def listener(self) -> socket.socket:
        """The listening socket (handed to a new master in a SIGUSR2 upgrade)."""
        return self._sock

    def fileno(self) -> int:
        """The listening socket's fd, to register with the master's selector."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the listener and remove the unix socket file it created (idempotent)."""
        self._sock.close()
        self._unlink()

    def _unlink(self) -> None:
        # Only the process that bound it, and only if the file is still ours: a forked
        # worker, or a newer engine that took over the path, must keep it.
        if self.path is None or os.getpid() != self._owner_pid:
            return
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._socket_id:
                os.unlink(self.path)
        self.path = None

    def handle_ready(self) -> int:
        """Accept every pending connection (up to a batch) and answer each.

        Returns within about ``client_timeout`` seconds whatever the clients do; a
        client that has not sent a full request, or not read its whole answer, by
        then is disconnected. Returns the number of clients answered in full.
        """
        deadline = time.monotonic() + self.client_timeout
        clients = self._accept_pending()
        if not clients:
            return 0
        answered = 0
        documents = _Documents(self.snapshot)  # one snapshot per call, rendered lazily
        with unpatched.default_selector() as sel:  # never gevent's (issue 12)
            try:
                for client in clients:
                    sel.register(client.sock, selectors.EVENT_READ, client)
                while sel.get_map():
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        break
                    for key, _ in sel.select(timeout):
                        client = key.data
                        if client.answer is None:
                            self._read(sel, client, documents)
                        elif self._write(sel, client):
                            answered += 1
            finally:
                for client in clients:
                    client.sock.close()  # also drops whoever ran out of time
        return answered

    def _accept_pending(self) -> list[_Client]:
        clients: list[_Client] = []
        while len(clients) < MAX_CLIENTS_PER_CALL:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue  # the client gave up while queued
                # EMFILE and friends: leave the rest queued, try again next time.
                log.warning("status: accept failed: %s", exc)
                break
            conn.setblocking(False)
            clients.append(_Client(conn))
        return clients

    def _read(
        self, sel: selectors.BaseSelector, client: _Client, documents: _Documents
    ) -> None:
        try:
            chunk = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            sel.unregister(client.sock)  # reset by the client: nothing to answer
            return
        client.received += chunk
        answer = self._answer(bytes(client.received), eof=not chunk, documents=documents)
        if answer is None:
            if not chunk or len(client.received) > MAX_REQUEST:
                sel.unregister(client.sock)  # incomplete for good, or absurdly long
            return
        client.answer = memoryview(answer)
        sel.modify(client.sock, selectors.EVENT_WRITE, client)

    def _write(self, sel: selectors.BaseSelector, client: _Client) -> bool:
        assert client.answer is not None
        try:
            sent = client.sock.send(client.answer)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            sel.unregister(client.sock)  # the client went away
            return False
        client.answer = client.answer[sent:]
        if client.answer:
            return False
        sel.unregister(client.sock)
        return True

    # --- requests ---

    def _answer(self, data: bytes, eof: bool, documents: _Documents) -> bytes | None:
        """The bytes to send for the request in *data*, or None while it is incomplete."""
        end = data.find(b"\n")
        if end < 0 and not eof:
            return None
        line = (data if end < 0 else data[:end]).rstrip(b"\r")
        match = _HTTP_REQUEST_LINE.fullmatch(line)
        if match is None:
            return self._plain(line.strip().lower(), documents)
        if not eof and b"\r\n\r\n" not in data and b"\n\n" not in data:
            # Wait for the end of the headers: closing with unread request bytes
            # makes the kernel send a reset, which can destroy the answer in flight.
            return None
        method, target = match.group(1), match.group(2)
        # Only over TCP: no browser connects to a Unix socket, and `curl --unix-socket`
        # sends whatever host its URL names.
        if self._sock.family != socket.AF_UNIX and not _local_host_header(data):
            return _http_response(
                403, "text/plain", b"the status endpoint answers requests for localhost or "
                b"an IP address only: a Host header naming another host is what a web "
                b"page does after rebinding its DNS name to 127.0.0.1\n",
            )
        return self._http(method, target, documents)

    def _plain(self, word: bytes, documents: _Documents) -> bytes:
        if word in (b"", b"json"):
            body = documents.get("json")
        elif word in (b"prometheus", b"metrics"):
            body = documents.get("prometheus")
        else:
            return b"error: unknown request; send a line: json or prometheus\n"
        return body if body is not None else b"error: status unavailable (see the log)\n"

    def _http(self, method: bytes, target: bytes, documents: _Documents) -> bytes:
        if method not in (b"GET", b"HEAD"):
            return _http_response(405, "text/plain", b"only GET and HEAD\n",
                                  extra="Allow: GET, HEAD\r\n")
        path = target.split(b"?", 1)[0]
        if path in (b"/status", b"/status.json"):
            kind, content_type = "json", JSON_CONTENT_TYPE
        elif path == b"/metrics":
            kind, content_type = "prometheus", PROMETHEUS_CONTENT_TYPE
        else:
            return _http_response(404, "text/plain", b"not found: try /status or /metrics\n",
                                  head=method == b"HEAD")
        body = documents.get(kind)
        if body is None:
            return _http_response(500, "text/plain", b"status unavailable (see the log)\n")
        return _http_response(200, content_type, body, head=method == b"HEAD")

def _local_host_header(request: bytes) -> bool:
    """The request's Host header (if any) names localhost or an IP address.

    A web page can have its own DNS name resolve to 127.0.0.1 (DNS rebinding) and read
    a loopback endpoint from a browser on this host; its requests carry that name.
    """
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"host":
            host = value.strip().decode("latin-1").lower()
            if host.startswith("["):
                host = host[1:].partition("]")[0]
            elif host.count(":") == 1:
                host = host.partition(":")[0]
            if host == "localhost" or host.endswith(".localhost"):
                return True
            try:
                ipaddress.ip_address(host)
            except ValueError:
                return False
            return True
    return True  # no Host (HTTP/1.0, a script): not a browser


def _http_response(
    code: int, content_type: str, body: bytes, *, head: bool = False, extra: str = ""
) -> bytes:
    header = (
        f"HTTP/1.0 {code} {_HTTP_REASONS[code]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    )
    return header.encode("ascii") + (b"" if head else body)


def _parse_status_bind(bind: str) -> tuple[int, Any]:
    """Validate ``status_bind`` by the registry's rule, then split it."""
    family, address = parse_bind(status_address(SETTING, bind))
    if family == socket.AF_UNIX:
        return family, address
    host, port = address
    if host.lower() == "localhost":
        host = "127.0.0.1"  # no resolver call in the master: localhost means IPv4 loopback
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), (host, port)


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead process; refuse anything else at *path*."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(SETTING, f"unix:{path}", "a path that is free or a stale socket "
                          "(this one exists and is not a socket)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(CLIENT_TIMEOUT)
        try:
            probe.connect(path)
        except OSError:
            pass  # refused: nobody listens, the file is stale
        else:
            raise ConfigError(SETTING, f"unix:{path}", "a path no other process is "
                              "listening on (another engine is using this one)")
    os.unlink(path)

