"""The connection intake: what a worker does with a connection before the handler sees it.

:meth:`Intake.admit` runs in the worker, in the request's thread, before
``server.verify_request``. In order:

1. **PROXY header** (``proxy_protocol``): the peer must be a trusted proxy
   (``proxy_allow_from``); the header is read within ``handshake_timeout`` and the
   client address it carries replaces the peer's (v1 ``UNKNOWN`` and v2 ``LOCAL`` keep
   the peer's). The bytes after the header stay in the socket for the handler.
2. **Access lists**: ``allow_from`` then ``deny_from``, checked against the real client
   address (after step 1).
3. **TLS**: the handshake, within what is left of ``handshake_timeout``; the request
   becomes an ``ssl.SSLSocket``.
4. **client_timeout**: set on the socket (a handler's own ``timeout`` attribute still
   overrides it in ``StreamRequestHandler.setup``), unless the connection inherited it
   from its listener (below).

**The timeout in the kernel.** A Python socket with a timeout polls before every
``recv`` and ``send`` (CPython's ``sock_call_ex``), and ``settimeout`` itself is a system
call: about 12% of the CPU of a short connection (docs/tls-and-proxy.md). Linux copies
a TCP listener's ``SO_RCVTIMEO`` and ``SO_SNDTIMEO`` into each socket ``accept()``
returns (Unix-socket listeners do not), so a sync worker sets ``client_timeout`` on its
TCP listeners (:meth:`Intake.inherit_timeout`: the master before "serving", each
worker at its boot) and those connections are built as (or the intake turns them
into) a :class:`~workers.connection.KernelTimedSocket`: blocking underneath,
``gettimeout()`` reporting the timeout, and ``TimeoutError`` where the kernel's
``EAGAIN`` ends a wait, as with a Python timeout. A socket with a Python timeout is
non-blocking underneath, so the kernel timeout never fires on it: a handler's own
``timeout`` and TLS connections (which get ``settimeout``) keep CPython's; the gevent
worker's TCP connections are bounded by its idle sweep (:mod:`workers.idle_sweep`).

Datagram requests (``(data, socket)``) only get step 2. A connection refused at any step
is closed here, with one line on the ``engine.intake`` logger:

* WARNING: a PROXY header from an untrusted peer, or a malformed one: a misconfigured
  proxy or someone forging addresses, which an operator should look at;
* INFO: a client denied by the access lists, a TLS handshake that failed (wrong
  version, no or bad certificate), a PROXY header or handshake that timed out;
* DEBUG: connections closed or reset by the client before anything was said (port
  scanners, TCP health checks) and denied datagrams (cheap to spoof, so they must not be
  able to flood the log).

Addresses that are not IP addresses (Unix-socket peers) are outside every network: a
non-empty ``allow_from`` refuses them, ``deny_from`` never matches them. They are
trusted to send PROXY headers: who may connect to a Unix socket is decided by its file
permissions, and the trust list has no way to name them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import select
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Any

from workers.connection import TIMEVAL, Connection, KernelTimedSocket, kernel_timed_class
from workers.protocol import format_address
from workers.proxy_protocol import HeaderTruncated, ProxyProtocolError, read_header

log = logging.getLogger("engine.intake")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SOCKET = socket.socket
# Connections the intake may give a kernel timeout by assigning __class__: the stdlib's
# (a server's own get_request) and the worker's plain class.
_PLAIN_CONNECTIONS = (Connection, _SOCKET)
_TCP = (socket.AF_INET, socket.AF_INET6)
_KNOWN_FAMILIES = (*_TCP, socket.AF_UNIX)  # stream addresses: a tuple iff TCP


class Networks:
    """A set of IP networks, parsed once, for fast membership tests."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        networks = [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]
        self._v4 = tuple(n for n in networks if isinstance(n, ipaddress.IPv4Network))
        self._v6 = tuple(n for n in networks if isinstance(n, ipaddress.IPv6Network))

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)

    def __contains__(self, ip: object) -> bool:
        if isinstance(ip, ipaddress.IPv4Address):
            return any(ip in network for network in self._v4)
        if isinstance(ip, ipaddress.IPv6Address):
            if any(ip in network for network in self._v6):
                return True
            # An IPv4 client on a dual-stack socket is ::ffff:a.b.c.d.
            mapped = ip.ipv4_mapped
            return mapped is not None and any(mapped in network for network in self._v4)
        return False


