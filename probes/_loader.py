"""Compile, attach and drain meshnode's BPF programs with bcc.

The programs aggregate in the kernel (per-socket maps keyed by socket cookie) and emit one lifecycle
record per TCP flow through a ring buffer; user space drains once per tick. This module is the only one
that imports bcc; everything it returns is a frozen record from ``probes._records``.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import importlib
import importlib.util
import os
import re
import socket
import struct
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from meshnode.probes import _ringbuf
from meshnode.probes._errors import ProbeCompileError, ProbeError
from meshnode.probes._records import (
    COUNTER_NAMES,
    EVENT_STRUCT,
    CDnsName,
    CEvent,
    CPendingKey,
    CPendingVal,
    CProcName,
    CRefusedKey,
    CRefusedVal,
    CUdpFlow,
    CUdpKey,
    DnsTxnRow,
    IcmpRow,
    KernelEvent,
    PendingRow,
    RefusedRow,
    TcpFlowRow,
    UdpFlowRow,
    UdpScan,
    addr_text,
    dns_name_text,
    event_array,
    event_from_raw,
    tcp_row_from_c,
    tcp_rows_from_c_arrays,
)

_EVENT_SIZE = ct.sizeof(CEvent)

PROBES_DIR = Path(__file__).resolve().parent
MAIN_SOURCE = PROBES_DIR / "sensor.bpf.c"

DEBIAN_DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")
"""Where Debian's python3-bpfcc installs the bcc module (outside every virtual environment)."""


def import_bcc(dist_packages: Path = DEBIAN_DIST_PACKAGES) -> ModuleType:
    """bcc's Python module: this environment's, else Debian's python3-bpfcc loaded by itself.

    bcc is not on PyPI as the bindings of the system's libbcc; Debian ships it in dist-packages, which a virtual
    environment does not see. Loading only the ``bcc`` package from there (not putting dist-packages on
    ``sys.path``) keeps Debian's other modules from shadowing the environment's. Raises ImportError saying
    how to install it.
    """
    try:
        return importlib.import_module("bcc")
    except ImportError:
        pass
    init = dist_packages / "bcc" / "__init__.py"
    spec = importlib.util.spec_from_file_location("bcc", init, submodule_search_locations=[str(init.parent)])
    if not init.exists() or spec is None or spec.loader is None:
        raise ImportError("the bcc Python module is missing: apt-get install python3-bpfcc")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bcc"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["bcc"]
        raise
    return module


def cgroup2_root(mounts: str = "/proc/self/mounts") -> Path | None:
    """Where the cgroup v2 hierarchy is mounted: ``/sys/fs/cgroup`` on pure-v2 hosts (Debian 11+, RHEL 9),
    ``/sys/fs/cgroup/unified`` on hybrid ones; None when it is not mounted in this mount namespace (``ip netns
    exec`` remounts /sys and hides it)."""
    try:
        with open(mounts) as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return Path(parts[1].replace("\\040", " "))
    except OSError:
        return None
    return None


CGROUP_ROOT = cgroup2_root() or Path("/sys/fs/cgroup")
"""The cgroup v2 mount of this host (where it is usually mounted when it is not, so errors name a real place)."""


def cgroup_scope(path: str, root: Path | None = None) -> str:
    """A ``--cgroup`` value as the path relative to the cgroup v2 root (what the sensor scopes to).

    Takes the path relative to the root (``/system.slice``) or the absolute one users copy from
    ``/sys/fs/cgroup/...`` (bpftool's and systemd's form). Raises ValueError for a relative path, or for a path
    under /sys/fs/cgroup that is not under this host's cgroup v2 mount (a v1 controller's hierarchy).
    """
    root = root or CGROUP_ROOT
    v = path.strip()
    if "\0" in v or any(part in (".", "..") for part in v.split("/")):
        raise ValueError(f"{path!r}: a cgroup path names no '.' or '..' component (nor NUL): it would lead out of "
                         f"the cgroup v2 hierarchy at {root}")
    if not v.startswith("/"):
        raise ValueError(f"{path!r} is not an absolute cgroup v2 path (e.g. /system.slice, or "
                         f"{root}/system.slice)")
    v = "/" + v.strip("/")
    r = "/" + str(root).strip("/")
    if v == r or v.startswith(r + "/"):
        return "/" + v[len(r):].strip("/")
    if v == "/sys/fs/cgroup" or v.startswith("/sys/fs/cgroup/"):
        raise ValueError(f"{path!r} is not under this host's cgroup v2 hierarchy, which is mounted at {root}: "
                         f"pass a path under {root}, or the path relative to it (e.g. /system.slice)")
    return v
TRACEFS = Path("/sys/kernel/tracing")

# Attach types (uapi enum bpf_attach_type) and flags used with cgroups.
BPF_CGROUP_INET_INGRESS = 0
BPF_CGROUP_INET_EGRESS = 1
BPF_CGROUP_SOCK_OPS = 3
BPF_CGROUP_INET_SOCK_RELEASE = 34
BPF_NOEXIST = 1

