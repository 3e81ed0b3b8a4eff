"""Errors of the probes layer; meshnode.sensor translates them into SensorError at its boundary."""

from __future__ import annotations


class ProbeError(Exception):
    """The probes cannot load or attach; the message names what is missing and how to fix it."""


class ProbeCompileError(ProbeError):
    """The BPF C did not compile; ``first_error`` is the compiler's first error line."""

    def __init__(self, first_error: str, log: str) -> None:
        super().__init__(f"BPF compile error: {first_error}")
        self.first_error = first_error
        self.log = log
