"""The test kit: one way to start, watch, load and clean up processes.

Used by the test suite (tests/), the reliability command (``python -m
loadtests.reliability``) and the locust runner (``python -m loadtests.run_locust``).
One owner per job:

* :mod:`tests.kit.waiting`: :func:`wait_until`, the only way to wait (a deadline, never
  a bare sleep);
* :mod:`tests.kit.engines`: :class:`EngineProcess`, the one launcher (own session,
  READY handshake, teardown by process group with a leftover check), and
  :func:`start_program`, :func:`serve_engine`, :func:`launch`, :func:`run_cli`;
* :mod:`tests.kit.processes`: :func:`become_subreaper`, :func:`reap`,
  :func:`kill_group` (the one group killer), :func:`assert_no_leftovers`,
  :func:`system_command_or_skip` (a test's system command: skip, or fail under CI),
  :func:`exec_after` (a command-line prefix that sets something up, then execs the rest);
* :mod:`tests.kit.procfs`: looking at processes through ``/proc`` and psutil;
* :mod:`tests.kit.net`: client sockets, :func:`free_port`, :func:`exchange`;
* :mod:`tests.kit.load`: :class:`LoadGen` (the one load loop), :class:`Slowloris`,
  :class:`PoolWatcher`;
* :mod:`tests.kit.background`: threads that run while a test goes on.

The names tests use most are importable from ``tests.kit`` itself. See tests/README.md.
"""

from tests.kit.background import Background
from tests.kit.engines import (
    CLI,
    DEMO,
    HOST,
    PYTHON_M_ENGINE,
    READY,
    ROOT,
    EngineError,
    EngineProcess,
    StartEngine,
    launch,
    log_time,
    run_cli,
    serve_engine,
    start_program,
)
from tests.kit.load import LoadGen, LoadStats, PoolWatcher, Slowloris
from tests.kit.net import (
    connect,
    exchange,
    free_port,
    open_clients,
    ping,
    read_to_eof,
    recv_line,
)
from tests.kit.processes import (
    alive_pids,
    assert_no_leftovers,
    become_subreaper,
    kill_group,
    reap,
)
from tests.kit.procfs import (
    caught_signals,
    epoll_wait_timeout,
    fd_count,
    fd_targets,
    open_fds,
    process_tree,
    settled_fd_count,
    zombie_children,
)
from tests.kit.waiting import DeadlineExceeded, wait_until

__all__ = [
    "CLI",
    "DEMO",
    "HOST",
    "PYTHON_M_ENGINE",
    "READY",
    "ROOT",
    "Background",
    "DeadlineExceeded",
    "EngineError",
    "EngineProcess",
    "LoadGen",
    "LoadStats",
    "PoolWatcher",
    "Slowloris",
    "StartEngine",
    "alive_pids",
    "assert_no_leftovers",
    "become_subreaper",
    "caught_signals",
    "connect",
    "epoll_wait_timeout",
    "exchange",
    "fd_count",
    "fd_targets",
    "free_port",
    "kill_group",
    "launch",
    "log_time",
    "open_clients",
    "open_fds",
    "ping",
    "process_tree",
    "read_to_eof",
    "reap",
    "recv_line",
    "run_cli",
    "serve_engine",
    "settled_fd_count",
    "start_program",
    "wait_until",
    "zombie_children",
]
