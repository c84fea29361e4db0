"""The ``engine`` command: run a handler class as a supervised prefork server.

::

    engine                                    # the demo service on 127.0.0.1:8000
    engine serve pkg.module:Handler [options] # serve your handler class
    engine status --status-bind ADDRESS       # the live worker table of a running engine

Every setting of the registry (:mod:`engine.config.settings`) is a flag, grouped by
section; values may also come from ``ENGINE_*`` variables and a TOML ``--config``
file (see :mod:`engine.config.sources` and ``docs/cli.md``).

Exit statuses (:class:`~engine.errors.ExitStatus`): 0 after a graceful stop
(SIGTERM), 1 on other failures (cannot listen, status endpoint unreachable), 2 on a bad
setting or handler path, 3 when no worker could boot, 130 after SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import inspect
import json
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from engine import (
    __version__,
    classic,
    listeners,
    logs,
    privileges,
    safefiles,
    startpaths,
    tls,
    upgrade,
    workdir,
)
from engine.config import (
    SECTIONS,
    Origin,
    Resolved,
    cli_flag,
    env_var,
    registry,
    resolve,
    with_source,
)
from engine.config.docs import flag_usage, format_value, is_boolean, is_list
from engine.config.settings import Settings, choices, class_attr_names, resolved_workers
from engine.config.validators import duration, file_mode
from engine.errors import ConfigError, ExitStatus, MasterFatalError
from engine.prefork import (
    PreforkMixIn,
    PreforkTCPServer,
    PreforkUDPServer,
    PreforkUnixDatagramServer,
    PreforkUnixStreamServer,
)
from engine.proctitle import format_address
from engine.status_client import (
    STATUS_TIMEOUT,
    StatusError,
    check_prometheus,
    fetch_status,
    format_status,
    parse_status,
    write_output,
)

log = logging.getLogger("engine.cli")

DEMO_HANDLER = "engine.examples.demo:DemoHandler"
# Set to 1 to get one line "READY <repr(server_address)>" on stdout once the server
# listens and handles signals (tests and supervisors wait for it).
READY_VARIABLE = "ENGINE_READY_LINE"
EXIT_INTERRUPTED = 128 + 2  # the shell's status for "killed by SIGINT"
COMMANDS = ("demo", "serve", "status")
# `engine status --timeout`: a duration as the settings' are (not a setting itself).
STATUS_TIMEOUT_VALIDATOR = duration(0.0, exclusive=True)


class HandlerError(Exception):
    """The handler path given to ``engine serve`` does not name a class."""


# --- the parser, built from the registry ---


def _help_text(field: dataclasses.Field[Any]) -> str:
    text = field.metadata["help"]
    default = format_value(field.default)
    env = env_var(field.name) + (", comma-separated" if is_list(field) else "")
    # argparse %-formats help strings: a literal % must be doubled.
    return f"{text} [default: {default}; env {env}]".replace("%", "%%")


def add_setting_arguments(
    parser: argparse.ArgumentParser, only: Sequence[str] | None = None
) -> None:
    """Add one flag per setting (or per setting in *only*), grouped by section.

    Flags default to ``argparse.SUPPRESS``, so the namespace holds only the settings
    actually given: the others fall through to the environment, file and defaults.
    """
    groups = {
        section: parser.add_argument_group(title)
        for section, title in SECTIONS.items()
        if only is None
        or any(f.metadata["section"] == section and f.name in only for f in registry())
    }
    for field in registry():
        if only is not None and field.name not in only:
            continue
        group = groups[field.metadata["section"]]
        options: dict[str, Any] = {
            "dest": field.name, "default": argparse.SUPPRESS, "help": _help_text(field),
        }
        if is_boolean(field):
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["metavar"] = flag_usage(field).split(" ", 1)[1]
            words = choices(field.name)
            if words is not None:  # from the setting's Literal type
                options["choices"], options["type"] = words, _word
            if is_list(field):
                options["action"] = "append"
        group.add_argument(cli_flag(field.name), **options)


def _word(text: str) -> str:
    """A choice as the validators read it: case and surrounding blanks do not count."""
    return text.strip().lower()


def _add_config_arguments(parser: argparse.ArgumentParser, check: bool = True) -> None:
    group = parser.add_argument_group("Configuration")
    group.add_argument(
        "--config", metavar="FILE", help="read settings from this TOML file (top-level "
        "keys are setting names; the command line and ENGINE_* variables override it)",
    )
    if check:
        group.add_argument(
            "--check-config", action="store_true",
            help="print every resolved setting and where its value came from "
            "(default, file, env, cli), check that the handler imports, and exit",
        )


def build_parser() -> argparse.ArgumentParser:
    """The ``engine`` argument parser, with its ``demo``, ``serve`` and ``status`` commands."""
    parser = argparse.ArgumentParser(
        prog="engine",
        description="A prefork worker-pool server for socketserver request handlers. "
        "Without a command, runs the demo service (`engine demo`).",
        epilog="Exit statuses: 0 stopped gracefully (SIGTERM); 1 failure (cannot listen, "
        "status unreachable); 2 bad setting or handler; 3 no worker could boot; "
        "130 interrupted (SIGINT). See docs/cli.md and docs/settings.md.",
    )
    parser.add_argument("--version", action="version", version=f"engine {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run the demo line-protocol service (the default command)",
        description="Serve the demo line protocol (engine.examples.demo:DemoHandler) on "
        "127.0.0.1:8000 unless --bind says otherwise. Talk to it with `nc 127.0.0.1 "
        "8000`, then type STATS, PING, SLEEP 2 or QUIT.",
    )
    _add_config_arguments(demo)
    add_setting_arguments(demo)

    serve = commands.add_parser(
        "serve", help="serve a request handler class",
        description="Import MODULE:CLASS (a socketserver request handler) and serve it "
        "with a supervised pool of pre-forked workers.",
    )
    serve.add_argument(
        "handler", metavar="MODULE:CLASS",
        help="the handler class, e.g. engine.examples.echo:EchoHandler",
    )
    _add_config_arguments(serve)
    add_setting_arguments(serve)

    status = commands.add_parser(
        "status", help="show the worker table of a running engine",
        description="Read the status endpoint of a running engine (its status_bind "
        "setting) and print one row per worker, like Apache's server-status.",
    )
    output = status.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the raw JSON")
    output.add_argument(
        "--prometheus", action="store_true", help="print the Prometheus text exposition",
    )
    status.add_argument(
        "--timeout", default=STATUS_TIMEOUT, metavar="SECONDS",
        help=f"give up after this long: seconds, or 500ms, 2s... [default: {STATUS_TIMEOUT:g}]",
    )
    _add_config_arguments(status, check=False)
    add_setting_arguments(status, only=["status_bind"])
    return parser


def setting_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line: name → raw value."""
    return {f.name: getattr(args, f.name) for f in registry() if hasattr(args, f.name)}


