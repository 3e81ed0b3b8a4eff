"""The eBPF sensor: kernel records from probes/ → FlowRecord.

The kernel aggregates per socket and emits one lifecycle record per TCP flow; this adapter drains once
per ``poll``. UDP flows end when their socket is released or after ``idle_timeout_s`` without a datagram
(seed 002's 90 s rule); inbound handshakes that never complete end as ``timeout`` after
``halfopen_timeout_s``. Once per export period ``active`` also reads the full ``tcp_info`` of live TCP
sockets through sock_diag (the sensor's own network namespace) to fill ``rttvar``, ``delivery_rate``,
``lost``, ``reordering`` and ``limited_by``; a flow's final record carries its last such sample.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import socket
import time
from collections import Counter
from json.encoder import encode_basestring_ascii as _json_str
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from meshnode._batch import FlowBatch, factorize
from meshnode._exceptions import BPFCompileError, SensorError
from meshnode._model import ENUM_NUMBERS, FlowRecord
from meshnode.probes import _records as rec
from meshnode.probes._errors import ProbeCompileError, ProbeError
from meshnode.probes._loader import CGROUP_ROOT, ProbeConfig, Probes, drop_reason_names
from meshnode.probes._records import UdpScan
from meshnode.sensor import _native
from meshnode.sensor._base import EventRecord, JsonBatch, SensorBatch
from meshnode.sensor._dns import NameCache, dns_record, failure_event
from meshnode.sensor._limits import limited_by
from meshnode.sensor._native import NativeJson
from meshnode.sensor._netaddr import NamespaceAddresses
from meshnode.sensor._resolve import CgroupNames, proc_cgroup, proc_comm, service_name

if TYPE_CHECKING:
    from collections.abc import Iterable

    from numpy.typing import NDArray

    from meshnode.probes._records import PendingRow, TcpFlowRow, UdpFlowRow
    from meshnode.probes._sockdiag import TcpInfo

log = logging.getLogger(__name__)

_EVENT_TYPES = {
    rec.EV_RETRANS_BURST: "retransmit_burst",
    rec.EV_RTT_SHIFT: "rtt_shift",
    rec.EV_RESET_RX: "reset_received",
    rec.EV_RESET_TX: "reset_sent",
    rec.EV_ZERO_WINDOW: "zero_window",
}
_COMM_TTL_S = 10.0
_HALFOPEN_REPEAT_NS = 30 * 10**9
_RTT_SHIFT_EVERY_NS = 10 * 10**9
_TCP = ENUM_NUMBERS["proto"]["tcp"]
_INBOUND, _OUTBOUND = ENUM_NUMBERS["direction"]["inbound"], ENUM_NUMBERS["direction"]["outbound"]
_IN_PROGRESS = ENUM_NUMBERS["outcome"]["in_progress"]
# The kernel writes meshnode.v1's outcome numbers (meshnode.h); any other value is a flow in progress.
_KERNEL_OUTCOMES = tuple(ENUM_NUMBERS["outcome"][name] for name in rec.OUTCOME_NAMES.values())
_NO_REASONS: dict[str, int] = {}
_SAMPLED = {"rttvar_us": "rttvar", "delivery_rate": "delivery_rate", "lost": "lost", "reordering": "reordering"}
"""Final-record columns filled from the flow's last tcp_info sample, and the TcpInfo field of each."""
_MAP_FULL = ("tcp_map_full", "udp_map_full", "pending_map_full", "tracked_map_full", "drop_map_full",
             "proc_map_full", "icmp_map_full", "refused_map_full", "dns_txn_map_full")
_UDP = ENUM_NUMBERS["proto"]["udp"]
_PROTO_NAME = {_TCP: "tcp", _UDP: "udp"}
_ICMP_EVENTS = {rec.ICMP_K_UNREACH: "icmp_unreachable", rec.ICMP_K_FRAG: "frag_needed",
                rec.ICMP_K_TTL: "ttl_exceeded"}
#: What an ICMPv4 destination-unreachable code says is unreachable (ICMPv6's codes arrive renumbered to these:
#: icmp.bpf.c); short, as an event's detail column is 15 characters.
UNREACHABLE_CODES: Final = {0: "net", 1: "host", 2: "protocol", 3: "port", 5: "source route", 6: "net unknown",
                            7: "host unknown", 9: "net prohibited", 10: "host prohibited", 11: "net for TOS",
                            12: "host for TOS", 13: "prohibited"}
_NO_ICMP = (0, 0, 0, 0, 0)
_ICMP_HELD = 65536
_REFUSED_QUIET_NS = 2 * 10**9
"""An inbound refused flow (one source's attempts to closed ports) ends once the source has been quiet this
long, or has lasted ``_REFUSED_MAX_NS``: one record per source and burst, bounded in time."""
_REFUSED_MAX_NS = 60 * 10**9


