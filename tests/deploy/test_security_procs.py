"""Under --user, another process of the service user cannot read the server's memory.

The kernel makes a process non-dumpable when it changes ids, which keeps
/proc/PID/mem, environ, smaps and fd to root. engine leaves it so (issue 17, point 2):
the master still sees its workers' RSS and CPU (statm and stat stay world-readable),
so ``engine status`` and max_worker_memory recycling keep working.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kit import CLI, READY, EngineProcess, exchange, run_cli, wait_until

Start = Callable[..., EngineProcess]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def probe_as(user: str, paths: list[str]) -> dict[str, str]:
    """From a forked process running as *user*, try to read each path.

    Returns path -> "read" or the error's name. For ``/proc/PID/mem`` a read needs an
    address that is mapped: the first readable region of ``/proc/PID/maps``.
    """
    account = pwd.getpwnam(user)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            results = {}
            for path in paths:
                try:
                    with open(path, "rb", buffering=0) as file:
                        if path.endswith("/mem"):
                            maps = Path(path[: -len("mem")] + "maps").read_text()
                            start = next(
                                int(line.split("-")[0], 16) for line in maps.splitlines()
                                if line.split()[1].startswith("r")
                            )
                            file.seek(start)
                        file.read(64)
                    results[path] = "read"
                except OSError as exc:
                    results[path] = type(exc).__name__
            os.write(write_end, json.dumps(results).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_service_user_cannot_read_server_memory_and_status_still_works(
    engine_proc: Start, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)  # nobody reaches the status socket (pytest makes it 0700)
    status = tmp_path / "status.sock"
    engine = engine_proc(CLI, env=READY, args=[
        "serve", "tests.apps.security_apps:Leaky", "--bind", "127.0.0.1:0",
        "--user", "nobody", "--status-bind", f"unix:{status}", "--health-interval", "0.2",
        "--workers", "1", "--pool-mode", "static", "--max-worker-memory", "80M",
    ])
    first = wait_until(lambda: engine.workers(), 10, "the worker")[0].pid
    found = probe_as("nobody", [
        f"/proc/{first}/mem", f"/proc/{engine.pid}/mem",
        f"/proc/{engine.pid}/environ", f"/proc/{first}/environ",
        f"/proc/{first}/statm",
    ])
    assert found[f"/proc/{first}/statm"] == "read"  # the probe itself works
    for path in (f"/proc/{first}/mem", f"/proc/{engine.pid}/mem",
                 f"/proc/{engine.pid}/environ", f"/proc/{first}/environ"):
        assert found[path] == "PermissionError", (path, found)

    # engine status still shows every worker's memory, read by the unprivileged master.
    def sampled() -> bool:
        result = run_cli(["status", "--status-bind", f"unix:{status}", "--json"])
        workers = json.loads(result.stdout)["workers"]
        return bool(workers) and all(w["rss"] for w in workers)

    wait_until(sampled, 20, "workers' RSS sampled by the unprivileged master")
    text = run_cli(["status", "--status-bind", f"unix:{status}"])
    assert text.returncode == 0 and "Traceback" not in text.stderr, text.stderr

    # max_worker_memory still recycles: 8 MiB per request until the sample sees > 80 MiB.
    served_by: set[int] = set()

    def leak_once() -> bool:
        reply = exchange(engine.address, b"leak\n")
        assert reply.endswith(b"leak\n")
        served_by.add(int(reply.split()[0]))
        return len(served_by) > 1

    wait_until(leak_once, 30, "the leaking worker to be recycled")
    assert first in served_by
    engine.signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0
    log = engine.log()
    assert "max_worker_memory" in log
    assert "Traceback" not in log and "AccessDenied" not in log
