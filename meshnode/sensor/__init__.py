"""Sensor adapters: kernel records (probes/) → FlowRecord. The node talks to a ``Sensor``.

``create_sensor`` picks one: ``ebpf`` (exact; refuses to start without what it needs), ``diag``
(sock_diag polling; fidelity ``polled``) or ``auto`` (eBPF when it can, else diag with a warning naming
what was missing).
"""

from __future__ import annotations

import logging
import sys

from meshnode._exceptions import ConfigError, SensorError
from meshnode.sensor._base import EVENT_TYPES, Completeness, EventRecord, JsonBatch, Sensor, SensorBatch
from meshnode.sensor._dns import DnsRecord

log = logging.getLogger(__name__)

SENSOR_MODES = ("auto", "ebpf", "diag")


def create_sensor(mode: str = "auto", cgroup: str = "/", idle_timeout_s: float = 90.0) -> Sensor:
    """A started sensor of the requested mode; its ``reason`` says why this mode runs.

    Raises:
        ConfigError: an unknown mode.
        SensorError: ``ebpf`` requested and impossible here (the message says what is missing and the fix).
    """
    if mode not in SENSOR_MODES:
        raise ConfigError(f"--sensor must be one of {', '.join(SENSOR_MODES)}, not {mode!r}")
    if mode == "diag":
        return _start_diag(cgroup, idle_timeout_s, "diag requested (--sensor diag)")
    from meshnode.sensor._ebpf import EbpfSensor

    reason = "eBPF requested (--sensor ebpf)" if mode == "ebpf" else "auto: eBPF available"
    sensor = EbpfSensor(scope=cgroup, idle_timeout_s=idle_timeout_s, reason=reason)
    try:
        sensor.start()
    except SensorError as exc:
        if mode == "ebpf":
            raise
        why = str(exc).replace("\n", " ")
        print(f"meshnode: warning: falling back to the sock_diag sensor (fidelity: polled): {why}",
              file=sys.stderr)
        return _start_diag(cgroup, idle_timeout_s, f"auto: eBPF unavailable ({why})")
    return sensor


def _start_diag(cgroup: str, idle_timeout_s: float, reason: str) -> Sensor:
    from meshnode.sensor._diag import DiagSensor

    sensor = DiagSensor(scope=cgroup, idle_timeout_s=idle_timeout_s, reason=reason)
    sensor.start()
    return sensor


__all__ = [
    "EVENT_TYPES", "SENSOR_MODES", "Completeness", "DnsRecord", "EventRecord", "JsonBatch", "Sensor", "SensorBatch",
    "create_sensor",
]
