"""The PROXY protocol, versions 1 (text) and 2 (binary): a parser and a socket reader.

A proxy in front of the engine (HAProxy, stunnel, an AWS NLB...) prepends one header to
each connection saying who the real client is. The specification is HAProxy's
``doc/proxy-protocol.txt``; this module follows it strictly:

* v1: ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`` or ``PROXY UNKNOWN ...\\r\\n``,
  at most 107 bytes with the CRLF; exactly one space between fields; IPv4 as four
  decimal numbers without leading zeros; IPv6 in hexadecimal text; ports 0-65535
  without leading zeros or signs. A lone CR or LF is an error.
* v2: the 12-byte signature, version 2, command LOCAL or PROXY, family
  UNSPEC/INET/INET6/UNIX, transport UNSPEC/STREAM/DGRAM, a 16-bit length, the
  addresses, then TLVs (type, 16-bit length, value), which are bounds-checked and
  kept as raw ``(type, value)`` pairs, not interpreted (no CRC32C check).

:func:`parse` is pure (bytes in, header out); :func:`read_header` reads one header from
a socket with a deadline, without consuming a byte of what follows it.
"""

from __future__ import annotations

import math
import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the longest v1 line, CRLF included ("PROXY UNKNOWN" + two IPv6...)
V2_FIXED_LENGTH = 16  # signature, version/command, family/transport, length
V2_MAX_LENGTH = V2_FIXED_LENGTH + 0xFFFF