def client_ip(address: Any) -> IPAddress | None:
    """The IP address of a socket address, or None (Unix sockets, unnamed peers)."""
    if not isinstance(address, tuple) or not address or not isinstance(address[0], str):
        return None
    try:
        return ipaddress.ip_address(address[0].partition("%")[0])  # no IPv6 scope id
    except ValueError:
        return None


class Intake:
    """Admits (or closes) each connection before the classic pipeline; see the module.

    The worker shares one instance between its threads: it holds no per-connection
    state. Settings are taken in the form the engine's registry validated (CIDR strings,
    seconds) and parsed once here.
    """

    def __init__(
        self,
        *,
        handshake_timeout: float = 10.0,
        proxy_protocol: bool = False,
        proxy_allow_from: Iterable[str] = ("127.0.0.1/32", "::1/128"),
        allow_from: Iterable[str] = (),
        deny_from: Iterable[str] = (),
        client_timeout: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.handshake_timeout = handshake_timeout
        self.proxy_protocol = proxy_protocol
        self.proxy_allow_from = Networks(proxy_allow_from)
        self.allow_from = Networks(allow_from)
        self.deny_from = Networks(deny_from)
        self.client_timeout = client_timeout
        self.ssl_context = ssl_context
        # Set in a worker by inherit_timeout(): TCP connections (a tuple address) come
        # with client_timeout from their listener, and need nothing more from the intake
        # when `_pass_tcp` (no PROXY header, access list or TLS either).
        self.timeout_inherited = False
        self._pass_tcp = False
        self._timed: type[KernelTimedSocket] = KernelTimedSocket  # carries the seconds
        # Set by a worker that bounds its TCP connections' waits itself (the gevent
        # worker's idle sweep): plain TCP connections then get no socket timeout here.
        self.tcp_timeout_elsewhere = False

    def admit(self, request: Any, client_address: Any) -> tuple[Any, Any] | None:
        """Return the request and client address to serve, or None if it was refused.

        The returned request may be a new object (an ``ssl.SSLSocket``) and the address
        the one from a PROXY header. On None the connection is already closed and one
        line logged. Client misbehaviour (garbage, resets, EOF, timeouts) never raises.
        """
        if self._pass_tcp and type(client_address) is tuple:
            kind = type(request)
            if kind is self._timed:  # built so by the worker's accept (connection_class)
                return request, client_address
            if kind in _PLAIN_CONNECTIONS:
                request.__class__ = self._timed  # client_timeout came from the listener
                return request, client_address
        if isinstance(request, tuple):  # a datagram: (data, the server's socket)
            reason = self.refusal(client_address)
            if reason is None:
                return request, client_address
            log.debug("dropped datagram from %s: %s", format_address(client_address), reason)
            return None  # never close: the socket is the server's own
        try:
            return self._admit_stream(request, client_address)
        except BaseException:
            # A bug, or SystemExit & co. on the way out: the connection must not leak.
            _close(request)
            raise

    def inherit_timeout(self, listeners: Iterable[socket.socket], *, blocking: bool) -> None:
        """Let TCP connections inherit client_timeout from *listeners* (the master before
        "serving", then each worker at its boot).

        *blocking*: whether the worker's handlers get blocking sockets (the sync
        worker), on which the kernel's timeout applies; the gevent worker's never block.
        The listeners get no timeout (an earlier master's is cleared) when client_timeout
        is off, under TLS (the handshake's socket gets a Python timeout anyway), or when
        ``socket.setdefaulttimeout`` gave every new socket a timeout of its own.
        """
        seconds = self.client_timeout
        if not blocking or self.ssl_context is not None or socket.getdefaulttimeout() is not None:
            seconds = None
        inherited = set_listener_timeout(listeners, seconds) and seconds is not None
        self.timeout_inherited = inherited
        if inherited:
            assert seconds is not None
            self._timed = kernel_timed_class(seconds)
        self._pass_tcp = inherited and not (
            self.proxy_protocol or self.allow_from or self.deny_from
        )

    def connection_class(self, listener: socket.socket) -> type[Connection]:
        """The class a sync worker builds *listener*'s connections as (after
        :meth:`inherit_timeout`): the kernel-timed one where :meth:`admit` would give
        every connection that class and nothing else, so that it has nothing to change."""
        if self._pass_tcp and listener.family in _TCP and listener.type == socket.SOCK_STREAM:
            return self._timed
        return Connection

    def refusal(self, client_address: Any) -> str | None:
        """Why the access lists refuse *client_address*, or None if they let it in."""
        if not (self.allow_from or self.deny_from):
            return None
        ip = client_ip(client_address)
        if self.allow_from and ip not in self.allow_from:
            return "not in allow_from"
        if ip is not None and ip in self.deny_from:
            return "in deny_from"
        return None

    # --- streams ---

    def _admit_stream(self, request: Any, client_address: Any) -> tuple[Any, Any] | None:
        deadline = time.monotonic() + self.handshake_timeout
        peer = client_address
        if self.proxy_protocol:
            client_address = self._proxy_header(request, peer, deadline)
            if client_address is None:
                return None
        reason = self.refusal(client_address)
        if reason is not None:
            log.info("refused %s: %s", _describe(client_address, peer), reason)
            _close(request)
            return None
        if self.ssl_context is not None:
            request = self._handshake(request, client_address, peer, deadline)
            if request is None:
                return None
        elif type(peer) is tuple and self.timeout_inherited and (
            type(request) in _PLAIN_CONNECTIONS
        ):
            request.__class__ = self._timed  # TCP: client_timeout came from the listener
        elif self.client_timeout is not None and not (
            self.tcp_timeout_elsewhere and type(peer) is tuple  # the gevent worker's sweep
        ):
            request.settimeout(self.client_timeout)
        return request, client_address

    def _proxy_header(self, request: Any, peer: Any, deadline: float) -> Any:
        """The client address from the PROXY header, or None (closed and logged)."""
        ip = client_ip(peer)
        if ip is not None and ip not in self.proxy_allow_from:
            log.warning("closed %s: PROXY header from a peer not in proxy_allow_from",
                        format_address(peer))
            _close(request)
            return None
        try:
            header = read_header(request, deadline)
        except HeaderTruncated as exc:
            _log_truncated(peer, exc)
        except ProxyProtocolError as exc:
            log.warning("closed %s: bad PROXY header: %s", format_address(peer), exc)
        except TimeoutError:
            log.info("closed %s: no complete PROXY header within %gs",
                     format_address(peer), self.handshake_timeout)
        except OSError as exc:
            log.debug("closed %s while reading its PROXY header: %s",
                      format_address(peer), _os_reason(exc))
        except Exception:
            log.exception("closed %s: error while reading its PROXY header",
                          format_address(peer))
        else:
            if header.source is None and _ended_after_header(request, deadline):
                # The proxy's own connection (v2 LOCAL, v1 UNKNOWN) closed or reset
                # right after its header: a load balancer's TCP health check.
                log.debug("closed %s: health check (%s header, then closed)",
                          format_address(peer), header.command)
            else:
                return peer if header.source is None else header.source
        _close(request)
        return None

    def _handshake(
        self, request: Any, client_address: Any, peer: Any, deadline: float
    ) -> Any:
        """The TLS socket after a handshake that ended by *deadline*, or None."""
        assert self.ssl_context is not None
        who = _describe(client_address, peer)
        tls: Any = request
        try:
            request.setblocking(False)
            # wrap_socket takes over the descriptor: from here on, close `tls`.
            tls = self.ssl_context.wrap_socket(
                request, server_side=True, do_handshake_on_connect=False
            )
            _do_handshake(tls, deadline)
            tls.settimeout(self.client_timeout)
            return tls
        except TimeoutError:
            log.info("closed %s: TLS handshake not done within %gs", who,
                     self.handshake_timeout)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError) as exc:
            log.debug("closed %s during the TLS handshake: %s", who, _os_reason(exc))
        except ssl.SSLError as exc:
            log.info("closed %s: TLS handshake failed: %s", who, exc.reason or exc)
        except OSError as exc:
            log.debug("closed %s during the TLS handshake: %s", who, _os_reason(exc))
        except Exception:
            log.exception("closed %s: error during the TLS handshake", who)
        _close(tls)
        return None


