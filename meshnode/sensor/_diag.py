"""The sock_diag sensor: TCP flows by polling the kernel's socket table, for hosts where eBPF is not possible.

Each refresh dumps every TCP socket of this network namespace with its ``tcp_info`` (one dump per address
family, see ``probes/_sockdiag.py``) and diffs the socket cookies against the previous refresh:

* a new cookie starts a flow. It is *inbound* when its local port is a listening port of this netns (on the
  same address or a wildcard) at that moment, *outbound* otherwise (and always when first seen in
  SYN_SENT);
* a cookie that disappeared (closed, or gone to TIME_WAIT, where the kernel keeps no ``tcp_info``) ends its
  flow: a ``kind="final"`` record with the totals of the **last sample**. What the socket moved between
  that sample and its close is lost, and a flow that opened and closed between two refreshes is missed
  (counted, see below): that is why this sensor's ``fidelity`` is ``"polled"``;
* outcome is ``"established"`` once the socket was seen in ESTABLISHED or any later state. A socket seen
  only in SYN_SENT that vanished gets ``"timeout"``: sock_diag cannot tell a RST-refused connect from an
  abandoned one (both just disappear), so ``"refused"`` is never reported here. Inbound half-open
  connections live in the listener's request queue (NEW_SYN_RECV) under a different cookie than the socket
  ``accept`` returns and are not tracked, so ``"reset"`` is never reported either;
* ``end_ns`` is the wall-clock time of the refresh that noticed the flow gone (at most one poll late);
* flows that opened and closed between two refreshes are never seen, but they are counted: the netns's
  ``ActiveOpens + PassiveOpens`` (``/proc/net/snmp``) grows by one per connect and accept, and what grew
  beyond the new cookies the dumps showed is reported as ``Completeness.lost_events`` (an upper bound when
  scoped, since the counter covers the whole netns).

Counters come from ``tcp_info`` (Linux 4.19+ for all of them): ``bytes_tx`` is ``bytes_acked`` and
``bytes_rx`` is ``bytes_received`` with the sequence numbers of SYN and FIN taken out, because the kernel
counts them (measured on 6.18: the active opener's ``bytes_acked`` is 1 right after connect and
``N + 2`` after sending N bytes and a FIN; the receiver's ``bytes_received`` is ``N + 1`` once the FIN is
in). ``bytes_tx`` is therefore ``min(bytes_acked - syn, bytes_sent - bytes_retrans)``: payload the peer
acknowledged. ``packets_*`` are ``segs_out``/``segs_in`` (all segments, pure ACKs included),
``retransmits`` is ``total_retrans``, RTTs are in microseconds as the kernel keeps them.

``limited_by`` comes from ``meshnode.sensor._limits`` over the deltas between two samples of the flow:
the sample taken at the previous ``active()`` call (or the flow's first sample) and the latest poll, so
that an interim record judges its export period and a final record the rest of the flow.

Owners: pid and comm come from the socket's inode, found by scanning ``/proc/*/fd`` (cached by inode; one
rescan per refresh at most, and only when unknown inodes appeared). ``cgroup`` is the ``0::`` line of
``/proc/<pid>/cgroup``. With a scope other than ``/`` only flows whose owner's cgroup is the scope or under
it are kept; flows whose owner cannot be found (it exited, or the socket was never in any fd table we can
read) are dropped when scoped and kept unattributed (pid 0) when the scope is ``/``.

UDP is not seen at all: sock_diag lists UDP sockets but has no byte or packet counters for them.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Final

from meshnode._exceptions import SensorError
from meshnode._model import FlowRecord
from meshnode.probes import cgroup2_root
from meshnode.probes._sockdiag import (
    ALL_STATES,
    TCP_CLOSE,
    TCP_CLOSE_WAIT,
    TCP_CLOSING,
    TCP_LAST_ACK,
    TCP_LISTEN,
    TCP_NEW_SYN_RECV,
    TCP_SYN_RECV,
    TCP_SYN_SENT,
    TCP_TIME_WAIT,
    DiagSocket,
    SockDiag,
    SockDiagError,
    netns_cookie,
    state_mask,
)
from meshnode.sensor._base import Completeness, SensorBatch
from meshnode.sensor._limits import MIN_INTERVAL_US, limited_by

if TYPE_CHECKING:
    from collections.abc import Callable

    from meshnode.probes._sockdiag import TcpInfo

_DUMP_STATES: Final = ALL_STATES & ~state_mask(TCP_TIME_WAIT, TCP_NEW_SYN_RECV, TCP_CLOSE)
_HANDSHAKE_STATES: Final = frozenset({TCP_SYN_SENT, TCP_SYN_RECV})
_PEER_FIN_STATES: Final = frozenset({TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING})
_NO_RTT: Final = 0xFFFFFFFF  # tcpi_min_rtt before the first sample (~0U)
_WILDCARDS: Final = frozenset({"0.0.0.0", "::"})


@dataclass(frozen=True, slots=True)
class Owner:
    """The process that holds a socket, as /proc showed it."""

    pid: int
    comm: str
    cgroup: str
    cgroup_id: int


@dataclass(slots=True)
class _Flow:
    """What the sensor remembers about one socket between refreshes."""

    cookie: int
    src: str
    sport: int
    dst: str
    dport: int
    direction: str
    start_ns: int
    owner: Owner | None
    sock: DiagSocket
    sample_mono_ns: int
    established: bool = False
    base_info: TcpInfo | None = None
    base_mono_ns: int = 0
    verdict: str = "unknown"
    cwnd_min: int = 0
    cwnd_max: int = 0
    max_rtt_us: int = 0


def _plain(addr: str) -> str:
    """IPv4-mapped IPv6 (a v4 peer on a dual-stack socket) as plain IPv4: that is what went on the wire."""
    return addr[7:] if addr.startswith("::ffff:") and "." in addr else addr


def _in_scope(cgroup: str, scope: str) -> bool:
    if scope in ("", "/"):
        return True
    scope = scope.rstrip("/")
    return cgroup == scope or cgroup.startswith(scope + "/")


class DiagSensor:
    """A :class:`~meshnode.sensor.Sensor` built on sock_diag polling (TCP only, ``fidelity="polled"``).

    Args:
        scope: cgroup v2 path to watch; ``/`` for the whole host.
        idle_timeout_s: accepted for parity with the eBPF sensor. It ends idle *connectionless* flows; TCP
            flows end at close (DESIGN), and this sensor sees no UDP, so it changes nothing here.
        reason: why the factory chose this sensor, shown by ``status``.
    """

    mode: str = "diag"
    fidelity: str = "polled"

    def __init__(self, scope: str = "/", idle_timeout_s: float = 90.0, reason: str = "") -> None:
        self.scope = scope or "/"
        self.idle_timeout_s = idle_timeout_s
        self.reason = reason
        self.netns = 0
        self._diag: SockDiag | None = None
        self._flows: dict[int, _Flow] = {}
        self._ended: list[FlowRecord] = []
        self._owners: dict[int, Owner] = {}
        self._unowned: set[int] = set()
        self._cgroup_root: str | None = None
        self._cgroup_ids: dict[str, int] = {}
        self._lock = threading.Lock()  # the node may poll on its tick and call active() at export
        self._known: set[int] = set()
        self._snmp: IO[str] | None = None
        self._opens: int | None = None
        self._open_balance = 0
        self._missed = 0
        self._mono_ns: Callable[[], int] = time.monotonic_ns  # injectable clocks, for tests
        self._wall_ns: Callable[[], int] = time.time_ns
        self.proc_scans = 0
        """How many /proc scans ran (for tests and metrics: at most one per refresh)."""

    # --- Sensor protocol ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the netlink socket in the calling thread's network namespace and take a first sample.

        Sockets already open at start become flows starting now (their true start is unknown).
        """
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._diag is not None:
            return
        try:
            self._diag = SockDiag()
            self._diag.dump(socket.AF_INET, states=state_mask(TCP_LISTEN), info=False)
        except (SockDiagError, OSError) as exc:
            self._diag = None
            raise SensorError(
                f"sock_diag is not available ({exc}); the diag sensor needs NETLINK_SOCK_DIAG with the "
                "inet_diag and tcp_diag modules (modprobe tcp_diag inet_diag)"
            ) from exc
        try:
            self.netns = netns_cookie()
        except OSError:
            self.netns = 0  # SO_NETNS_COOKIE needs Linux 5.14; the records still work without it
        root = cgroup2_root()
        self._cgroup_root = None if root is None else str(root)
        try:  # the thread's netns, like the netlink socket; an open /proc/net file stays bound to it
            self._snmp = open("/proc/thread-self/net/snmp")  # noqa: SIM115 -- kept open on purpose
        except OSError:
            self._snmp = None
        self._refresh()
        self._missed = 0  # what happened before start is not ours to count

    def poll(self) -> SensorBatch:
        """Refresh and hand over the flows that ended since the last call."""
        with self._lock:
            self._refresh()
            ended, self._ended = self._ended, []
            missed, self._missed = self._missed, 0
        done = Completeness(flows_recorded=len(ended), lost_events=missed)
        return SensorBatch(records=ended, completeness=done)

    def active(self) -> list[FlowRecord]:
        """Refresh and return every open flow as an interim record; starts the next ``limited_by`` window.

        Flows found closed by this refresh are kept for the next :meth:`poll`, not returned here.
        """
        with self._lock:
            self._refresh()
            out = []
            for fl in self._flows.values():
                out.append(self._record(fl, kind="interim", end_ns=self._wall_ns()))
                self._advance_window(fl)
            return out

    def close(self) -> None:
        """Close the netlink socket; safe to call twice. Open flows are not reported as ended."""
        with self._lock:
            if self._diag is not None:
                self._diag.close()
                self._diag = None
            if self._snmp is not None:
                self._snmp.close()
                self._snmp = None

    # --- internals ---------------------------------------------------------------------------------

    def _dump(self) -> list[DiagSocket]:
        if self._diag is None:
            raise RuntimeError("DiagSensor.start() was not called (or close() was)")
        try:
            return self._diag.dump_tcp(_DUMP_STATES, info=True)
        except SockDiagError as exc:
            raise SensorError(f"sock_diag dump failed: {exc}") from exc

    def _tcp_opens(self) -> int | None:
        """``ActiveOpens + PassiveOpens`` of this netns (``/proc/net/snmp``): every connect and accept."""
        if self._snmp is None:
            return None
        try:
            self._snmp.seek(0)
            rows = [line.split() for line in self._snmp if line.startswith("Tcp:")]
            named = dict(zip(rows[0], rows[1], strict=True))
            return int(named["ActiveOpens"]) + int(named["PassiveOpens"])
        except (OSError, ValueError, KeyError, IndexError):
            return None

    def _refresh(self) -> None:
        opens = self._tcp_opens()  # read before the dump: every open it counts is in the dump or gone
        socks = self._dump()
        now_mono = self._mono_ns()
        now_ns = self._wall_ns()
        listeners = {(s.src, s.sport) for s in socks if s.state == TCP_LISTEN}
        conns = [s for s in socks if s.state != TCP_LISTEN]

        unknown = {s.inode for s in conns if s.inode and s.inode not in self._owners
                   and s.inode not in self._unowned
                   and (s.cookie not in self._flows or self._flows[s.cookie].owner is None)}
        if unknown:
            self._scan_proc(unknown)

        self._count_missed(opens, conns)
        seen: set[int] = set()
        for s in conns:
            fl = self._flows.get(s.cookie)
            if fl is not None and fl.owner is None and s.inode:
                fl.owner = self._owners.get(s.inode)  # accepted after we first saw it in the queue
            if fl is None:
                owner = self._owners.get(s.inode) if s.inode else None
                if self.scope != "/" and (owner is None or not _in_scope(owner.cgroup, self.scope)):
                    continue
                inbound = s.state == TCP_SYN_RECV or (
                    s.state != TCP_SYN_SENT
                    and any((a, s.sport) in listeners for a in (s.src, _plain(s.src), *_WILDCARDS))
                )
                fl = _Flow(
                    cookie=s.cookie, src=_plain(s.src), sport=s.sport, dst=_plain(s.dst), dport=s.dport,
                    direction="inbound" if inbound else "outbound", start_ns=now_ns, owner=owner, sock=s,
                    sample_mono_ns=now_mono, base_info=s.tcp_info, base_mono_ns=now_mono,
                )
                self._flows[s.cookie] = fl
            self._update(fl, s, now_mono)
            seen.add(s.cookie)

        for cookie in [c for c in self._flows if c not in seen]:
            fl = self._flows.pop(cookie)
            self._ended.append(self._record(fl, kind="final", end_ns=now_ns))

        live_inodes = {s.inode for s in conns}
        self._owners = {i: o for i, o in self._owners.items() if i in live_inodes}
        self._unowned &= live_inodes

    def _count_missed(self, opens: int | None, conns: list[DiagSocket]) -> None:
        """Count connections opened since the last refresh that no dump ever showed (opened and closed
        between two polls). An upper bound when scoped: the kernel counter covers every cgroup."""
        live = {s.cookie for s in conns}
        new = len(live - self._known)
        self._known = live
        if opens is None:
            return
        if self._opens is not None:
            # A socket opened between the counter read and the dump is seen before it is counted: carry
            # that credit instead of reporting it missed next time.
            self._open_balance += (opens - self._opens) - new
            if self._open_balance > 0:
                self._missed += self._open_balance
                self._open_balance = 0
        self._opens = opens

    def _update(self, fl: _Flow, s: DiagSocket, now_mono: int) -> None:
        fl.sock = s
        fl.sample_mono_ns = now_mono
        if s.state not in _HANDSHAKE_STATES:
            fl.established = True
        ti = s.tcp_info
        if ti is None:
            return
        if ti.snd_cwnd:
            fl.cwnd_min = ti.snd_cwnd if not fl.cwnd_min else min(fl.cwnd_min, ti.snd_cwnd)
            fl.cwnd_max = max(fl.cwnd_max, ti.snd_cwnd)
        if ti.rtt:
            fl.max_rtt_us = max(fl.max_rtt_us, ti.rtt)
        if fl.base_info is None:
            fl.base_info, fl.base_mono_ns = ti, now_mono
        fl.verdict = self._judge(fl)

    @staticmethod
    def _judge(fl: _Flow) -> str:
        cur = fl.sock.tcp_info
        elapsed_us = (fl.sample_mono_ns - fl.base_mono_ns) // 1000
        if cur is None or fl.base_info is None or elapsed_us < MIN_INTERVAL_US:
            return fl.verdict  # too soon to say anything new; keep the last window's verdict
        return limited_by(fl.base_info, cur, elapsed_us)

    @staticmethod
    def _advance_window(fl: _Flow) -> None:
        if (fl.sample_mono_ns - fl.base_mono_ns) // 1000 >= MIN_INTERVAL_US and fl.sock.tcp_info is not None:
            fl.base_info, fl.base_mono_ns = fl.sock.tcp_info, fl.sample_mono_ns

    def _record(self, fl: _Flow, kind: str, end_ns: int) -> FlowRecord:
        s, ti = fl.sock, fl.sock.tcp_info
        o = fl.owner
        if kind == "final":
            outcome = "established" if fl.established else "timeout"
        else:
            outcome = "established" if fl.established else "in_progress"
        rec = FlowRecord(
            flow_id=fl.cookie, src=fl.src, sport=fl.sport, dst=fl.dst, dport=fl.dport, proto="tcp",
            direction=fl.direction, pid=o.pid if o else 0, comm=o.comm if o else "",
            cgroup=o.cgroup if o else "", cgroup_id=o.cgroup_id if o else 0, netns=self.netns,
            start_ns=fl.start_ns, end_ns=end_ns, outcome=outcome, kind=kind, fidelity=self.fidelity,
            cwnd_min=fl.cwnd_min, cwnd_max=fl.cwnd_max, max_rtt_us=fl.max_rtt_us, limited_by=fl.verdict,
        )
        if ti is None:
            return rec
        return rec.replace(
            bytes_tx=payload_tx(ti, fl.direction == "outbound"),
            bytes_rx=payload_rx(ti, s.state),
            packets_tx=ti.segs_out or 0, packets_rx=ti.segs_in or 0,
            retransmits=ti.total_retrans or 0, srtt_us=ti.rtt or 0,
            min_rtt_us=0 if ti.min_rtt in (None, _NO_RTT) else ti.min_rtt,
            rttvar_us=ti.rttvar or 0, cwnd=ti.snd_cwnd or 0, delivery_rate=ti.delivery_rate or 0,
            lost=ti.lost or 0, reordering=ti.reordering or 0,
        )

    # --- owners ------------------------------------------------------------------------------------

    def _scan_proc(self, wanted: set[int]) -> None:
        """One pass over ``/proc/*/fd`` resolving the wanted socket inodes to their (first, lowest) pid."""
        self.proc_scans += 1
        found: dict[int, int] = {}
        try:
            pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        except OSError:
            pids = []
        for pid in pids:
            if len(found) == len(wanted):
                break
            fd_dir = f"/proc/{pid}/fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue  # exited, or not ours to read
            for fd in fds:
                try:
                    target = os.readlink(f"{fd_dir}/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    ino = int(target[8:-1])
                    if ino in wanted and ino not in found:
                        found[ino] = pid
        for ino in wanted:
            owner_pid = found.get(ino)
            owner = self._owner(owner_pid) if owner_pid else None
            if owner is None:
                self._unowned.add(ino)
            else:
                self._owners[ino] = owner

    def _owner(self, pid: int) -> Owner | None:
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            cgroup = ""
            with open(f"/proc/{pid}/cgroup") as f:
                for line in f:
                    if line.startswith("0::"):
                        cgroup = line[3:].strip()
                        break
        except OSError:
            return None
        return Owner(pid=pid, comm=comm, cgroup=cgroup, cgroup_id=self._cgroup_id(cgroup))

    def _cgroup_id(self, cgroup: str) -> int:
        """The cgroup v2 id (the directory's inode number, what ``bpf_get_current_cgroup_id`` returns)."""
        if not cgroup or self._cgroup_root is None:
            return 0
        if cgroup not in self._cgroup_ids:
            try:
                self._cgroup_ids[cgroup] = os.stat(self._cgroup_root + cgroup).st_ino
            except OSError:
                return 0
        return self._cgroup_ids[cgroup]


def payload_tx(ti: TcpInfo, active_opener: bool) -> int:
    """Payload bytes the peer acknowledged: ``bytes_acked`` without the SYN (active opener) and the FIN.

    ``bytes_acked`` is ``snd_una`` progress, which counts the SYN for the side that connected and the FIN
    once it is acknowledged; ``bytes_sent - bytes_retrans`` (unique payload sent) bounds it from above and
    removes the FIN without having to know the state.
    """
    acked = (ti.bytes_acked or 0) - (1 if active_opener else 0)
    if ti.bytes_sent is not None and ti.bytes_retrans is not None:
        acked = min(acked, ti.bytes_sent - ti.bytes_retrans)
    return max(acked, 0)


def payload_rx(ti: TcpInfo, state: int) -> int:
    """Payload bytes received: ``bytes_received`` without the peer's FIN, which it counts once it arrived."""
    got = ti.bytes_received or 0
    if state in _PEER_FIN_STATES:
        got -= 1
    return max(got, 0)
