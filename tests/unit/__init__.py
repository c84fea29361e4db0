"""Unit tests of single engine modules, with real sockets and processes."""