def set_listener_timeout(listeners: Iterable[socket.socket], seconds: float | None) -> bool:
    """Set SO_RCVTIMEO and SO_SNDTIMEO of the TCP listeners among *listeners* to *seconds*
    (None: no timeout), which the sockets their ``accept()`` returns inherit (Linux).

    Datagram and Unix-socket listeners are left alone. Returns whether every TCP
    listener took the value and a connection's address tells whether it came from one:
    every stream listener is TCP (a tuple address) or Unix (a string).
    """
    # At least 1 µs (0 is none), at most about 31 years (the settings' longest duration).
    usec = 0 if seconds is None else min(max(1, round(seconds * 1e6)), 10**15)
    timeval = TIMEVAL.pack(*divmod(usec, 1_000_000))
    took = True
    for listener in listeners:
        try:
            if listener.type != socket.SOCK_STREAM:
                continue
            family = listener.family
            if family not in _KNOWN_FAMILIES:
                took = False  # its addresses may be tuples too
            elif family in _TCP:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        except OSError:
            took = False
    return took


def _do_handshake(tls: ssl.SSLSocket, deadline: float) -> None:
    """Run a non-blocking handshake to the end, or raise TimeoutError at *deadline*.

    One deadline for the whole handshake: a per-operation socket timeout would let a
    client that dribbles its ClientHello hold the worker indefinitely.
    """
    poller = select.poll()
    poller.register(tls.fileno(), select.POLLIN)
    while True:
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            poller.modify(tls.fileno(), select.POLLIN)
        except ssl.SSLWantWriteError:
            poller.modify(tls.fileno(), select.POLLOUT)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(math.ceil(remaining * 1000)):
            raise TimeoutError("TLS handshake timed out")


def _describe(client_address: Any, peer: Any) -> str:
    if client_address == peer:
        return format_address(peer)
    return f"{format_address(client_address)} (via {format_address(peer)})"


def _log_truncated(peer: Any, exc: HeaderTruncated) -> None:
    if exc.received:
        log.warning("closed %s: bad PROXY header: %s", format_address(peer), exc)
    else:  # connect-and-close: a TCP health check, a port scan
        log.debug("closed %s before it sent a PROXY header", format_address(peer))


def _ended_after_header(sock: Any, deadline: float) -> bool:
    """True if the peer closes or resets *sock* within 0.1 s (at most until *deadline*)
    without sending anything more. A server-speaks-first protocol's check, which waits
    for the server, costs at most that 0.1 s before the handler runs."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    wait = min(0.1, max(0.0, deadline - time.monotonic()))
    if not poller.poll(math.ceil(wait * 1000)):
        return False
    try:
        pending: bytes = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:  # ECONNRESET: HAProxy ends its checks with a reset
        return True
    return pending == b""


def _os_reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _close(sock: Any) -> None:
    with contextlib.suppress(Exception):
        sock.close()
