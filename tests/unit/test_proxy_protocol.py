"""The PROXY protocol parser (v1 and v2) and its socket reader.

Headers are built here with struct and string formatting, independently of the parser.
Hypothesis checks that garbage only ever raises ProxyProtocolError, that valid headers
of every kind round-trip (also fed one prefix at a time), and that the payload after a
header is never taken. The reader is exercised on real socket pairs and TCP loopback.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.kit import wait_until
from workers.proxy_protocol import (
    V2_SIGNATURE,
    HeaderTruncated,
    ProxyHeader,
    ProxyProtocolError,
    parse,
    read_header,
)

SIGNATURE = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"  # spelled out, as the spec
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def v2(
    command: int = 1, family: int = 1, transport: int = 1, block: bytes = b"",
    version: int = 2,
) -> bytes:
    """A v2 header with *block* (addresses + TLVs) as its variable part."""
    return (
        SIGNATURE + bytes([(version << 4) | command, (family << 4) | transport])
        + struct.pack("!H", len(block)) + block
    )


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def v2_inet(
    source: str, source_port: int, destination: str, destination_port: int,
    transport: int = 1, tlvs: bytes = b"",
) -> bytes:
    ip = ipaddress.ip_address(source)
    family = 1 if ip.version == 4 else 2
    block = (
        ip.packed + ipaddress.ip_address(destination).packed
        + struct.pack("!HH", source_port, destination_port) + tlvs
    )
    return v2(family=family, transport=transport, block=block)


# --- examples: valid ---


def test_v1_tcp4_gives_accept_shaped_addresses() -> None:
    header = parse(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n")
    assert header is not None
    assert header.version == 1 and header.length == 47
    assert header.family == socket.AF_INET and header.transport == socket.SOCK_STREAM
    assert header.source == ("192.168.0.1", 56324)
    assert header.destination == ("192.168.0.11", 443)


def test_v1_tcp6_gives_four_tuples_in_accept_text_form() -> None:
    header = parse(b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::ffff:10.0.0.1 0 65535\r\n")
    assert header is not None
    # Lower case, compressed, IPv4-mapped kept dotted: what inet_ntop (accept) gives.
    assert header.source == ("2001:db8::1", 0, 0, 0)
    assert header.destination == ("::ffff:10.0.0.1", 65535, 0, 0)


@pytest.mark.parametrize("line", [
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ffff:f::f ffff:f::f 65535 65535\r\n",
    b"PROXY UNKNOWN anything at all, ignored\r\n",
])
def test_v1_unknown_keeps_the_real_addresses(line: bytes) -> None:
    assert parse(line) == ProxyHeader(version=1, length=len(line), command="UNKNOWN")


def test_v1_longest_lines_are_accepted() -> None:
    full = ":".join(["ffff"] * 8)
    line = f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    assert len(line) == 104  # the spec's longest TCP6 line
    assert parse(line) is not None
    unknown = f"PROXY UNKNOWN {full} {full} 65535 65535\r\n".encode()
    assert len(unknown) == 107  # the spec's worst case
    assert parse(unknown) is not None


def test_v2_tcp4_with_tlvs() -> None:
    tlvs = tlv(0x01, b"h2") + tlv(0x04, b"") + tlv(0xE0, b"x" * 300)
    data = v2_inet("10.0.0.1", 1234, "10.0.0.2", 80, tlvs=tlvs) + b"payload"
    header = parse(data)
    assert header is not None
    assert header.length == len(data) - len(b"payload")
    assert header.source == ("10.0.0.1", 1234) and header.destination == ("10.0.0.2", 80)
    assert header.tlvs == ((0x01, b"h2"), (0x04, b""), (0xE0, b"x" * 300))


def test_v2_udp6() -> None:
    header = parse(v2_inet("2001:db8::7", 53, "::1", 5353, transport=2))
    assert header is not None
    assert header.family == socket.AF_INET6 and header.transport == socket.SOCK_DGRAM
    assert header.source == ("2001:db8::7", 53, 0, 0)


def test_v2_unix_paths_and_abstract_names() -> None:
    source = b"/run/client.sock".ljust(108, b"\0")
    destination = b"\0abstract".ljust(108, b"\0")
    header = parse(v2(family=3, transport=1, block=source + destination))
    assert header is not None
    assert header.family == socket.AF_UNIX
    assert header.source == "/run/client.sock"
    assert header.destination == b"\0abstract"


def test_a_unix_path_a_client_chose_is_logged_as_one_printable_line() -> None:
    """Every peer of a Unix listener may send a PROXY header, and the source path is its
    choice: a newline in it forged a whole access-log line, terminal escapes passed
    through, and a path that is not UTF-8 lost the line (a logging error)."""
    from workers.protocol import format_address

    forged = b"/x\n2099-01-01 00:00:00,000 [1] [worker 0] 203.0.113.66:443 FORGED\x1b[2J\xff"
    header = parse(v2(family=3, transport=1, block=forged.ljust(108, b"\0") * 2))
    assert header is not None
    text = format_address(header.source)
    assert text.isprintable() and text.isascii(), text
    assert text == ("unix:/x\\n2099-01-01 00:00:00,000 [1] [worker 0] 203.0.113.66:443 "
                    "FORGED\\x1b[2J\\udcff")
    assert format_address("/run/café.sock") == "unix:/run/café.sock"  # printable: as it is


@pytest.mark.parametrize("family_transport", [0x00, 0x11, 0x21, 0x22, 0x32])
def test_v2_local_keeps_the_real_addresses_whatever_the_block(family_transport: int) -> None:
    block = os.urandom(40)  # never interpreted for LOCAL
    data = v2(command=0, family=family_transport >> 4, transport=family_transport & 0xF,
              block=block)
    assert parse(data) == ProxyHeader(version=2, length=len(data), command="LOCAL")


@pytest.mark.parametrize("family_transport", [0x00, 0x10, 0x20, 0x01, 0x02])
def test_v2_unspec_proxy_keeps_the_real_addresses(family_transport: int) -> None:
    data = v2(family=family_transport >> 4, transport=family_transport & 0xF, block=b"junk")
    header = parse(data)
    assert header is not None and header.source is None and header.length == len(data)


# --- examples: invalid ---

BAD_V1 = [
    b"GET / HTTP/1.1\r\n",
    b"PROXY\r\n",
    b"PROXY \r\n",
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY UNKNOWNX\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",  # two spaces
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",  # trailing space
    b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # leading zero (octal?)
    b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",  # family mismatch
    b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
    b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",  # scope ids are not addresses
    b"PROXY TCP6 1::2::3 ::1 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # lone LF
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",  # lone CR: cannot become CRLF later
    b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
    b"PROXY UNKNOWN " + b"x" * 93 + b"\r\n",  # 109 bytes: no CRLF in the first 107
    b"PROXY TCP4 \xff.2.3.4 5.6.7.8 1 2\r\n",
]


@pytest.mark.parametrize("data", BAD_V1)
def test_bad_v1_lines_are_rejected(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data + b"more")


BAD_V2 = {
    "bad signature": b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x00",
    "version 1": v2(version=1),
    "version 3": v2(version=3),
    "command 2": v2(command=2),
    "family 4": v2(family=4),
    "transport 3": v2(transport=3),
    "address block too short": v2(family=1, transport=1, block=b"\0" * 11),
    "IPv6 block too short": v2(family=2, transport=1, block=b"\0" * 35),
    "unix block too short": v2(family=3, transport=1, block=b"\0" * 215),
    "TLV header cut": v2(block=b"\0" * 12 + b"\x01\x00"),
    "TLV value overruns": v2(block=b"\0" * 12 + tlv(1, b"abc")[:-1]),
}


@pytest.mark.parametrize("data", BAD_V2.values(), ids=BAD_V2.keys())
def test_bad_v2_headers_are_rejected(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data + b"payload")


@pytest.mark.parametrize("data", [
    b"", b"P", b"PROXY", b"PROXY TCP4 1.2.", b"PROXY UNKNOWN", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",
    SIGNATURE[:1], SIGNATURE, SIGNATURE + b"\x21", SIGNATURE + b"\x21\x11\x00",
    v2_inet("1.2.3.4", 1, "5.6.7.8", 2)[:-1],
])
def test_incomplete_but_valid_beginnings_need_more(data: bytes) -> None:
    assert parse(data) is None


@pytest.mark.parametrize("data", [b"G", b"PROXX", b"PROXY X", b"\r\n\r\n\x01", b"\x16\x03\x01"])
def test_impossible_beginnings_fail_at_once(data: bytes) -> None:
    # A TLS ClientHello or HTTP request sent by mistake is refused on its first bytes.
    with pytest.raises(ProxyProtocolError):
        parse(data)


def test_the_signature_constant_is_the_specs() -> None:
    assert V2_SIGNATURE == SIGNATURE


# --- hypothesis ---


@dataclass
class Built:
    """A header built by the test, with what the parser must find in it."""

    data: bytes
    source: Any
    destination: Any
    tlvs: tuple[tuple[int, bytes], ...] = ()


def _accept_text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    return socket.inet_ntop(family, ip.packed)


def _shaped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> Any:
    host = _accept_text(ip)
    return (host, port) if ip.version == 4 else (host, port, 0, 0)


ports = st.integers(0, 0xFFFF)


@st.composite
def v1_headers(draw: st.DrawFn) -> Built:
    version = draw(st.sampled_from([4, 6]))
    source, destination = draw(st.lists(st.ip_addresses(v=version), min_size=2, max_size=2))
    source_port, destination_port = draw(ports), draw(ports)

    def text(ip: Any) -> str:
        if version == 4:
            return str(ip)
        return draw(st.sampled_from([ip.compressed, ip.exploded, ip.exploded.upper()]))

    line = (
        f"PROXY TCP{version} {text(source)} {text(destination)} "
        f"{source_port} {destination_port}\r\n"
    ).encode()
    return Built(line, _shaped(source, source_port), _shaped(destination, destination_port))


@st.composite
def v1_unknown_headers(draw: st.DrawFn) -> Built:
    tail = draw(st.binary(max_size=92).filter(lambda b: b"\r" not in b and b"\n" not in b))
    line = b"PROXY UNKNOWN" + (b" " + tail if tail else b"") + b"\r\n"
    return Built(line, None, None)


@st.composite
def v2_headers(draw: st.DrawFn) -> Built:
    version = draw(st.sampled_from([4, 6]))
    source, destination = draw(st.lists(st.ip_addresses(v=version), min_size=2, max_size=2))
    source_port, destination_port = draw(ports), draw(ports)
    tlvs = tuple(draw(st.lists(
        st.tuples(st.integers(0, 255), st.binary(max_size=64)), max_size=4
    )))
    data = v2_inet(
        str(source), source_port, str(destination), destination_port,
        transport=draw(st.sampled_from([1, 2])),
        tlvs=b"".join(tlv(kind, value) for kind, value in tlvs),
    )
    return Built(
        data, _shaped(source, source_port), _shaped(destination, destination_port), tlvs
    )


@st.composite
def v2_local_headers(draw: st.DrawFn) -> Built:
    family_transport = draw(st.sampled_from([0x00, 0x11, 0x21, 0x31, 0x12]))
    block = draw(st.binary(max_size=64))
    data = v2(command=0, family=family_transport >> 4, transport=family_transport & 0xF,
              block=block)
    return Built(data, None, None)


valid_headers = st.one_of(v1_headers(), v1_unknown_headers(), v2_headers(), v2_local_headers())


@FAST
@given(built=valid_headers, payload=st.binary(max_size=64))
def test_valid_headers_round_trip_and_leave_the_payload(built: Built, payload: bytes) -> None:
    header = parse(built.data + payload)
    assert header is not None
    assert header.length == len(built.data)  # not one payload byte taken
    assert header.source == built.source
    assert header.destination == built.destination
    assert header.tlvs == built.tlvs


@FAST
@given(built=valid_headers)
def test_every_prefix_of_a_valid_header_asks_for_more(built: Built) -> None:
    for end in range(len(built.data)):
        assert parse(built.data[:end]) is None, built.data[:end]
    assert parse(built.data) is not None


def _never_raises_anything_else(data: bytes) -> None:
    try:
        header = parse(data)
    except ProxyProtocolError:
        return
    if header is not None:
        assert 0 < header.length <= len(data)
        # Deterministic and self-delimiting: the header alone parses the same.
        assert parse(data[:header.length]) == header


@FAST
@given(data=st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=120).map(lambda b: b"PROXY " + b),
    st.binary(max_size=120).map(lambda b: b"PROXY TCP4 " + b),
    st.binary(max_size=120).map(lambda b: b"PROXY TCP6 " + b),
    st.binary(max_size=300).map(lambda b: SIGNATURE + b),
    st.binary(min_size=4, max_size=300).map(lambda b: SIGNATURE + b"\x21" + b),
))
@example(data=SIGNATURE + b"\x21\x11\xff\xff")
def test_random_bytes_only_ever_raise_proxy_protocol_error(data: bytes) -> None:
    _never_raises_anything_else(data)


@FAST
@given(
    command=st.sampled_from([0x21, 0x21, 0x21, 0x20]),
    family=st.one_of(
        st.sampled_from([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32]), st.integers(0, 255)
    ),
    block=st.binary(max_size=250),
    extra=st.binary(max_size=8),
)
def test_random_v2_contents_only_ever_raise_proxy_protocol_error(
    command: int, family: int, block: bytes, extra: bytes
) -> None:
    # Well-formed framing around random contents: reaches the address and TLV code.
    data = SIGNATURE + bytes([command, family]) + struct.pack("!H", len(block)) + block
    _never_raises_anything_else(data + extra)


@FAST
@given(built=valid_headers, position=st.integers(0, 200), value=st.integers(0, 255))
def test_corrupted_headers_only_ever_raise_proxy_protocol_error(
    built: Built, position: int, value: int
) -> None:
    data = bytearray(built.data + b"payload")
    data[position % len(data)] = value
    _never_raises_anything_else(bytes(data))


# --- read_header on real sockets ---


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server side, client side) of a connected Unix stream socket pair."""
    server, client = socket.socketpair()
    try:
        yield server, client
    finally:
        server.close()
        client.close()


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server side, client side) of a TCP loopback connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        server, _ = listener.accept()
    try:
        yield server, client
    finally:
        server.close()
        client.close()


