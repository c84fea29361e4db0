"""PreforkMixIn is transparent: for every name ForkingMixIn does not define, a base class
or the user's subclass decides (the rule is in docs/classic-api.md).

The static checks compose PreforkMixIn, and ForkingMixIn as the reference, with a base
server class that overrides one name at a time, and compare what the name resolves to.
The end-to-end checks run a framework-style server in a subprocess: its own
``serve_forever`` (catching Ctrl-C, then ``server_close()``) and its own TLS listener.
"""

from __future__ import annotations

import inspect
import os
import signal
import socket
import socketserver
import ssl
import typing
from typing import Any

import pytest

import engine
from engine import classic
from engine.config import Settings, class_attr_names, registry
from engine.prefork import SOCKETSERVER_NAMES, PreforkLayer, PreforkMixIn
from tests.kit import wait_until

DEFAULTS = {f.name: f.default for f in registry()}


def public(cls: type) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_")}


def names_of(*classes: type) -> set[str]:
    return {name for cls in classes for klass in cls.__mro__[:-1] for name in public(klass)}


# Every public name a server composed with PreforkMixIn can have: socketserver's own
# (engine's copy and the stdlib's), ForkingMixIn's, and all that engine adds.
ALL_NAMES = sorted(
    names_of(classic.UDPServer, classic.ForkingMixIn, socketserver.UDPServer, PreforkLayer)
    | set(class_attr_names())
)
ENGINE_NAMES = sorted(public(PreforkLayer) | set(PreforkLayer.__annotations__))


def overriding(base: type, name: str, value: Any) -> type:
    """A framework-like server class on *base* that defines *name*."""
    return type(f"Framework_{name}", (base,), {name: value})


def test_the_mixin_defines_only_forkingmixins_names() -> None:
    assert public(PreforkMixIn) == public(classic.ForkingMixIn)
    assert public(socketserver.ForkingMixIn) == public(classic.ForkingMixIn)


@pytest.mark.parametrize(
    "base", [classic.TCPServer, socketserver.TCPServer], ids=["engine", "stdlib"]
)
@pytest.mark.parametrize("name", ALL_NAMES)
def test_a_base_class_decides_every_name_forkingmixin_does_not_define(
    name: str, base: type
) -> None:
    marker = object()
    framework = overriding(base, name, marker)
    prefork = type("S", (PreforkMixIn, framework), {})
    forking = type("S", (classic.ForkingMixIn, framework), {})
    from_base = inspect.getattr_static(prefork, name) is marker
    assert from_base == (inspect.getattr_static(forking, name) is marker)
    assert from_base == (name not in public(classic.ForkingMixIn))


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_the_users_subclass_decides_every_engine_name(name: str) -> None:
    marker = object()
    user = type("UserServer", (engine.PreforkTCPServer,), {name: marker})
    assert inspect.getattr_static(user, name) is marker


def test_a_frameworks_serve_forever_runs_and_reaches_the_pool() -> None:
    class Framework(classic.TCPServer):
        def serve_forever(self, poll_interval: float = 0.5) -> None:
            super().serve_forever(poll_interval)

    server_class = type("S", (PreforkMixIn, Framework), {})
    mro = server_class.__mro__
    # The framework's method first; its super() is the pool, then socketserver's.
    assert mro.index(Framework) < mro.index(PreforkLayer) < mro.index(classic.TCPServer)
    owner = next(k for k in mro[mro.index(Framework) + 1 :] if "serve_forever" in vars(k))
    assert owner is PreforkLayer


def test_socketserver_names_stay_the_base_classes() -> None:
    # request_queue_size: the base's value, as with ForkingMixIn; engine's own classes 2048.
    class Framework(classic.TCPServer):
        request_queue_size = 7

    class Server(PreforkMixIn, Framework):
        pass

    class Stdlib(PreforkMixIn, socketserver.TCPServer):
        pass

    assert Server.request_queue_size == 7
    assert Stdlib.request_queue_size == socketserver.TCPServer.request_queue_size == 5
    assert engine.PreforkTCPServer.request_queue_size == DEFAULTS["request_queue_size"]
    with Server(("127.0.0.1", 0), classic.BaseRequestHandler) as server:
        assert server.prefork_settings().request_queue_size == 7


class Foreign:
    """A value no setting accepts: taking it for engine's would fail validation."""


SETTING_NAMES = sorted(set(class_attr_names()) - SOCKETSERVER_NAMES)


@pytest.mark.parametrize("name", SETTING_NAMES)
def test_a_base_class_attribute_named_like_a_setting_is_not_taken_for_it(name: str) -> None:
    foreign = Foreign()
    framework = overriding(classic.TCPServer, name, foreign)
    server_class = type("S", (PreforkMixIn, framework), {})
    with server_class(("127.0.0.1", 0), classic.BaseRequestHandler) as server:
        assert getattr(server, name) is foreign  # the framework still sees its own
        setattr(server, name, foreign)  # its __init__ may set it on the instance too
        assert getattr(server.prefork_settings(), name) == DEFAULTS[name]


