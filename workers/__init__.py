"""Code that runs in a worker after fork, and the contract it shares with the master.

Nothing here imports ``engine``'s master side: the dependency goes one way,
``engine`` → ``workers`` (a test checks it).
"""

from workers.protocol import ExitCode, WorkerState
from workers.scoreboard import Scoreboard, SlotRecord

__all__ = ["ExitCode", "Scoreboard", "SlotRecord", "WorkerState"]