def _eventpoll_fds() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventpoll]"
        except OSError:
            pass  # closed while listing
    return count


def test_read_header_leaves_the_payload_in_the_socket(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = tcp_pair
    client.sendall(v2_inet("10.1.2.3", 4444, "10.0.0.1", 80) + b"hello")
    header = read_header(server, time.monotonic() + 10)
    assert header.source == ("10.1.2.3", 4444)
    server.settimeout(10)
    assert server.recv(100) == b"hello"
    assert server.gettimeout() == 10  # the caller's timeout is restored by read_header


def test_read_header_waits_for_the_rest_of_a_split_header(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    line = b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"
    client.sendall(line[:10])
    polls_before = _eventpoll_fds()
    result: list[Any] = []
    reader = threading.Thread(
        target=lambda: result.append(read_header(server, time.monotonic() + 10))
    )
    reader.start()
    try:
        # The reader found the header incomplete and now waits for new bytes.
        wait_until(lambda: _eventpoll_fds() > polls_before, 10, "the reader to wait")
        client.sendall(line[10:] + b"payload")
    finally:
        reader.join(15)
    assert result and result[0].source == ("1.2.3.4", 1111)
    assert server.recv(100) == b"payload"


def test_read_header_times_out_on_silence(pair: tuple[socket.socket, socket.socket]) -> None:
    server, _ = pair
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        read_header(server, started + 0.2)
    assert 0.2 <= time.monotonic() - started < 2


def test_read_header_times_out_on_an_incomplete_header(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    client.sendall(SIGNATURE + b"\x21\x11\x00\x0c" + b"\0" * 5)  # 7 of 12 address bytes
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        read_header(server, started + 0.2)
    assert 0.2 <= time.monotonic() - started < 2


@pytest.mark.parametrize("sent", [b"", b"PROXY TCP4 1.2", SIGNATURE + b"\x21\x11\x00\x0c\0"])
def test_read_header_reports_eof_at_once(
    tcp_pair: tuple[socket.socket, socket.socket], sent: bytes
) -> None:
    server, client = tcp_pair
    client.sendall(sent)
    client.shutdown(socket.SHUT_WR)
    started = time.monotonic()
    with pytest.raises(HeaderTruncated) as caught:
        read_header(server, started + 30)
    assert caught.value.received == len(sent)
    assert time.monotonic() - started < 5  # not the 30 s deadline


def test_read_header_rejects_garbage_without_waiting(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    client.sendall(b"GET / HTTP/1.0\r\n\r\n")
    started = time.monotonic()
    with pytest.raises(ProxyProtocolError):
        read_header(server, started + 30)
    assert time.monotonic() - started < 5
