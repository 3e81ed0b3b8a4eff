"""The lab itself, on the real kernel: hosts, traffic, cgroups, every fault kind, teardown and sweeping.

Every assertion is about what came out: exact bytes echoed, the errno a connect really got, kernel counters
read inside the sender's namespace, throughput measured end to end, names left (or not) in the kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshnode.lab import CGROUP_ROOT, Host, Lab, LabError, sweep
from tests._support.env import require_kernel
from tests._support.lab import (
    LabFactory,
    lab_fixture,
    make_lab,  # noqa: F401 - a fixture, used by name
)

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT = 1.0
PORT = 7000
UDP_PORT = 7001
SINK_PORT = 7002

# -- programs that run on lab hosts ------------------------------------------------------------------------

# TCP echo on every address of the host, IPv4 and IPv6; reports each peer it served on stdout.
TCP_ECHO = """
import socket, sys
srv = socket.create_server(("::", int(sys.argv[1])), family=socket.AF_INET6, dualstack_ipv6=True)
print("ready", flush=True)
while True:
    conn, peer = srv.accept()
    chunks = []
    while data := conn.recv(65536):
        chunks.append(data)
    conn.sendall(b"".join(chunks))
    conn.close()
    print("peer", peer[0].removeprefix("::ffff:"), flush=True)