# Tracepoints the sensor cannot do without, and optional ones with the -D flag that enables their code.
REQUIRED_TRACEPOINTS = (
    ("tcp", "tcp_receive_reset"), ("tcp", "tcp_destroy_sock"), ("sock", "inet_sock_set_state"),
)
OPTIONAL_TRACEPOINTS = {
    ("sock", "sock_send_length"): "HAVE_SOCK_LENGTH",
    ("tcp", "tcp_probe"): "HAVE_TCP_PROBE",
    ("skb", "kfree_skb"): "HAVE_KFREE_SKB",
    ("tcp", "tcp_send_reset"): "HAVE_TCP_SEND_RESET",
    ("icmp", "icmp_send"): "HAVE_ICMP_SEND",
}
# ICMP errors are read by socket filters on raw sockets (icmp.bpf.c): (family, protocol, program, the
# ICMP_FILTER / ICMP6_FILTER option and the types it lets through to the program).
SOL_RAW = 255
ICMP_FILTER = 1
ICMP6_FILTER = 1
SO_ATTACH_BPF = 50
ICMP_SOCKETS = (
    (socket.AF_INET, socket.IPPROTO_ICMP, "mn_icmp4", SOL_RAW, ICMP_FILTER, (3, 11)),
    (socket.AF_INET6, socket.IPPROTO_ICMPV6, "mn_icmp6", socket.IPPROTO_ICMPV6, ICMP6_FILTER, (1, 2, 3)),
)
# procs.bpf.c's tracepoints: each with its -D flag, the arguments it reads (checked in the running kernel's
# tracefs format, since a tracepoint's arguments change between releases) and what is lost without it.
PROC_TRACEPOINTS = {
    ("sched", "sched_process_exec"): (
        "HAVE_SCHED_PROCESS_EXEC", (),
        "a process that execs after the sensor started is named only if it renames itself"),
    ("task", "task_rename"): (
        "HAVE_TASK_RENAME", ("pid", "newcomm"),
        "a process whose main thread renames itself (prctl PR_SET_NAME) keeps its earlier name"),
    ("task", "task_newtask"): (
        "HAVE_TASK_NEWTASK", ("pid", "comm", "clone_flags"),
        "a forked child that never execs (a pre-fork server's worker) is named only while it runs"),
}


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """What to load and how; every knob becomes a -D flag, never a string substitution."""

    cgroup: str = "/"
    """Scope: a cgroup v2 path relative to ``cgroup_root`` ("/" is the whole host)."""
    cgroup_root: Path = CGROUP_ROOT
    rtt_shift_min_us: int = 2000
    burst_threshold: int = 3
    burst_window_ms: int = 1000
    tcp_max_flows: int = 65536
    tcp_prealloc: bool = False
    """Preallocate tcp_flows (BPF_F_NO_PREALLOC off): every slot's memory is reserved at load, ~224 B x
    tcp_max_flows (14 MiB at 65,536), however few flows are live. Off, the kernel holds 16 B a slot for
    the hash buckets plus one element per live flow, allocated at connect and freed at destroy."""
    udp_max_flows: int = 65536
    proc_names_max: int = 16384
    """Process names kept (tgid -> leader comm, LRU; 1.4 MiB of kernel memory at 16,384): a process that
    exited before user space read its flows stays named until this many newer processes push it out."""
    icmp_max_flows: int = 16384
    """Flows with ICMP errors held between two polls (icmp_flows; 88 B a flow): more in one poll are counted
    (icmp_map_full) and not joined."""
    refused_max_sources: int = 4096
    """Sources of inbound attempts to closed ports held until they end (refused; ~250 B a source): a source
    beyond it is counted (refused_map_full), not recorded."""
    dns_addrs_max: int = 16384
    """Addresses a DNS answer named, kept per network namespace (LRU, preallocated: 1.8 MiB of kernel memory
    at 16,384, measured with ``map_memory``): past this many the least recently resolved give way, and a
    flow to such an address gets no name. ``dns_addrs`` in the counters counts what was written."""
    dns_names_max: int = 8192
    """Names kept by id (LRU, 256 B each: 2.6 MiB at 8,192), and as many name hashes -> ids (dns_ids, 0.6 MiB);
    user space caches the names it has read."""
    dns_queries_max: int = 4096
    """Queries waiting for their answer, for its latency (LRU: unanswered ones give way to newer ones;
    0.4 MiB at 4,096)."""
    dns_txns_max: int = 4096
    """DNS transactions summed between two drains (questions x resolvers x answer codes); past it the
    rest are counted (``dns_txn_map_full``) until the next poll drains it (0.6 MiB at 4,096)."""
    ringbuf_pages: int = 2048
    """Ring buffer size in 4 KiB pages: 8 MiB holds ~28,000 flow records (~1.4 s of 10,000 connections/s at
    both ends); 4 MiB overflowed once in the benchmark when the sensor was starved of CPU."""
    debug: bool = False
    """Print the final C translation unit and the cflags to stderr before compiling."""

    @property
    def cgroup_path(self) -> Path:
        return self.cgroup_root / self.cgroup.lstrip("/")

    @property
    def scoped(self) -> bool:
        return self.cgroup.strip("/") != ""


def sockops_has_comm(release: str | None = None) -> bool:
    """Whether sock_ops programs may call bpf_get_current_comm: Linux 6.16 moved it to the helpers every
    program type has ("bpf: Streamline allowed helpers between tracing and base sets"). Before, a
    connect's comm is noted by the inet_sock_set_state tracepoint (5 more program runs a flow)."""
    m = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return m is not None and (int(m[1]), int(m[2])) >= (6, 16)


