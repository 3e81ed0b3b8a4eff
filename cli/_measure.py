"""``meshctl measure``: run an active task on a member (``Mesh.Measure``), or list the results it stored.

``--from`` picks the member: a node id (or its first digits) or a ``host`` label, found in the asked node's
``Mesh.Peers``, or a node's ``HOST:PORT``; meshctl then calls that member directly (signed for it, as fleet
queries are), so the task runs, is accounted and is stored there. The views render what the node measured.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from meshnode.cli._client import Node
from meshnode.cli._commands import MESH_MISSING
from meshnode.cli._convert import message_dict
from meshnode.cli._exceptions import EXIT_OK, NotAvailable, UsageError
from meshnode.cli._output import console, emit, is_plain, print_json
from meshnode.cli._units import format_bytes, format_clock, format_us, parse_time_ns

if TYPE_CHECKING:
    from rich.console import RenderableType

KIND_PREFIX = "measure_"
PATH_DEADLINE_S = 30 * 1.0
"""A path probe's longest run at the node's default: 30 hops of 1 s."""


def resolve_member(peers: Mapping[str, Any], name: str) -> tuple[str, str]:
    """(node id, mesh address) of the member ``name`` names in a PeersResponse dict: its node id, a unique
    prefix of it, or its ``host`` label. Raises UsageError naming the candidates."""
    members = peers.get("peers", [])
    exact = [p for p in members if p["node_id"] == name or p.get("labels", {}).get("host") == name]
    found = exact or [p for p in members if p["node_id"].startswith(name)]
    if len(found) == 1:
        return found[0]["node_id"], found[0]["addr"]
    if not found:
        known = ", ".join(f"{p['node_id'][:8]} ({p.get('labels', {}).get('host', '-')})" for p in members[:10])
        raise UsageError(f"--from {name}: no member has that node id or host label (members: {known or 'none'})")
    raise UsageError(f"--from {name}: {len(found)} members match ({', '.join(p['node_id'] for p in found[:5])}); "
                     "give more of the node id")


def _request(args: argparse.Namespace) -> Any:
    from meshnode.v1 import mesh_pb2

    if not args.target:
        raise UsageError("--to TARGET is missing: HOST:PORT, or a member's node id or host label")
    kind = {"connect": mesh_pb2.MEASURE_CONNECT, "rtt": mesh_pb2.MEASURE_RTT, "path": mesh_pb2.MEASURE_PATH}[args.kind]
    return mesh_pb2.MeasureRequest(target=args.target, port=args.port, count=args.count, kind=kind,
                                   max_hops=args.max_hops, timeout_ms=int(args.wait * 1000))


def _deadline(args: argparse.Namespace) -> float:
    """How long the task may take at the node, as the request bounds it."""
    wait = args.wait or 2.0
    if args.kind == "path":
        return (args.max_hops or 16) * (args.wait or 1.0)
    return (args.count or 5) * (wait + 0.05)


def result_dict(r: Mapping[str, Any]) -> dict[str, Any]:
    """A MeasureResponse dict with ``kind`` as the command line names it (``connect``, ``rtt``, ``path``)."""
    out = dict(r)
    out["kind"] = str(out.get("kind", "")).removeprefix(KIND_PREFIX)
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``measure`` against ``args.node`` (or the member ``--from`` names)."""
    with Node(args.node, timeout=args.timeout) as asked:
        if not args.source or args.source == args.node:
            return _on(args, asked)
        if ":" in args.source and args.source.rpartition(":")[2].isdigit():
            addr = args.source
        else:
            try:
                peers = message_dict(asked.peers())
            except NotAvailable:
                raise NotAvailable(MESH_MISSING) from None
            _, addr = resolve_member(peers, args.source)
    with Node(addr, timeout=args.timeout) as member:
        return _on(args, member)


def _on(args: argparse.Namespace, node: Node) -> int:
    from meshnode.v1 import mesh_pb2

    try:
        if args.list:
            since = parse_time_ns(args.since, time.time_ns()) if args.since else 0
            got = node.measurements(mesh_pb2.MeasurementsRequest(since_ns=since, number=args.limit))
            doc = {"measurements": [result_dict(message_dict(m)) for m in got.measurements],
                   "evicted": got.evicted}
        else:
            doc = result_dict(message_dict(node.measure(_request(args), _deadline(args))))
    except NotAvailable:
        raise NotAvailable(MESH_MISSING) from None
    if args.json:
        print_json(doc)
        return EXIT_OK
    c = console(wide=args.wide)
    if args.list:
        emit(c, measurements_view(doc, wide=args.wide, plain=is_plain(c)))
    else:
        emit(c, measure_view(doc, wide=args.wide, plain=is_plain(c)))
    return EXIT_OK


