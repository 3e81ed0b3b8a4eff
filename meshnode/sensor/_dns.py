"""DNS seen by the sensor: transaction records and the names of flows' remote addresses.

The kernel side (probes/dns.bpf.c) parses the host's DNS answers into a map address -> name id, which a
flow reads once when it begins (so its ``remote_name`` is the name resolved *before* it began, whatever
is resolved later), and sums transactions per question, resolver and answer code between two polls. This
module turns those rows into records and keeps the names it has read (``NameCache``): the kernel's names
map is an LRU, and a long-lived flow's name may have left it by the time the flow ends.

Why in the kernel at flow start rather than a join in user space by (address, time): the join would need
every (address, name, time) the host resolved since the oldest live flow began, read out of the kernel per
poll and kept in a history per address; the kernel lookup is one hash-map lookup in the connect path and
4 bytes in the flow's row (bench/RESULTS.md, "DNS"), and the answer is exact by construction. An id is
never given to two names while the probes are loaded (dns.bpf.c), so what the cache holds for an id stays
true.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshnode._dns import FAILED_RCODES, QTYPES, RCODES, qtype_name, rcode_name
from meshnode._model import FlowRecord
from meshnode.sensor._base import EventRecord

if TYPE_CHECKING:
    from meshnode.probes._records import DnsTxnRow


__all__ = ["FAILED_RCODES", "QTYPES", "RCODES", "DnsRecord", "NameCache", "dns_record", "failure_event",
           "qtype_name", "rcode_name"]

@dataclass(frozen=True, slots=True)
class DnsRecord:
    """DNS answers of one question from one resolver with one answer code, in one poll.

    ``latency_us`` is the mean over the answers whose query the sensor saw leave (``timed`` of them), from
    the query leaving to the answer arriving; ``addresses`` counts the A/AAAA records of the question's
    CNAME chain. A failed record (``failed``) is a failure of the resolver at ``server``.
    """

    time_ns: int
    """Wall clock UTC of the last answer."""
    server: str
    query: str
    qtype: str
    rcode: str
    answers: int
    timed: int
    latency_us: int
    latency_max_us: int
    addresses: int
    pid: int = 0
    comm: str = ""
    netns: int = 0
    tcp: bool = False
    port: int = 53
    """The resolver's port (the kernel parses answers from port 53 only)."""

    @property
    def failed(self) -> bool:
        """True for SERVFAIL, NXDOMAIN and REFUSED answers."""
        return self.rcode in FAILED_RCODES

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (``meshnode capture --json`` prints it as ``{"dns": ...}``)."""
        return {"time_ns": self.time_ns, "server": self.server, "query": self.query, "qtype": self.qtype,
                "rcode": self.rcode, "failed": self.failed, "answers": self.answers, "timed": self.timed,
                "latency_us": self.latency_us, "latency_max_us": self.latency_max_us,
                "addresses": self.addresses, "pid": self.pid, "comm": self.comm, "netns": self.netns,
                "transport": "tcp" if self.tcp else "udp"}


def failure_event(d: DnsRecord) -> EventRecord:
    """A failed answer as an event of the resolver (``dns_failed``): its flow is the asker's datagrams to
    the resolver as far as the record knows them (no socket, ports or byte counts)."""
    flow = FlowRecord(flow_id=0, src="", sport=0, dst=d.server, dport=d.port, proto="tcp" if d.tcp else "udp",
                      direction="outbound", pid=d.pid, comm=d.comm, netns=d.netns, end_ns=d.time_ns,
                      outcome="udp_answered" if not d.tcp else "established", service="domain",
                      remote_name="")
    return EventRecord("dns_failed", d.time_ns, flow, float(d.answers), f"{d.rcode} {d.query or '?'} {d.qtype}")


def dns_record(row: DnsTxnRow, query: str, clock_offset_ns: int, comm: str = "") -> DnsRecord:
    """A kernel transaction row as a record; ``query`` is its name's text ('' when the kernel no longer
    holds it), ``clock_offset_ns`` the wall clock's offset from the kernel's monotonic one."""
    return DnsRecord(
        time_ns=row.last_ns + clock_offset_ns, server=row.server, query=query, qtype=qtype_name(row.qtype),
        rcode=rcode_name(row.rcode), answers=row.answers, timed=row.timed,
        latency_us=row.latency_sum_ns // row.timed // 1000 if row.timed else 0,
        latency_max_us=row.latency_max_ns // 1000, addresses=row.addrs, pid=row.pid, comm=comm,
        netns=row.netns, tcp=row.tcp)


class NameCache:
    """Name ids -> text, read from the kernel once per id and kept (bounded: past ``limit`` ids the oldest
    half is forgotten, and counted in ``forgotten``)."""

    def __init__(self, read: Callable[[Iterable[int]], dict[int, str]], limit: int = 65536) -> None:
        self._read = read
        self._names: dict[int, str] = {}
        self.limit = limit
        self.forgotten = 0
        self.missing = 0
        """Ids asked for that the kernel no longer held (their flows get no name)."""

    def names(self, ids: Iterable[int]) -> dict[int, str]:
        """The text of each nonzero id, from the cache, else the kernel (one read for all new ids); ids
        neither knows are left out."""
        names = self._names
        wanted = {i for i in ids if i}
        new = {i for i in wanted if i not in names}
        if new:
            got = self._read(new)
            self.missing += len(new) - len(got)
            if len(names) + len(got) > self.limit:
                drop = list(names)[: len(names) // 2]
                for i in drop:
                    del names[i]
                self.forgotten += len(drop)
            names.update(got)
        return {i: names[i] for i in wanted if i in names}
