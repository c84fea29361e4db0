"""Handlers for the reliability tests, served by ``engine serve tests.apps.reliability_apps:...``.

``FdHandler`` answers one command line with one line of JSON:

* ``SELF``: this worker's open fds, ``{fd: readlink target}``;
* ``CHILD``: the open fds of a subprocess this handler runs with ``close_fds=False``
  (so only close-on-exec protects it): a Python that lists ``/proc/self/fd``, which
  itself holds one fd open for the listing;
* ``LS``: the same through ``ls -l /proc/self/fd``, as text lines in a JSON list.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from engine.classic import StreamRequestHandler

LIST_FDS = (
    "import json, os\n"
    "fds = {}\n"
    "for name in os.listdir('/proc/self/fd'):\n"
    "    try:\n"
    "        fds[name] = os.readlink('/proc/self/fd/' + name)\n"
    "    except OSError:\n"
    "        fds[name] = '?'\n"
    "print(json.dumps(fds))\n"
)


def own_fds() -> dict[str, str]:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            fds[name] = "?"  # the listing's own fd, closed already
    return fds


class FdHandler(StreamRequestHandler):
    """Report this process's fds, or a subprocess's (see the module docstring)."""

    timeout = 30

    def handle(self) -> None:
        command = self.rfile.readline().strip()
        if command == b"SELF":
            answer: object = own_fds()
        elif command == b"CHILD":
            child = subprocess.run(
                [sys.executable, "-c", LIST_FDS], close_fds=False, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, check=True, timeout=30,
            )
            answer = json.loads(child.stdout)
        elif command == b"LS":
            child = subprocess.run(
                ["ls", "-l", "/proc/self/fd"], close_fds=False, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, check=True, timeout=30,
            )
            answer = child.stdout.decode(errors="replace").splitlines()
        else:
            answer = {"error": command.decode(errors="replace")}
        self.wfile.write(json.dumps(answer).encode() + b"\n")