def missing_prerequisites(cgroup_root: Path = CGROUP_ROOT) -> list[str]:
    """Each thing this machine lacks for the eBPF sensor, as 'what is missing: how to fix it'."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("not running as root: run as root, or grant CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN "
                        "and CAP_SYS_ADMIN (see deploy/meshnode.service)")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        problems.append("the kernel has no BTF (/sys/kernel/btf/vmlinux): boot a kernel built with "
                        "CONFIG_DEBUG_INFO_BTF=y (Linux >= 5.8)")
    if not (cgroup_root / "cgroup.procs").exists():
        problems.append(f"no cgroup v2 hierarchy at {cgroup_root}: mount it "
                        f"(mount -t cgroup2 none {cgroup_root}) or pass the right root")
    if not (TRACEFS / "events").exists():
        problems.append(f"tracefs is not mounted at {TRACEFS}: mount -t tracefs nodev {TRACEFS}")
    else:
        for cat, ev in REQUIRED_TRACEPOINTS:
            if not (TRACEFS / "events" / cat / ev).exists():
                problems.append(f"tracepoint {cat}:{ev} is missing: meshnode needs Linux >= 5.15 with it")
    try:
        import_bcc()
    except ImportError:
        problems.append("the bcc Python module is missing: apt-get install python3-bpfcc (then 'make setup')")
    if not Path(f"/lib/modules/{os.uname().release}/build").exists():
        problems.append(f"no kernel headers at /lib/modules/{os.uname().release}/build: run 'make setup' "
                        "(installs linux-headers-amd64 and links them)")
    return problems


def tracepoint_fields(category: str, event: str, tracefs: Path = TRACEFS) -> set[str]:
    """The argument names of a tracepoint in the running kernel's tracefs format (empty if it has none)."""
    try:
        text = (tracefs / "events" / category / event / "format").read_text()
    except OSError:
        return set()
    return {m[1] for m in re.finditer(r"field:[^;]*?\b(\w+)(?:\[\d*\])?;", text)
            if not m[1].startswith("common_")}


def missing_proc_tracepoints(tracefs: Path = TRACEFS) -> dict[tuple[str, str], str]:
    """procs.bpf.c's tracepoints this kernel lacks (or has with other arguments), each with what is lost."""
    out = {}
    for (cat, ev), (_define, needs, loss) in PROC_TRACEPOINTS.items():
        fields = tracepoint_fields(cat, ev, tracefs)
        if not fields:
            out[(cat, ev)] = f"tracepoint {cat}:{ev} is missing: {loss}"
        elif not fields.issuperset(needs):
            out[(cat, ev)] = (f"tracepoint {cat}:{ev} lacks argument(s) "
                              f"{', '.join(sorted(set(needs) - fields))}: {loss}")
    return out


def drop_reason_names(tracefs: Path = TRACEFS) -> dict[int, str]:
    """Names of skb drop reasons from the running kernel's kfree_skb format (never a built-in table)."""
    fmt = tracefs / "events" / "skb" / "kfree_skb" / "format"
    try:
        text = fmt.read_text()
    except OSError:
        return {}
    return {int(num): name for num, name in re.findall(r'\{\s*(\d+)\s*,\s*"(\w+)"\s*\}', text)}


