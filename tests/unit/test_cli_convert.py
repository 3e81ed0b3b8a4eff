"""Protobuf -> plain data: the --json contract (DESIGN field names) and the fast JSON Lines path."""

from __future__ import annotations

import json

from meshnode._model import flow_proto_to_json
from meshnode.cli._convert import FLOW_FIELDS, flow_dict, flow_json_line, message_dict, write_json_lines
from meshnode.v1 import flow_pb2, observer_pb2
from tests.unit._flows import flow

# The flow record of shared/DESIGN.md ("Fields every layer keeps").
DESIGN_FIELDS = [
    "src", "sport", "dst", "dport", "proto", "direction", "pid", "comm", "cgroup", "netns", "start_ns", "end_ns",
    "bytes_tx", "bytes_rx", "packets_tx", "packets_rx", "outcome", "retransmits", "srtt_us", "min_rtt_us", "cwnd",
    "limited_by", "thread",
]


def _flows() -> list[flow_pb2.Flow]:
    return [
        flow_pb2.Flow(),
        flow_pb2.Flow(flow_id=2**63, src="fd00::1", sport=1, dst="fd00::2", dport=65535, proto=flow_pb2.UDP,
                      direction=flow_pb2.INBOUND, pid=1, comm='we"ird\\ näme\n', thread="wörker\t1", cgroup="/a/b",
                      outcome=flow_pb2.UDP_UNANSWERED, limited_by=flow_pb2.RECEIVER_WINDOW,
                      kind=flow_pb2.INTERIM, fidelity=flow_pb2.POLLED, drop_reasons={"NO_SOCKET": 2, "A": 1},
                      bytes_tx=2**64 - 1, delivery_rate=123, service="domain"),
    ]


def test_flow_json_line_equals_the_model_converter_key_for_key_in_order() -> None:
    for f in _flows():
        line = flow_json_line(f)
        assert line.endswith("\n") and line.count("\n") == 1
        doc = json.loads(line)
        assert doc == flow_proto_to_json(f) == flow_dict(f)
        assert list(doc) == list(flow_proto_to_json(f)) == list(FLOW_FIELDS)


def test_flow_keys_include_every_design_field() -> None:
    keys = set(json.loads(flow_json_line(flow_pb2.Flow())))
    assert set(DESIGN_FIELDS) <= keys
    assert keys == {f.name for f in flow_pb2.Flow.DESCRIPTOR.fields}


def test_enum_values_unknown_to_this_meshctl_print_as_numbers() -> None:
    f = flow_pb2.Flow(outcome=99)
    assert json.loads(flow_json_line(f))["outcome"] == "99"
    assert flow_dict(f)["outcome"] == "99"


def test_message_dict_wrappers_maps_enums_and_nested_flows() -> None:
    row = flow_pb2.HealthRow(scope="host", attempts=3, useful=2, failures={"refused": 1})
    h = observer_pb2.HealthResponse(host=row)
    doc = message_dict(h)
    assert doc["host"]["useful_fraction"] is None  # absent, not 0
    row.useful_fraction.value = 2 / 3
    assert message_dict(observer_pb2.HealthResponse(host=row))["host"]["useful_fraction"] == 2 / 3
    assert doc["host"]["failures"] == {"refused": 1}
    st = message_dict(observer_pb2.StatusResponse(fidelity=flow_pb2.POLLED, labels={"site": "ams1"}))
    assert st["fidelity"] == "polled" and st["labels"] == {"site": "ams1"} and st["completeness"] is None
    ev = message_dict(flow_pb2.Event(type=flow_pb2.RTT_SHIFT, flow=_flows()[1], value=3.5))
    assert ev["type"] == "rtt_shift" and ev["flow"] == flow_proto_to_json(_flows()[1])
    assert message_dict(flow_pb2.Event())["type"] == "unknown"


def test_write_json_lines_batches() -> None:
    chunks: list[str] = []
    n = write_json_lines(chunks.append, (f"{i}\n" for i in range(5)), batch=2)
    assert n == 5 and chunks == ["0\n1\n", "2\n3\n", "4\n"]


def test_every_event_the_sensor_makes_crosses_the_wire_by_name_and_meshctl_can_ask_for_it() -> None:
    """ICMP events went out as EVENT_TYPE_UNKNOWN, and `meshctl events --type frag_needed` could not be sent:
    the sensor had the names, the wire and meshctl did not."""
    from meshnode.api._convert import event_pb
    from meshnode.cli._args import EVENT_TYPES as CLI_EVENT_TYPES
    from meshnode.sensor import EVENT_TYPES, EventRecord

    for name in EVENT_TYPES:
        ev = event_pb(EventRecord(name, 1, flow(1), 1.0, ""))
        assert flow_pb2.EventType.Name(ev.type) == name.upper()
    assert set(CLI_EVENT_TYPES) == set(EVENT_TYPES)
