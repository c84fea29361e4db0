"""Two engine instances behind a real HAProxy, end to end on loopback.

Each instance is its own `engine serve` master on its own 127.0.0.1 port, expecting a
PROXY protocol v2 header (``--proxy-protocol``) from haproxy, which sends one on every
connection, health checks included (``send-proxy-v2 check-send-proxy``). Clients
connect to haproxy from 127.0.0.2, so the address a handler sees (127.0.0.2:port)
cannot be confused with haproxy's own (127.0.0.1).

Checked: requests are spread over both instances; handlers see each client's own
address and port; when one instance dies (SIGKILL of its master: its workers follow by
PDEATHSIG), errors are confined to the health checks' detection time (``fall`` x
``inter``) and there are none afterwards. The figures are printed (``pytest -s``).
haproxy runs from a config in tmp_path, in the foreground, in its own session, and is
killed by pid at the end; so are the engines (engine_proc), with a leftover check.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.haproxy import HAProxy, Server, haproxy_or_skip, start_haproxy
from tests.kit import CLI, READY, Background, EngineProcess, alive_pids, recv_line, wait_until

HANDLER = "tests.apps.haproxy_apps:WhoHandler"
CLIENT_HOST = "127.0.0.2"  # on lo with all of 127/8 (Linux); haproxy itself is 127.0.0.1
CHECK_INTER_MS = 200
FALL = 2
# Requests that start later than this after the kill must all succeed: haproxy needs
# FALL failed checks INTER apart to mark the server DOWN; the rest is margin.
DETECTION_WINDOW = FALL * CHECK_INTER_MS / 1000 + 0.6
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux >= 4.2

Start = Callable[..., EngineProcess]

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Outcome:
    """One request through haproxy: when it started, and who answered or what failed."""

    started: float
    instance: str | None = None
    seen: tuple[str, int] | None = None
    local: tuple[str, int] | None = None
    error: str | None = None


def ask(address: tuple[str, int], timeout: float = 5.0) -> Outcome:
    """One connection from CLIENT_HOST: send a line, read the handler's answer."""
    started = time.monotonic()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            # Pick the source port at connect time, per destination: thousands of short
            # connections from one source address then never run out of ports.
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((CLIENT_HOST, 0))
            sock.connect(address)
            local = sock.getsockname()
            sock.sendall(b"who\n")
            reply = recv_line(sock, timeout)
    except OSError as exc:
        return Outcome(started, error=repr(exc))
    if not reply:
        return Outcome(started, error="closed without a reply")
    try:
        instance, peer = reply.decode().split()
        host, port = peer.rsplit(":", 1)
        return Outcome(started, instance, (host, int(port)), (local[0], local[1]))
    except ValueError:
        return Outcome(started, error=f"bad reply {reply!r}")


class Load(Background):
    """*clients* threads asking through haproxy, each bounded in requests and time."""

    join_timeout = 15.0

    def __init__(self, address: tuple[str, int], *, clients: int, per_client: int,
                 max_seconds: float, interval: float = 0.0) -> None:
        super().__init__(clients, name="haproxy-client")
        self.address = address
        self.per_client = per_client
        self.interval = interval
        self.deadline = time.monotonic() + max_seconds
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()

    def stop(self) -> None:
        super().stop()
        assert self.done(), "a client hung"

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def _run(self) -> None:
        next_start = time.monotonic()
        for _ in range(self.per_client):
            # Pacing, not synchronisation: at most one request per interval per client,
            # so the load stays light; stop() ends the wait at once.
            if self._stop.wait(max(0.0, next_start - time.monotonic())):
                return
            if time.monotonic() > self.deadline:
                return
            next_start = time.monotonic() + self.interval
            outcome = ask(self.address)
            with self._lock:
                self.outcomes.append(outcome)


