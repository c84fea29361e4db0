"""End-to-end tests of the `engine` command (their helpers are in tests/kit/engines.py)."""
