"""The one typed definition of every setting: the registry.

Each field of :class:`Settings` carries, in its metadata, the help text, the section
it is listed under, its validator, and whether it is a class attribute of
``PreforkMixIn``. The CLI flag (``--max-children``), the TOML key (``max_children``)
and the environment variable (``ENGINE_MAX_CHILDREN``) are all derived from the field
name, so the front ends and the generated ``docs/settings.md`` cannot drift.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints

from engine.config import validators as v
from engine.errors import ConfigError
from workers.worker import IDLE_WAKE

ENV_PREFIX = "ENGINE_"

# The shortest worker_timeout: an idle worker (sync or gevent) writes its heartbeat
# every IDLE_WAKE seconds, so a shorter limit would kill every idle worker.
WORKER_TIMEOUT_MIN = 2 * IDLE_WAKE

# Sections, in the order --help and the docs list them.
SECTIONS = {
    "server": "Server: what to serve and where",
    "deploy": "Deployment: sockets, pidfile and privileges",
    "tls": "TLS: certificates and client verification",
    "clients": "Clients: proxies, access control and timeouts",
    "pool": "Pool: how many workers, and when to grow or shrink",
    "timeouts": "Timeouts and recycling",
    "supervision": "Health and status",
    "logging": "Logging",
}


# Choice settings: their type is the one list of allowed words, from which the
# validator, the CLI's choices and the docs are derived (see choices()).
PoolMode = Literal["static", "dynamic", "ondemand"]
TlsVerifyClient = Literal["none", "optional", "required"]
TlsMinVersion = Literal["1.2", "1.3"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
WorkerClass = Literal["sync", "gevent"]


def setting(
    default: Any,
    help: str,
    section: str,
    validator: v.Validator,
    *,
    class_attr: bool = True,
    metavar: str | None = None,
) -> Any:
    """Declare one setting (a dataclass field with its metadata)."""
    assert section in SECTIONS, section
    meta = {
        "help": help,
        "section": section,
        "validator": validator,
        "class_attr": class_attr,
        "metavar": metavar,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Every engine setting, typed and validated (see ``docs/settings.md``)."""

    # --- server ---
    bind: tuple[str, ...] = setting(
        ("127.0.0.1:8000",),
        "Address to listen on: HOST:PORT, [IPV6]:PORT or unix:PATH; repeat the flag (or give "
        "a list) to listen on several. Ignored when sockets are passed in (systemd socket "
        "activation, or the previous master during a SIGUSR2 upgrade).",
        "server", v.bind_list, class_attr=False, metavar="ADDRESS",
    )
    udp: bool = setting(
        False, "Serve datagrams (UDP, or Unix datagram for unix:PATH) instead of streams.",
        "server", v.boolean, class_attr=False,
    )
    proc_name: str | None = setting(
        None, "Name shown in process titles (default: the handler class name).",
        "server", v.optional(v.utf8_text), metavar="NAME",
    )
    request_queue_size: int = setting(
        2048, "Listen backlog: connections waiting while every worker is busy.",
        "server", v.int_range(1, 1 << 20), metavar="N",
    )
    # --- deploy ---
    pidfile: str | None = setting(
        None, "Write the master's pid here; during a SIGUSR2 upgrade the old master's file "
        "is renamed PATH.oldbin until it exits.",
        "deploy", v.optional(v.text), metavar="PATH",
    )
    reuse_port: bool = setting(
        False, "Set SO_REUSEPORT on TCP/UDP listeners, so several engines can bind the same "
        "port (the kernel spreads connections over them).",
        "deploy", v.boolean, class_attr=False,
    )
    user: str | None = setting(
        None, "After binding, switch the master and its workers to this user (name or uid; "
        "needs root).", "deploy", v.optional(v.account), metavar="USER",
    )
    group: str | None = setting(
        None, "After binding, switch to this group (default: the user's primary group).",
        "deploy", v.optional(v.account), metavar="GROUP",
    )
    umask: int | None = setting(
        None, "Process umask, set before any file or Unix socket is created (octal, e.g. "
        "027; in a TOML file a string, \"027\": a TOML integer is refused, being decimal).",
        "deploy", v.optional(v.file_mode), class_attr=False, metavar="MODE",
    )
    socket_mode: int | None = setting(
        None, "Permission bits of Unix socket files the engine creates (octal, e.g. 0660; "
        "in a TOML file a string, \"0660\": a TOML integer is refused, being decimal); "
        "with `user`, they are also given to that user.",
        "deploy", v.optional(v.file_mode), class_attr=False, metavar="MODE",
    )
    chdir: str = setting(
        "/", "Directory the engine command changes to at start, once relative paths "
        "(config, pidfile, logs, sockets, certificates) are made absolute and the handler "
        "is imported; a SIGUSR2 upgrade re-executes from it (see docs/security.md).",
        "deploy", v.text, class_attr=False, metavar="DIR",
    )
    # --- tls ---
    certfile: str | None = setting(
        None, "Serve TLS with this PEM certificate (chain); needs keyfile unless the key is "
        "in the same file.", "tls", v.optional(v.text), metavar="PATH",
    )
    keyfile: str | None = setting(
        None, "The certificate's private key (PEM); only with certfile.", "tls",
        v.optional(v.text), metavar="PATH",
    )
    ca_certs: str | None = setting(
        None, "CA certificates (PEM) that client certificates are checked against; only "
        "with certfile.",
        "tls", v.optional(v.text), metavar="PATH",
    )
    tls_verify_client: TlsVerifyClient = setting(  # noqa: RUF009 (a Literal: immutable)
        "none", "Client certificates: none (not asked for), optional (checked if sent), "
        "required (handshake fails without a valid one). optional/required need ca_certs.",
        "tls", v.choice(*get_args(TlsVerifyClient)), metavar="MODE",
    )
    tls_min_version: TlsMinVersion = setting(  # noqa: RUF009 (a Literal: immutable)
        "1.2", "Lowest TLS version accepted.", "tls", v.choice(*get_args(TlsMinVersion)),
        metavar="VERSION",
    )
    tls_ciphers: str | None = setting(
        None, "OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults); "
        "only with certfile.",
        "tls", v.optional(v.utf8_text), metavar="CIPHERS",
    )
    # --- clients ---
    handshake_timeout: float = setting(
        10.0, "Seconds a new connection gets to send its PROXY header and finish the TLS "
        "handshake before the worker closes it.",
        "clients", v.duration(0.0, exclusive=True), metavar="SECONDS",
    )
    proxy_protocol: bool = setting(
        False, "Expect a PROXY protocol header (v1 or v2) on every connection, and give the "
        "handler the client address it carries.",
        "clients", v.boolean,
    )
    proxy_allow_from: tuple[str, ...] = setting(
        ("127.0.0.1/32", "::1/128"), "Peers trusted to send PROXY headers (CIDR list); other "
        "peers are closed with a log line. Unix-socket peers are always trusted (the "
        "socket file's permissions decide who may connect).",
        "clients", v.cidr_list, metavar="CIDR",
    )
    allow_from: tuple[str, ...] = setting(
        (), "Serve only clients in these networks (CIDR list; empty: everyone). Checked "
        "against the real client address, after the PROXY header.",
        "clients", v.cidr_list, metavar="CIDR",
    )
    deny_from: tuple[str, ...] = setting(
        (), "Close connections from clients in these networks (CIDR list), checked after "
        "allow_from.", "clients", v.cidr_list, metavar="CIDR",
    )
    client_timeout: float | None = setting(
        30.0, "How long a read or write on an accepted connection may wait, so that a "
        "client silent this long no longer holds a worker: the handler gets TimeoutError. "
        "On TCP the kernel enforces it in the sync worker (SO_RCVTIMEO/SO_SNDTIMEO "
        "inherited from the listener) and an idle sweep in the gevent worker; Unix "
        "sockets and TLS get settimeout(). A handler's own `timeout` attribute overrides "
        "it. `off` (or `none`) turns it off, as in socketserver.",
        "clients", v.optional(v.duration(0.0, exclusive=True)), metavar="SECONDS",
    )
    # --- pool ---
    pool_mode: PoolMode = setting(  # noqa: RUF009 (a Literal: immutable)
        "dynamic",
        "static: exactly `workers` processes; dynamic: keep min_spare..max_spare idle "
        "workers, between `workers` and `max_children`; ondemand: start with none and fork "
        "when connections wait.",
        "pool", v.choice(*get_args(PoolMode)), metavar="MODE",
    )
    workers: int | None = setting(
        None, "Workers forked at start, and the pool's floor (default: the CPUs this "
        "process may run on, its affinity mask; 0 in ondemand mode). SIGTTIN/SIGTTOU "
        "change it at run time.",
        "pool", v.optional(v.int_range(0, 4096), none_words=("", "none", "auto")),
        metavar="N",
    )
    max_children: int = setting(
        40, "Hard cap on live worker processes, including ones draining or being replaced.",
        "pool", v.int_range(1, 4096), metavar="N",
    )
    min_spare: int = setting(
        2, "dynamic mode: fork more workers when fewer than this many are idle.",
        "pool", v.int_range(0, 4096), metavar="N",
    )
    max_spare: int = setting(
        8, "dynamic mode: retire idle workers above this many after idle_timeout.",
        "pool", v.int_range(1, 4096), metavar="N",
    )
    idle_timeout: float = setting(
        10.0, "Seconds a surplus worker may stay idle before it is retired.",
        "pool", v.duration(0.0, exclusive=True), metavar="SECONDS",
    )
    max_spawn_batch: int = setting(
        32, "Most workers forked in one maintenance tick; the batch doubles 1, 2, 4... "
        "while more are needed, so a burst does not fork-storm the machine.",
        "pool", v.int_range(1, 4096), metavar="N",
    )
    gc_freeze: bool = setting(
        True, "Call gc.freeze() before forking, so workers share the master's memory "
        "pages copy-on-write instead of touching them in garbage collections.",
        "pool", v.boolean,
    )
    ksm: bool = setting(
        False, "Let the kernel merge the identical memory pages of the master and its "
        "workers (KSM; Linux 6.4+): a worker's own memory falls to about what a forked "
        "child's is. Needs the kernel's KSM daemon on (root: echo 1 > "
        "/sys/kernel/mm/ksm/run), which costs it CPU time; merged pages can be detected "
        "through timing by other processes that use KSM too, hence off by default.",
        "pool", v.boolean,
    )
    threads: int = setting(
        1, "Threads per worker: connections one worker serves at once.",
        "pool", v.int_range(1, 4096), metavar="N",
    )
    worker_class: WorkerClass = setting(  # noqa: RUF009 (a Literal: immutable)
        "sync", "How a worker serves its connections. sync: one at a time, or `threads` at "
        "once in a thread pool; gevent: one greenlet per connection, up to "
        "worker_connections at once (needs `pip install 'engine[gevent]'`).",
        "pool", v.choice(*get_args(WorkerClass)), metavar="CLASS",
    )
    worker_connections: int = setting(
        1000, "worker_class=gevent: connections (greenlets) one worker serves at once; "
        "further connections wait in the listen backlog or go to other workers.",
        "pool", v.int_range(1, 65535), metavar="N",
    )
    # --- timeouts ---
    graceful_timeout: float = setting(
        30.0, "On graceful stop or restart, seconds in-flight requests get before SIGKILL.",
        "timeouts", v.duration(0.0), metavar="SECONDS",
    )
    worker_timeout: float | None = setting(
        30.0, "Kill a worker that is not busy with a request yet sends no heartbeat for "
        "this long (a wedged worker). Busy workers are governed by request_timeout, except "
        "gevent workers, whose hub writes the heartbeat busy or not. At least "
        f"{WORKER_TIMEOUT_MIN:g} s: twice the {IDLE_WAKE:g} s period at which an idle "
        "worker writes its heartbeat (less would kill healthy idle workers).",
        "timeouts",
        v.optional(v.duration(
            WORKER_TIMEOUT_MIN,
            why=f"twice the {IDLE_WAKE:g}s period of an idle worker's heartbeat",
        )),
        metavar="SECONDS",
    )
    request_timeout: float | None = setting(
        None, "Kill a worker busy on one connection for longer than this (off by default: "
        "safe for long-lived connections). gevent workers close just that connection.",
        "timeouts", v.optional(v.duration(0.0, exclusive=True)), metavar="SECONDS",
    )
    max_requests: int = setting(
        0, "Recycle a worker after it served this many connections (0: never).",
        "timeouts", v.int_range(0), metavar="N",
    )
    max_requests_jitter: int = setting(
        0, "Add a random 0..N to each worker's max_requests so they do not recycle together.",
        "timeouts", v.int_range(0), metavar="N",
    )
    max_worker_memory: int = setting(
        0, "Recycle a worker whose RSS exceeds this many bytes (K/M/G suffixes; 0: never).",
        "timeouts", v.byte_size, metavar="BYTES",
    )
    # --- supervision ---
    health_interval: float = setting(
        5.0, "Seconds between psutil samples of each worker's RSS, CPU and open fds.",
        "supervision", v.duration(0.1), metavar="SECONDS",
    )
    count_bytes: bool = setting(
        False, "Count each connection's bytes in/out (scoreboard, status, access log) "
        "with one TCP_INFO query per connection, about 10 µs; on whenever access_log is.",
        "supervision", v.boolean,
    )
    status_bind: str | None = setting(
        None, "Serve live status (JSON and Prometheus text) on this address: "
        "unix:PATH or 127.0.0.1:PORT. Off by default.",
        "supervision", v.optional(v.status_address), metavar="ADDRESS",
    )
    # --- logging ---
    log_level: LogLevel = setting(  # noqa: RUF009 (a Literal: immutable)
        "info", "Log level of the engine's own log.", "logging",
        v.log_level(*get_args(LogLevel)), metavar="LEVEL",
    )
    log_file: str | None = setting(
        None, "Write the log here instead of stderr (reopened on SIGUSR1, for logrotate).",
        "logging", v.optional(v.text), metavar="PATH",
    )
    access_log: str | None = setting(
        None, "Write one line per connection (client, duration, bytes in/out) here; "
        "'-' is stderr. Off by default.",
        "logging", v.optional(v.text), metavar="PATH",
    )