_V2_LENGTH = struct.Struct("!H")
_V2_COMMANDS = {0x0: "LOCAL", 0x1: "PROXY"}
_V2_FAMILIES: dict[int, socket.AddressFamily | None] = {
    0x0: None, 0x1: socket.AF_INET, 0x2: socket.AF_INET6, 0x3: socket.AF_UNIX,
}
_V2_TRANSPORTS: dict[int, socket.SocketKind | None] = {
    0x0: None, 0x1: socket.SOCK_STREAM, 0x2: socket.SOCK_DGRAM,
}
# Bytes of the address block per family: two addresses, plus two ports for INET(6).
_V2_ADDRESS_LENGTH = {socket.AF_INET: 12, socket.AF_INET6: 36, socket.AF_UNIX: 216}
_UNIX_PATH_LENGTH = 108
_V1_PROTOCOLS = (b"TCP4 ", b"TCP6 ", b"UNKNOWN ", b"UNKNOWN\r")
_V1_ADDRESS_CHARS = frozenset(b"0123456789abcdefABCDEF:. ")
_DIGITS = frozenset(b"0123456789")


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header (or its beginning)."""


class HeaderTruncated(ProxyProtocolError):
    """The connection ended (EOF) before a complete header; ``received`` bytes came."""

    def __init__(self, received: int) -> None:
        self.received = received
        super().__init__(
            f"connection closed after {received} bytes, before a complete PROXY header"
        )


@dataclass(frozen=True)
class ProxyHeader:
    """One decoded PROXY header.

    ``source`` and ``destination`` are shaped as ``socket.accept()`` returns addresses
    for their family: ``(host, port)`` (IPv4), ``(host, port, 0, 0)`` (IPv6), a path
    (AF_UNIX). They are None when the receiver must keep the connection's own
    addresses: v1 ``UNKNOWN``, v2 ``LOCAL`` (a proxy's health check), v2 UNSPEC family
    or transport.
    """

    version: int  # 1 or 2
    length: int  # bytes the header takes on the wire
    command: str = "PROXY"  # "PROXY", "LOCAL" (v2) or "UNKNOWN" (v1)
    family: socket.AddressFamily | None = None
    transport: socket.SocketKind | None = None
    source: Any = None
    destination: Any = None
    tlvs: tuple[tuple[int, bytes], ...] = ()  # v2 type-length-value extensions, raw


def parse(data: bytes) -> ProxyHeader | None:
    """Decode the PROXY header at the start of *data*.

    Returns the header (its ``length`` says how many bytes of *data* it takes; the
    rest is the payload), or None if *data* is a valid beginning of a header but more
    bytes are needed.

    Raises:
        ProxyProtocolError: *data* does not start with a valid header.
    """
    length = header_length(data)
    if length is None or len(data) < length:
        return None
    header = bytes(data[:length])
    if header.startswith(V2_SIGNATURE):
        return _decode_v2(header)
    return _decode_v1(header)


def header_length(data: bytes) -> int | None:
    """How many bytes the header at the start of *data* takes, if that is known yet.

    For v1 that is once the CRLF is seen; for v2 once the 16 fixed bytes are. The
    fields are not validated beyond what the beginning shows (see :func:`parse`).

    Raises:
        ProxyProtocolError: *data* cannot be the beginning of a header.
    """
    if data[:1] == V2_SIGNATURE[:1]:
        return _v2_length(data)
    return _v1_length(data)


# --- version 2 ---


def _v2_length(data: bytes) -> int | None:
    seen = bytes(data[:V2_FIXED_LENGTH])
    if not V2_SIGNATURE.startswith(seen[:12]):
        raise ProxyProtocolError("not a PROXY header (bad v2 signature)")
    if len(seen) > 12:
        version, command = seen[12] >> 4, seen[12] & 0xF
        if version != 2:
            raise ProxyProtocolError(f"unsupported PROXY protocol version {version}")
        if command not in _V2_COMMANDS:
            raise ProxyProtocolError(f"unknown PROXY v2 command {command:#x}")
    if len(seen) > 13:
        family, transport = seen[13] >> 4, seen[13] & 0xF
        # Strict even for LOCAL: the spec has receivers reject unassigned values.
        if family not in _V2_FAMILIES:
            raise ProxyProtocolError(f"unknown PROXY v2 address family {family:#x}")
        if transport not in _V2_TRANSPORTS:
            raise ProxyProtocolError(f"unknown PROXY v2 transport {transport:#x}")
    if len(seen) < V2_FIXED_LENGTH:
        return None
    return V2_FIXED_LENGTH + int(_V2_LENGTH.unpack_from(seen, 14)[0])


def _decode_v2(header: bytes) -> ProxyHeader:
    length = len(header)
    command = _V2_COMMANDS[header[12] & 0xF]
    family = _V2_FAMILIES[header[13] >> 4]
    transport = _V2_TRANSPORTS[header[13] & 0xF]
    if command == "LOCAL":
        # The proxy's own connection: the block, family included, is ignored.
        return ProxyHeader(version=2, length=length, command="LOCAL")
    if family is None or transport is None:
        # Unknown to the proxy: keep the real endpoints, ignore the address block.
        return ProxyHeader(version=2, length=length, family=family, transport=transport)
    body = header[V2_FIXED_LENGTH:]
    needed = _V2_ADDRESS_LENGTH[family]
    if len(body) < needed:
        raise ProxyProtocolError(
            f"PROXY v2 address block of {len(body)} bytes, {needed} needed for {family.name}"
        )
    if family == socket.AF_UNIX:
        source: Any = _unix_address(body[:_UNIX_PATH_LENGTH])
        destination: Any = _unix_address(body[_UNIX_PATH_LENGTH:needed])
    else:
        size = 4 if family == socket.AF_INET else 16
        ports = struct.unpack_from("!HH", body, 2 * size)
        source = _inet_address(family, body[:size], ports[0])
        destination = _inet_address(family, body[size:2 * size], ports[1])
    return ProxyHeader(
        version=2, length=length, family=family, transport=transport,
        source=source, destination=destination, tlvs=_tlvs(body[needed:]),
    )


def _inet_address(family: socket.AddressFamily, packed: bytes, port: int) -> Any:
    # inet_ntop: the same text accept() gives (IPv4-mapped IPv6 included).
    host = socket.inet_ntop(family, packed)
    return (host, port) if family == socket.AF_INET else (host, port, 0, 0)


def _unix_address(raw: bytes) -> Any:
    if raw[:1] == b"\0":  # Linux abstract namespace: bytes, as accept() returns them
        return raw.rstrip(b"\0")
    return os.fsdecode(raw.split(b"\0", 1)[0])


def _tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    tlvs = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyProtocolError("PROXY v2 TLV header cut short")
        kind = data[offset]
        size = int(_V2_LENGTH.unpack_from(data, offset + 1)[0])
        start = offset + 3
        if start + size > len(data):
            raise ProxyProtocolError(
                f"PROXY v2 TLV {kind:#x} of {size} bytes overruns the header"
            )
        tlvs.append((kind, bytes(data[start:start + size])))
        offset = start + size
    return tuple(tlvs)


# --- version 1 ---


def _v1_length(data: bytes) -> int | None:
    seen = bytes(data[:V1_MAX_LENGTH])
    end = seen.find(b"\r\n")
    if end >= 0:
        _check_v1_beginning(seen[:end])
        return end + 2
    _check_v1_beginning(seen)
    if len(seen) >= V1_MAX_LENGTH:
        raise ProxyProtocolError(f"PROXY v1 line without CRLF in {V1_MAX_LENGTH} bytes")
    return None


def _check_v1_beginning(seen: bytes) -> None:
    """Reject early what can never become a valid v1 line (no CRLF seen yet)."""
    if not V1_PREFIX.startswith(seen[:len(V1_PREFIX)]):
        raise ProxyProtocolError("not a PROXY header")
    if b"\n" in seen or b"\r" in seen[:-1]:
        raise ProxyProtocolError("PROXY v1 line with a lone CR or LF")
    rest = seen[len(V1_PREFIX):]
    if not any(proto.startswith(rest[:len(proto)]) for proto in _V1_PROTOCOLS):
        raise ProxyProtocolError("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN")
    if rest.startswith((b"TCP4 ", b"TCP6 ")) and not _V1_ADDRESS_CHARS.issuperset(
        rest[5:].rstrip(b"\r")
    ):
        raise ProxyProtocolError("PROXY v1 line with characters no address or port has")


def _decode_v1(header: bytes) -> ProxyHeader:
    line = header[:-2]
    if b"\r" in line or b"\n" in line:
        raise ProxyProtocolError("PROXY v1 line with a lone CR or LF")
    fields = line.split(b" ")
    if fields[0] != b"PROXY" or len(fields) < 2:
        raise ProxyProtocolError("not a PROXY header")
    if fields[1] == b"UNKNOWN":
        # The sender could not tell: keep the real endpoints, ignore the rest.
        return ProxyHeader(version=1, length=len(header), command="UNKNOWN")
    if fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN")
    if len(fields) != 6:
        raise ProxyProtocolError(
            "PROXY v1 line needs exactly: protocol, 2 addresses, 2 ports (one space apart)"
        )
    family = socket.AF_INET if fields[1] == b"TCP4" else socket.AF_INET6
    source_host, destination_host = (_v1_host(family, field) for field in fields[2:4])
    source_port, destination_port = (_v1_port(field) for field in fields[4:6])
    if family == socket.AF_INET:
        source: Any = (source_host, source_port)
        destination: Any = (destination_host, destination_port)
    else:
        source = (source_host, source_port, 0, 0)
        destination = (destination_host, destination_port, 0, 0)
    return ProxyHeader(
        version=1, length=len(header), family=family, transport=socket.SOCK_STREAM,
        source=source, destination=destination,
    )


def _v1_host(family: socket.AddressFamily, field: bytes) -> str:
    if family == socket.AF_INET:
        parts = field.split(b".")
        if len(parts) != 4 or not all(_decimal(part, 255) for part in parts):
            raise ProxyProtocolError(f"bad IPv4 address in PROXY v1 line: {field!r}")
        return field.decode("ascii")
    if not field or not _V1_ADDRESS_CHARS.issuperset(field) or b" " in field:
        raise ProxyProtocolError(f"bad IPv6 address in PROXY v1 line: {field!r}")
    try:
        packed = socket.inet_pton(socket.AF_INET6, field.decode("ascii"))
    except (OSError, ValueError):
        raise ProxyProtocolError(f"bad IPv6 address in PROXY v1 line: {field!r}") from None
    return socket.inet_ntop(socket.AF_INET6, packed)


def _v1_port(field: bytes) -> int:
    if not _decimal(field, 0xFFFF):
        raise ProxyProtocolError(f"bad port in PROXY v1 line: {field!r}")
    return int(field)


def _decimal(field: bytes, maximum: int) -> bool:
    """ASCII digits only, no leading zero (it could be read as octal), at most *maximum*."""
    if not field or not _DIGITS.issuperset(field) or len(field) > len(str(maximum)):
        return False
    if len(field) > 1 and field[:1] == b"0":
        return False
    return int(field) <= maximum


# --- reading from a socket ---


def read_header(sock: socket.socket, deadline: float) -> ProxyHeader:
    """Read one PROXY header from *sock*, leaving every byte after it unread.

    The header is found with ``MSG_PEEK`` (v1 needs its CRLF, v2 its 16 fixed bytes),
    then exactly its length is received. *deadline* (a ``time.monotonic()`` value)
    bounds the whole read, so a peer that sends nothing or dribbles bytes cannot hold
    the caller longer. The socket's timeout is restored afterwards.

    Raises:
        ProxyProtocolError: a malformed header (:class:`HeaderTruncated` on EOF).
        TimeoutError: no complete header by *deadline*.
        OSError: the connection failed (reset...).
    """
    previous = sock.gettimeout()
    sock.setblocking(False)
    waiter = _Waiter(sock)
    try:
        length = _peek_length(sock, deadline, waiter)
        header = parse(_receive_exactly(sock, length, deadline, waiter))
        assert header is not None and header.length == length
        return header
    finally:
        waiter.close()
        sock.settimeout(previous)


def _peek_length(sock: socket.socket, deadline: float, waiter: _Waiter) -> int:
    while True:
        try:
            seen = sock.recv(V1_MAX_LENGTH, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            seen = None
        if seen == b"":
            raise HeaderTruncated(0)
        received = len(seen or b"")
        if seen:
            length = header_length(seen)
            if length is not None:
                return length
        if waiter.peer_closed:  # and the peek above saw everything it sent
            raise HeaderTruncated(received)
        waiter.wait(deadline, received)


def _receive_exactly(
    sock: socket.socket, length: int, deadline: float, waiter: _Waiter
) -> bytes:
    # The length is known, so plain reads never take a byte of the payload.
    data = bytearray()
    while len(data) < length:
        try:
            chunk = sock.recv(length - len(data))
        except (BlockingIOError, InterruptedError):
            waiter.wait(deadline, len(data))
            continue
        if not chunk:
            raise HeaderTruncated(len(data))
        data += chunk
    return bytes(data)


class _Waiter:
    """Waits until *new* bytes arrive on a socket; its epoll exists only once needed.

    Edge-triggered: peeked bytes stay in the socket, so a level-triggered poll would
    report them again at once and the peek loop would spin. The peer's FIN is an edge
    too (EPOLLRDHUP), remembered in :attr:`peer_closed`, since a peek that returns old
    bytes cannot tell "nothing new yet" from "nothing more, ever".
    """

    def __init__(self, sock: socket.socket) -> None:
        self._fd = sock.fileno()
        self._epoll: select.epoll | None = None
        self.peer_closed = False

    def wait(self, deadline: float, received: int) -> None:
        """Return once new bytes (or the peer's FIN) arrived; TimeoutError at *deadline*."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete PROXY header in time ({received} bytes came)")
        if self._epoll is None:
            self._epoll = select.epoll()
            self._epoll.register(
                self._fd, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
            )
        # Rounded up to a millisecond: epoll's resolution, and no 0-timeout spinning.
        for _, events in self._epoll.poll(math.ceil(remaining * 1000) / 1000):
            if events & (select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR):
                self.peer_closed = True

    def close(self) -> None:
        """Release the epoll descriptor, if one was made."""
        if self._epoll is not None:
            self._epoll.close()