def translation_unit(main: Path = MAIN_SOURCE) -> str:
    """The C that bcc compiles: sensor.bpf.c with its per-concern ``#include "x.bpf.c"`` lines inlined.

    bcc generates tracepoint argument structs only for TRACEPOINT_PROBEs in the main file, so the
    concerns, kept one per file on disk, are joined here into one unit.
    """
    def inline(m: re.Match[str]) -> str:
        path = main.parent / m.group(1)
        return f"/* ---- {path.name} ---- */\n#line 1 \"{path.name}\"\n{path.read_text()}"

    return re.sub(r'^#include "([a-z_]+\.bpf\.c)"$', inline, main.read_text(), flags=re.M)


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture fd 2 (where bcc's clang writes) into a list holding one string, for error reporting."""
    out: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


@dataclass
class Probes:
    """The loaded and attached programs of one sensor, and their maps."""

    config: ProbeConfig = field(default_factory=ProbeConfig)
    _bpf: Any = None
    _cg_fd: int = -1
    _links: list[int] = field(default_factory=list)
    _raw: list[tuple[Any, ...]] = field(default_factory=list)
    _lib: Any = None
    _ring: _ringbuf.RingReader | None = None
    _batch: dict[int, tuple[Any, Any, int, int]] = field(default_factory=dict)
    _icmp_socks: list[socket.socket] = field(default_factory=list)

    def cflags(self) -> list[str]:
        """The -I/-D flags that configure the programs."""
        BPF = import_bcc().BPF

        c = self.config
        if not 1 <= c.burst_threshold <= 255:
            raise ProbeError(f"burst_threshold {c.burst_threshold} is out of range: 1..255 retransmits")
        if c.proc_names_max < 1:
            raise ProbeError(f"proc_names_max {c.proc_names_max} is out of range: at least 1 process name")
        for knob in ("dns_addrs_max", "dns_names_max", "dns_queries_max", "dns_txns_max"):
            if getattr(c, knob) < 1:
                raise ProbeError(f"{knob} {getattr(c, knob)} is out of range: at least 1 entry")
        flags = [
            f"-I{PROBES_DIR}", "-Wno-unused-function", "-Wno-macro-redefined",
            f"-DRTT_SHIFT_MIN_US={c.rtt_shift_min_us}", f"-DBURST_THRESHOLD={c.burst_threshold}",
            f"-DBURST_WINDOW_MS={c.burst_window_ms}", f"-DTCP_MAX_FLOWS={c.tcp_max_flows}",
            f"-DUDP_MAX_FLOWS={c.udp_max_flows}", f"-DRINGBUF_PAGES={c.ringbuf_pages}",
            f"-DTCP_FLOWS_FLAGS={0 if c.tcp_prealloc else 'BPF_F_NO_PREALLOC'}",
            f"-DPROC_NAMES_MAX={c.proc_names_max}", f"-DICMP_MAX_FLOWS={c.icmp_max_flows}",
            f"-DREFUSED_MAX_SOURCES={c.refused_max_sources}", f"-DDNS_ADDRS_MAX={c.dns_addrs_max}",
            f"-DDNS_NAMES_MAX={c.dns_names_max}", f"-DDNS_QUERIES_MAX={c.dns_queries_max}",
            f"-DDNS_TXNS_MAX={c.dns_txns_max}",
        ]
        for (cat, ev), define in OPTIONAL_TRACEPOINTS.items():
            if BPF.tracepoint_exists(cat, ev):
                flags.append(f"-D{define}")
        missing = missing_proc_tracepoints()
        for (cat, ev), (define, _needs, _loss) in PROC_TRACEPOINTS.items():
            if (cat, ev) not in missing and BPF.tracepoint_exists(cat, ev):
                flags.append(f"-D{define}")
        if c.scoped:
            flags.append("-DSCOPED")
        if sockops_has_comm():
            flags.append("-DHAVE_SOCKOPS_COMM")
        return flags

    def open(self) -> None:
        """Check prerequisites, compile, load and attach; raise ProbeError saying what is missing."""
        problems = missing_prerequisites(self.config.cgroup_root)
        if problems:
            raise ProbeError("the eBPF sensor cannot start:\n  - " + "\n  - ".join(problems))
        cg = self.config.cgroup_path
        if not cg.is_dir():
            raise ProbeError(f"cgroup {self.config.cgroup!r} does not exist under {self.config.cgroup_root}: "
                             "pass an existing cgroup v2 path (e.g. /system.slice) or / for the whole host")
        bcc = import_bcc()
        BPF, lib = bcc.BPF, bcc.lib

        self._lib = lib
        lib.bpf_lookup_and_delete.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
        lib.bpf_link_create.argtypes = [ct.c_int, ct.c_int, ct.c_int, ct.c_void_p]
        text = translation_unit()
        flags = self.cflags()
        if self.config.debug:
            print(f"/* cflags: {' '.join(flags)} */\n{text}", file=sys.stderr)
        with _captured_stderr() as log:
            try:
                self._bpf = BPF(text=text.encode(), cflags=flags)
            except Exception as exc:
                compile_exc: Exception | None = exc
            else:
                compile_exc = None
        if compile_exc is not None:
            raise _compile_error(log[0]) from compile_exc
        self._cg_fd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
        try:
            # the DNS parser first: the packet programs tail-call it from their first packet on
            dns = self._load("mn_dns_answer", BPF.CGROUP_SKB)
            self._bpf["dns_progs"][ct.c_int(0)] = ct.c_int(dns.fd)
            self._attach_cgroup("mn_sockops", BPF.SOCK_OPS, BPF_CGROUP_SOCK_OPS)
            self._attach_cgroup("mn_skb_ingress", BPF.CGROUP_SKB, BPF_CGROUP_INET_INGRESS)
            self._attach_cgroup("mn_skb_egress", BPF.CGROUP_SKB, BPF_CGROUP_INET_EGRESS)
            self._attach_cgroup("mn_sock_release", BPF.CGROUP_SOCK, BPF_CGROUP_INET_SOCK_RELEASE,
                                expected=BPF_CGROUP_INET_SOCK_RELEASE)
            if self.config.scoped:
                self._bpf["scope_cg"][0] = self._cg_fd
            self._open_ring()
            self._open_icmp()
            self._seed_process_names()
        except Exception:
            self.close()
            raise
        release_compiler_memory()

    def _attach_cgroup(self, name: str, prog_type: int, attach_type: int, expected: int = -1) -> None:
        fn = self._load(name, prog_type, expected)
        # A BPF link, not bpf_prog_attach: the attachment lives exactly as long as this process holds the
        # link's fd, so a SIGKILLed sensor leaves nothing running in the kernel.
        link = self._lib.bpf_link_create(fn.fd, self._cg_fd, attach_type, None)
        if link < 0:
            raise ProbeError(f"attaching {name} to cgroup {self.config.cgroup} failed: {os.strerror(-link)} "
                             "(needs root or CAP_BPF + CAP_NET_ADMIN, and a cgroup v2 directory)")
        self._links.append(link)

    def _load(self, name: str, prog_type: int, expected: int = -1) -> Any:
        """Load one program; ProbeError with the verifier's last words when the kernel refuses it."""
        with _captured_stderr() as log:
            try:
                fn = self._bpf.load_func(name, prog_type, attach_type=expected)
            except Exception as exc:
                err: Exception | None = exc
            else:
                err = None
        if err is not None:
            verifier = [ln for ln in log[0].splitlines() if ln.strip()]
            raise ProbeError(f"the kernel refused BPF program {name}: {err}; verifier said: "
                             + " | ".join(verifier[-3:])) from err
        return fn

    def _open_icmp(self) -> None:
        """Raw ICMP and ICMPv6 sockets in this network namespace, each with its socket filter (icmp.bpf.c).

        The kernel's ICMP_FILTER drops every other ICMP type before the socket sees it (no copy, no program
        run: echo traffic costs nothing); the program returns 0 for the rest, so the sockets never queue.
        """
        BPF = import_bcc().BPF
        for family, proto, name, level, option, types in ICMP_SOCKETS:
            with _captured_stderr() as log:
                try:
                    fn = self._bpf.load_func(name, BPF.SOCKET_FILTER)
                except Exception as exc:
                    err: Exception | None = exc
                else:
                    err = None
            if err is not None:
                raise ProbeError(f"the kernel refused BPF program {name}: {err}; verifier said: "
                                 + " | ".join([ln for ln in log[0].splitlines() if ln.strip()][-3:])) from err
            try:
                sock = socket.socket(family, socket.SOCK_RAW, proto)
            except OSError as exc:
                raise ProbeError(f"opening a raw {'ICMPv6' if family == socket.AF_INET6 else 'ICMP'} socket "
                                 f"failed: {exc} (needs root or CAP_NET_RAW)") from exc
            self._icmp_socks.append(sock)
            blocked = [0xFFFFFFFF] * (8 if family == socket.AF_INET6 else 1)  # a set bit blocks that type
            for t in types:
                blocked[t >> 5] &= ~(1 << (t & 31))
            sock.setsockopt(level, option, struct.pack(f"{len(blocked)}I", *blocked))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, struct.pack("i", fn.fd))

    def _open_ring(self) -> None:
        """Read the ring buffer in place (probes._ringbuf) where the CPU allows; else bcc's callback."""
        events = self._bpf["events"]
        if _ringbuf.SUPPORTED:
            self._ring = _ringbuf.RingReader(events.map_fd)
        else:
            events.open_ring_buffer(self._on_event)

    # ---- draining -------------------------------------------------------------------------------

    def _on_event(self, _ctx: Any, data: Any, _size: int) -> None:
        self._raw.append(EVENT_STRUCT.unpack(ct.string_at(data, _EVENT_SIZE)))

    def poll_events(self) -> list[KernelEvent]:
        """Every ring-buffer record since the last call, in order."""
        return list(map(event_from_raw, self.poll_raw()))

    def poll_raw(self) -> list[tuple[Any, ...]]:
        """Every ring-buffer record since the last call, in order, as raw records: plain tuples of the
        struct's values in ``probes._records.EVENT_FIELDS`` order (addresses and comm as raw bytes).

        For a consumer that renders records straight to text and unpacks them by position (after checking
        its layout against EVENT_FIELDS); everyone else wants ``poll_events``.
        """
        if self._ring is not None:
            return self._ring.drain_unpacked(EVENT_STRUCT)
        self._bpf.ring_buffer_consume()
        out, self._raw = self._raw, []
        return out

    def poll_records(self) -> tuple[bytes, int, int, int]:
        """``poll_raw`` as bytes, for a consumer in C: ``(data, count, stride, skip)``, record i's struct
        event at ``i * stride + skip`` of ``data``."""
        if self._ring is not None:
            data, count, stride = self._ring.drain_records(EVENT_STRUCT.size)
            return data, count, stride, _ringbuf.HDR_SIZE
        raws = self.poll_raw()
        return b"".join(EVENT_STRUCT.pack(*v) for v in raws), len(raws), EVENT_STRUCT.size, 0

    def poll_array(self) -> np.ndarray[Any, Any]:
        """``poll_records`` as one structured array of ``probes._records.EVENT_DTYPE`` (a view of the
        drained bytes): the node reads a poll's records by column."""
        return event_array(*self.poll_records())

    def tcp_flows(self) -> list[TcpFlowRow]:
        """Live TCP flows the kernel tracks (totals so far)."""
        table = self._bpf["tcp_flows"]
        walked = self._batch_walk(table)
        if walked is None:
            return [tcp_row_from_c(k.value, v) for k, v in _rows(table)]
        keys, vals, n = walked
        # the arrays' bytes in one unpack pass: through a ctypes copy of each key and value it took
        # 10-19 us a row, 0.1-0.19 s per export period at 10,000 live flows
        return tcp_rows_from_c_arrays(memoryview(keys).cast("B")[:n * ct.sizeof(table.Key)],
                                      memoryview(vals).cast("B")[:n * ct.sizeof(table.Leaf)])

    def tcp_flow_of(self, sk: int) -> TcpFlowRow | None:
        """The live TCP flow of a socket, by its kernel address (the key of tcp_flows)."""
        try:
            return tcp_row_from_c(sk, _copy(self._bpf["tcp_flows"][ct.c_uint64(sk)]))
        except KeyError:
            return None

    def udp_flows(self) -> list[UdpFlowRow]:
        """UDP flows the kernel tracks (totals so far)."""
        return [UdpFlowRow.from_c(k, v) for k, v in self._batch_rows(self._bpf["udp_flows"])]

    def udp_scan(self) -> UdpScan:
        """``udp_flows`` as a scan: cookies, sockets and last packet times as arrays, rows made on demand."""
        table = self._bpf["udp_flows"]
        walked = self._batch_walk(table)
        if walked is None:
            return UdpScan.of_rows(self.udp_flows())
        keys, vals, total = walked
        ksize, vsize = ct.sizeof(keys._type_), ct.sizeof(vals._type_)
        return UdpScan.of_c(ct.string_at(keys, ksize * total), ct.string_at(vals, vsize * total), total)

    def take_udp(self, rows: Iterable[UdpFlowRow]) -> list[UdpFlowRow]:
        """Remove these UDP flows from the kernel map atomically, returning their final counters.

        A flow whose key is gone (already taken) is skipped; a datagram arriving after the removal starts
        a new flow, which is the right reading of "ended".
        """
        table = self._bpf["udp_flows"]
        out = []
        for row in rows:
            key = _udp_key(row)
            val = CUdpFlow()
            if self._lib.bpf_lookup_and_delete(table.map_fd, ct.byref(key), ct.byref(val)) == 0:
                out.append(UdpFlowRow.from_c(key, val))
        return out

    def pending(self) -> list[PendingRow]:
        """Inbound SYNs whose handshake has not completed."""
        out = []
        for k, v in self._batch_rows(self._bpf["pending"]):
            out.append(PendingRow(
                netns=k.netns, family=k.family, src=addr_text(k.family, k.laddr), sport=k.lport,
                dst=addr_text(k.family, k.raddr), dport=k.rport, syn_ns=v.syn_ns, cgroup_id=v.cgroup_id))
        return out

    def take_pending(self, rows: Iterable[PendingRow]) -> list[PendingRow]:
        """Remove these half-open entries; returns those that were still there."""
        import socket as _s

        table = self._bpf["pending"]
        out = []
        for row in rows:
            k = CPendingKey()
            k.netns, k.family, k.lport, k.rport = row.netns, row.family, row.sport, row.dport
            n = 4 if row.family == _s.AF_INET else 16
            ct.memmove(k.laddr, _s.inet_pton(row.family, row.src), n)
            ct.memmove(k.raddr, _s.inet_pton(row.family, row.dst), n)
            v = CPendingVal()
            if self._lib.bpf_lookup_and_delete(table.map_fd, ct.byref(k), ct.byref(v)) == 0:
                out.append(row)
        return out

    def drain_drops(self) -> dict[tuple[int, int], int]:
        """Drop counts by (socket address, reason) since the last call, drained atomically."""
        out: dict[tuple[int, int], int] = {}
        if not _has(self._bpf, "drops"):
            return out
        for k, v in self._batch_rows(self._bpf["drops"], delete=True):
            out[(k.sk, k.reason)] = out.get((k.sk, k.reason), 0) + v.value
        return out

    def drain_dns(self) -> list[DnsTxnRow]:
        """DNS transactions the kernel summed since the last call, drained atomically."""
        return [DnsTxnRow.from_c(k, v) for k, v in self._batch_rows(self._bpf["dns_txns"], delete=True)]

    def dns_names(self, ids: Iterable[int]) -> dict[int, str]:
        """Names by id (the ``name_id`` of flows and DNS transactions), for those the kernel still holds.

        One map lookup an id, as ``process_names``: callers cache what they read (a name is the same
        text for as long as its id exists).
        """
        return self._lookup_each("dns_names", ct.c_uint32(), CDnsName(), (i for i in ids if i),
                                 lambda v: dns_name_text(v.name))

    def _batch_rows(self, table: Any, delete: bool = False) -> list[tuple[Any, Any]]:
        """Every row of a hash map through BPF_MAP_LOOKUP(_AND_DELETE)_BATCH, copied out.

        The key and value arrays (the map's capacity) are kept per map between calls: bcc's
        ``items_lookup_batch`` allocates and zeroes them on every call, 1.5 ms for udp_flows (65,536 rows of
        136 B) against 0.2 ms for the syscall, once a second per scan; the drops drain paid the same per
        poll. They stay allocated (~9.4 MB for udp_flows, pending and drops; steady RSS measured no higher,
        since glibc kept bcc's per-call arrays in the heap anyway). Without batch support in the kernel,
        lookups fall back to iterating (a drain must not: it raises).
        """
        walked = self._batch_walk(table, delete)
        if walked is None:
            return _rows(table)
        keys, vals, total = walked
        return [(_copy(keys[i]), _copy(vals[i])) for i in range(total)]

    def _batch_walk(self, table: Any, delete: bool = False) -> tuple[Any, Any, int] | None:
        """``_batch_rows``' walk: the kept key and value arrays and how many rows it read into them, or
        None when the kernel refused a lookup batch (the caller iterates instead)."""
        bufs = self._batch.get(table.map_fd)
        if bufs is None:
            cap = table.max_entries
            bufs = self._batch[table.map_fd] = (
                (_plain(table.Key) * cap)(), (_plain(table.Leaf) * cap)(), ct.sizeof(table.Key),
                ct.sizeof(table.Leaf))
        keys, vals, ksize, vsize = bufs
        cap = len(keys)
        op = self._lib.bpf_lookup_and_delete_batch if delete else self._lib.bpf_lookup_batch
        token_in, token_out, count = ct.c_uint32(0), ct.c_uint32(0), ct.c_uint32(0)
        total = 0
        while total < cap:
            count.value = cap - total
            res = op(table.map_fd, ct.byref(token_in) if total else None, ct.byref(token_out),
                     ct.byref(keys, ksize * total), ct.byref(vals, vsize * total), ct.byref(count))
            err = ct.get_errno()
            total += count.value
            if res != 0 and err == errno.ENOENT:  # the whole map was walked
                break
            if res != 0:
                if total:  # a partial walk (ENOSPC at a bucket that grew under it): what was read; the rest
                    break  # next time (rows a drain read are deleted already: they must be returned)
                if not delete:
                    return None
                raise ProbeError(f"batch {'lookup-and-delete' if delete else 'lookup'} on BPF map "
                                 f"{table.map_fd} failed: {os.strerror(err)}")
            if count.value == 0:  # no progress (a bucket changing under the walk): the rest next time
                break
            token_in.value = token_out.value
        return keys, vals, total

    def drain_icmp(self) -> list[IcmpRow]:
        """ICMP errors per flow since the last call, drained atomically."""
        if not _has(self._bpf, "icmp_flows"):
            return []
        return [IcmpRow.from_c(k, v) for k, v in self._batch_rows(self._bpf["icmp_flows"], delete=True)]

    def refused(self) -> list[RefusedRow]:
        """Sources of inbound attempts to closed ports, totals so far."""
        return [RefusedRow.from_c(k, v) for k, v in self._batch_rows(self._bpf["refused"])]

    def take_refused(self, rows: Iterable[RefusedRow]) -> list[RefusedRow]:
        """Remove these sources' entries, returning their final totals (attempts after the read included)."""
        table = self._bpf["refused"]
        out = []
        for row in rows:
            k = CRefusedKey()
            k.proto, k.family = row.proto, row.family
            n = 4 if row.family == socket.AF_INET else 16
            ct.memmove(k.laddr, socket.inet_pton(row.family, row.src), n)
            ct.memmove(k.raddr, socket.inet_pton(row.family, row.dst), n)
            v = CRefusedVal()
            if self._lib.bpf_lookup_and_delete(table.map_fd, ct.byref(k), ct.byref(v)) == 0:
                out.append(RefusedRow.from_c(k, v))
        return out

    def counters(self) -> dict[str, int]:
        """Kernel-side counters summed over CPUs, by name (cumulative since load)."""
        table = self._bpf["counters"]
        return {name: int(sum(table[ct.c_int(i)])) for i, name in enumerate(COUNTER_NAMES)}

    def process_names(self, tgids: Iterable[int]) -> dict[int, str]:
        """Process names as ``ps`` shows them (the thread-group leader's comm), by tgid, for those the
        kernel side knows; a tgid it does not know is left out.

        A name is recorded when a process is forked, execs or its main thread renames itself (not when
        another thread does: that is the thread's name, which the flow records carry), and for every
        process already running at ``open()``. It outlives the process, so flows of a process that has
        exited are named. Without one of procs.bpf.c's tracepoints (``process_name_gaps``) some names are
        missing or stale; names of processes that exited long ago give way to newer ones (LRU, at most
        ``ProbeConfig.proc_names_max``), so callers fall back to /proc for the living.

        One map lookup a distinct tgid: 2.8 us a tgid measured here (10 to 1,000 tgids in a full
        16,384-entry map, Linux 6.18). BPF has no batch lookup by a set of keys; a batch walk reads the
        whole map (6 ms at 16,384 entries, as much as ~2,000 lookups), more than a poll's tens of tgids.
        """
        return self._lookup_each("proc_names", ct.c_uint32(), CProcName(), tgids,
                                 lambda v: v.comm.decode(errors="replace"))

    def _lookup_each(self, name: str, key: Any, val: Any, keys: Iterable[int],
                     text: Callable[[Any], str]) -> dict[int, str]:
        """``text`` of the value of each distinct key of map ``name`` that holds it, by key: one lookup a
        key into the same ctypes key and value (``key`` a ctypes integer, ``val`` the value's structure)."""
        fd = self._bpf[name].map_fd
        lookup = self._lib.bpf_lookup_elem
        kp, vp = ct.byref(key), ct.byref(val)
        out: dict[int, str] = {}
        for k in set(keys):
            key.value = k
            if lookup(fd, kp, vp) == 0:
                out[k] = text(val)
        return out

    def refusal_gaps(self) -> list[str]:
        """What recording inbound attempts to closed ports lacks on this kernel (refused.bpf.c's tracepoints),
        as 'tracepoint ... is missing: what is lost'; a node shows these at start."""
        BPF = import_bcc().BPF
        lost = {("tcp", "tcp_send_reset"): "TCP connection attempts to closed ports are not recorded",
                ("icmp", "icmp_send"): "UDP datagrams to closed ports are not recorded"}
        return [f"tracepoint {cat}:{ev} is missing: {what}" for (cat, ev), what in lost.items()
                if not BPF.tracepoint_exists(cat, ev)]

    def process_name_gaps(self) -> list[str]:
        """What process naming lacks on this kernel, as 'tracepoint ... is missing: what is lost' (empty
        when all of procs.bpf.c's tracepoints are there); a node shows these at start."""
        return list(missing_proc_tracepoints().values())

    def _seed_process_names(self) -> int:
        """Record the processes running now (in scope), up to the map's size; returns how many.

        Runs after the tracepoints are attached and never overwrites (BPF_NOEXIST): a name the kernel
        recorded since is newer than what /proc showed a moment before. /proc/<tgid>/comm is the leader's.
        """
        table = self._bpf["proc_names"]
        fd, cap = table.map_fd, table.max_entries
        scope = "/" + self.config.cgroup.strip("/") if self.config.scoped else ""
        key = ct.c_uint32()
        n = 0
        with os.scandir("/proc") as entries:
            for entry in entries:
                if n >= cap:
                    break
                if not entry.name.isdigit():
                    continue
                try:
                    comm = Path(f"/proc/{entry.name}/comm").read_bytes()
                    if scope and not _in_cgroup(Path(f"/proc/{entry.name}/cgroup").read_text(), scope):
                        continue
                except OSError:  # exited meanwhile
                    continue
                key.value = int(entry.name)
                # a kernel thread's comm file holds its full name (workqueue and all); its task comm, which
                # the kernel side would have recorded, is the first 15 bytes
                val = ct.create_string_buffer(comm.removesuffix(b"\n")[:15], 16)
                if self._lib.bpf_update_elem(fd, ct.byref(key), val, BPF_NOEXIST) == 0:
                    n += 1
        return n

    def comm(self, pid: int) -> str:
        """The comm the kernel side saw for a task group, or ''."""
        try:
            o = self._bpf["comms"][ct.c_uint32(pid)]
        except KeyError:
            return ""
        return bytes(o.comm).split(b"\0", 1)[0].decode(errors="replace")

    def map_memory(self) -> dict[str, int]:
        """Bytes of kernel memory each map holds (memlock from fdinfo), by map name."""
        out: dict[str, int] = {}
        for name in ("tcp_flows", "udp_flows", "pending", "listeners", "comms", "proc_names", "drops",
                     "icmp_flows", "refused", "dns_addrs", "dns_names", "dns_ids", "dns_queries", "dns_txns", "events"):
            with contextlib.suppress(Exception):
                fd = self._bpf[name].map_fd
                text = Path(f"/proc/self/fdinfo/{fd}").read_text()
                m = re.search(r"memlock:\s+(\d+)", text)
                if m:
                    out[name] = int(m.group(1))
        return out

    def close(self) -> None:
        """Detach from the cgroup and free everything; safe to call twice."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self._batch.clear()
        for sock in self._icmp_socks:
            sock.close()
        self._icmp_socks.clear()
        for link in self._links:
            os.close(link)
        self._links.clear()
        if self._cg_fd >= 0:
            os.close(self._cg_fd)
            self._cg_fd = -1
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None


MADV_PAGEOUT = 21
_COMPILER_LIBS = ("libbcc", "libLLVM", "libclang")


def release_compiler_memory() -> dict[str, int]:
    """Give back what compiling the programs left resident, once they are loaded.

    bcc compiles with an in-process clang: afterwards ~35 MB of freed heap stay with the process and ~100 MB
    of the compiler's code pages stay resident though nothing runs them again (measured: RSS 160 MB after
    start, 124 MB after malloc_trim). malloc_trim returns the heap; MADV_PAGEOUT (Linux 5.4) drops the clean
    file-backed pages of libbcc/LLVM/clang, which simply fault back in if ever used. Returns bytes advised
    per library, for tests and logs; failures are ignored (memory, not correctness).
    """
    libc = ct.CDLL("libc.so.6", use_errno=True)
    with contextlib.suppress(Exception):
        libc.malloc_trim(0)
    libc.madvise.argtypes = [ct.c_void_p, ct.c_size_t, ct.c_int]
    advised: dict[str, int] = {}
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return advised
    for line in maps:
        parts = line.split()
        if len(parts) < 6 or not any(lib in parts[5] for lib in _COMPILER_LIBS) or "w" in parts[1]:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        if libc.madvise(start, end - start, MADV_PAGEOUT) == 0:
            name = Path(parts[5]).name
            advised[name] = advised.get(name, 0) + end - start
    return advised


def _in_cgroup(proc_cgroup: str, scope: str) -> bool:
    """Whether a /proc/<pid>/cgroup text puts the process in the v2 cgroup ``scope`` or under it."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            path = line[3:]
            return path == scope or path.startswith(scope + "/")
    return False