def registry() -> Iterator[dataclasses.Field[Any]]:
    """Every setting's field, in declaration order."""
    return iter(dataclasses.fields(Settings))


def choices(name: str) -> tuple[str, ...] | None:
    """The words a choice setting allows (its Literal type's values), else None."""
    hint = _type_hints().get(name)
    return get_args(hint) if get_origin(hint) is Literal else None


_hints: dict[str, Any] = {}


def _type_hints() -> dict[str, Any]:
    if not _hints:  # once: the annotations are strings (postponed evaluation)
        _hints.update(get_type_hints(Settings))
    return _hints


def class_attr_names() -> list[str]:
    """Settings that are class attributes of ``PreforkMixIn``."""
    return [f.name for f in registry() if f.metadata["class_attr"]]


def env_var(name: str) -> str:
    """The environment variable of a setting."""
    return ENV_PREFIX + name.upper()


def cli_flag(name: str) -> str:
    """The command-line flag of a setting."""
    return "--" + name.replace("_", "-")


def validate(name: str, value: Any) -> Any:
    """Validate one setting's raw value; raise ConfigError for unknown names too."""
    fields = {f.name: f for f in registry()}
    if name not in fields:
        raise ConfigError(name, value, "a known setting (see docs/settings.md)")
    return fields[name].metadata["validator"](name, value)


