"""Small builders of FlowRecords shared by the node's unit tests."""

from __future__ import annotations

from meshnode._model import FlowRecord

S = 1_000_000_000
T0 = 1_700_000_000 * S


def flow(flow_id: int, **kw: object) -> FlowRecord:
    """An outbound TCP flow to 10.0.0.2:443 by curl/100, established, ended at T0 + flow_id s."""
    base: dict[str, object] = dict(
        flow_id=flow_id, src="10.0.0.1", sport=40000 + flow_id % 20000, dst="10.0.0.2", dport=443,
        proto="tcp", direction="outbound", pid=100, comm="curl", cgroup="/system.slice/app.service",
        start_ns=T0 + flow_id * S - S // 2, end_ns=T0 + flow_id * S, bytes_tx=100, bytes_rx=2000,
        packets_tx=5, packets_rx=6, outcome="established", srtt_us=1000, min_rtt_us=800,
    )
    base.update(kw)
    return FlowRecord(**base)  # type: ignore[arg-type]
