"""The per-flow rollup rule, one flow at a time: the reference the columnar rollups are tested against."""

from __future__ import annotations

from typing import Any

from meshnode._model import FlowRecord
from meshnode.summary._period import percentile, with_service
from meshnode.summary._problems import RETRANSMITS, SLOW_CONNECT, SLOW_PATH, SLOW_SERVER, problem_kind

Timing = tuple[int, int, bool, bool]
"""A flow's exchanges, their total us, and whether its first byte and its handshake count, in the period."""


def bucket(us: int) -> int:
    """The log2 histogram bucket of a duration, one value at a time: [2**i, 2**(i+1)) us, 0 and 1 in 0."""
    return min(max(us, 1).bit_length() - 1, 31)


def add(hist: list[int], i: int, n: int = 1) -> None:
    hist.extend([0] * (i + 1 - len(hist)))
    hist[i] += n


def totals_timing(rec: FlowRecord) -> Timing:
    """A flow's timing as if all of it happened in the period (``rollup`` without ``timing``)."""
    return (rec.responses, rec.response_us_sum, rec.responses > 0,
            rec.proto == "tcp" and rec.outcome == "established")


def rollup_key(rec: FlowRecord, key: str) -> str:
    return {"process": lambda r: f"{r.comm or '?'}/{r.pid}", "destination": lambda r: r.destination,
            "service": lambda r: (f"[{r.src}]" if ":" in r.src else r.src) + f":{r.sport}",
            "cgroup": lambda r: r.cgroup or "/"}[key](rec)


def reference_rollup(rows: list[tuple[FlowRecord, tuple[int, int, int]]], key: str, with_services: bool,
                     timing: list[Timing] | None = None) -> list[dict]:
    """Rows ``(record, (bytes_tx, bytes_rx, retransmits) in the period)`` rolled up one flow at a time, as
    ``meshnode.summary.rollup`` must on columns (its fields as a dict); ``timing`` per row (each flow's
    totals when None)."""
    out: dict[str, dict[str, Any]] = {}
    rtts: dict[str, list[int]] = {}
    rates: dict[str, list[int]] = {}
    timings = timing if timing is not None else [totals_timing(rec) for rec, _ in rows]
    for (rec, (tx, rx, re)), (rc, rs, first, connected) in zip(rows, timings, strict=True):
        k = rollup_key(rec, key)
        if k not in out:
            out[k] = dict(key=k, flows=0, useful=0, failures={}, bytes_tx=0, bytes_rx=0, retransmits=0,
                          service=with_service(rec).service if with_services else "", flows_retransmitting=0,
                          flows_slow_connect=0, responses=0, response_us_sum=0, response_us_max=0,
                          response_hist=[], first_byte_hist=[], connect_hist=[], flows_slow_path=0,
                          flows_slow_server=0, remote_name="")
            rtts[k] = []
            rates[k] = []
        r = out[k]
        if key == "destination" and not r["remote_name"]:  # the first flow with a name names it
            r["remote_name"] = rec.remote_name
        r["flows"] += 1
        if rc > 0:
            r["responses"] += rc
            r["response_us_sum"] += rs
            r["response_us_max"] = max(r["response_us_max"], rec.response_us_max)
            add(r["response_hist"], bucket(rs // rc), rc)
        if first:
            add(r["first_byte_hist"], bucket(rec.first_byte_us))
        if connected:
            add(r["connect_hist"], bucket(rec.connect_us))
        if rec.useful:
            r["useful"] += 1
            kind = problem_kind(rec)
            r["flows_retransmitting"] += kind == RETRANSMITS
            r["flows_slow_connect"] += kind == SLOW_CONNECT
            r["flows_slow_path"] += kind == SLOW_PATH
            r["flows_slow_server"] += kind == SLOW_SERVER
        elif rec.failed:
            r["failures"][rec.outcome] = r["failures"].get(rec.outcome, 0) + 1
        r["bytes_tx"] += tx
        r["bytes_rx"] += rx
        r["retransmits"] += re
        if rec.srtt_us:
            rtts[k].append(rec.srtt_us)
        if rec.delivery_rate:
            rates[k].append(8 * rec.delivery_rate)
    for k, r in out.items():
        r["rtt_p50_us"] = round(percentile(rtts[k], 0.5))
        r["rtt_p95_us"] = round(percentile(rtts[k], 0.95))
        r["throughput_p50_bps"] = round(percentile(rates[k], 0.5))
        r["throughput_p05_bps"] = round(percentile(rates[k], 0.05))
    return sorted(out.values(), key=lambda r: (-r["flows"], r["key"]))
