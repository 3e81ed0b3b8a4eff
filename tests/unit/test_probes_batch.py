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

from probes._errors import ProbeError
from probes._loader import Probes
from probes._records import CPendingKey, CPendingVal


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
