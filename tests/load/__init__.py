"""Load tests: short locust runs against the engine command, in the default suite."""
