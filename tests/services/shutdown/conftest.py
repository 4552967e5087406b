"""Fixtures of the shutdown tests: nothing may change this machine's clock or power."""

from support.guards import guarded_processes, real_clock_setters_refused

__all__ = ["guarded_processes", "real_clock_setters_refused"]
