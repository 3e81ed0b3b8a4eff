"""Exceptions of meshnode.

    MeshnodeError
    ├── ConfigError          bad flags, config file or environment (misuse: fix the input)
    ├── SensorError          the sensor cannot start: what is missing and how to fix it
    │   └── BPFCompileError  the BPF C did not compile (carries the compiler's first error)
    ├── StoreError           the local store cannot be opened or written
    └── PeerError            a peer sent something invalid (logged with its source and dropped)

Third-party errors are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class MeshnodeError(Exception):
    """Base of every error meshnode raises on purpose."""


class ConfigError(MeshnodeError):
    """Bad flags, config file or environment."""


class SensorError(MeshnodeError):
    """The sensor cannot run; the message says what is missing and how to fix it."""


class BPFCompileError(SensorError):
    """The BPF C source did not compile."""


class StoreError(MeshnodeError):
    """The store cannot be opened, migrated or written."""


class PeerError(MeshnodeError):
    """A peer sent a malformed, unsigned or stale message."""