def build(values: Mapping[str, Any]) -> Settings:
    """Validate *values* (missing ones take defaults) and check consistency."""
    typed = {name: validate(name, value) for name, value in values.items()}
    settings = Settings(**typed)
    check_consistency(settings)
    check_worker_class(settings)
    return settings


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a cpuset-limited container
    has fewer than the machine); every CPU-based sizing uses this one count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolved_workers(settings: Settings) -> int:
    """The start-up worker count: ``workers``, or the usable CPUs capped by max_children."""
    if settings.workers is not None:
        return settings.workers
    default = 0 if settings.pool_mode == "ondemand" else usable_cpus()
    return min(default, settings.max_children)


def check_stream_only(s: Settings, datagram: bool) -> None:
    """Settings that apply to stream connections only are unset on a datagram server.

    ``udp`` says so for the CLI; a ``PreforkUDPServer`` subclass says so by its class
    (engine/intake.py calls this with ``datagram=True``).
    """
    if not datagram:
        return
    stream_only = {"proxy_protocol": s.proxy_protocol, "certfile": s.certfile}
    for name, value in stream_only.items():
        if value:
            raise ConfigError(
                name, value,
                "unset with udp or a datagram server (it applies to stream connections)",
            )


def connection_slots(settings: Settings) -> int:
    """Connections one worker serves at once: the pool's unit of capacity."""
    if settings.worker_class == "gevent":
        return settings.worker_connections
    return settings.threads


