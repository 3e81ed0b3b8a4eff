"""A scripted sensor for tests and demos: no kernel, no root.

Tests push records, DNS transactions and events into it (``feed``, ``feed_dns``, ``set_active``,
``push_event``); with ``per_poll`` it also makes up that many established loopback flows per poll, which
is what ``meshnode run --sensor fake`` uses (allowed only with ``MESHNODE_ALLOW_FAKE_SENSOR=1``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from meshnode._model import FlowRecord
from meshnode.sensor._base import Completeness, EventRecord, SensorBatch
from meshnode.sensor._dns import DnsRecord


class FakeSensor:
    """Implements ``Sensor`` from queues filled by the test."""

    mode = "fake"
    reason = "test double (MESHNODE_ALLOW_FAKE_SENSOR=1)"
    fidelity = "exact"

    def __init__(
        self, scope: str = "/", *, per_poll: int = 0, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self.scope = scope
        self.per_poll = per_poll
        self.clock = clock
        self.started = False
        self.closed = False
        self._lock = threading.Lock()
        self._ended: list[FlowRecord] = []
        self._events: list[EventRecord] = []
        self._dns: list[DnsRecord] = []
        self._active: list[FlowRecord] = []
        self._completeness = Completeness()
        self._next_id = 1 << 40

    def start(self) -> None:
        self.started = True

    def feed(self, records: Iterable[FlowRecord]) -> None:
        """Queue ended flows for the next poll."""
        with self._lock:
            self._ended.extend(records)

    def feed_dns(self, records: Iterable[DnsRecord]) -> None:
        """Queue DNS transactions for the next poll."""
        with self._lock:
            self._dns.extend(records)

    def push_event(self, event: EventRecord) -> None:
        """Queue a low-level event for the next poll."""
        with self._lock:
            self._events.append(event)

    def set_active(self, records: Iterable[FlowRecord]) -> None:
        """Replace the active flows ``active()`` returns."""
        with self._lock:
            self._active = [r.replace(kind="interim") for r in records]

    def add_completeness(self, counters: Completeness) -> None:
        """Counters the next poll reports."""
        with self._lock:
            self._completeness.add(counters)

    def poll(self) -> SensorBatch:
        with self._lock:
            ended, self._ended = self._ended, []
            events, self._events = self._events, []
            dns, self._dns = self._dns, []
            comp, self._completeness = self._completeness, Completeness()
        now = self.clock()
        for _ in range(self.per_poll):
            self._next_id += 1
            ended.append(FlowRecord(
                flow_id=self._next_id, src="127.0.0.1", sport=40000 + self._next_id % 20000, dst="127.0.0.1",
                dport=80, proto="tcp", direction="outbound", pid=4242, comm="fake-client", cgroup=self.scope,
                start_ns=now - 1_000_000, end_ns=now, bytes_tx=100, bytes_rx=1000, packets_tx=4, packets_rx=5,
                outcome="established", srtt_us=50, min_rtt_us=40,
            ))
        comp.flows_recorded += len(ended)
        return SensorBatch(records=ended, events=events, completeness=comp, dns=dns)

    def active(self) -> list[FlowRecord]:
        with self._lock:
            return list(self._active)

    def close(self) -> None:
        self.closed = True
