"""Run CPython's ``test.test_socketserver`` against engine or the stdlib; print JSON counts.

Usage: ``python run_cpython_suite.py engine|prefork|stdlib``. Run it in a fresh interpreter
with a scratch working directory (the suite writes its ``TESTFN`` file there).

For ``engine``, ``engine/classic.py`` is loaded from its file *under the module name
``socketserver``* and placed in ``sys.modules`` before the suite is imported, so that the
suite's ``import socketserver`` binds to it. Loading it under that name (rather than
aliasing ``sys.modules['socketserver'] = engine``) matters: the suite's ``test_all``
collects every public object whose ``__module__ == 'socketserver'`` and compares that list
with ``__all__``, which only works when the classes were defined in a module named
``socketserver``.

``prefork`` is ``engine`` with engine's Prefork classes standing in for the Forking ones:
``ForkingMixIn`` is ``PreforkMixIn``, ``ForkingTCPServer`` is ``PreforkTCPServer``, and so
on for UDP and the Unix variants. Each stand-in is a subclass that adds nothing but the
stdlib's name and ``__module__`` (so ``test_all`` still sees a well-formed module); the
server stand-ins also derive from the ``ForkingMixIn`` stand-in, as the stdlib's servers
derive from ``ForkingMixIn``, so the suite's ``isinstance(server, ForkingMixIn)`` checks
apply to them.

Every test is also checked for what it leaves behind: once it has finished, this process
must have no child process (alive or zombie) and no thread other than those it had
before; anything left is reported under ``leftovers`` and counted as a failure.

The last line of stdout is a JSON object: ``target``, ``run``, ``skipped``,
``failures``, ``errors``, ``expected_failures``, ``unexpected_successes``, ``leftovers``,
``module_file`` and ``bound_to_loaded`` (the suite's ``socketserver`` is the module loaded
from engine), and for ``prefork`` ``stand_ins`` (the Forking name → the Prefork class).
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import threading
import time
import unittest
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
CLASSIC = ROOT / "engine" / "classic.py"
TARGETS = ("engine", "prefork", "stdlib")
# The stdlib name each Prefork class stands in for.
STAND_INS = {
    "ForkingMixIn": "PreforkMixIn",
    "ForkingTCPServer": "PreforkTCPServer",
    "ForkingUDPServer": "PreforkUDPServer",
    "ForkingUnixStreamServer": "PreforkUnixStreamServer",
    "ForkingUnixDatagramServer": "PreforkUnixDatagramServer",
}
# How long a test's children and threads get to be gone after it ends (they are
# normally gone already: this only absorbs a thread still returning from join()).
SETTLE = 5.0


def load_engine_as_socketserver() -> ModuleType:
    spec = importlib.util.spec_from_file_location("socketserver", CLASSIC)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["socketserver"] = module
    spec.loader.exec_module(module)
    return module


def stand_in_prefork(module: ModuleType) -> dict[str, str]:
    """Replace the Forking names of *module* by engine's Prefork classes."""
    sys.path.insert(0, str(ROOT))
    import engine

    done = {}
    mixin: type | None = None
    for forking, prefork in STAND_INS.items():
        cls = getattr(engine, prefork)
        # The servers derive from the stand-in mixin too, so that the suite's
        # isinstance(server, socketserver.ForkingMixIn) checks hold for them as well.
        bases = (cls,) if mixin is None else (mixin, cls)
        stand_in = type(forking, bases, {"__module__": module.__name__, "__doc__": cls.__doc__})
        mixin = mixin or stand_in
        setattr(module, forking, stand_in)
        done[forking] = f"engine.{prefork}"
    return done


class LeftoverCheck(unittest.TextTestResult):
    """A result that fails a test which leaves a child process or a thread behind."""

    leftovers: list[str]

    def startTest(self, test: unittest.TestCase) -> None:
        self._threads_before = set(threading.enumerate())
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        left = self._left_behind()
        deadline = time.monotonic() + SETTLE
        while left and time.monotonic() < deadline:
            time.sleep(0.01)  # polling with a deadline: the check decides
            left = self._left_behind()
        if left:
            if not hasattr(self, "leftovers"):
                self.leftovers = []
            self.leftovers.append(f"{test.id()}: {left}")

    def _left_behind(self) -> str:
        children = psutil.Process().children(recursive=True)
        threads = [t for t in threading.enumerate() if t not in self._threads_before]
        if not children and not threads:
            return ""
        return f"children {[(c.pid, c.status()) for c in children]} threads {threads}"


def main(target: str) -> int:
    if target not in TARGETS:
        print(f"usage: {sys.argv[0]} {'|'.join(TARGETS)}", file=sys.stderr)
        return 2
    if "socketserver" in sys.modules:
        print("socketserver imported before the suite was set up", file=sys.stderr)
        return 2
    loaded = load_engine_as_socketserver() if target != "stdlib" else None
    stand_ins = stand_in_prefork(loaded) if target == "prefork" and loaded else {}

    import test.support

    test.support.use_resources = ["network"]  # else the whole module is resource_denied
    test.support.verbose = False  # keep the suite's chatter off stdout, which carries the JSON
    try:
        import test.test_socketserver as suite_module
    except ImportError as exc:
        print(json.dumps({"target": target, "import_error": str(exc)}))
        return 3

    if loaded is not None and suite_module.socketserver is not loaded:
        print("test.test_socketserver did not bind to the engine module", file=sys.stderr)
        return 4
    if loaded is None and suite_module.socketserver.__file__ == str(CLASSIC):
        print("stdlib run bound to engine", file=sys.stderr)
        return 4

    suite = unittest.defaultTestLoader.loadTestsFromModule(suite_module)
    stream = io.StringIO()
    runner = unittest.TextTestRunner(stream=stream, verbosity=2, resultclass=LeftoverCheck)
    result: Any = runner.run(suite)
    sys.stderr.write(stream.getvalue())
    leftovers = getattr(result, "leftovers", [])
    for line in leftovers:
        print("LEFT BEHIND", line, file=sys.stderr)
    print(
        json.dumps(
            {
                "target": target,
                "module_file": suite_module.socketserver.__file__,
                "bound_to_loaded": loaded is not None and suite_module.socketserver is loaded,
                "stand_ins": stand_ins,
                "run": result.testsRun,
                "skipped": len(result.skipped),
                "failures": len(result.failures),
                "errors": len(result.errors),
                "expected_failures": len(result.expectedFailures),
                "unexpected_successes": len(result.unexpectedSuccesses),
                "leftovers": leftovers,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
