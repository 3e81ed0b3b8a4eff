"""The per-flow rollup rule, one flow at a time: the reference the columnar rollups are tested against."""

from __future__ import annotations

from typing import Any

from meshnode._model import FlowRecord
from meshnode.summary._period import percentile, with_service
from meshnode.summary._problems import RETRANSMITS, SLOW_CONNECT, problem_kind


def rollup_key(rec: FlowRecord, key: str) -> str:
    return {"process": lambda r: f"{r.comm or '?'}/{r.pid}", "destination": lambda r: r.destination,
            "service": lambda r: (f"[{r.src}]" if ":" in r.src else r.src) + f":{r.sport}",
            "cgroup": lambda r: r.cgroup or "/"}[key](rec)


def reference_rollup(rows: list[tuple[FlowRecord, tuple[int, int, int]]], key: str, with_services: bool) -> list[dict]:
    """Rows ``(record, (bytes_tx, bytes_rx, retransmits) in the period)`` rolled up one flow at a time, as
    ``meshnode.summary.rollup`` must on columns (its fields as a dict)."""
    out: dict[str, dict[str, Any]] = {}
    rtts: dict[str, list[int]] = {}
    for rec, (tx, rx, re) in rows:
        k = rollup_key(rec, key)
        if k not in out:
            out[k] = dict(key=k, flows=0, useful=0, failures={}, bytes_tx=0, bytes_rx=0, retransmits=0,
                          service=with_service(rec).service if with_services else "", flows_retransmitting=0,
                          flows_slow_connect=0, remote_name="")
            rtts[k] = []
        r = out[k]
        if key == "destination" and not r["remote_name"]:  # the first flow with a name names it
            r["remote_name"] = rec.remote_name
        r["flows"] += 1
        if rec.useful:
            r["useful"] += 1
            kind = problem_kind(rec)
            r["flows_retransmitting"] += kind == RETRANSMITS
            r["flows_slow_connect"] += kind == SLOW_CONNECT
        elif rec.failed:
            r["failures"][rec.outcome] = r["failures"].get(rec.outcome, 0) + 1
        r["bytes_tx"] += tx
        r["bytes_rx"] += rx
        r["retransmits"] += re
        if rec.srtt_us:
            rtts[k].append(rec.srtt_us)
    for k, r in out.items():
        r["rtt_p50_us"] = round(percentile(rtts[k], 0.5))
        r["rtt_p95_us"] = round(percentile(rtts[k], 0.95))
    return sorted(out.values(), key=lambda r: (-r["flows"], r["key"]))