@pytest.mark.parametrize(
    ("name", "value"), [("workers", 3), ("threads", 4), ("log_level", "debug"), ("user", None)]
)
def test_settings_set_for_engine_are_read(name: str, value: Any) -> None:
    # On the user's subclass of a Prefork class, and on the instance.
    user = type("UserServer", (engine.PreforkTCPServer,), {name: value})
    with user(("127.0.0.1", 0), classic.BaseRequestHandler) as server:
        assert getattr(server.prefork_settings(), name) == value
    with engine.PreforkTCPServer(("127.0.0.1", 0), classic.BaseRequestHandler) as server:
        setattr(server, name, value)
        assert getattr(server.prefork_settings(), name) == value


def test_prefork_annotations_match_the_registry() -> None:
    """#15.4: the hand-written annotations are the registry's class attributes, typed alike."""
    hints = typing.get_type_hints(PreforkLayer)
    registry_hints = typing.get_type_hints(Settings)
    settings = {name: hints[name] for name in hints if name in registry_hints}
    assert set(settings) == set(class_attr_names())
    assert settings == {name: registry_hints[name] for name in class_attr_names()}


def test_prefork_defaults_are_the_registrys() -> None:
    for name in class_attr_names():
        if name == "request_queue_size":  # socketserver's: the base class's value
            continue
        assert getattr(engine.PreforkTCPServer, name) == DEFAULTS[name], name
        assert getattr(socketserver_based(), name) == DEFAULTS[name], name


def socketserver_based() -> type:
    return type("S", (PreforkMixIn, socketserver.TCPServer), {})


def test_a_mixin_built_on_preforkmixin_takes_the_layer_where_it_meets_a_server() -> None:
    class Extra(PreforkMixIn):
        def serve_forever(self, poll_interval: float = 0.5) -> None:
            super().serve_forever(poll_interval)

    class Server(Extra, socketserver.UDPServer):
        pass

    assert not issubclass(Extra, PreforkLayer)
    mro = Server.__mro__
    assert mro.index(Extra) < mro.index(PreforkLayer) < mro.index(socketserver.UDPServer)
    assert inspect.getattr_static(Server, "serve_forever") is vars(Extra)["serve_forever"]


def test_a_server_without_a_socketserver_base_is_refused() -> None:
    class NotSocketserver:
        def fileno(self) -> int:
            return -1

        def serve_forever(self) -> None:
            pass

    with pytest.raises(TypeError, match="socketserver server class"):
        type("S", (PreforkMixIn, NotSocketserver), {})


FRAMEWORK = """
import os, signal, socket, ssl, sys
import engine
from engine import PreforkMixIn, StreamRequestHandler, TCPServer


class Echo(StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"%d %s" % (os.getpid(), self.rfile.readline()))


class FrameworkServer(TCPServer):
    '''Like werkzeug.serving.BaseWSGIServer: Ctrl-C ends serve_forever quietly.'''

    allow_reuse_address = True

    def __init__(self, address, handler, ssl_context=None):
        super().__init__(address, handler)
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True)
        self.ssl_context = ssl_context

    def serve_forever(self, poll_interval=0.5):
        try:
            super().serve_forever(poll_interval=poll_interval)
        except KeyboardInterrupt:
            print("INTERRUPTED", file=sys.stderr, flush=True)
        finally:
            self.server_close()

    def server_close(self):
        print("FRAMEWORK CLOSE", file=sys.stderr, flush=True)
        super().server_close()


class Server({mixin}, FrameworkServer):
    workers = 2


context = None
if len(sys.argv) > 1:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1])
server = Server(("127.0.0.1", 0), Echo, context)
print("READY", repr(server.server_address), flush=True)
server.serve_forever()
print("RETURNED", file=sys.stderr, flush=True)
"""


def test_ctrl_c_runs_the_frameworks_serve_forever_handler_and_server_close(engine_proc) -> None:
    server = engine_proc(FRAMEWORK.format(mixin="PreforkMixIn"))
    workers = wait_until(lambda: len(server.workers()) == 2 and server.workers(), 10, "pool")
    with socket.create_connection(server.address, timeout=10) as client:
        client.sendall(b"hello\n")
        assert client.recv(100).endswith(b" hello\n")
    # Ctrl-C in a terminal: SIGINT to the whole foreground process group.
    server.snapshot()
    os.killpg(server.pid, signal.SIGINT)
    assert server.wait(10) == 0, server.log()
    log = server.log()
    assert "INTERRUPTED" in log and "FRAMEWORK CLOSE" in log and "RETURNED" in log, log
    assert "Traceback" not in log, log
    assert all(not p.is_running() for p in workers)


def test_a_listener_the_framework_made_tls_is_not_wrapped_again(
    engine_proc, tmp_path
) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    pem = tmp_path / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    server = engine_proc(FRAMEWORK.format(mixin="PreforkMixIn"), args=[str(pem)])
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    wait_until(lambda: server.workers(), 10, "pool")
    for n in range(3):
        raw = socket.create_connection(server.address, timeout=10)
        with client_context.wrap_socket(raw, server_hostname="127.0.0.1") as client:
            client.sendall(b"tls %d\n" % n)
            pid, line = client.recv(100).split(b" ", 1)
            assert line == b"tls %d\n" % n
            assert int(pid) != server.pid  # served by the pool, not the master
