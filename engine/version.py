"""The engine's version, in a module of its own: any part reads it without an import cycle."""

__version__ = "0.1.0"