def check_worker_class(s: Settings) -> None:
    """The worker class can run in this program: gevent importable, or not patched in.

    Raises:
        ConfigError: gevent is chosen but cannot be imported, or the program was
            monkey-patched by gevent (a handler module's ``patch_all()``) while the
            sync worker is chosen, which would then run on patched modules.
    """
    if s.worker_class == "gevent":
        try:
            import gevent  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "worker_class", "gevent",
                f"gevent installed (pip install 'engine[gevent]'); importing it failed: {exc}",
            ) from None
        return
    import sys

    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_anything_patched():
        raise ConfigError(
            "worker_class", s.worker_class,
            "gevent (--worker-class gevent): the program was monkey-patched by gevent "
            "before the server started (a patch_all() in the handler's module?), and "
            "the sync worker cannot run on patched modules",
        )


def check_consistency(s: Settings) -> None:
    """Cross-setting rules; each failure names the setting to change."""
    if s.workers == 0 and s.pool_mode != "ondemand":
        raise ConfigError("workers", 0, "at least 1 (0 only with pool_mode=ondemand)")
    if s.workers is not None and s.workers > s.max_children:
        raise ConfigError(
            "workers", s.workers, f"at most max_children ({s.max_children})"
        )
    check_stream_only(s, datagram=s.udp)
    if not s.certfile:  # what only means something for TLS: refused alike
        for name in ("keyfile", "ca_certs", "tls_ciphers"):
            if getattr(s, name) is not None:
                raise ConfigError(name, getattr(s, name), "used with certfile")
    if s.tls_verify_client != "none" and not s.ca_certs:
        raise ConfigError(
            "tls_verify_client", s.tls_verify_client, "none unless ca_certs is set"
        )
    if s.group is not None and s.user is None:
        raise ConfigError("group", s.group, "used with user")
    if s.min_spare > s.max_spare:
        raise ConfigError("min_spare", s.min_spare, f"at most max_spare ({s.max_spare})")
    if s.worker_class == "gevent" and s.threads > 1:
        raise ConfigError(
            "threads", s.threads,
            "1 with worker_class=gevent (set worker_connections for its concurrency)",
        )
    if s.threads > 1 and s.pool_mode != "static" and s.threads * s.max_children > 1 << 16:
        raise ConfigError(
            "threads", s.threads, "threads * max_children at most 65536"
        )