def _has(bpf: Any, name: str) -> bool:
    try:
        bpf[name]
    except KeyError:
        return False
    return True


def _rows(table: Any) -> list[tuple[Any, Any]]:
    """All (key, value) rows of a hash map, copied out (batch lookup when the kernel has it)."""
    try:
        return [(_copy(k), _copy(v)) for k, v in table.items_lookup_batch()]
    except Exception:
        return [(_copy(k), _copy(v)) for k, v in table.items()]


def _plain(ctype: Any) -> Any:
    """A ctypes scalar type wrapped in a one-field structure, so that array elements index as ctypes
    objects (with ``.value``) rather than as Python ints; structures are returned as they are."""
    if issubclass(ctype, ct.Structure):
        return ctype
    return type(f"_{ctype.__name__}_row", (ct.Structure,), {"_fields_": [("value", ctype)]})


def _copy(obj: Any) -> Any:
    clone = type(obj)()
    ct.pointer(clone)[0] = obj
    return clone


def _udp_key(row: UdpFlowRow) -> CUdpKey:
    import socket as _s

    k = CUdpKey()
    k.cookie, k.rport, k.family = row.cookie, row.dport, row.family
    raw = _s.inet_pton(row.family, row.dst)
    ct.memmove(k.raddr, raw, len(raw))
    return k


def _compile_error(log: str) -> ProbeError:
    """The compiler's first error, or, when it compiled and the kernel refused a program, the verifier's
    last words (bcc loads tracepoint programs while constructing, so both surface from the same call)."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    first = next((ln for ln in lines if "error:" in ln), "")
    if first:
        return ProbeCompileError(first, log)
    if any("Failed to load program" in ln for ln in lines):
        verifier = [ln for ln in lines if not ln[:1].isdigit() and not ln.startswith(";")]
        return ProbeError("the kernel refused a BPF program: " + " | ".join(verifier[-3:]))
    return ProbeCompileError(lines[0] if lines else "unknown error (no compiler output)", log)


__all__ = [
    "ProbeConfig",
    "Probes",
    "drop_reason_names",
    "missing_prerequisites",
    "missing_proc_tracepoints",
    "tracepoint_fields",
    "translation_unit",
]