# --- views ---------------------------------------------------------------------------------------------

def _summary(r: Mapping[str, Any], errors: bool = True, node: bool = True) -> str:
    """One line: what was measured (from which node), and the headline numbers."""
    who = f"{r['node_id'][:8]} -> {r['target']}" if node else r["target"]
    failed = ", ".join(f"{k} {v}" for k, v in sorted(r.get("errors", {}).items()))
    if r["kind"] == "path":
        hops = r.get("hops", [])
        end = "reached" if r.get("reachable") else "not reached"
        return f"path {who}: {len(hops)} hop(s), {end}"
    series = r.get("rtt_us") if r["kind"] == "rtt" else r.get("connect_us")
    values = sorted(series or [])
    figures = (f"min {format_us(values[0])} p50 {format_us(r.get('p50_us', 0))} max {format_us(values[-1])}"
               if values else "no answer")
    head = f"{r['kind']} {who}: {r['reachable']}/{r['attempts']} connected, {figures}"
    return head + (f"; errors: {failed}" if failed and errors else "")


def measure_view(r: Mapping[str, Any], *, wide: bool = False, plain: bool = False) -> RenderableType:
    """One result: its summary, then the hops (path) or the series (connect, rtt)."""
    from rich.console import Group
    from rich.text import Text

    from meshnode.cli._views import table

    parts: list[RenderableType] = [Text(_summary(r, errors=False))]
    if r.get("errors"):
        parts.append(Text("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items()))))
    if r["kind"] == "path":
        t = table(plain=plain)
        t.add_column("TTL", width=3, justify="right")
        t.add_column("ADDRESS", width=39 if wide else 24, no_wrap=True, overflow="ellipsis")
        t.add_column("RTT", width=7, justify="right")
        t.add_column("ANSWER", width=13, no_wrap=True)
        for h in r.get("hops", []):
            t.add_row(str(h["ttl"]), h["addr"] or "*", format_us(h["rtt_us"]), h["status"])
        parts.append(t)
    else:
        series = r.get("rtt_us") if r["kind"] == "rtt" else r.get("connect_us")
        if series:
            what = "handshake RTT (kernel)" if r["kind"] == "rtt" else "connect time"
            parts.append(Text(f"{what}: " + " ".join(format_us(v) for v in series)))
    foot = f"stored as #{r['id']} at {format_clock(r['time_ns'])}" if r.get("id") else "not stored"
    parts.append(Text(foot + (f", asked by {r['requester']}" if r.get("requester") else ""),
                      style="" if plain else "dim"))
    return Group(*parts)


def measurements_view(d: Mapping[str, Any], *, wide: bool = False, plain: bool = False) -> RenderableType:
    """Stored results, newest first: one line each."""
    from rich.console import Group
    from rich.text import Text

    from meshnode.cli._views import table

    t = table(plain=plain)
    t.add_column("ID", min_width=5, justify="right", no_wrap=True)
    t.add_column("TIME", min_width=8, no_wrap=True)
    t.add_column("RESULT", ratio=1, no_wrap=not wide, overflow="ellipsis")
    for r in d.get("measurements", []):
        t.add_row(str(r["id"]), format_clock(r["time_ns"]), _summary(r, node=False))
    parts: list[RenderableType] = [t]
    if not d.get("measurements"):
        parts = [Text("no stored results")]
    if d.get("evicted"):
        parts.append(Text(f"{d['evicted']} older result(s) evicted by the store's bound"))
    return Group(*parts)


def accounts_view(accounts: list[Mapping[str, Any]], *, wide: bool = False, plain: bool = False) -> RenderableType:
    """Seed 003's accounting: per requester, what this node served it and asked of it, refusals, quotas."""
    from meshnode.cli._views import table

    t = table(plain=plain)
    t.add_column("ACCOUNT", width=17 if wide else 16, no_wrap=True, overflow="ellipsis")
    t.add_column("SERVED t/q", width=10, justify="right", no_wrap=True)
    t.add_column("BYTES", width=8, justify="right", no_wrap=True)
    t.add_column("ASKED t/q", width=10, justify="right", no_wrap=True)
    t.add_column("BYTES", width=8, justify="right", no_wrap=True)
    t.add_column("REFUSED", width=7, justify="right", no_wrap=True)
    t.add_column("QUOTA/h", width=10, justify="right", no_wrap=True)
    for a in accounts:
        quota = "/".join(str(q) if q else "-" for q in (a["quota_tasks"], a["quota_queries"]))
        t.add_row(a["peer"], f"{a['served_tasks']}/{a['served_queries']}", format_bytes(a["served_bytes"]),
                  f"{a['asked_tasks']}/{a['asked_queries']}", format_bytes(a["asked_bytes"]), str(a["refused"]), quota)
    return t