# --- entry point ---


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``engine`` command; return its exit status (see the module docstring)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    # No command (or only options) means the demo: `engine --bind 127.0.0.1:0`.
    if not arguments or (
        arguments[0].startswith("-") and arguments[0] not in ("-h", "--help", "--version")
    ):
        arguments.insert(0, "demo")
    try:
        args = build_parser().parse_args(arguments)
        if args.command == "status":
            return run_status(args)
        handler_path = args.handler if args.command == "serve" else DEMO_HANDLER
        with interruptible():
            return run_serve(args, handler_path, demo=args.command == "demo",
                             arguments=arguments)
    except ConfigError as exc:
        return _fail(str(exc), ExitStatus.USAGE)
    except HandlerImportError as exc:
        # The user's module failed: the first line says so, the traceback says where.
        status = _fail(str(exc), ExitStatus.USAGE)
        error = exc.error
        traceback.print_exception(type(error), error, _users_frames(error.__traceback__),
                                  file=sys.stderr)
        return status
    except HandlerError as exc:
        return _fail(str(exc), ExitStatus.USAGE)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED  # quietly: the user asked for it


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in the block, however the process was started.

    A process started with SIGINT ignored (a shell's background job, ``nohup``) keeps
    it ignored, and Python then installs no KeyboardInterrupt handler: the master, which
    stops quickly on SIGINT, would exit 0 instead of 130. The command's own handler
    makes SIGINT mean the same thing wherever it runs; the previous one is restored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _fail(message: str, status: int) -> int:
    print(f"engine: error: {message}", file=sys.stderr)
    return status


# --- serve ---


def import_handler(path: str, search_cwd: bool = True) -> type:
    """Import ``MODULE:CLASS`` (CLASS may be dotted) and return the class.

    With *search_cwd*, the current directory is searched first, as ``python -m``
    does; a master re-executed by an upgrade passes False (see :mod:`engine.upgrade`).

    Anything the handler's own code raises while it is imported, looked up or
    inspected (``sys.exit()``, ``KeyboardInterrupt``, a ``BaseException`` subclass,
    a metaclass that raises) is a :class:`HandlerImportError`; only a real SIGINT
    during the import stays a ``KeyboardInterrupt`` (exit 130, as at any other time).

    Raises:
        HandlerError: the path is malformed, the module or attribute does not exist,
            or it is not a class; HandlerImportError when the handler's code raised.
    """
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise HandlerError(
            f"handler {path!r} must be MODULE:CLASS, e.g. engine.examples.echo:EchoHandler"
        )
    # Like `python -m`, find modules in the current directory even when run as the
    # console script (whose sys.path[0] is the script's directory).
    if search_cwd and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    with _sigint_noted() as interrupted:
        try:
            return _load_handler(path, module_name, attribute)
        except HandlerError:
            raise
        except KeyboardInterrupt as exc:
            if interrupted:
                raise  # a real Ctrl-C while a slow module imports
            raise HandlerImportError(path, exc) from exc
        except BaseException as exc:  # SystemExit too: the module's code, not ours
            raise HandlerImportError(path, exc) from exc


def _load_handler(path: str, module_name: str, attribute: str) -> type:
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise HandlerError(f"cannot import handler {path!r}: {exc}") from None
        raise HandlerImportError(path, exc) from exc  # one of the module's own imports
    except (ValueError, TypeError) as exc:  # "a\udcff", "..x": not a module name at all
        raise HandlerError(f"cannot import handler {path!r}: {exc}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerError(
                f"handler {path!r}: {getattr(target, '__name__', target)!s} has no "
                f"attribute {part!r}"
            ) from None
    if not isinstance(target, type):
        raise HandlerError(f"handler {path!r} is not a class: {target!r}")
    check_handler_class(path, target)
    return target


@contextlib.contextmanager
def _sigint_noted() -> Iterator[list[bool]]:
    """Note in the yielded list whether a real SIGINT arrived during the block.

    A handler module may raise KeyboardInterrupt itself: that is its error (exit 2),
    where a Ctrl-C is the user's wish (exit 130). Only Python's default handler is
    replaced (and put back, unless the block installed its own).
    """
    received: list[bool] = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield received
        return

    def note(signum: int, frame: Any) -> None:
        received.append(True)
        signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt

    signal.signal(signal.SIGINT, note)
    try:
        yield received
    finally:
        if signal.getsignal(signal.SIGINT) is note:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def check_handler_class(path: str, cls: type) -> None:
    """Refuse a class that cannot be a request handler, before anything is served.

    A handler is instantiated as ``cls(request, client_address, server)``, as by
    socketserver; any class whose constructor accepts that call is taken.

    Raises:
        HandlerError: *cls* is a server class, or its constructor does not take
            ``(request, client_address, server)``.
    """
    advice = "a socketserver.BaseRequestHandler subclass, e.g. engine.examples.echo:EchoHandler"
    if issubclass(cls, (socketserver.BaseServer, classic.BaseServer)):
        raise HandlerError(
            f"handler {path!r} is a server class, not a request handler: give {advice}"
        )
    try:
        inspect.signature(cls).bind(None, None, None)
    except (TypeError, ValueError):  # ValueError: no signature (dict, int...)
        raise HandlerError(
            f"handler {path!r} is not a request handler: {cls.__qualname__}() does not "
            f"take (request, client_address, server); give {advice}"
        ) from None


class HandlerImportError(HandlerError):
    """The handler's module raised while being imported (the user's code failed)."""

    def __init__(self, path: str, error: BaseException) -> None:
        super().__init__(f"cannot import handler {path!r}: {_describe(error)}")
        self.error = error


def _users_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """*tb* without its leading frames of this module and of importlib: the
    traceback starts where the handler's own code (or what it called) raised."""
    first = tb
    while first is not None and first.tb_next is not None and (
        first.tb_frame.f_code.co_filename in _LOADER_FILES
        or first.tb_frame.f_code.co_filename.startswith("<frozen importlib")
    ):
        first = first.tb_next
    return first


_LOADER_FILES = frozenset({__file__, importlib.__file__})


def _describe(error: BaseException) -> str:
    """``Type: text``, or ``Type`` when the error has no text (or its str() fails)."""
    try:
        text = str(error)
    except BaseException:  # the user's __str__: never let it replace the real error
        text = ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class CommandLineServer(PreforkMixIn):
    """What ``engine serve`` adds to the Prefork server class it builds.

    It reopens logs on SIGUSR1 and runs :attr:`on_ready` once the master handles
    signals: from its first hook call, after the signal handlers are installed, so a
    SIGTERM sent on seeing the READY line is a graceful stop, never a default death.
    """

    on_ready: Callable[[], None] | None = None

    def reopen_logs(self) -> None:
        """Reopen the log files (the master and every worker call this on SIGUSR1)."""
        logs.reopen_logs()

    def worker_spawned(self, slot: int, pid: int) -> None:
        """Announce readiness at the first spawn; then the usual hook."""
        self._ready()
        super().worker_spawned(slot, pid)

    def service_actions(self) -> None:
        """Announce readiness (ondemand pools may spawn nothing); then the usual hook."""
        self._ready()
        super().service_actions()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that reset, hung up or timed out: one log line, not a traceback.

        Those are the client's doing and routine on a busy server (gunicorn logs them
        the same way); anything else is a handler bug and gets the full traceback.
        """
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.info("client %s: %s: %s", format_address(client_address),
                     type(error).__name__, error)
            return
        super().handle_error(request, client_address)  # type: ignore[misc]

    def _ready(self) -> None:
        callback, self.on_ready = self.on_ready, None
        if callback is not None:
            callback()


def server_class(settings: Settings, family: int, udp: bool) -> type[PreforkMixIn]:
    """The server class for *settings*: its class attributes are the settings.

    TCP (IPv4 or IPv6), UDP, or Unix stream/datagram, from the first listener's family
    and type. The sockets themselves are bound by :mod:`engine.listeners`.
    """
    base: type[PreforkMixIn]
    if family == socket.AF_UNIX:
        base = PreforkUnixDatagramServer if udp else PreforkUnixStreamServer
    else:
        base = PreforkUDPServer if udp else PreforkTCPServer
    attributes: dict[str, Any] = {name: getattr(settings, name) for name in class_attr_names()}
    attributes["address_family"] = family
    attributes["__doc__"] = f"{base.__name__} built by `engine serve` from its settings."
    return type(f"Engine{base.__name__}", (CommandLineServer, base), attributes)


class ListenError(Exception):
    """A ``bind`` address cannot be listened on."""

    def __init__(self, spec: str, error: OSError) -> None:
        super().__init__(f"cannot listen on {spec}: {error.strerror or error}")


def open_sockets(settings: Settings) -> list[socket.socket]:
    """The listening sockets: those handed in (systemd, upgrade), else one per bind.

    Raises:
        ListenError: an address cannot be bound (the others are closed again).
        ConfigError: the sockets handed in are unusable.
    """
    source = listeners.handed_in_source()
    handed = listeners.take_all()
    if handed:
        kinds = {sock.type for sock in handed}
        if len(kinds) > 1 or not all(listeners.is_listening(sock) for sock in handed):
            for sock in handed:
                sock.close()
            raise ConfigError(
                "LISTEN_FDS", len(handed), "listening sockets all of one type (streams "
                "or datagrams; for systemd, Accept=no)",
            )
        log.info("serving %d socket(s) handed in by %s; the bind setting is not used",
                 len(handed), source)
        return handed
    opened: list[socket.socket] = []
    for spec in settings.bind:
        try:
            opened.append(listeners.open_listener(spec, settings))
        except OSError as exc:
            listeners.discard(opened)  # and the socket files they made
            raise ListenError(spec, exc) from None
    return opened


def run_serve(
    args: argparse.Namespace, handler_path: str, demo: bool = False,
    arguments: Sequence[str] = (),
) -> int:
    """``engine serve`` (and ``engine demo``): resolve, check, bind, serve.

    *arguments* (the command's own, as given) are what a SIGUSR2 upgrade re-executes.
    """
    # Relative paths are resolved against the start directory, then the master leaves
    # it for `chdir` (issue 17: an upgrade must not run code from there).
    upgraded = workdir.BASE_VARIABLE in os.environ
    base = workdir.base_directory()
    config = workdir.absolute(args.config, base) if args.config else None
    resolved = resolve(setting_values(args), config_path=config)
    # A setting refused from here on (by the system checks, at start-up in the master)
    # is named with its source too, as resolve() names the ones it refuses.
    with naming_sources(resolved.origins):
        handler = import_handler(handler_path, search_cwd=not upgraded)
        settings = workdir.with_absolute_paths(resolved.settings, base)
        notes = check_with_the_system(settings, demo)
        if args.check_config:
            for note in notes:
                print(f"engine: note: {note}", file=sys.stderr)
            return write_output(render_resolved(resolved, handler_path))
        workdir.change_to(settings.chdir)
        upgrade.remember_entry(upgrade.Entry(
            tuple(arguments), base, workdir.module_directory(handler_path.partition(":")[0], base)
        ))
        if settings.umask is not None:
            os.umask(settings.umask)  # before any file is created: logs, sockets, pidfile
        access = _open_logs(settings)
        handed_in = listeners.handed_in_source() is not None
        try:
            sockets = open_sockets(settings)
        except ListenError as exc:
            return _fail(str(exc), ExitStatus.FAILURE)
        # Unix socket files we created (not handed in) are ours to remove at the end.
        paths = [] if handed_in else [listeners.unix_path(sock) for sock in sockets]
        created = {path: os.stat(path).st_ino for path in paths if path is not None}
        primary = sockets[0]
        cls = server_class(settings, primary.family, primary.type == socket.SOCK_DGRAM)
        server: Any = cls(primary.getsockname(), handler, bind_and_activate=False)
        server.adopt_listeners(sockets)
        if access is not None:
            # The master hands this to each worker (WorkerSpec.on_request_done).
            server._engine_request_done = access
        server.on_ready = lambda: _announce(server, settings, demo)
        where = ", ".join(format_address(sock.getsockname()) for sock in sockets)
        with server:
            log.info("listening on %s (%s, handler %s)", where,
                     "datagrams" if primary.type == socket.SOCK_DGRAM else "streams", handler_path)
            try:
                server.serve_forever()
            except MasterFatalError as exc:
                return _fail(str(exc), ExitStatus.NO_WORKER_BOOTS)
            except OSError as exc:  # the status endpoint's address is taken, say
                return _fail(str(exc), ExitStatus.FAILURE)
            finally:
                if not server.handed_off:  # after an upgrade the files serve the new master
                    for path, inode in created.items():
                        _unlink_if_ours(path, inode)
        # Handed off: the new master has the sockets; it may not serve yet (its workers
        # may still be booting, or it may fail), so say no more than that.
        log.info("stopped" if not server.handed_off
                 else "stopped; the sockets are the new master's now")
        return ExitStatus.OK


@contextlib.contextmanager
def naming_sources(origins: Mapping[str, Origin]) -> Iterator[None]:
    """A ConfigError raised in the block ends with ``(from SOURCE)`` of its setting."""
    try:
        yield
    except ConfigError as error:
        raise with_source(error, origins) from None


def check_with_the_system(settings: Settings, demo: bool = False) -> list[str]:
    """The checks that need the system (accounts, certificates, directories), before
    binding; return notes for ``--check-config`` (see :func:`check_paths_usable`).

    ``--check-config`` runs them too, so it refuses what the start would refuse. The
    master builds the real TLS context again, before forking.

    Raises:
        ConfigError: naming the setting.
    """
    if demo and settings.udp:
        raise ConfigError("udp", True, "false for the demo, a stream protocol")
    account = privileges.resolve(settings.user, settings.group) if settings.user else None
    if account is not None:
        privileges.check_can_switch(account)  # as the start would, before it listens
    # Root opens the pidfile, logs and socket files: refuse paths others could redirect.
    safefiles.check_paths(settings, *((account.uid, account.gid) if account else (None, None)))
    notes = startpaths.check_paths_usable(settings)
    if settings.certfile:
        tls.build_context(settings)
    return notes


def _open_logs(settings: Settings) -> logs.AccessLog | None:
    """Set up the engine log and the access log; return the access-log callback.

    Raises:
        ConfigError: a log file cannot be opened (named by its setting).
    """
    name = "log_file"
    try:
        logs.setup_logging(settings)
        name = "access_log"
        return logs.access_logger(settings)
    except OSError as exc:
        raise ConfigError(
            name, getattr(settings, name),
            f"a file that can be opened for appending ({exc.strerror or exc})",
        ) from None


def _unlink_if_ours(path: str, inode: int) -> None:
    # Another server may have replaced the file since: remove only the one we bound.
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)


def _announce(server: Any, settings: Settings, demo: bool) -> None:
    """Print the READY line (if asked) and, for the demo, how to talk to it."""
    if os.environ.get(READY_VARIABLE) == "1":
        print(f"READY {server.server_address!r}", flush=True)
    if demo:
        print(demo_banner(server.server_address, settings), flush=True)


def demo_banner(address: Any, settings: Settings) -> str:
    """Where the demo listens and how to talk to it."""
    unix = isinstance(address, str)
    netcat = f"nc -U {address}" if unix else f"nc {address[0]} {address[1]}"
    pool = f"{resolved_workers(settings)} workers, {settings.pool_mode} pool"
    return "\n".join([
        f"engine demo: listening on {format_address(address)} ({pool}, master pid "
        f"{os.getpid()})",
        f"  talk to it:  {netcat}",
        "               then type STATS (which worker answers you), PING, SLEEP 2, QUIT;",
        "               any other line is echoed back",
        f"  stop it:     Ctrl-C, or kill -TERM {os.getpid()}",
    ])


def render_resolved(resolved: Resolved, handler_path: str | None = None) -> str:
    """Every setting as ``name = value  # source``, in TOML syntax where possible.

    The output (minus unset settings, shown commented out) is a valid config file.
    """
    lines = []
    if handler_path is not None:
        lines.append(f"# handler: {handler_path} (imports fine)")
    rows = []
    for field in registry():
        value = getattr(resolved.settings, field.name)
        validator = field.metadata["validator"]
        if getattr(validator, "__wrapped__", validator) is file_mode and value is not None:
            value = f"{value:04o}"  # permission bits read back as octal, not decimal
        text = f"{field.name} = {_toml(value)}" if value is not None else f"# {field.name} unset"
        rows.append((text, str(resolved.origins[field.name])))
    width = max(len(text) for text, _ in rows)
    lines += [f"{text.ljust(width)}  # {origin}" for text, origin in rows]
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return repr(value)


# --- status ---


def run_status(args: argparse.Namespace) -> int:
    """``engine status``: fetch the status endpoint and print it."""
    settings = resolve(setting_values(args), config_path=args.config).settings
    if settings.status_bind is None:
        raise ConfigError(
            "status_bind", None, "the address of a running engine's status endpoint: pass "
            f"--status-bind unix:PATH or 127.0.0.1:PORT, or set {env_var('status_bind')}",
        )
    timeout = STATUS_TIMEOUT_VALIDATOR("timeout", args.timeout)
    kind = "prometheus" if args.prometheus else "json"
    try:
        body = fetch_status(settings.status_bind, kind, timeout)
    except OSError as exc:
        return _fail(
            f"cannot read the status endpoint at {settings.status_bind}: "
            f"{exc.strerror or exc or type(exc).__name__}", ExitStatus.FAILURE,
        )
    try:  # --json too: its output must be a status document, as printed
        if args.prometheus:
            body = check_prometheus(body)
        else:
            data = parse_status(body)
            body = body if args.json else format_status(data)
    except StatusError as exc:
        return _fail(f"the status endpoint sent {exc}", ExitStatus.FAILURE)
    return write_output(body)
