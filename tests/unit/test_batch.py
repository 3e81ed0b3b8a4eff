"""The columnar batch and the one enum numbering it shares with the kernel, the store and the wire."""

from __future__ import annotations

import numpy as np

from meshnode._batch import FlowBatch
from meshnode._model import ENUM_NAMES, ENUM_NUMBERS
from meshnode.v1 import flow_pb2
from tests.unit._flows import flow


def test_enum_numbers_are_the_wire_numbers() -> None:
    enums = {"proto": flow_pb2.Protocol, "direction": flow_pb2.Direction, "outcome": flow_pb2.Outcome,
             "limited_by": flow_pb2.LimitedBy, "kind": flow_pb2.RecordKind, "fidelity": flow_pb2.Fidelity}
    for field, enum in enums.items():
        wire = {name.lower(): number for name, number in enum.items() if number}
        assert ENUM_NUMBERS[field] == wire, field
        assert all(ENUM_NAMES[field][n] == name for name, n in wire.items())


def test_records_round_trip_through_columns() -> None:
    recs = [flow(1), flow(2, outcome="refused", direction="inbound", drop_reasons={"NO_SOCKET": 2}, drops=2),
            flow(3, proto="udp", outcome="udp_unanswered", kind="interim", limited_by="congestion",
                 netns=(1 << 64) - 2, cgroup_id=1 << 63, bytes_tx=(1 << 64) - 1).replace(flow_id=(1 << 64) - 1),
            flow(4, fidelity="polled", comm="", cgroup="")]
    batch = FlowBatch.from_records(recs)
    again = FlowBatch({name: batch[name] for name in batch.cols}).records()  # made from the columns
    assert again == recs
    assert batch["outcome"].tolist() == [1, 2, 6, 1]
    assert batch["direction"].dtype == np.uint8 and batch["flow_id"].dtype == np.uint64
    assert FlowBatch.concat([batch, FlowBatch.empty(), batch]).records() == recs + recs
    assert batch.take(np.array([3, 0])).records() == [recs[3], recs[0]]
    assert batch.count_by("outcome", "proto") == {("established", "tcp"): 2, ("refused", "tcp"): 1,
                                                   ("udp_unanswered", "udp"): 1}
