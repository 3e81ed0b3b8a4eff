"""``Probes._batch_rows`` against the kernel's batch semantics, with a stand-in for libbpf's batch calls.

A hash-map batch walk copies whole buckets. When a bucket grew under the walk so that it no longer fits in
the space left, the kernel stops early with the rows copied so far (success, a partial count), and the next
call fails with ENOSPC having copied nothing. The rows already read must be returned (a drain has deleted
them already), the rest left for the next call; a failure before any row is an error (lookups iterate).
"""

from __future__ import annotations

import ctypes as ct
import errno
from typing import Any

import pytest

from meshnode.probes._errors import ProbeError
from meshnode.probes._loader import Probes
from meshnode.probes._records import CPendingKey, CPendingVal


class Table:
    """A bcc table stand-in: 8 slots of the pending map's layout."""

    map_fd = 7
    max_entries = 8
    Key = CPendingKey
    Leaf = CPendingVal

    def items(self) -> list[tuple[Any, Any]]:
        return [(CPendingKey(), CPendingVal())]


def _probes(script: list[tuple[int, int]]) -> tuple[Probes, list[int]]:
    """Probes whose batch calls return ``(rows, errno)`` in turn (errno 0: success)."""
    asked: list[int] = []

    def op(fd: int, tin: Any, tout: Any, keys: Any, vals: Any, count: Any) -> int:
        asked.append(count._obj.value)
        rows, err = script[len(asked) - 1]
        count._obj.value = rows
        tout._obj.value = len(asked)
        if err:
            ct.set_errno(err)
            return -err
        return 0

    lib = type("Lib", (), {"bpf_lookup_batch": staticmethod(op), "bpf_lookup_and_delete_batch": staticmethod(op)})
    return Probes(_lib=lib()), asked


@pytest.mark.parametrize("delete", [False, True])
def test_a_walk_cut_short_by_a_grown_bucket_returns_the_rows_it_read(delete: bool) -> None:
    p, asked = _probes([(5, 0), (0, errno.ENOSPC)])
    assert len(p._batch_rows(Table(), delete=delete)) == 5
    assert asked == [8, 3]


def test_a_complete_walk_ends_at_enoent() -> None:
    p, asked = _probes([(3, 0), (2, errno.ENOENT)])
    assert len(p._batch_rows(Table())) == 5
    assert asked == [8, 5]


def test_a_failure_before_any_row_iterates_a_lookup_and_raises_for_a_drain() -> None:
    p, _ = _probes([(0, errno.EINVAL)])
    assert len(p._batch_rows(Table())) == 1  # Table.items()
    p, _ = _probes([(0, errno.EINVAL)])
    with pytest.raises(ProbeError, match="lookup-and-delete"):
        p._batch_rows(Table(), delete=True)


def test_live_tcp_rows_read_from_the_batch_arrays_equal_the_row_by_row_decoding() -> None:
    """``tcp_flows`` unpacks the batch arrays' bytes in one pass; every row must equal what the ctypes
    decoding of that key and value (``tcp_row_from_c``) gives, in order, for IPv4 and IPv6 rows."""
    from meshnode.probes._records import F_INBOUND, F_INET6, F_SYNACK, CTcpFlow, tcp_row_from_c

    rows = []
    for i in range(5):
        f = CTcpFlow()
        f.cookie, f.netns, f.cgroup_id, f.start_ns, f.last_ns = 100 + i, 4026531840, 7 + i, 10**18 + i, 2 * 10**18
        f.bytes_tx, f.bytes_rx, f.segs_out, f.segs_in, f.total_retrans = 1234567 * i, 7654321, 9 + i, 8, i
        f.srtt_us, f.srtt_max_us, f.rtt_min_us, f.cwnd, f.cwnd_min, f.cwnd_max = 40, 90, 12, 10, 2, 30
        f.pid, f.resets_rx, f.resets_tx, f.sport, f.dport, f.synack_retrans = 4000 + i, 1, 2, 40000 + i, 443, 1
        f.outcome = 1 + i % 4
        f.flags = (F_INET6 if i % 2 else 0) | (F_INBOUND | F_SYNACK if i % 3 == 0 else 0)
        f.saddr[:] = bytes(range(16)) if i % 2 else bytes([127, 0, 0, 1] + [0] * 12)
        f.daddr[:] = bytes(range(16, 32)) if i % 2 else bytes([10, 0, 0, i] + [0] * 12)
        rows.append((0xFFFF8880_0000_0000 + 64 * i, f))

    class TcpTable:
        map_fd, max_entries, Key, Leaf = 9, 8, ct.c_uint64, CTcpFlow

    def op(fd: int, tin: Any, tout: Any, keys: Any, vals: Any, count: Any) -> int:
        for i, (sk, f) in enumerate(rows):
            keys._obj[i].value = sk
            vals._obj[i] = f
        count._obj.value = len(rows)
        ct.set_errno(errno.ENOENT)
        return -errno.ENOENT

    lib = type("Lib", (), {"bpf_lookup_batch": staticmethod(op)})
    p = Probes(_lib=lib(), _bpf={"tcp_flows": TcpTable()})
    assert p.tcp_flows() == [tcp_row_from_c(sk, f) for sk, f in rows]


def test_sock_ops_comm_helper_by_kernel_release() -> None:
    from meshnode.probes._loader import sockops_has_comm

    assert [sockops_has_comm(r) for r in ("6.15.9-amd64", "6.16.0", "6.18.1-cloud", "7.0", "5.10.0-30", "x")] \
        == [False, True, True, True, False, False]
