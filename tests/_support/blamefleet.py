"""A synthetic fleet's transactions for blame: six hosts in two sites, faults as functions, seeded noise.

The fleet (region ``eu``):

    site s1: app-1 10.0.1.1, app-2 10.0.1.2, web-1 10.0.1.3 (http :80)
    site s2: app-3 10.0.2.1, cache-1 10.0.2.2 (redis :6379), db-1 10.0.2.3 (postgresql :5432)
    every host exports node metrics on :9100

Every host runs ``api`` (db, cache and web) and ``worker`` (db and cache); ``scrape`` on app-1 and app-3
collects :9100 from every other host. Each (process, destination) pair makes 30-60 transactions, each a
flow of 8-40 packets; background noise turns 1 % of transactions into problems at random.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from meshnode.diagnosis import Place, Transaction

HOSTS: dict[str, tuple[str, str]] = {  # name -> (address, site)
    "app-1": ("10.0.1.1", "s1"), "app-2": ("10.0.1.2", "s1"), "web-1": ("10.0.1.3", "s1"),
    "app-3": ("10.0.2.1", "s2"), "cache-1": ("10.0.2.2", "s2"), "db-1": ("10.0.2.3", "s2"),
}
MEMBERS = {addr: Place(name, site, "eu") for name, (addr, site) in HOSTS.items()}
SERVICES = {"db-1": (5432, "postgresql"), "cache-1": (6379, "redis"), "web-1": (80, "http")}
PROCESSES: dict[str, tuple[tuple[str, int], ...]] = {
    "api": (("db-1", 5432), ("cache-1", 6379), ("web-1", 80)),
    "worker": (("db-1", 5432), ("cache-1", 6379)),
}
DEAD = ("10.0.9.9", 5432)

# A fault: (client host, comm, dst address, dport, packets, rng) -> problem kind or "ok"
Fault = Callable[[str, str, str, int, int, random.Random], str]


def healthy(host: str, comm: str, dst: str, dport: int, packets: int, rng: random.Random) -> str:
    return "ok"


def _site_of(addr: str) -> str:
    return MEMBERS[addr].site if addr in MEMBERS else ""


def blackholed_db(host: str, comm: str, dst: str, dport: int, packets: int, rng: random.Random) -> str:
    return "timeout" if dst == HOSTS["db-1"][0] else "ok"


def lossy_uplink(host: str, comm: str, dst: str, dport: int, packets: int, rng: random.Random) -> str:
    """15 % loss on site s1's uplink: each packet of a cross-site flow is lost with p = 0.15."""
    if HOSTS[host][1] == _site_of(dst) or not _site_of(dst):
        return "ok"
    if rng.random() < 0.15 ** 3:  # SYN and both its retransmissions lost
        return "timeout"
    return "retransmits" if rng.random() < 1 - 0.85**packets else "ok"


def refused_port(host: str, comm: str, dst: str, dport: int, packets: int, rng: random.Random) -> str:
    return "refused" if (dst, dport) == (HOSTS["db-1"][0], 5432) else "ok"


def dead_address(host: str, comm: str, dst: str, dport: int, packets: int, rng: random.Random) -> str:
    return "timeout" if (dst, dport) == DEAD else "ok"


def fleet(fault: Fault, seed: int, *, noise: float = 0.01, billing: bool = False,
          reporter_reset: bool = False) -> list[Transaction]:
    """The transactions of one period of the whole fleet, under ``fault``."""
    rng = random.Random(seed)
    out: list[Transaction] = []
    sport = 30000

    def txn(host: str, comm: str, pid: int, dst_name: str | None, dst: str, dport: int, service: str) -> None:
        nonlocal sport
        place = MEMBERS.get(dst)
        for _ in range(rng.randint(30, 60)):
            packets = rng.randint(8, 40)
            kind = fault(host, comm, dst, dport, packets, rng)
            if kind == "ok" and rng.random() < noise:
                kind = rng.choice(["retransmits", "timeout", "reset", "slow_connect"])
            sport += 1
            out.append(Transaction(
                host=host, site=HOSTS[host][1], region="eu", comm=comm, pid=pid, dst=dst, dport=dport,
                service=service, dst_host=place.host if place else "", dst_site=place.site if place else "",
                dst_region=place.region if place else "", problem=kind != "ok", kind=kind,
                flow=(HOSTS[host][0], sport, dst, dport, "tcp"),
            ))

    for host in HOSTS:
        for pid, (comm, dests) in enumerate(PROCESSES.items(), start=100):
            for name, port in dests:
                if name != host:
                    txn(host, comm, pid, name, HOSTS[name][0], port, SERVICES[name][1])
        if host in ("app-1", "app-3"):
            for name, (addr, _) in HOSTS.items():
                if name != host:
                    txn(host, "scrape", 200, name, addr, 9100, "")
    if billing:  # a process configured with a decommissioned database address, retrying it
        for _ in range(8):
            txn("app-2", "billing", 300, None, DEAD[0], DEAD[1], "postgresql")
    if reporter_reset:  # one process whose every connection to db-1:5432 is reset (bad credentials)
        for _ in range(4):
            txn("app-3", "reporter", 400, "db-1", HOSTS["db-1"][0], 5432, "postgresql")
        out = [t if t.comm != "reporter" else with_kind(t, "reset") for t in out]
    return out


def with_kind(t: Transaction, kind: str) -> Transaction:
    """``t`` as a transaction of ``kind`` (``"ok"`` makes it no problem)."""
    return dataclasses.replace(t, problem=kind != "ok", kind=kind)
