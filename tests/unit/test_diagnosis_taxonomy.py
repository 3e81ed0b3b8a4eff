"""Seed 004's taxonomy: service-discovery chatter apart from failures, and retries vs outage inertia."""

from __future__ import annotations

import random

import pytest

from meshnode._model import FlowRecord
from meshnode.diagnosis import (
    backoff_attempts,
    classify,
    discovery_chatter,
    discovery_protocol,
    is_discovery,
    outages,
    retry_advice,
    split_discovery,
)
from meshnode.health import host_health

S = 1_000_000_000
T0 = 1_700_000_000 * S


def f(i: int, **kw: object) -> FlowRecord:
    base: dict[str, object] = dict(flow_id=i, src="10.0.1.1", sport=40000 + i, dst="10.0.2.3", dport=8080,
                                   proto="tcp", direction="outbound", pid=42, comm="agent", outcome="established",
                                   start_ns=T0 + i * S)
    base.update(kw)
    return FlowRecord(**base)  # type: ignore[arg-type]


def udp(i: int, dst: str, dport: int, outcome: str = "udp_unanswered", comm: str = "avahi") -> FlowRecord:
    return f(i, proto="udp", dst=dst, dport=dport, outcome=outcome, comm=comm)


@pytest.mark.parametrize(("dst", "dport", "protocol"), [
    ("224.0.0.251", 5353, "mdns"),
    ("ff02::fb", 5353, "mdns"),
    ("239.255.255.250", 1900, "ssdp"),
    ("10.0.1.255", 137, "netbios-ns"),
    ("10.0.1.255", 138, "netbios-dgm"),
    ("224.0.0.252", 5355, "llmnr"),
    ("255.255.255.255", 67, "dhcp"),
    ("255.255.255.255", 9999, "broadcast"),
    ("239.1.2.3", 9999, "multicast"),
    ("10.0.2.3", 53, ""),
])
def test_discovery_protocols(dst: str, dport: int, protocol: str) -> None:
    rec = udp(1, dst, dport)
    assert discovery_protocol(rec) == protocol
    assert is_discovery(rec) == bool(protocol)
    assert classify(rec) == ("discovery" if protocol else "failure")


def test_answered_discovery_and_tcp_are_not_chatter() -> None:
    assert classify(udp(1, "224.0.0.251", 5353, outcome="udp_answered")) == "useful"
    assert classify(f(2, dport=5353, outcome="timeout")) == "failure"
    assert classify(f(3, outcome="in_progress")) == "in_progress"
    assert classify(f(4)) == "useful"
    assert not is_discovery(udp(5, "224.0.0.251", 5353).replace(direction="inbound"))


def test_chatter_does_not_pollute_health() -> None:
    flows = [f(i) for i in range(9)] + [f(9, outcome="refused")]
    chatter = [udp(100 + i, "224.0.0.251", 5353) for i in range(30)] + [
        udp(200 + i, "239.255.255.250", 1900, comm="upnpd") for i in range(5)]
    rest, found = split_discovery(flows + chatter)
    assert found == chatter and rest == flows
    assert host_health(rest).useful_fraction == 0.9  # with the chatter it would read 9 / 45
    summary = discovery_chatter(flows + chatter)
    assert [(d.comm, d.protocol, d.flows, d.destinations) for d in summary] == [
        ("avahi", "mdns", 30, 1), ("upnpd", "ssdp", 5, 1)]


def test_outages_run_from_first_failure_to_first_success() -> None:
    attempts = [(0, True), (10, False), (20, False), (30, False), (45, True), (50, False), (60, False)]
    found = outages(list(reversed(attempts)))
    assert [(o.first_failure_ns, o.end_ns, o.attempts, o.ended, o.gaps_ms) for o in found] == [
        (10, 45, 3, True, (1e-5, 1e-5)), (50, 60, 2, False, (1e-5,))]


def _retry_series(interval_s: float, outage_s: float, *, pid: int = 42, backoff: bool = False,
                  jitter: float = 0.05, start: int = 0) -> list[FlowRecord]:
    """Success, then an outage of ``outage_s`` retried every ``interval_s`` (doubling if ``backoff``), then
    a success."""
    rng = random.Random(pid)
    out = [f(start, pid=pid, start_ns=T0 + start * S)]
    t = 1.0
    gap = interval_s
    i = start + 1
    while t < outage_s:
        out.append(f(i, pid=pid, outcome="timeout", start_ns=T0 + int((start + t) * S)))
        i += 1
        t += gap * (1 + rng.uniform(-jitter, jitter))
        if backoff:
            gap *= 2
    out.append(f(i, pid=pid, start_ns=T0 + int((start + outage_s + 0.5) * S)))
    return out


def test_fixed_interval_through_long_outage_suggests_backoff() -> None:
    flows = _retry_series(2.0, 600.0)
    [advice] = retry_advice(flows)
    assert advice.suggest_backoff and advice.fixed_interval
    assert advice.outages == 1
    assert advice.attempts == advice.attempts_per_outage > 250
    assert advice.retry_interval_ms == pytest.approx(2000, rel=0.1)
    assert advice.outage_max_ms == pytest.approx(600_000, rel=0.01)
    assert advice.attempts_with_backoff == backoff_attempts(advice.retry_interval_ms / 1000, 600.0)
    assert advice.attempts_with_backoff <= 12
    assert advice.suggestion.startswith("agent/42 retries 10.0.2.3:8080 every 2.0 s through outages of 10 min")
    assert "back off exponentially" in advice.suggestion


def test_backing_off_process_and_short_outages_are_fine() -> None:
    backing = retry_advice(_retry_series(1.0, 600.0, backoff=True))
    assert [a.suggest_backoff for a in backing] == [False]
    assert not backing[0].fixed_interval
    assert "backs off" in backing[0].suggestion
    short = retry_advice(_retry_series(1.0, 6.0, pid=7))
    assert [(a.suggest_backoff, a.fixed_interval) for a in short] == [(False, True)]
    assert retry_advice(_retry_series(1.0, 2.0, pid=8)) == []  # two failures: no outage to judge


def test_retry_advice_per_process_and_worst_first() -> None:
    flows = _retry_series(5.0, 300.0, pid=1) + _retry_series(1.0, 300.0, pid=2, start=10_000)
    flows += [udp(50_000 + i, "224.0.0.251", 5353) for i in range(100)]  # chatter has no outages
    advice = retry_advice(flows)
    assert [(a.pid, a.suggest_backoff) for a in advice] == [(2, True), (1, True)]
    assert advice[0].attempts > 4 * advice[1].attempts


def test_ongoing_outage_is_reported_as_still_failing() -> None:
    flows = [f(i, outcome="refused", start_ns=T0 + i * S) for i in range(30)]
    [advice] = retry_advice(flows)
    assert advice.suggest_backoff and "(still failing)" in advice.suggestion


@pytest.mark.parametrize(("interval", "duration", "attempts"), [
    (1, 0.5, 1), (1, 1, 2), (1, 3, 3), (1, 7, 4), (1, 600, 10), (0, 10, 1), (2, 3600, 19),
])
def test_backoff_attempts(interval: float, duration: float, attempts: int) -> None:
    assert backoff_attempts(interval, duration) == attempts