@pytest.fixture
def client_source() -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((CLIENT_HOST, 0))
    except OSError as exc:
        pytest.skip(f"cannot use {CLIENT_HOST} as a client address here: {exc}")
    return CLIENT_HOST


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Callable[[list[Server]], HAProxy]]:
    started: list[HAProxy] = []

    def start(servers: list[Server]) -> HAProxy:
        proxy = start_haproxy(tmp_path, servers, check_inter_ms=CHECK_INTER_MS, fall=FALL)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def serve_instance(engine_proc: Start, name: str) -> EngineProcess:
    return engine_proc(
        CLI,
        args=[
            "serve", HANDLER, "--bind", "127.0.0.1:0", "--workers", "2",
            "--pool-mode", "static", "--proc-name", name,
            "--proxy-protocol", "--proxy-allow-from", "127.0.0.1/32",
        ],
        env={**READY, "HAPROXY_APPS_INSTANCE": name},
    )


def test_two_engines_behind_haproxy(
    engine_proc: Start, haproxy: Callable[[list[Server]], HAProxy], client_source: str
) -> None:
    haproxy_or_skip()  # before starting anything: skip here, or fail under CI=true
    alpha = serve_instance(engine_proc, "alpha")
    bravo = serve_instance(engine_proc, "bravo")
    proxy = haproxy([Server(name, *engine.address[:2])
                     for name, engine in (("alpha", alpha), ("bravo", bravo))])

    # (a) spread and (b) the original client address, with every check already passing.
    with Load(proxy.address, clients=3, per_client=60, max_seconds=15) as load:
        wait_until(load.done, 20, "the first load to finish")
    outcomes = load.snapshot()
    errors = [o.error for o in outcomes if o.error]
    assert not errors, errors[:5]
    spread = {name: sum(o.instance == name for o in outcomes) for name in ("alpha", "bravo")}
    assert sum(spread.values()) == len(outcomes) == 180, spread
    assert min(spread.values()) >= len(outcomes) // 4, f"uneven spread {spread}"
    wrong = [o for o in outcomes
             if o.seen is None or o.seen != o.local or o.seen[0] != client_source]
    assert not wrong, f"handlers saw another address than the client's: {wrong[:3]}"

    # (c) SIGKILL one instance under continuous load.
    alpha.workers()
    alpha.snapshot()
    alpha_workers = sorted(alpha.seen_pids - {alpha.pid})
    assert len(alpha_workers) == 2
    with Load(proxy.address, clients=3, per_client=3000, max_seconds=12,
              interval=0.004) as load:
        wait_until(lambda: len(load.snapshot()) >= 60, 10, "load to flow")
        killed_at = time.monotonic()
        alpha.signal(signal.SIGKILL)
        alpha.wait(timeout=5)
        wait_until(lambda: not alive_pids(alpha_workers), 1.0,
                   "alpha's workers to die with their master (PDEATHSIG)")
        workers_gone = time.monotonic() - killed_at
        wait_until(lambda: proxy.server_states().get("alpha", ("",))[0].startswith("DOWN"),
                   5, "haproxy to mark alpha DOWN")
        marked_down = time.monotonic() - killed_at
        cutoff = killed_at + DETECTION_WINDOW
        wait_until(lambda: sum(o.started >= cutoff + 1.0 for o in load.snapshot()) >= 3,
                   10, "a second of load after the detection window")
    outcomes = load.snapshot()
    before = [o for o in outcomes if o.started < cutoff]
    after = [o for o in outcomes if o.started >= cutoff]
    errors_before = [o.error for o in before if o.error]
    errors_after = [o.error for o in after if o.error]
    print(
        f"\nhaproxy: spread {spread}; kill of alpha: workers gone in {workers_gone:.3f}s, "
        f"marked DOWN after {marked_down:.3f}s; {len(errors_before)} errors in "
        f"{len(before)} requests started before kill+{DETECTION_WINDOW:.1f}s, "
        f"{len(errors_after)} errors in {len(after)} requests after; "
        f"errors: {sorted(set(errors_before + errors_after))}"
    )
    assert workers_gone < 1.0
    assert marked_down < DETECTION_WINDOW, "health checks slower than fall x inter"
    assert len(after) >= 20
    assert not errors_after, errors_after[:5]
    assert {o.instance for o in after} == {"bravo"}
    assert all(o.seen == o.local for o in after)
    # haproxy's health checks (PROXY v2 LOCAL header, then a reset) log no traceback.
    for engine in (alpha, bravo):
        log = engine.log()
        assert "Traceback" not in log, log[max(0, log.index("Traceback") - 200):][:2000]
