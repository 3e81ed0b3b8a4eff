"""Sensor adapters: kernel records (probes/) → FlowRecord. The node talks to a ``Sensor``."""

from meshnode.sensor._base import EVENT_TYPES, Completeness, EventRecord, Sensor, SensorBatch

__all__ = ["EVENT_TYPES", "Completeness", "EventRecord", "Sensor", "SensorBatch"]
