"""loadtests/conn_profile.py's readers of strace's and py-spy's output, with plain text."""

from __future__ import annotations

from loadtests import conn_profile

STRACE_C = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 35.10    0.012000           6      2000           sendto
 20.00    0.006000           2      2080        80 accept4
  0.10    0.000010          10         1           epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.018010           4      4081        80 total
"""


def test_strace_summary_gives_calls_per_syscall() -> None:
    assert conn_profile.parse_strace_summary(STRACE_C) == {
        "sendto": 2000, "accept4": 2080, "epoll_wait": 1,
    }


def test_py_spy_samples_go_to_the_innermost_frames_layer() -> None:
    repo = conn_profile.REPO
    raw = (
        f"<module> ({repo}/loadtests/bench_servers.py:170);"
        f"_serve_waiting ({repo}/workers/worker.py:300) 7\n"
        f"_serve_waiting ({repo}/workers/worker.py:300);"
        "parse_request (/usr/lib/python3.11/http/server.py:330) 5\n"
        "x (/usr/lib/python3.11/http/server.py:1);"
        "parse_headers (/usr/lib/python3.11/http/client.py:224) 2\n"
        "garbage line\n"
    )
    layers, leaves, engine = conn_profile.parse_py_spy_raw(raw)
    assert layers == {"engine": 7, "http.server": 5, "header parsing (email, http.client)": 2}
    assert leaves["_serve_waiting (worker.py)"] == 7
    assert engine == {"_serve_waiting (worker.py)"}


def test_a_package_named_workers_elsewhere_is_not_the_engine() -> None:
    assert conn_profile.layer_of("/usr/lib/python3/site-packages/gunicorn/workers/sync.py") == (
        "gunicorn"
    )
    assert conn_profile.layer_of("/opt/app/workers/thing.py") == "other stdlib"