"""

UDP_ECHO = """
import socket, sys
sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
sock.bind(("::", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = sock.recvfrom(65536)
    sock.sendto(data.upper(), peer)
"""

# Byte sink: counts what it receives, answers with the count.
SINK = """
import socket, sys
srv = socket.create_server(("::", int(sys.argv[1])), family=socket.AF_INET6, dualstack_ipv6=True)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    total = 0
    while data := conn.recv(1 << 16):
        total += len(data)
    conn.sendall(str(total).encode())
    conn.close()
"""

# One TCP exchange: connect, send the payload, half-close, read the answer. Prints a JSON outcome.
TCP_CLIENT = """
import errno, hashlib, json, socket, sys, time
addr, port, timeout, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
payload = (b"meshnode-lab:" + bytes(range(256)) * 512)[:size]
sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
sock.settimeout(timeout)
start = time.monotonic()
out = {}
try:
    sock.connect((addr, port))
    out["connect_s"] = time.monotonic() - start
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    echo = b"".join(chunks)
    out.update(outcome="ok", echo_len=len(echo), echo_sha=hashlib.sha256(echo).hexdigest(),
               echo_head=echo[:13].decode(errors="replace"))
except TimeoutError:
    out["outcome"] = "timeout"
except OSError as exc:
    out["outcome"] = errno.errorcode.get(exc.errno, str(exc.errno))
out["elapsed_s"] = time.monotonic() - start
print(json.dumps(out))
"""

UDP_CLIENT = """
import errno, json, socket, sys
addr, port, message = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(1.0)
sock.connect((addr, port))
sock.send(message)
try:
    print(json.dumps({"outcome": "ok", "reply": sock.recv(65536).decode()}))
except TimeoutError:
    print(json.dumps({"outcome": "timeout"}))
except OSError as exc:
    print(json.dumps({"outcome": errno.errorcode.get(exc.errno, str(exc.errno))}))
"""

# Bulk sender: connects, says so, waits for "go" on stdin (so a fault can be put on an established
# connection), sends N bytes to the sink; prints what the sink counted and the seconds taken.
SENDER = """
import json, socket, sys, time
addr, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sock = socket.create_connection((addr, port), timeout=30)
print("connected", flush=True)
sys.stdin.readline()
start = time.monotonic()
sock.sendall(b"\\x5a" * size)
sock.shutdown(socket.SHUT_WR)
answer = sock.recv(100)
print(json.dumps({"sink_bytes": int(answer), "seconds": time.monotonic() - start}), flush=True)
"""

# -- helpers -------------------------------------------------------------------------------------------


def expected_payload(size: int) -> bytes:
    return (b"meshnode-lab:" + bytes(range(256)) * 512)[:size]


def start_server(host: Host, code: str, *args: str) -> subprocess.Popen[str]:
    """Start a server on ``host`` and wait for its "ready" line (no sleep-and-hope)."""
    proc = host.python(code, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = read_line(proc, timeout=5.0)
    assert line == "ready", f"server on {host.name} did not start: {line!r} {proc.stderr!r}"
    return proc


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return "<no output>"
    return proc.stdout.readline().strip()


def tcp(src: Host, addr: str, *, size: int = 13, port: int = PORT, timeout: float = CONNECT_TIMEOUT) -> dict[str, Any]:
    result = src.run([sys.executable, "-c", TCP_CLIENT, addr, str(port), str(timeout), str(size)], timeout=20)
    return dict(json.loads(result.stdout))


def udp(src: Host, addr: str, message: str) -> dict[str, Any]:
    result = src.run([sys.executable, "-c", UDP_CLIENT, addr, str(UDP_PORT), message], timeout=10)
    return dict(json.loads(result.stdout))


def send_bulk(src: Host, addr: str, size: int, *, before_go: Callable[[], object] | None = None) -> dict[str, Any]:
    """Send ``size`` bytes from ``src`` to the sink at ``addr``; ``before_go`` runs once connected."""
    proc = src.python(SENDER, addr, str(SINK_PORT), str(size), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert read_line(proc, timeout=5.0) == "connected"
    if before_go is not None:
        before_go()
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return dict(json.loads(out))


def retrans_segs(host: Host, tmp_path: Path) -> int:
    """TcpRetransSegs of the host's namespace (absolute, history neither read nor written)."""
    env = {**os.environ, "NSTAT_HISTORY": str(tmp_path / f"nstat-{host.name}")}
    out = host.run(["nstat", "-azs", "TcpRetransSegs"], env=env).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0] == "TcpRetransSegs":
            return int(fields[1])
    raise AssertionError(f"no TcpRetransSegs in nstat output: {out!r}")


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def root_nft_tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout


def netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
def lab3(make_lab: LabFactory) -> Iterator[Lab]:  # noqa: F811 - make_lab is the imported fixture
    """Three hosts a, b, c with a TCP echo server on each and a UDP echo server on c."""
    lab = make_lab(3)
    for host in lab:
        start_server(host, TCP_ECHO, str(PORT))
    start_server(lab["c"], UDP_ECHO, str(UDP_PORT))
    yield lab


# -- hosts and traffic ---------------------------------------------------------------------------------


def test_tcp_and_udp_over_ipv4_and_ipv6(make_lab: LabFactory) -> None:  # noqa: F811
    lab = make_lab(3)
    a, b, c = lab["a"], lab["b"], lab["c"]
    slot = lab.slot
    assert (a.ip, b.ip, c.ip) == (f"10.{slot}.1.1", f"10.{slot}.1.2", f"10.{slot}.1.3")
    assert b.ip6 == f"fd6d:6e6c:6162:{slot:02x}01::2"
    echo = start_server(b, TCP_ECHO, str(PORT))
    start_server(c, UDP_ECHO, str(UDP_PORT))
    c.wait_listening(UDP_PORT, udp=True, timeout=1.0)
    b.wait_listening(PORT, timeout=1.0)

    for addr in (b.ip, b.ip6):
        size = 100_000
        out = tcp(a, addr, size=size)
        assert out["outcome"] == "ok", out
        assert out["echo_len"] == size
        assert out["echo_sha"] == hashlib.sha256(expected_payload(size)).hexdigest()
        assert out["echo_head"] == "meshnode-lab:"
        # the server saw the client's lab address: no NAT, no proxy in between
        assert read_line(echo, timeout=2.0) == f"peer {a.ip if addr == b.ip else a.ip6}"

    assert udp(a, c.ip, "ping over ipv4") == {"outcome": "ok", "reply": "PING OVER IPV4"}
    assert udp(a, c.ip6, "ping over ipv6") == {"outcome": "ok", "reply": "PING OVER IPV6"}
    # loopback inside a host is up too
    start_server(a, TCP_ECHO, str(PORT + 10))
    assert tcp(a, "127.0.0.1", port=PORT + 10)["outcome"] == "ok"
    assert tcp(a, "::1", port=PORT + 10)["outcome"] == "ok"


def test_labs_side_by_side_are_isolated_and_use_different_addresses(make_lab: LabFactory) -> None:  # noqa: F811
    one, two = make_lab(1), make_lab(1)
    assert one.slot != two.slot
    assert one["a"].ip != two["a"].ip and one["a"].ip6 != two["a"].ip6
    assert one["a"].ip in {str(ip) for ip in one.ipv4_net.hosts()}
    start_server(two["a"], TCP_ECHO, str(PORT))
    # no route from one lab into another
    assert tcp(one["a"], two["a"].ip)["outcome"] == "ENETUNREACH"
    assert tcp(one["a"], two["a"].ip6)["outcome"] == "ENETUNREACH"


def test_processes_run_in_the_host_cgroup_and_netns(make_lab: LabFactory) -> None:  # noqa: F811
    lab = make_lab(2)
    a, b = lab["a"], lab["b"]
    assert a.cgroup == CGROUP_ROOT / lab.id / "a"
    assert a.cgroup_rel == f"/{lab.id}/a"
    assert a.netns == f"{lab.id}-h-a"

    # a shell with a background child: both the program and its descendant are placed
    proc = a.popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    child = int(read_line(proc, timeout=5.0))
    for pid in (proc.pid, child):
        assert f"0::{a.cgroup_rel}\n" in Path(f"/proc/{pid}/cgroup").read_text()
        assert os.readlink(f"/proc/{pid}/ns/net") == f"net:[{a.netns_inode}]"
    assert {proc.pid, child} <= set(a.pids())
    assert b.pids() == []
    # the test process itself stays where it was
    assert os.readlink("/proc/self/ns/net") != f"net:[{a.netns_inode}]"

    # python on a host sees its own cgroup, its own interfaces, and still /sys/fs/cgroup and tracefs
    # (which `ip netns exec` would hide from an eBPF sensor started on the host)
    code = """
        import json, os, socket
        print(json.dumps({
            "cgroup": open("/proc/self/cgroup").read(),
            "ifaces": sorted(name for _, name in socket.if_nameindex()),
            "cgroup_root": os.path.exists("/sys/fs/cgroup/unified/cgroup.procs"),
            "tracefs": os.path.exists("/sys/kernel/tracing/events"),
        }))
    """
    out, _ = b.python(code, stdout=subprocess.PIPE, text=True).communicate(timeout=10)
    seen = json.loads(out)
    assert f"0::{b.cgroup_rel}\n" in seen["cgroup"]
    assert seen["ifaces"] == ["eth0", "lo"]
    assert seen["cgroup_root"] is True
    assert seen["tracefs"] is True

    a.kill()
    assert a.pids() == []
    assert not pid_alive(child)


# -- faults --------------------------------------------------------------------------------------------


def test_drop_times_out_then_recovers(lab3: Lab) -> None:
    a, b, c = lab3["a"], lab3["b"], lab3["c"]
    with a.drop(peer=b) as fault:
        assert fault.active and lab3.faults == [fault]
        for addr in (b.ip, b.ip6):
            out = tcp(a, addr)
            assert out["outcome"] == "timeout"
            assert out["elapsed_s"] >= CONNECT_TIMEOUT * 0.9
        assert tcp(b, a.ip)["outcome"] == "timeout"  # both directions
        assert tcp(a, c.ip)["outcome"] == "ok"  # only traffic with the peer
    assert not fault.active and lab3.faults == []
    assert a.run(["nft", "list", "tables"]).stdout == ""  # the fault's table went with it
    assert tcp(a, b.ip)["outcome"] == "ok"

    fault = b.drop()  # all of b's traffic
    assert tcp(c, b.ip)["outcome"] == "timeout"
    assert tcp(a, c.ip)["outcome"] == "ok"
    fault.remove()
    fault.remove()  # idempotent
    assert tcp(c, b.ip)["outcome"] == "ok"


def test_reject_refuses_tcp_and_udp_then_recovers(lab3: Lab) -> None:
    a, b, c = lab3["a"], lab3["b"], lab3["c"]
    with a.reject(peer=b):
        for addr in (b.ip, b.ip6):
            out = tcp(a, addr)
            assert out["outcome"] == "ECONNREFUSED"
            assert out["elapsed_s"] < 0.5  # a reset, not a timeout
        assert tcp(b, a.ip)["outcome"] == "ECONNREFUSED"  # the peer's SYN is answered with a RST
        assert tcp(a, c.ip)["outcome"] == "ok"
    with c.reject():
        assert tcp(a, c.ip)["outcome"] == "ECONNREFUSED"
        assert udp(a, c.ip, "x") == {"outcome": "ECONNREFUSED"}  # ICMP port unreachable
        assert udp(a, c.ip6, "x") == {"outcome": "ECONNREFUSED"}
    assert tcp(a, b.ip)["outcome"] == "ok"
    assert udp(a, c.ip, "back") == {"outcome": "ok", "reply": "BACK"}


def test_random_loss_causes_retransmissions_but_transfer_completes(make_lab: LabFactory, tmp_path: Path) -> None:  # noqa: F811
    lab = make_lab(2)
    a, b = lab["a"], lab["b"]
    start_server(b, SINK, str(SINK_PORT))
    size = 2_000_000

    def transfer(**kwargs: Any) -> int:
        """Send ``size`` bytes from a to b; the retransmissions a's kernel counted meanwhile."""
        before = retrans_segs(a, tmp_path)
        assert send_bulk(a, b.ip, size, **kwargs)["sink_bytes"] == size  # TCP repaired every loss
        return retrans_segs(a, tmp_path) - before

    clean = transfer()

    # On a link with a 50 us RTT, TCP's 200 ms minimum RTO (doubled per repeated loss) is what makes a lossy
    # transfer slow, from 0.4 s to over 10 s; a 10 ms floor for this route keeps the test fast and steady.
    route = ["ip", "route", "add", f"{b.ip}/32", "dev", a.iface, "rto_min", "10ms"]
    a.run(route)
    # Lose 30 % of the data segments (on the wire, at the switch port), once the connection is up: with
    # the ACKs lost too, about half the round trips would fail and TCP would crawl.
    faults = []
    lossy = transfer(before_go=lambda: faults.append(a.loss(30, peer=b, direction="out")))
    (fault,) = faults
    assert fault.params["percent"] == 30 and fault.params["direction"] == "out"
    fault.remove()
    a.run(["ip", "route", "del", *route[3:]])

    after = [transfer()]
    assert lossy >= 50, f"only {lossy} retransmissions under 30 % loss"
    # Without loss: none, bar tail-loss probes when this machine is so busy that ACKs come late, or the odd
    # burst a loaded CPU's backlog queue drops (CI saw 45 in one clean run and 0 in the other, and once 90
    # and 45 while other work ran beside it). One of up to four clean runs must be clean, and loss must
    # stand far above that baseline.
    while min(clean, *after) > 10 and len(after) < 3:
        after.append(transfer())
    baseline = min(clean, *after)
    assert baseline <= 10, (clean, after)
    assert lossy > 5 * max(baseline, 1), (clean, lossy, after)


def test_blackhole_route_then_recovers(lab3: Lab) -> None:
    a, b, c = lab3["a"], lab3["b"], lab3["c"]
    with a.blackhole(peer=b):
        # locally originated traffic hits the blackhole route: connect fails at once with EINVAL
        for addr in (b.ip, b.ip6):
            out = tcp(a, addr)
            assert out["outcome"] == "EINVAL"
            assert out["elapsed_s"] < 0.5
        # the peer's SYN arrives, but the SYN-ACK is routed into the blackhole: the peer times out
        assert tcp(b, a.ip)["outcome"] == "timeout"
        assert tcp(a, c.ip)["outcome"] == "ok"
    with a.blackhole(peer=b, route_type="unreachable"):
        assert tcp(a, b.ip)["outcome"] == "EHOSTUNREACH"
    with a.blackhole(peer=b, route_type="prohibit"):
        assert tcp(a, b.ip6)["outcome"] == "EACCES"
    with a.blackhole():  # everything but loopback
        assert tcp(a, c.ip)["outcome"] == "EINVAL"
        assert tcp(a, c.ip6)["outcome"] == "EINVAL"
        assert tcp(a, "127.0.0.1")["outcome"] == "ok"
    assert tcp(a, b.ip)["outcome"] == "ok"
    assert tcp(b, a.ip)["outcome"] == "ok"
    assert tcp(a, c.ip6)["outcome"] == "ok"


def test_rate_limit_caps_throughput_then_recovers(make_lab: LabFactory) -> None:  # noqa: F811
    lab = make_lab(3)
    a, b, c = lab["a"], lab["b"], lab["c"]
    for host in (b, c):
        start_server(host, SINK, str(SINK_PORT))
    rate = 8_000_000  # bit/s
    size = 1_000_000  # about 1 s at the limit

    def mbit(out: dict[str, Any]) -> float:
        assert out["sink_bytes"] == size
        return float(size * 8 / out["seconds"])

    baseline = mbit(send_bulk(a, b.ip, size))
    assert baseline > 20 * rate

    with a.rate("8mbit") as fault:
        assert fault.params["rate_bps"] == rate
        limited = mbit(send_bulk(a, b.ip, size))
        assert rate / 4 < limited < 2 * rate
        assert mbit(send_bulk(a, c.ip6, size)) < 2 * rate
    assert mbit(send_bulk(a, b.ip, size)) > 20 * rate

    with a.rate(rate, peer=b):  # between a and b only
        assert mbit(send_bulk(a, b.ip, size)) < 2 * rate
        assert mbit(send_bulk(a, c.ip, size)) > 20 * rate
    assert mbit(send_bulk(a, b.ip, size)) > 20 * rate


# -- sites ---------------------------------------------------------------------------------------------


def test_site_uplink_fault_affects_only_that_sites_traffic_to_other_sites(make_lab: LabFactory) -> None:  # noqa: F811
    lab = make_lab(sites={"east": 2, "west": 2})
    assert list(lab.sites) == ["east", "west"]
    east1, east2, west1, west2 = (lab[name] for name in ("east1", "east2", "west1", "west2"))
    assert (east1.ip, west1.ip) == (f"10.{lab.slot}.1.1", f"10.{lab.slot}.2.1")
    assert east1.site is not None and east1.site.gateway == f"10.{lab.slot}.1.254"
    assert east1.site is lab.sites["east"]
    for host in lab:
        start_server(host, TCP_ECHO, str(PORT))
    pairs = [(east1, west1), (west2, east2), (east1, east2), (west1, west2)]
    assert all(tcp(src, dst.ip)["outcome"] == "ok" for src, dst in pairs)
    assert all(tcp(src, dst.ip6)["outcome"] == "ok" for src, dst in pairs)

    uplink = lab.sites["east"].uplink
    with uplink.drop():
        assert tcp(east1, west1.ip)["outcome"] == "timeout"
        assert tcp(west2, east2.ip6)["outcome"] == "timeout"
        assert tcp(east1, east2.ip)["outcome"] == "ok"  # inside the site: untouched
        assert tcp(west1, west2.ip)["outcome"] == "ok"
    assert tcp(east1, west1.ip)["outcome"] == "ok"
    with uplink.reject(peer=lab.sites["west"]):
        assert tcp(east2, west2.ip6)["outcome"] == "ECONNREFUSED"
    with uplink.blackhole(route_type="unreachable"):
        # the site router answers with ICMP host unreachable; IPv4 TCP aborts the connect at once
        assert tcp(east1, west1.ip)["outcome"] == "EHOSTUNREACH"

    # a slow uplink: only the traffic leaving or entering the site is shaped
    for host in (east2, west2):
        start_server(host, SINK, str(SINK_PORT))
    rate, size = 8_000_000, 1_000_000
    with uplink.rate(rate):
        across = send_bulk(west1, east2.ip, size)
        inside = send_bulk(east1, east2.ip, size)
    assert across["sink_bytes"] == inside["sink_bytes"] == size
    assert size * 8 / across["seconds"] < 2 * rate
    assert size * 8 / inside["seconds"] > 20 * rate
    assert size * 8 / send_bulk(west1, east2.ip, size)["seconds"] > 20 * rate


# -- teardown and sweeping -----------------------------------------------------------------------------


def test_teardown_removes_everything(tmp_path: Path) -> None:
    require_kernel()
    links_before, tables_before = root_links(), root_nft_tables()
    lab = Lab(3)
    a, b = lab["a"], lab["b"]
    # a daemon that leaves its parent behind (setsid + fork) must die too
    daemon = a.popen(["setsid", "sh", "-c", "sleep 60 & echo $!"], stdout=subprocess.PIPE, text=True)
    orphan = int(read_line(daemon, timeout=5.0))
    sleeper = b.popen(["sleep", "60"])
    for fault in (a.drop(peer=b), b.reject(), a.loss(10, peer=b), a.blackhole(), b.rate("100mbit")):
        assert fault.active
    assert any(lab.id in line for line in netns_list().splitlines())
    # the faults' nft tables carry the lab id, in the host's namespace and on the switch
    assert f"table inet {lab.id}-f" in a.run(["nft", "list", "tables"]).stdout
    switch = f"{lab.id}-sw"
    switch_tables = subprocess.run(
        ["nsenter", f"--net=/run/netns/{switch}", "nft", "list", "tables"], capture_output=True, text=True, check=True
    ).stdout
    assert f"table netdev {lab.id}-f" in switch_tables

    lab.close()
    lab.close()  # idempotent

    assert lab.id not in netns_list()
    assert not (CGROUP_ROOT / lab.id).exists()
    # nothing new in the root namespace (compared by name: other test runs may share the machine)
    new_links = root_links() - links_before
    assert not [name for name in new_links if name.startswith(("p-", "u-", "eth0", "br0", "up0", "mnlab"))]
    assert "mnlab" not in root_nft_tables().replace(tables_before, "")
    assert lab.id not in root_nft_tables()
    assert not pid_alive(orphan)
    assert sleeper.returncode is not None
    assert lab.faults == []


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_sweep_removes_labs_of_dead_processes_only() -> None:
    require_kernel()
    # The "crashed" lab's owner is a process that lives while the leftovers are set up, so that a Lab built
    # meanwhile by a parallel test run leaves them alone, and dies just before our Lab sweeps.
    owner = subprocess.Popen(["sleep", "60"])
    dead_id = f"mnlab-{owner.pid}-1"
    live_id = f"mnlab-{os.getpid()}-99999"  # owner (this process) alive, but not a Lab object here
    made: list[subprocess.Popen[bytes]] = [owner]
    try:
        for lab_id in (dead_id, live_id):
            for ns in (f"{lab_id}-h-x", f"{lab_id}-sw"):
                subprocess.run(["ip", "netns", "add", ns], check=True)
            (CGROUP_ROOT / lab_id / "x").mkdir(parents=True)
        # a leftover process in the dead lab's cgroup, and one that only entered its namespace
        in_cgroup = subprocess.Popen(["sleep", "60"])
        (CGROUP_ROOT / dead_id / "x" / "cgroup.procs").write_text(str(in_cgroup.pid))
        in_netns = subprocess.Popen(["nsenter", f"--net=/run/netns/{dead_id}-h-x", "sleep", "60"])
        made += [in_cgroup, in_netns]
        netns_inode = os.stat(f"/run/netns/{dead_id}-h-x").st_ino
        wait_until(lambda: os.readlink(f"/proc/{in_netns.pid}/ns/net") == f"net:[{netns_inode}]")
        owner.kill()
        owner.wait()

        with Lab(1) as lab:
            report = lab.sweep_report
            assert report is not None
            assert dead_id in report.labs
            assert sorted(report.netns) == [f"{dead_id}-h-x", f"{dead_id}-sw"]
            assert report.cgroups == [str(CGROUP_ROOT / dead_id)]
            assert live_id in report.skipped_live
            assert in_netns.pid in report.killed
            assert in_cgroup.wait(timeout=5) == -signal.SIGKILL
            assert in_netns.wait(timeout=5) == -signal.SIGKILL
            assert dead_id not in netns_list()
            assert not (CGROUP_ROOT / dead_id).exists()
            assert f"{live_id}-sw" in netns_list()
            assert (CGROUP_ROOT / live_id).exists()

        report = sweep(live_id, include_live=True)
        assert report.labs == [live_id]
        assert live_id not in netns_list()
        assert not (CGROUP_ROOT / live_id).exists()
    finally:
        for proc in made:
            proc.kill()
            proc.wait()
        sweep(dead_id, include_live=True)
        sweep(live_id, include_live=True)


SIGNAL_SCRIPT = """
import signal, sys, time
from meshnode.lab import Lab
# a background job of a non-interactive shell starts with SIGINT ignored; a user's program at a terminal not
signal.signal(signal.SIGINT, signal.default_int_handler)
lab = Lab(2)
lab["a"].popen(["sleep", "60"])
lab["b"].drop()
print(lab.id, flush=True)
{wait}
"""


@pytest.mark.parametrize(
    ("signum", "wait", "returncode"),
    [
        # the handler tears down, then the process dies of the signal as it would have
        (signal.SIGTERM, "time.sleep(30)", -signal.SIGTERM),
        # KeyboardInterrupt unwinds (atexit / the with block tears down); Python then dies of SIGINT
        (signal.SIGINT, "time.sleep(30)", -signal.SIGINT),
        (signal.SIGINT, "with lab:\n    time.sleep(30)", -signal.SIGINT),
    ],
    ids=["sigterm", "sigint-atexit", "sigint-with"],
)
def test_interrupted_lab_is_torn_down(signum: int, wait: str, returncode: int) -> None:
    require_kernel()
    script = textwrap.dedent(SIGNAL_SCRIPT).format(wait=wait)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lab_id = read_line(proc, timeout=10.0)
    try:
        assert lab_id.startswith("mnlab-"), proc.communicate(timeout=5)
        assert lab_id in netns_list()
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=15)
        assert proc.returncode == returncode, err
        assert lab_id not in netns_list()
        assert not (CGROUP_ROOT / lab_id).exists()
    finally:
        proc.kill()
        proc.wait()
        if lab_id.startswith("mnlab-"):
            sweep(lab_id, include_live=True)


# -- the fixture maker ---------------------------------------------------------------------------------

duo = lab_fixture(["web", "db"], scope="module")


def test_lab_fixture_builds_named_hosts(duo: Lab) -> None:
    assert sorted(duo.hosts) == ["db", "web"]
    db = duo["db"]
    with pytest.raises(LabError, match="nothing listens on TCP port 7000 of host db"):
        db.wait_listening(PORT, timeout=0.1)
    db.python(TCP_ECHO, str(PORT), stdout=subprocess.DEVNULL)  # no waiting for its "ready" line
    db.wait_listening(PORT)
    out = tcp(duo["web"], duo["db"].ip6, size=5000)
    assert out["outcome"] == "ok" and out["echo_sha"] == hashlib.sha256(expected_payload(5000)).hexdigest()