class EbpfSensor:
    """Exact flows from eBPF, scoped to one cgroup subtree."""

    mode = "ebpf"
    fidelity = "exact"

    def __init__(
        self,
        scope: str = "/",
        idle_timeout_s: float = 90.0,
        halfopen_timeout_s: float = 75.0,
        reason: str = "",
        cgroup_root: Path = CGROUP_ROOT,
        probe_config: ProbeConfig | None = None,
        udp_scan_interval_s: float = 1.0,
    ) -> None:
        self.scope = "/" + scope.strip("/")
        self.reason = reason or "eBPF requested"
        self.idle_timeout_ns = int(idle_timeout_s * 1e9)
        self.halfopen_timeout_ns = int(halfopen_timeout_s * 1e9)
        self._udp_scan_interval_ns = int(udp_scan_interval_s * 1e9)
        cfg = probe_config or ProbeConfig()
        self._probes = Probes(dataclasses.replace(cfg, cgroup=self.scope, cgroup_root=cgroup_root))
        self._cgroups = CgroupNames(cgroup_root)
        self._clock_offset = 0
        self._started = False
        self._counters: dict[str, int] = {}
        self._released: set[int] = set()
        self._last_udp_scan = 0
        self._udp_sks: dict[int, int] = {}
        self._udp_scan = UdpScan.of_rows([])
        self._drops_by_sk: dict[int, Counter[str]] = {}
        self._unattributed: Counter[str] = Counter()
        self._reasons: dict[int, str] = {}
        self._tcpinfo: dict[int, tuple[int, TcpInfo]] = {}
        self._limits: dict[int, str] = {}
        self._comms: dict[int, tuple[float, str]] = {}
        self._halfopen_seen: dict[tuple[int, str, int, str, int], int] = {}
        self._rtt_shift_at: dict[int, int] = {}
        self._json_addr4: dict[bytes, bytes] = {}
        self._json_addr6: dict[bytes, bytes] = {}
        self._json_service: dict[int, bytes] = {}
        self._names = NameCache(lambda ids: self._probes.dns_names(ids))
        self._native: NativeJson | bool | None = False  # False: not loaded yet; None: not available
        # ICMP errors by flow 5-tuple (proto, src, sport, dst, dport): unreachable, code, frag needed, MTU,
        # time exceeded; joined to the flow's record (and popped) when it ends
        self._icmp: dict[tuple[int, str, int, str, int], tuple[int, int, int, int, int]] = {}
        self._own_addrs: tuple[float, frozenset[str]] = (0.0, frozenset())
        self._netaddrs: NamespaceAddresses | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Compile and attach; idempotent. Raises SensorError saying what is missing and how to fix it."""
        if self._started:
            return
        try:
            self._probes.open()
        except ProbeCompileError as exc:
            raise BPFCompileError(str(exc)) from exc
        except ProbeError as exc:
            raise SensorError(str(exc)) from exc
        self._netaddrs = NamespaceAddresses()  # this namespace's, however the sensor is polled later
        self._clock_offset = time.time_ns() - time.monotonic_ns()
        self._counters = self._probes.counters()
        self._reasons = drop_reason_names()
        gaps = self._probes.process_name_gaps()
        if gaps:
            log.warning("process names may be missing or stale: %s", "; ".join(gaps))
        gaps = self._probes.refusal_gaps()
        if gaps:
            log.warning("inbound attempts to closed ports: %s", "; ".join(gaps))
        self._started = True

    def close(self) -> None:
        """Detach and free kernel resources; safe to call twice."""
        self._probes.close()
        if self._netaddrs is not None:
            self._netaddrs.close()
            self._netaddrs = None
        self._started = False

    # ---- draining --------------------------------------------------------------------------------

    def poll(self) -> SensorBatch:
        """Flows ended and events since the last call, with the completeness counters they moved.

        The ring's TCP end records (all but a handful of its records) become one columnar batch
        (``_end_columns``): no TcpFlowRow or FlowRecord is made for them. Any other record (half-open
        resets, UDP releases, events on live flows) takes ``_handle``, one at a time.
        """
        batch = SensorBatch()
        now = time.monotonic_ns()
        try:
            # ICMP errors first: an error that ended a flow was counted before the flow's end record went out
            self._drain_icmp(batch)
            arr = self._probes.poll_array()
            if len(arr):
                batch.columns.extend(self._ring_in_order(arr, batch))
            self._poll_maps(now, batch)
        except ProbeError as exc:  # a MeshnodeError: the node logs it and polls again (bounded)
            raise SensorError(f"sensor poll failed: {exc}") from exc
        except Exception as exc:  # a bug on some input: this poll's records are lost, the node goes on (bounded)
            log.exception("sensor poll failed on a bug; its ring records are lost")
            raise SensorError(f"sensor poll failed on a bug ({type(exc).__name__}: {exc}); "
                              "its ring records are lost, see the traceback above") from exc
        batch.completeness.flows_recorded += len(batch.records) + sum(len(c) for c in batch.columns)
        return batch

    def _ring_in_order(self, arr: np.ndarray[Any, Any], batch: SensorBatch) -> list[FlowBatch]:
        """A poll's ring records as if handled in ring order: the TCP end records as one columnar batch,
        every other record through ``_handle``, the flows and events put back in ring order.

        The other records (resets, RTT shifts, UDP releases, half-open resets: a few a poll, but spread
        through it) are handled first. That is the same as ring order unless one of them follows an end
        record of its socket (the same ``sk``, reused, or cookie): per-socket state (drops, limits, TCP_INFO)
        is popped by whichever comes first, so then each run of end records is handled where it stands.
        """
        fast = (arr["kind"] == rec.EV_TCP_END) & (arr["flow_cookie"] != 0)
        if fast.all():
            return [self._end_columns(arr, batch)]
        slow = np.flatnonzero(~fast)
        if _follows_its_socket(arr, fast, slow):
            return [self._runs_in_order(arr, fast, batch)]
        parts: list[FlowBatch] = []
        flow_at: list[NDArray[np.intp]] = []
        events: list[tuple[int, EventRecord]] = []
        for i in slow.tolist():
            said = len(batch.events)
            made = self._handle_at(arr, i, batch)
            if made is not None:
                parts.append(made)
                flow_at.append(np.full(made.n, i, dtype=np.intp))
            events += [(i, e) for e in batch.events[said:]]
            del batch.events[said:]
        at = np.flatnonzero(fast)
        flows = FlowBatch.empty()
        if len(at):
            said = len(batch.events)
            flows = self._end_columns(arr[fast], batch)
            failed_at = at[flows.failed()].tolist()  # _end_columns' events: one a failed flow, in row order
            events += list(zip(failed_at, batch.events[said:], strict=True))
            del batch.events[said:]
        events.sort(key=lambda e: e[0])  # stable: one record's events keep their order
        batch.events += [e for _, e in events]
        if not parts:  # the other records made no flow (the usual case): the end records are in ring order
            return [flows]
        merged = FlowBatch.concat([*parts, flows])
        order = np.argsort(np.concatenate([*flow_at, at]), kind="stable")
        return [merged.take(order)]

    def _runs_in_order(self, arr: np.ndarray[Any, Any], fast: NDArray[np.bool_], batch: SensorBatch) -> FlowBatch:
        """Each run of TCP end records as one batch and each other record through ``_handle``, where it
        stands in the ring."""
        parts: list[FlowBatch] = []
        start = 0
        for i in [*np.flatnonzero(~fast).tolist(), len(arr)]:
            if i > start:
                parts.append(self._end_columns(arr[start:i], batch))
            if i < len(arr):
                made = self._handle_at(arr, i, batch)
                if made is not None:
                    parts.append(made)
            start = i + 1
        return FlowBatch.concat(parts)

    def _handle_at(self, arr: np.ndarray[Any, Any], i: int, batch: SensorBatch) -> FlowBatch | None:
        """Ring record ``i`` through ``_handle``; the flows it ended, as a batch (taken out of
        ``batch.records``), None when it ended none. Its events stay in ``batch.events``."""
        data = arr.base if isinstance(arr.base, bytes) else arr[i:i + 1].tobytes()
        at = i * arr.dtype.itemsize if isinstance(arr.base, bytes) else 0
        made = len(batch.records)
        raw = rec.EVENT_STRUCT.unpack_from(data, at + (arr.dtype.fields or {})["kind"][1])
        self._handle(rec.event_from_raw(raw), batch)
        if len(batch.records) == made:
            return None
        out = FlowBatch.from_records(batch.records[made:])
        del batch.records[made:]
        return out

    def _end_columns(self, arr: np.ndarray[Any, Any], batch: SensorBatch) -> FlowBatch:
        """The final records of ended TCP flows, from their ring records' columns (as ``_tcp_record``
        makes them one at a time): texts are made once per distinct address, owner and port."""
        n = len(arr)
        flags = arr["flags"]
        inet6 = (flags & rec.F_INET6) != 0
        inbound = (flags & rec.F_INBOUND) != 0
        cookies = arr["flow_cookie"]
        samples = self._last_samples(arr["cookie"]) if self._tcpinfo else None
        src = self._addr_column(arr["saddr"], inet6)
        dst = self._addr_column(arr["daddr"], inet6)
        pids = arr["pid"]
        owner_codes, owners = factorize(pids, arr["comm"], arr["cgroup_id"])
        comm = np.empty(len(owners), dtype=object)
        thread = np.empty(len(owners), dtype=object)
        cgroup = np.empty(len(owners), dtype=object)
        self._process_names([o[0] for o in owners])
        for i, (pid, raw_comm, cgroup_id) in enumerate(owners):
            comm[i], thread[i] = self._owner(pid, rec.comm_of(bytes(raw_comm)))
            cgroup[i] = self._cgroup(cgroup_id, pid)
        ports = np.where(inbound, arr["sport"], arr["dport"])
        uports, port_codes = np.unique(ports, return_inverse=True)
        services = np.array([service_name(p, "tcp") for p in uports.tolist()], dtype=object)
        outcome = arr["outcome"].astype(np.uint8)
        outcome[~np.isin(outcome, _KERNEL_OUTCOMES)] = _IN_PROGRESS
        segs_out = arr["segs_out"].astype(np.int64)
        synack = (flags & rec.F_SYNACK) != 0
        segs_out[synack] += 1 + arr["synack_retrans"][synack].astype(np.int64)
        cols: dict[str, Any] = {
            "flow_id": cookies, "src": src, "sport": arr["sport"], "dst": dst, "dport": arr["dport"],
            "proto": np.full(n, _TCP, dtype=np.uint8),
            "direction": np.where(inbound, _INBOUND, _OUTBOUND).astype(np.uint8),
            "pid": pids, "comm": comm[owner_codes], "thread": thread[owner_codes], "cgroup": cgroup[owner_codes],
            "cgroup_id": arr["cgroup_id"],
            "netns": arr["netns"], "start_ns": arr["start_ns"].astype(np.int64) + self._clock_offset,
            "end_ns": arr["last_ns"].astype(np.int64) + self._clock_offset,
            "bytes_tx": arr["bytes_tx"], "bytes_rx": arr["bytes_rx"], "packets_tx": segs_out,
            "packets_rx": arr["segs_in"], "outcome": outcome, "retransmits": arr["total_retrans"],
            "srtt_us": arr["srtt_us"], "min_rtt_us": arr["rtt_min_us"], "max_rtt_us": arr["srtt_max_us"],
            "cwnd": arr["cwnd"], "cwnd_min": arr["cwnd_min"], "cwnd_max": arr["cwnd_max"],
            "connect_us": arr["connect_us"], "resets_tx": arr["resets_tx"], "resets_rx": arr["resets_rx"],
            "service": services[port_codes],
            "first_byte_us": arr["first_byte_us"], "responses": arr["resp_count"],
            "response_us_sum": arr["resp_sum_us"], "response_us_max": arr["resp_max_us"],
            "answer_us_sum": arr["answer_sum_us"],
        }
        if samples is not None:
            cols.update(samples)
        name_ids = arr["name_id"]
        if name_ids.any():
            cols["remote_name"] = self._name_column(name_ids)
        if self._limits:
            limited = np.zeros(n, dtype=np.uint8)
            numbers = ENUM_NUMBERS["limited_by"]
            for i, c in enumerate(cookies.tolist()):
                name = self._limits.pop(c, None)
                if name is not None:
                    limited[i] = numbers.get(name, 0)
            cols["limited_by"] = limited
        if self._drops_by_sk:
            drops = np.zeros(n, dtype=np.int64)
            reasons = np.empty(n, dtype=object)
            reasons[:] = [_NO_REASONS] * n
            for i, sk in enumerate(arr["sk"].tolist()):
                counts = self._drops_by_sk.pop(sk, None)
                if counts:
                    reasons[i] = dict(counts)
                    drops[i] = sum(counts.values())
            cols["drops"], cols["drop_reasons"] = drops, reasons
        if self._icmp:
            self._join_icmp(cols, n)
        flows = FlowBatch(cols, n)
        failed = flows.failed()
        if failed.any():
            ts = arr["ts_ns"][failed].tolist()
            for t, flow in zip(ts, flows.take(failed).records(), strict=True):
                batch.events.append(EventRecord("connect_failed", self._wall(t), flow, 1.0, flow.outcome))
        return flows

    def _last_samples(self, cookies: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]] | None:
        """The ended flows' last ``tcp_info`` sample (taken by ``active`` once a period), popped, as the
        columns ``rttvar_us``, ``delivery_rate``, ``lost``, ``reordering``; None when none was sampled.

        The kernel record has no such fields (they are not tracepoint arguments), so a final record carries
        what sock_diag read at the last period end before the close: a flow shorter than a period has none."""
        found = [(i, s[1]) for i, c in enumerate(cookies.tolist())
                 if (s := self._tcpinfo.pop(c, None)) is not None and s[1] is not None]
        if not found:
            return None
        cols = {name: np.zeros(len(cookies), dtype=np.int64) for name in _SAMPLED}
        for i, info in found:
            for name, attr in _SAMPLED.items():
                cols[name][i] = getattr(info, attr) or 0
        return cols

    def _join_icmp(self, cols: dict[str, Any], n: int) -> None:
        """Ended TCP flows' ICMP errors into their columns (only while some flow has any: rare)."""
        names = ("icmp_unreachable", "icmp_unreachable_code", "icmp_frag_needed", "path_mtu", "icmp_time_exceeded")
        out = np.zeros((len(names), n), dtype=np.int64)
        held = self._icmp
        for i, key in enumerate(zip(cols["src"].tolist(), cols["sport"].tolist(), cols["dst"].tolist(),
                                    cols["dport"].tolist(), strict=True)):
            got = held.pop((_TCP, *key), None)
            if got is not None:
                out[:, i] = got
        for name, col in zip(names, out, strict=True):
            cols[name] = col

    def _remote_names(self, ids: Iterable[int]) -> dict[int, str]:
        """Names by id for flows' remote addresses (probes/dns.bpf.c), cached (``NameCache``)."""
        return self._names.names(ids) if self._started else {}

    def _name_column(self, ids: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """``remote_name`` for a column of name ids: each distinct id's text looked up once."""
        uniq, codes = np.unique(ids, return_inverse=True)
        known = self._remote_names(uniq.tolist())
        texts = np.array([known.get(i, "") for i in uniq.tolist()], dtype=object)
        out: np.ndarray[Any, Any] = texts[codes.reshape(len(ids))]
        return out

    def _drain_dns(self, batch: SensorBatch) -> None:
        """The DNS transactions the kernel summed since the last poll, as records."""
        rows = self._probes.drain_dns()
        if not rows:
            return
        batch.completeness.drained_rows += len(rows)
        names = self._remote_names(r.name_id for r in rows)
        self._process_names(r.pid for r in rows if r.pid)
        for r in rows:
            comm = self._owner(r.pid, "")[0] if r.pid else ""
            d = dns_record(r, names.get(r.name_id, ""), self._clock_offset, comm)
            batch.dns.append(d)
            if d.failed:  # a failure of the resolver it came from: an event of its own
                batch.events.append(failure_event(d))

    def _addr_column(self, raw: np.ndarray[Any, Any], inet6: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Addresses' text from their raw 16 bytes, made once per distinct address."""
        codes, values = factorize(inet6, raw)
        texts = np.array([rec.addr_of(socket.AF_INET6 if v6 else socket.AF_INET, bytes(b)) for v6, b in values],
                         dtype=object)
        out: np.ndarray[Any, Any] = texts[codes]
        return out

    def poll_json(self) -> JsonBatch:
        """``poll`` for ``meshnode capture --json``: the ended flows as JSON Lines, without the events.

        The text is exactly that of ``FlowRecord.to_json_text()`` + newline for each flow ``poll`` would
        have returned, in the same order, and the counters move the same way. A TCP flow's end record (all
        but a handful of the ring's records) goes from the raw record straight to its line through one
        bytes %-template (bytes formatting finds the template's literal text with memchr and writes ints
        in place: ~1.5 us a line cheaper than str formatting), with the address, owner and service text
        cached; no TcpFlowRow, FlowRecord or EventRecord is made for it. Any other record takes ``poll``'s
        own path. Every piece is ASCII (JSON text as ``json.dumps`` escapes it), decoded once per poll.
        """
        batch = SensorBatch()
        now = time.monotonic_ns()
        self._drain_icmp(batch)  # as poll: an error that ended a flow was counted before its end record
        native = self._native_json()
        if native is not None and not self._limits and not self._tcpinfo:
            return self._poll_json_native(native, batch, now)
        lines: list[bytes] = []
        append = lines.append
        ended = batch.records
        template = _TCP_END_LINE
        outcomes, in_progress = _OUTCOME_TEXT, b'"in_progress"'
        inbound, outbound, unknown, no_reasons = b'"inbound"', b'"outbound"', b'"unknown"', b"{}"
        f_inet6, f_inbound, f_synack, tcp_end = rec.F_INET6, rec.F_INBOUND, rec.F_SYNACK, rec.EV_TCP_END
        offset = self._clock_offset
        drops_by_sk, limits, tcpinfo, icmp = self._drops_by_sk, self._limits, self._tcpinfo, self._icmp
        addr4, addr6, services = self._json_addr4, self._json_addr6, self._json_service
        owners: dict[tuple[int, bytes, int], bytes] = {}  # per poll: proc comm and cgroup path change rarely
        slow = 0
        # A poll's raw records are tuples, all alive until the loop ends: the cyclic GC would walk them in a
        # young-generation collection every few hundred records (0.7 us a flow, measured). What the loop
        # allocates is acyclic and freed by reference counting when the poll returns, so the GC is paused.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for v in self._probes.poll_raw():
                (kind, _pad, _ts_ns, ev_cookie, sk, _value, _value2,
                 cookie, netns, cgroup_id, start_ns, last_ns, bytes_tx, bytes_rx,
                 segs_out, segs_in, total_retrans, connect_us, srtt_us, srtt_max_us, rtt_min_us, _rtt_ref,
                 cwnd, cwnd_min, cwnd_max, pid, _burst_start,
                 resets_rx, resets_tx, sport, dport, _burst, synack_retrans, outcome, flags, saddr, daddr,
                 _xchg, name_id, resp_sum_us, resp_count, resp_max_us, first_byte_us, _acked, answer_sum_us, comm) = v
                if (kind != tcp_end or not cookie or name_id or (tcpinfo and ev_cookie in tcpinfo)
                        or (icmp and _icmp_key(flags, saddr, sport, daddr, dport) in icmp)):
                    # a flow with a tcp_info sample, a name or ICMP errors: its final record carries them,
                    # off the template
                    n = len(ended)
                    self._handle(rec.event_from_raw(v), batch)
                    for flow in ended[n:]:
                        append(flow.to_json_text().encode("ascii") + b"\n")
                    slow += len(ended) - n
                    continue
                addrs = addr6 if flags & f_inet6 else addr4
                src = addrs.get(saddr) or self._json_addr(flags, saddr)
                dst = addrs.get(daddr) or self._json_addr(flags, daddr)
                owner = owners.get((pid, comm, cgroup_id))
                if owner is None:
                    owner = owners[(pid, comm, cgroup_id)] = self._owner_text(pid, comm, cgroup_id)
                port = sport if flags & f_inbound else dport
                service = services.get(port)
                if service is None:
                    service = services[port] = _json_bytes(service_name(port, "tcp"))
                counts = drops_by_sk.pop(sk, None) if drops_by_sk else None
                if counts:
                    reasons = dict(counts)
                    drops, reasons_text = sum(reasons.values()), json.dumps(reasons).encode("ascii")
                else:
                    drops, reasons_text = 0, no_reasons
                append(template % (
                    cookie, src, sport, dst, dport, inbound if flags & f_inbound else outbound, owner,
                    netns, start_ns + offset, last_ns + offset, bytes_tx, bytes_rx,
                    segs_out + 1 + synack_retrans if flags & f_synack else segs_out, segs_in,
                    outcomes.get(outcome, in_progress), total_retrans, srtt_us, rtt_min_us, srtt_max_us,
                    cwnd, cwnd_min, cwnd_max,
                    _json_bytes(limits.pop(cookie, "unknown")) if limits else unknown,
                    connect_us, resets_tx, resets_rx, drops, service,
                    first_byte_us, resp_count, resp_sum_us, resp_max_us, answer_sum_us, reasons_text,
                ))
        finally:
            if gc_was_enabled:
                gc.enable()
        fast = len(lines) - slow
        n = len(ended)
        self._poll_maps(now, batch)
        lines.extend(flow.to_json_text().encode("ascii") + b"\n" for flow in ended[n:])
        batch.completeness.flows_recorded += len(ended) + fast
        return JsonBatch(b"".join(lines).decode("ascii"), batch.completeness, batch.dns)

    def _native_json(self) -> NativeJson | None:
        """The C renderer (``_jsonline.c``) for this sensor, made on first use; None where it is not built."""
        if self._native is False:
            lib = _native.load()
            try:
                self._native = None if lib is None else NativeJson(
                    lib, _TCP_END_LINE, rec.EVENT_SIZE, _OUTCOME_TEXT, b'"in_progress"', b'"inbound"',
                    b'"outbound"', b'"unknown"', b"{}")
            except ValueError as exc:
                log.warning("JSON lines rendered in Python: %s", exc)
                self._native = None
        return self._native if isinstance(self._native, NativeJson) else None

    def _poll_json_native(self, native: NativeJson, batch: SensorBatch, now: int) -> JsonBatch:
        """``poll_json`` with the final TCP records' lines rendered in C (~0.3 us a line against ~3.5).

        Used while the sensor holds no limits or tcp_info (those come from ``active``, which capture reads
        only at exit). The records' bytes go to C in ring order; where it stops, Python does what it
        cannot: an owner (pid, comm, cgroup) or a service it has not been given yet is resolved as
        ``poll_json`` resolves it and handed over (all of a poll's new ones first), and any other record
        that may end a flow (half-open resets, UDP releases, an owner table full) takes ``poll``'s own
        path, in place. Events (bursts, shifts, resets, zero windows) end no flow and write no line: they
        are handled, in ring order, after the lines. Drops joined to sockets are
        handed over for the sockets in this batch, and the ones a line took are popped, as ``poll_json``
        pops them.
        """
        data, count, stride, skip = self._probes.poll_records()
        ended = batch.records
        lines: list[bytes] = []
        drops_by_sk = self._drops_by_sk
        native.set_offset(self._clock_offset)
        native.new_poll()
        native.begin(data, count, stride, skip)
        if self._icmp:
            native.slow(self._held_icmp(data, count, stride, skip))
        python_drops = not self._give_drops(native, data, count, stride, skip)
        fast = slow = i = 0
        gc_was_enabled = gc.isenabled()
        gc.disable()  # as in poll_json: the loop makes no cycles
        try:
            new = [rec.EVENT_STRUCT.unpack_from(data, k * stride + skip)  # new owners and services, once each
                   for k in native.unresolved(data, count, stride, skip)]
            self._process_names([v[25] for v in new])
            for v in new:
                self._native_owner(native, v)
                self._native_service(native, v)
            while i < count:
                if not python_drops:
                    text, stop, need, n = native.render(i)
                    if n:
                        lines.append(text)
                        fast += n
                    if stop >= count:
                        break
                    i = stop
                    if need == _native.NEED_ROOM:
                        continue
                else:
                    need = _native.NEED_SLOW
                v = rec.EVENT_STRUCT.unpack_from(data, i * stride + skip)
                if need == _native.NEED_OWNER and self._native_owner(native, v):
                    continue
                if need == _native.NEED_SERVICE:
                    self._native_service(native, v)
                    continue
                # poll's own path for this record, in ring order; the drops it may take stay in step
                for sk in native.taken_drops():
                    drops_by_sk.pop(sk, None)
                m, held = len(ended), len(drops_by_sk)
                self._handle(rec.event_from_raw(v), batch)
                lines.extend(flow.to_json_text().encode("ascii") + b"\n" for flow in ended[m:])
                slow += len(ended) - m
                if len(drops_by_sk) != held:  # it took drops: C's copy must not hand them out again
                    python_drops = not self._give_drops(native, data, count, stride, skip)
                i += 1
            for sk in native.taken_drops():
                drops_by_sk.pop(sk, None)
            for k in native.events(count):  # render passed over them: they end no flow, make no line
                self._handle(rec.event_from_raw(rec.EVENT_STRUCT.unpack_from(data, k * stride + skip)), batch)
        finally:
            if gc_was_enabled:
                gc.enable()
        n = len(ended)
        self._poll_maps(now, batch)
        lines.extend(flow.to_json_text().encode("ascii") + b"\n" for flow in ended[n:])
        batch.completeness.flows_recorded += len(ended) + fast
        return JsonBatch(b"".join(lines).decode("ascii"), batch.completeness, batch.dns)

    def _held_icmp(self, data: bytes, count: int, stride: int, skip: int) -> list[int]:
        """Indices of a poll's TCP end records whose flow has ICMP errors held (``_icmp``), ascending: their
        lines carry the counts, so they take poll's own path. Rare: looked at only while errors are held."""
        held = self._icmp
        ports = {(k[2], k[4]) for k in held if k[0] == _TCP}
        if not ports:
            return []
        arr = rec.event_array(data, count, stride, skip)
        sport, dport = arr["sport"], arr["dport"]
        maybe = (arr["kind"] == rec.EV_TCP_END) & np.isin(sport, [p[0] for p in ports]) & np.isin(
            dport, [p[1] for p in ports])
        saddr, daddr, flags = arr["saddr"], arr["daddr"], arr["flags"]
        return [i for i in np.flatnonzero(maybe).tolist()
                if _icmp_key(int(flags[i]), saddr[i].tobytes(), int(sport[i]), daddr[i].tobytes(),
                             int(dport[i])) in held]

    def _native_owner(self, native: NativeJson, v: tuple[Any, ...]) -> bool:
        """Give C a raw TCP end record's owner text, made as poll_json makes it; False if its table is full."""
        pid, comm, cgroup_id = v[25], v[-1], v[9]
        return native.set_owner(pid, comm, cgroup_id, self._owner_text(pid, comm, cgroup_id))

    def _owner_text(self, pid: int, raw_comm: bytes, cgroup_id: int) -> bytes:
        """The owner fields' JSON text (``_OWNER_TEXT``) of a ring record's pid, kernel comm and cgroup."""
        comm, thread = self._owner(pid, rec.comm_of(raw_comm))
        return _OWNER_TEXT % (pid, _json_bytes(comm), _json_bytes(thread), _json_bytes(self._cgroup(cgroup_id, pid)),
                              cgroup_id)

    def _native_service(self, native: NativeJson, v: tuple[Any, ...]) -> None:
        """Give C the service text of a raw TCP end record's port (the peer's, or ours when inbound)."""
        port = v[29] if v[34] & rec.F_INBOUND else v[30]
        if native.has_service(port):
            return
        service = self._json_service.get(port)
        if service is None:
            service = self._json_service[port] = _json_bytes(service_name(port, "tcp"))
        native.set_service(port, service)

    def _give_drops(self, native: NativeJson, data: bytes, count: int, stride: int, skip: int) -> bool:
        """Hand C the drops of the sockets among these records; False when they do not fit its table."""
        drops_by_sk = self._drops_by_sk
        wanted = drops_by_sk.keys() & native.sks(data, count, stride, skip) if drops_by_sk else ()
        return native.set_drops(
            (sk, sum(c.values()), json.dumps(dict(c)).encode("ascii")) if (c := drops_by_sk[sk]) else (sk, 0, b"{}")
            for sk in wanted)

    def _json_addr(self, flags: int, raw: bytes) -> bytes:
        """An address's JSON text (quoted, escaped), cached per raw bytes; bounded like probes' cache."""
        inet6 = flags & rec.F_INET6
        cache = self._json_addr6 if inet6 else self._json_addr4
        if len(cache) >= 65536:
            cache.clear()
        text = cache[raw] = _json_bytes(rec.addr_of(socket.AF_INET6 if inet6 else socket.AF_INET, raw))
        return text

    def _poll_maps(self, now: int, batch: SensorBatch) -> None:
        """The rest of a poll, after the ring buffer: drops, DNS, UDP, half-open and refused scans, kernel
        counters."""
        self._drain_drops(batch)
        self._drain_dns(batch)
        if self._released or now - self._last_udp_scan >= self._udp_scan_interval_ns:
            self._scan_udp(now, batch)
            self._scan_pending(now, batch)
            self._scan_refused(now, batch)
            self._last_udp_scan = now
        counters = self._probes.counters()
        moved = {k: counters[k] - self._counters.get(k, 0) for k in counters}
        self._counters = counters
        c = batch.completeness
        c.lost_events += moved["ringbuf_full"]
        c.ringbuf_overruns += 1 if moved["ringbuf_full"] else 0
        c.map_evictions += sum(moved.get(k, 0) for k in _MAP_FULL)
        c.dns_malformed += moved.get("dns_malformed", 0)
        c.dns_truncated += moved.get("dns_truncated", 0)

    def _handle(self, ev: rec.KernelEvent, batch: SensorBatch) -> None:
        if ev.kind == rec.EV_UDP_RELEASE:
            self._released.add(ev.cookie)
            return
        assert ev.flow is not None
        if ev.kind == rec.EV_HALFOPEN_RESET and self._repeat_halfopen(ev):
            return
        if ev.kind in (rec.EV_TCP_END, rec.EV_HALFOPEN_RESET):
            sample = self._tcpinfo.pop(ev.cookie, None)
            flow = self._tcp_record(ev.flow, final=True, info=sample[1] if sample else None)
            batch.records.append(flow)
            if flow.failed:
                batch.events.append(EventRecord("connect_failed", self._wall(ev.ts_ns), flow, 1.0, flow.outcome))
            return
        if ev.kind == rec.EV_ICMP:
            batch.events.append(self._icmp_event(ev))
            return
        kind = _EVENT_TYPES.get(ev.kind)
        if kind is None:
            log.warning("unknown kernel event kind %d dropped", ev.kind)
            return
        if ev.kind == rec.EV_RTT_SHIFT and not self._rtt_shift_worth_reporting(ev):
            return
        flow = self._tcp_record(ev.flow, final=False)
        detail = ""
        if ev.kind == rec.EV_RTT_SHIFT:
            detail = f"srtt {ev.value2} us -> {ev.value} us"
        batch.events.append(EventRecord(kind, self._wall(ev.ts_ns), flow, float(ev.value), detail))

    def _rtt_shift_worth_reporting(self, ev: rec.KernelEvent) -> bool:
        """RTT shifts on loopback measure CPU scheduling, not a network, and a flow whose RTT swings keeps
        shifting: report network flows only, at most one shift per flow per ``_RTT_SHIFT_EVERY_NS``."""
        f = ev.flow
        assert f is not None
        if _is_loopback(f.dst):
            return False
        last = self._rtt_shift_at.get(ev.cookie)
        if last is not None and ev.ts_ns - last < _RTT_SHIFT_EVERY_NS:
            return False
        if len(self._rtt_shift_at) > 16384:
            self._rtt_shift_at.clear()
        self._rtt_shift_at[ev.cookie] = ev.ts_ns
        return True

    def _repeat_halfopen(self, ev: rec.KernelEvent) -> bool:
        """True when this reset half-open handshake is a retransmitted SYN of one already reported.

        The peer retransmits its SYN after the RST cut the first; the kernel side sees a new half-open
        entry, but it is the same connection attempt (one 5-tuple), and one attempt is one record.
        """
        f = ev.flow
        assert f is not None
        key = (f.netns, f.src, f.sport, f.dst, f.dport)
        last = self._halfopen_seen.get(key)
        self._halfopen_seen[key] = ev.ts_ns
        if len(self._halfopen_seen) > 4096:
            self._halfopen_seen.pop(next(iter(self._halfopen_seen)))
        return last is not None and ev.ts_ns - last < _HALFOPEN_REPEAT_NS

    def _drain_icmp(self, batch: SensorBatch) -> None:
        """ICMP errors since the last poll, added to their flows' counts until the flows end."""
        rows = self._probes.drain_icmp()
        if not rows:
            return
        batch.completeness.drained_rows += len(rows)
        held = self._icmp
        for r in rows:
            key = (r.proto, r.src, r.sport, r.dst, r.dport)
            unreach, code, frag, mtu, ttl = held.get(key, _NO_ICMP)
            held[key] = (unreach + r.unreachable, r.code if r.unreachable else code, frag + r.frag_needed,
                         min(mtu, r.mtu) if mtu and r.mtu else mtu or r.mtu, ttl + r.time_exceeded)
        if len(held) > _ICMP_HELD:  # errors for flows never ending here (other scopes): forget the oldest half
            drop = len(held) // 2
            for key in list(held)[:drop]:
                del held[key]
            batch.completeness.map_evictions += drop

    def _icmp_of(self, proto: str, src: str, sport: int, dst: str, dport: int,
                 final: bool) -> tuple[int, int, int, int, int]:
        """A flow's ICMP errors: (unreachable, code, frag needed, path MTU, time exceeded); popped when final."""
        if not self._icmp:
            return _NO_ICMP
        key = (ENUM_NUMBERS["proto"][proto], src, sport, dst, dport)
        return (self._icmp.pop(key, _NO_ICMP) if final else self._icmp.get(key, _NO_ICMP))

    def _icmp_event(self, ev: rec.KernelEvent) -> EventRecord:
        """An EV_ICMP ring record (the first error of a kind on a flow, or a smaller MTU) as an event."""
        f = ev.flow
        assert f is not None
        proto, kind, code = ev.value >> 24, (ev.value >> 16) & 0xFF, ev.value & 0xFF
        name = _ICMP_EVENTS.get(kind, "icmp_unreachable")
        if kind == rec.ICMP_K_FRAG:
            detail, value = f"mtu {ev.value2}", float(ev.value2)
        elif kind == rec.ICMP_K_UNREACH:
            detail, value = UNREACHABLE_CODES.get(code, f"code {code}"), float(code)
        else:
            detail, value = "in transit", 0.0
        pname = _PROTO_NAME.get(proto, "tcp")
        flow = FlowRecord(
            flow_id=_synthetic_id(proto, f.src, f.sport, f.dst, f.dport), src=f.src, sport=f.sport, dst=f.dst,
            dport=f.dport, proto=pname, direction="outbound", start_ns=self._wall(f.start_ns),
            end_ns=self._wall(f.last_ns), kind="interim", service=service_name(f.dport, pname),
            icmp_unreachable=int(kind == rec.ICMP_K_UNREACH), icmp_unreachable_code=code,
            icmp_frag_needed=int(kind == rec.ICMP_K_FRAG), path_mtu=ev.value2,
            icmp_time_exceeded=int(kind == rec.ICMP_K_TTL),
        )
        return EventRecord(name, self._wall(ev.ts_ns), flow, value, detail)

    def _scan_refused(self, now: int, batch: SensorBatch) -> None:
        """Inbound attempts to closed ports: each source's entry ends once it has been quiet
        ``_REFUSED_QUIET_NS`` (or has lasted ``_REFUSED_MAX_NS``) and becomes one inbound refused flow."""
        rows = self._probes.refused()
        if not rows:
            return
        batch.completeness.drained_rows += len(rows)
        done = [r for r in rows if now - r.last_ns >= _REFUSED_QUIET_NS or now - r.first_ns >= _REFUSED_MAX_NS]
        if not done:
            return
        taken = self._probes.take_refused(done)
        own = self._own_addresses() if self.scope != "/" else None
        for r in taken:
            if own is not None and r.src not in own:
                continue  # another network namespace's address (the tracepoints name none)
            batch.records.append(self._refused_record(r))

    def _own_addresses(self) -> frozenset[str]:
        """This network namespace's own addresses but loopback's (which every namespace has), re-read at most
        every 5 s: a scoped sensor keeps the refused attempts made to these."""
        at, addrs = self._own_addrs
        if time.monotonic() - at < 5.0:
            return addrs
        addrs = frozenset(a for a in self._netaddrs.read() if not _is_loopback(a)) if self._netaddrs else frozenset()
        self._own_addrs = (time.monotonic(), addrs)
        return addrs

    def _refused_record(self, r: rec.RefusedRow) -> FlowRecord:
        proto = _PROTO_NAME.get(r.proto, "tcp")
        return FlowRecord(
            flow_id=_synthetic_id("refused", r.proto, r.src, r.dst, r.first_ns), src=r.src, sport=r.sport,
            dst=r.dst, dport=r.dport, proto=proto, direction="inbound", start_ns=self._wall(r.first_ns),
            end_ns=self._wall(r.last_ns), packets_rx=r.attempts, packets_tx=r.attempts, outcome="refused",
            kind="final", fidelity="exact", service=service_name(r.sport, proto) if r.ports == 1 else "",
            attempts=r.attempts, ports_probed=r.ports,
        )

    def _drain_drops(self, batch: SensorBatch) -> None:
        drained = self._probes.drain_drops()
        batch.completeness.drained_rows += len(drained)
        if any(sk and sk not in self._udp_sks and self._probes.tcp_flow_of(sk) is None for sk, _ in drained):
            self._keep_udp(self._probes.udp_scan())  # a socket newer than the last scan
        for (sk, reason), n in drained.items():
            name = self._reasons.get(reason, str(reason))
            if sk == 0:
                self._unattributed[name] += n
                batch.completeness.unattributed_drops += n
            else:
                self._drops_by_sk.setdefault(sk, Counter())[name] += n
                flow = self._flow_of_sk(sk)
                if flow is not None:  # one event per flow and reason per poll, never one per packet
                    batch.events.append(EventRecord("drop", time.time_ns(), flow, float(n), name))
        if len(self._drops_by_sk) > 65536:  # sockets of other scopes: forget the oldest half
            for sk in list(self._drops_by_sk)[: len(self._drops_by_sk) // 2]:
                del self._drops_by_sk[sk]

    def _flow_of_sk(self, sk: int) -> FlowRecord | None:
        """The live flow of a socket address, if it is one of ours (TCP via the kernel's map, UDP via the
        last scan); drops on other scopes' sockets are counted but not reported as our events."""
        row = self._probes.tcp_flow_of(sk)
        if row is not None:
            return self._tcp_record(row, final=False)
        ucookie = self._udp_sks.get(sk)
        if ucookie is None:
            return None
        at = np.flatnonzero(self._udp_scan.cookie == ucookie)[:1].tolist()
        return self._udp_record(self._udp_scan.rows(at)[0], final=False) if at else None

    def _keep_udp(self, scan: UdpScan) -> None:
        """The last UDP scan, for drops on its sockets."""
        self._udp_scan = scan
        self._udp_sks = dict(zip(scan.sk.tolist(), scan.cookie.tolist(), strict=True))

    def _scan_udp(self, now: int, batch: SensorBatch) -> None:
        """UDP flows released (their socket closed) or idle end: only their rows are made."""
        scan = self._probes.udp_scan()
        batch.completeness.drained_rows += len(scan)
        self._keep_udp(scan)
        ended = (np.int64(now) - scan.last_ns.astype(np.int64)) >= self.idle_timeout_ns
        if self._released:
            ended |= np.isin(scan.cookie, np.fromiter(self._released, dtype=np.uint64, count=len(self._released)))
        done = np.flatnonzero(ended)
        for row in self._probes.take_udp(scan.rows(done.tolist())):
            batch.records.append(self._udp_record(row, final=True))
        self._released &= set(scan.cookie.tolist()) - set(scan.cookie[done].tolist())

    def _scan_pending(self, now: int, batch: SensorBatch) -> None:
        stale = [p for p in self._probes.pending() if now - p.syn_ns >= self.halfopen_timeout_ns]
        for p in self._probes.take_pending(stale):
            batch.records.append(self._halfopen_record(p))

    # ---- active flows ----------------------------------------------------------------------------

    def active(self) -> list[FlowRecord]:
        """Totals so far of open flows, with tcp_info (from sock_diag) for live TCP sockets."""
        try:
            return self._active()
        except ProbeError as exc:  # a MeshnodeError: the node logs it and tries again (bounded)
            raise SensorError(f"reading the active flows failed: {exc}") from exc

    def _active(self) -> list[FlowRecord]:
        from meshnode.probes._sockdiag import SockDiagError, tcp_info_by_cookie

        tcp = self._probes.tcp_flows()
        try:
            infos = tcp_info_by_cookie(r.cookie for r in tcp)
        except (OSError, SockDiagError) as exc:
            log.warning("sock_diag tcp_info failed: %s", exc)
            infos = {}
        now = time.monotonic_ns()
        out = []
        for row in tcp:
            info = infos.get(row.cookie)
            if info is not None:
                prev = self._tcpinfo.get(row.cookie)
                if prev is not None:
                    self._limits[row.cookie] = limited_by(prev[1], info, (now - prev[0]) // 1000)
                self._tcpinfo[row.cookie] = (now, info)
            out.append(self._tcp_record(row, final=False, info=info))
        out.extend(self._udp_record(r, final=False) for r in self._probes.udp_flows())
        return out

    # ---- conversion ------------------------------------------------------------------------------

    def _wall(self, mono_ns: int) -> int:
        return mono_ns + self._clock_offset

    def _process_names(self, pids: Iterable[int]) -> None:
        """Look up the names of those ``pids`` not cached (or cached longer than ``_COMM_TTL_S`` ago): the
        kernel side's (once the probes are open), which outlive the process, else /proc's for the living;
        '' when neither knows.

        One kernel lookup a pid (2.8 us), so a poll resolves each of its distinct owners' pids once.
        """
        now = time.monotonic()
        comms = self._comms
        stale = {p for p in pids if (hit := comms.get(p)) is None or now - hit[0] >= _COMM_TTL_S}
        if not stale:
            return
        known = self._probes.process_names(stale) if self._started else {}
        if len(comms) + len(stale) > 8192:
            comms.clear()
        for pid in stale:
            comms[pid] = (now, known.get(pid) or proc_comm(pid))

    def _owner(self, pid: int, kernel_comm: str) -> tuple[str, str]:
        """``(comm, thread)`` of a flow: the process's name as ps shows it (its thread-group leader's), and
        the kernel's comm (the thread that used the socket: a runtime's worker) where that differs, else ''.

        Without a process name (the kernel side and /proc both lack it) the kernel's comm is the name.
        """
        hit = self._comms.get(pid)
        if hit is None or time.monotonic() - hit[0] >= _COMM_TTL_S:
            self._process_names((pid,))
            hit = self._comms[pid]
        comm = hit[1] or kernel_comm or self._probes.comm(pid)
        return comm, kernel_comm if kernel_comm and kernel_comm != comm else ""

    def _cgroup(self, cgroup_id: int, pid: int) -> str:
        return self._cgroups.path(cgroup_id) or proc_cgroup(pid)

    def _drops(self, sk: int, final: bool) -> dict[str, int]:
        counts = self._drops_by_sk.pop(sk, None) if final else self._drops_by_sk.get(sk)
        return dict(counts) if counts else {}

    def _tcp_record(self, r: TcpFlowRow, final: bool, info: TcpInfo | None = None) -> FlowRecord:
        # One per flow on the sensor's hot path: every field positionally through FlowRecord.from_fields
        # (declaration order), a few us cheaper than keyword construction of the frozen dataclass.
        (cookie, sk, netns, cgroup_id, _family, src, sport, dst, dport, direction, outcome, pid, comm,
         start_ns, last_ns, bytes_tx, bytes_rx, packets_tx, packets_rx, retransmits, connect_us, srtt_us,
         srtt_max_us, min_rtt, cwnd, cwnd_min, cwnd_max, resets_rx, resets_tx,
         first_byte_us, responses, response_us_sum, response_us_max, answer_us_sum, name_id) = r
        drops_by_sk = self._drops_by_sk
        counts = (drops_by_sk.pop(sk, None) if final else drops_by_sk.get(sk)) if drops_by_sk else None
        reasons = dict(counts) if counts else {}
        offset = self._clock_offset
        limit = (self._limits.pop(cookie, "unknown") if final else self._limits.get(cookie, "unknown")) \
            if self._limits else "unknown"
        rttvar = delivery_rate = lost = reordering = 0
        if info is not None:
            rttvar, delivery_rate = info.rttvar or 0, info.delivery_rate or 0
            lost, reordering = info.lost or 0, info.reordering or 0
            if not final:  # a final keeps the kernel's minimum over the whole flow, not the sample's
                min_rtt = info.min_rtt or min_rtt
        name, thread = self._owner(pid, comm)
        remote_name = self._remote_names((name_id,)).get(name_id, "") if name_id else ""
        return FlowRecord.from_fields(
            cookie or _synthetic_id(netns, src, sport, dst, dport, start_ns),  # flow_id
            src, sport, dst, dport, "tcp", direction, pid, name, thread,  # .. comm, thread
            self._cgroup(cgroup_id, pid), cgroup_id, netns,
            start_ns + offset, (last_ns if final else time.monotonic_ns()) + offset,  # start_ns, end_ns
            bytes_tx, bytes_rx, packets_tx, packets_rx, outcome, retransmits,
            srtt_us, min_rtt, srtt_max_us, cwnd, cwnd_min, cwnd_max,  # srtt_us .. cwnd_max
            limit, connect_us, resets_tx, resets_rx, sum(reasons.values()) if reasons else 0,
            "final" if final else "interim", "exact",  # kind, fidelity
            rttvar, delivery_rate, lost, reordering,
            service_name(sport if direction == "inbound" else dport, "tcp"), "",  # service, node_id
            *self._icmp_of("tcp", src, sport, dst, dport, final), 0, 0,  # icmp_* .. ports_probed
            first_byte_us, responses, response_us_sum, response_us_max, answer_us_sum,  # .. answer_us_sum
            remote_name, reasons,
        )

    def _udp_record(self, r: UdpFlowRow, final: bool) -> FlowRecord:
        # UDP rows carry no comm: the kernel side's for the task group (the first thread seen on a socket)
        comm, thread = self._owner(r.pid, self._probes.comm(r.pid))
        answered = r.packets_tx > 0 and r.packets_rx > 0
        first_req, first_ans = ((r.first_tx_ns, r.first_rx_ns) if r.direction == "outbound"
                                else (r.first_rx_ns, r.first_tx_ns))
        reasons = self._drops(r.sk, final)
        unreach, code, frag, mtu, ttl = self._icmp_of("udp", r.src, r.sport, r.dst, r.dport, final)
        return FlowRecord(
            flow_id=_udp_flow_id(r), src=r.src, sport=r.sport, dst=r.dst, dport=r.dport, proto="udp",
            direction=r.direction, pid=r.pid, comm=comm, thread=thread, cgroup=self._cgroup(r.cgroup_id, r.pid),
            cgroup_id=r.cgroup_id, netns=r.netns, start_ns=self._wall(r.first_ns),
            end_ns=self._wall(r.last_ns if final else time.monotonic_ns()), bytes_tx=r.bytes_tx,
            bytes_rx=r.bytes_rx, packets_tx=r.packets_tx, packets_rx=r.packets_rx,
            outcome="udp_answered" if answered else "udp_unanswered",
            connect_us=(first_ans - first_req) // 1000 if answered and first_ans > first_req else 0,
            drops=sum(reasons.values()), drop_reasons=reasons, kind="final" if final else "interim",
            fidelity="exact",
            service=service_name(r.dport if r.direction == "outbound" else r.sport, "udp"),
            icmp_unreachable=unreach, icmp_unreachable_code=code, icmp_frag_needed=frag, path_mtu=mtu,
            icmp_time_exceeded=ttl,
            remote_name=self._remote_names((r.name_id,)).get(r.name_id, "") if r.name_id else "",
        )

    def _halfopen_record(self, p: PendingRow) -> FlowRecord:
        return FlowRecord(
            flow_id=_udp_flow_id(p), src=p.src, sport=p.sport, dst=p.dst, dport=p.dport, proto="tcp",
            direction="inbound", cgroup=self._cgroups.path(p.cgroup_id), cgroup_id=p.cgroup_id, netns=p.netns,
            start_ns=self._wall(p.syn_ns), end_ns=self._wall(p.syn_ns + self.halfopen_timeout_ns),
            packets_rx=1, outcome="timeout", kind="final", fidelity="exact",
            service=service_name(p.sport, "tcp"),
        )

    # ---- introspection ---------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Kernel-side counters (cumulative)."""
        return self._probes.counters()

    def map_memory(self) -> dict[str, int]:
        """Kernel memory per map in bytes."""
        return self._probes.map_memory()

    def unattributed_drops(self) -> dict[str, int]:
        """Drops without a known socket, by reason, since start (host-wide, not only this scope)."""
        return dict(self._unattributed)


def _tcp_end_templates() -> tuple[bytes, bytes]:
    """The JSON line of a final eBPF TCP record as one bytes %-template, and the owner fields' template.

    Built from the model's fields so that it follows them: keys and separators as ``to_json_text`` (and
    ``json.dumps``) write them; the fields that are the same for every such record are written in; the five
    owner fields (pid, comm, thread, cgroup, cgroup_id) are one slot, filled from the owner template (all
    of them follow from the ring record's pid, kernel comm and cgroup id, the renderers' owner key). Ints are
    ``%d`` (exact ints print as json prints them), text ``%s`` (already JSON).
    """
    constant = {
        "proto": '"tcp"', "kind": '"final"', "fidelity": '"exact"', "rttvar_us": "0", "delivery_rate": "0",
        "lost": "0", "reordering": "0", "node_id": '""', "remote_name": '""',
        # ICMP errors are joined to flows by poll(); capture's fast path writes none
        "icmp_unreachable": "0", "icmp_unreachable_code": "0", "icmp_frag_needed": "0", "path_mtu": "0",
        "icmp_time_exceeded": "0", "attempts": "0", "ports_probed": "0",
    }
    text = ("src", "dst", "direction", "outcome", "limited_by", "service", "drop_reasons")
    owner = ("pid", "comm", "thread", "cgroup", "cgroup_id")
    names = [f.name for f in dataclasses.fields(FlowRecord)]
    at = names.index("pid")
    assert tuple(names[at:at + len(owner)]) == owner, names
    parts = [f"{json.dumps(n)}: {constant.get(n, '%s' if n in text else '%d')}" for n in names]
    parts[at:at + len(owner)] = ["%s"]
    owner_text = ", ".join(f"{json.dumps(n)}: {'%s' if n in ('comm', 'thread', 'cgroup') else '%d'}" for n in owner)
    return ("{" + ", ".join(parts) + "}\n").encode("ascii"), owner_text.encode("ascii")


def _json_bytes(text: str) -> bytes:
    """A string's JSON text (quoted, escaped to ASCII as json.dumps does), as bytes."""
    return _json_str(text).encode("ascii")


_TCP_END_LINE, _OWNER_TEXT = _tcp_end_templates()
_OUTCOME_TEXT = {k: _json_bytes(v) for k, v in rec.OUTCOME_NAMES.items()}
# poll_json unpacks raw records by position: the layout it was written for, checked at import.
assert rec.EVENT_FIELDS == (
    "kind", "pad", "ts_ns", "cookie", "sk", "value", "value2",
    "cookie", "netns", "cgroup_id", "start_ns", "last_ns", "bytes_tx", "bytes_rx",
    "segs_out", "segs_in", "total_retrans", "connect_us", "srtt_us", "srtt_max_us", "rtt_min_us", "rtt_ref_us",
    "cwnd", "cwnd_min", "cwnd_max", "pid", "burst_start_ms",
    "resets_rx", "resets_tx", "sport", "dport", "burst", "synack_retrans", "outcome", "flags", "saddr", "daddr",
    "xchg_us", "name_id", "resp_sum_us", "resp_count", "resp_max_us", "first_byte_us", "acked_us",
    "answer_sum_us", "comm",
), rec.EVENT_FIELDS


def _icmp_key(flags: int, saddr: bytes, sport: int, daddr: bytes, dport: int) -> tuple[int, str, int, str, int]:
    """A raw TCP record's key in the sensor's held ICMP errors (``_drain_icmp``)."""
    family = socket.AF_INET6 if flags & rec.F_INET6 else socket.AF_INET
    return (_TCP, rec.addr_of(family, saddr), sport, rec.addr_of(family, daddr), dport)


def _is_loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr == "::1"


def _synthetic_id(*parts: object) -> int:
    """A stable 63-bit flow id for flows without a socket cookie of their own (cookies are < 2^63 too)."""
    key = "|".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 1


def _udp_flow_id(row: UdpFlowRow | PendingRow) -> int:
    """UDP flows: one socket and one remote endpoint; half-open ones: the tuple and the SYN time."""
    return _synthetic_id(getattr(row, "cookie", 0), row.src, row.sport, row.dst, row.dport,
                         getattr(row, "syn_ns", 0))


def _follows_its_socket(arr: np.ndarray[Any, Any], fast: NDArray[np.bool_], slow: NDArray[np.intp]) -> bool:
    """True when a record at ``slow`` comes after a TCP end record (``fast``) of the same ``sk``, ``cookie``
    or ``flow_cookie``: handling it before the end records would change who pops the socket's state."""
    at = np.flatnonzero(fast)
    for name in ("sk", "cookie", "flow_cookie"):
        col = arr[name]
        shared = np.isin(col[slow], col[at])
        if shared.any():
            ends = at[np.isin(col[at], col[slow][shared])]
            first_end = {v: p for p, v in reversed(list(zip(ends.tolist(), col[ends].tolist(), strict=True)))}
            if any(first_end[v] < p for p, v in zip(slow[shared].tolist(), col[slow][shared].tolist(),
                                                     strict=True)):
                return True
    return False
