"""Run CPython's ``test.test_socketserver`` against engine or the stdlib; print JSON counts.

Usage: ``python run_cpython_suite.py engine|stdlib``. Run it in a fresh interpreter with a
scratch working directory (the suite writes its ``TESTFN`` file there).

For ``engine``, ``engine/classic.py`` is loaded from its file *under the module name
``socketserver``* and placed in ``sys.modules`` before the suite is imported, so that the
suite's ``import socketserver`` binds to it. Loading it under that name (rather than
aliasing ``sys.modules['socketserver'] = engine``) matters: the suite's ``test_all``
collects every public object whose ``__module__ == 'socketserver'`` and compares that list
with ``__all__``, which only works when the classes were defined in a module named
``socketserver``.

The last line of stdout is a JSON object: ``target``, ``run``, ``skipped``,
``failures``, ``errors``, ``expected_failures``, ``unexpected_successes``, ``module_file``
and ``bound_to_loaded`` (the suite's ``socketserver`` is the module loaded from engine).
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLASSIC = ROOT / "engine" / "classic.py"


def load_engine_as_socketserver() -> object:
    spec = importlib.util.spec_from_file_location("socketserver", CLASSIC)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["socketserver"] = module
    spec.loader.exec_module(module)
    return module


def main(target: str) -> int:
    if target not in ("engine", "stdlib"):
        print(f"usage: {sys.argv[0]} engine|stdlib", file=sys.stderr)
        return 2
    if "socketserver" in sys.modules:
        print("socketserver imported before the suite was set up", file=sys.stderr)
        return 2
    loaded = load_engine_as_socketserver() if target == "engine" else None

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
    result = unittest.TextTestRunner(stream=stream, verbosity=2).run(suite)
    sys.stderr.write(stream.getvalue())
    print(
        json.dumps(
            {
                "target": target,
                "module_file": suite_module.socketserver.__file__,
                "bound_to_loaded": loaded is not None and suite_module.socketserver is loaded,
                "run": result.testsRun,
                "skipped": len(result.skipped),
                "failures": len(result.failures),
                "errors": len(result.errors),
                "expected_failures": len(result.expectedFailures),
                "unexpected_successes": len(result.unexpectedSuccesses),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
