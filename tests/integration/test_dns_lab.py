"""DNS names across lab hosts: a client resolves through a DNS server on another lab host and connects.

Three lab hosts (network namespaces and cgroups): ``dns`` runs dnsmasq on its lab address, ``web`` a TCP
server, ``client`` resolves ``web.lab.test`` with dig through ``dns`` and connects to the address it got.
The sensor, scoped to the lab's cgroup, names the client's flow ``web.lab.test``; an NXDOMAIN from ``dns``
is a failed DNS record of that resolver and a ``dns_failed`` event.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests._support.env import require_tool
from tests._support.lab import make_lab  # noqa: F401 (fixtures are used by name)

SERVER = """
import socket
s = socket.create_server(("0.0.0.0", 8080))
while True:
    c, _ = s.accept()
    while c.recv(65536):
        pass
    c.close()
"""

CLIENT = """
import socket, subprocess, sys
addr = subprocess.run(["dig", "+short", "+time=2", "+tries=2", "@" + sys.argv[1], "web.lab.test"],
                      capture_output=True, text=True, check=True).stdout.strip()
with socket.create_connection((addr, 8080), timeout=5) as c:
    c.sendall(b"x" * 1000)
print(addr)
"""


def tools() -> tuple[str, str]:
    return require_tool("dnsmasq", "dnsmasq-base"), require_tool("dig", "bind9-dnsutils")


@pytest.fixture
def lab_and_sensor(make_lab: Any) -> Iterator[tuple[Any, Any]]:  # noqa: F811 (the imported fixture)
    dnsmasq, _dig = tools()
    lab = make_lab(["dns", "web", "client"])
    from meshnode.sensor._ebpf import EbpfSensor

    sensor = EbpfSensor(scope=lab.cgroup_rel, idle_timeout_s=60.0, udp_scan_interval_s=0.1)
    sensor.start()
    try:
        lab["dns"].popen([dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", f"--listen-address={lab['dns'].ip}",
                          "--bind-interfaces", "--port=53", "--no-resolv", "--no-hosts", "--user=root",
                          f"--address=/web.lab.test/{lab['web'].ip}", "--address=/nx.lab.test/"])
        lab["web"].python(SERVER)
        lab["dns"].wait_listening(53, udp=True)
        lab["web"].wait_listening(8080)
        yield lab, sensor
    finally:
        sensor.close()


@pytest.mark.kernel
def test_a_client_resolving_through_a_lab_dns_server_gets_remote_name(lab_and_sensor: tuple[Any, Any]) -> None:
    lab, sensor = lab_and_sensor
    dns, web, client = lab["dns"].ip, lab["web"].ip, lab["client"]
    out = client.run(["python3", "-c", CLIENT, dns], timeout=20).stdout.strip()
    assert out == web
    nx = client.run(["dig", "+short", "+time=2", "+tries=2", f"@{dns}", "nx.lab.test"], timeout=20)
    assert nx.stdout.strip() == ""
    flows: list[Any] = []
    records: list[Any] = []
    events: list[Any] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        batch = sensor.poll()
        flows += batch.ended
        records += batch.dns
        events += batch.events
        if any(f.dst == web and f.dport == 8080 for f in flows) and any(d.query == "nx.lab.test" for d in records):
            break
        time.sleep(0.1)
    [tcp] = [f for f in flows if f.dst == web and f.dport == 8080 and f.direction == "outbound"]
    assert (tcp.remote_name, tcp.outcome, tcp.bytes_tx, tcp.comm) == ("web.lab.test", "established", 1000, "python3")
    named = [d for d in records if d.query == "web.lab.test"]
    assert [(d.server, d.rcode, d.addresses, d.failed, d.comm) for d in named] == [(dns, "NOERROR", 1, False, "dig")]
    [nxd] = [d for d in records if d.query == "nx.lab.test"]
    assert (nxd.server, nxd.rcode, nxd.failed, nxd.timed) == (dns, "NXDOMAIN", True, 1) and nxd.latency_us > 0
    failed = [e for e in events if e.type == "dns_failed"]
    assert [(e.flow.dst, e.flow.dport, e.detail) for e in failed] == [(dns, 53, "NXDOMAIN nx.lab.test A")]
    # the DNS flows themselves are flows of the client to the resolver, not named (nobody resolved dns's name)
    assert all(f.remote_name == "" for f in flows if f.dst == dns)
