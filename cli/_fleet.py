"""``meshctl flows --fleet`` (and ``meshctl query --fleet``): flow records from every member's own store.

The node asked fans the query out and merges the answers (``Mesh.FleetFlows``); meshctl follows page tokens
up to ``--limit``, prints each record with the host it came from, and ends with who answered, who did not
(and why) and who was left out as untrusted. With ``--json``: the ``meshctl flows --json`` lines with a
``host`` key after ``node_id``, then one ``{"summary": {...}}`` object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _esc
from typing import TYPE_CHECKING, Any, TextIO

from meshnode.cli._convert import flow_json_line
from meshnode.cli._exceptions import EXIT_OK, UsageError

if TYPE_CHECKING:
    from meshnode.cli._client import Node
    from meshnode.v1 import flow_pb2, mesh_pb2

HOST_WIDTH = 12
MAX_PAGE = 5_000
"""The largest page a node merges (``FleetFlowsRequest.flows.number``)."""


def selector(where: Iterable[str]) -> dict[str, str]:
    """``--where LABEL=VALUE`` flags as a label selector."""
    out: dict[str, str] = {}
    for item in where:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--where '{item}' is not LABEL=VALUE (example: --where region=eu-west)")
        out[key] = value
    return out


def json_line(f: flow_pb2.Flow, host: str) -> str:
    """The ``meshctl flows --json`` line of ``f`` with ``"host"`` after ``"node_id"``."""
    line = flow_json_line(f)
    cut = line.index(',"src":')
    return f'{line[:cut]},"host":{_esc(host)}{line[cut:]}'


LEFT_SITE = "left its site"
"""A site relay's status for a member that left its site: listed apart, the answer is not partial for it."""


@dataclass
class Summary:
    """Who answered across all pages: a node is missing when it did not answer one of them."""

    records: int = 0
    pages: int = 0
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    untrusted: set[str] = field(default_factory=set)
    more: bool = False

    def add(self, resp: mesh_pb2.FleetFlowsResponse, shown: int) -> None:
        self.pages += 1
        self.records += shown
        for n in resp.nodes:
            # a site nobody answered for has no node id: its error names it
            d = self.nodes.setdefault(n.node_id or n.error, {"node_id": n.node_id, "host": n.host, "records": 0,
                                                             "answered": True, "error": "", "via": n.via})
            d["records"] += n.records
            if not n.answered:
                d["answered"], d["error"] = False, n.error
        self.untrusted.update(resp.excluded)

    def hosts(self) -> dict[str, str]:
        return {nid: d["host"] for nid, d in self.nodes.items()}

    def doc(self) -> dict[str, Any]:
        nodes = sorted(self.nodes.values(), key=lambda d: (d["host"], d["node_id"]))
        missing = [d for d in nodes if not d["answered"] and d["error"] != LEFT_SITE]
        return {
            "records": self.records, "pages": self.pages, "partial": bool(missing), "more": self.more,
            "answered": [{k: d[k] for k in ("node_id", "host", "records", "via")} for d in nodes if d["answered"]],
            "missing": [{k: d[k] for k in ("node_id", "host", "error", "via")} for d in missing],
            "left": [{k: d[k] for k in ("node_id", "host", "via")} for d in nodes if d["error"] == LEFT_SITE],
            "untrusted": sorted(self.untrusted),
        }


def footer(doc: Mapping[str, Any]) -> list[str]:
    """The lines under the records: answered, missing (with why), untrusted (not asked)."""
    def name(d: Mapping[str, Any]) -> str:
        return str(d["host"] or d["node_id"])

    answered = doc["answered"]
    lines = [f"{doc['records']:,} records from {len(answered)} node{'s' if len(answered) != 1 else ''}: "
             + (", ".join(f"{name(d)} ({d['records']:,})" for d in answered) or "none")]
    if doc["missing"]:
        lines.append(f"missing {len(doc['missing'])} (their records are not shown): "
                     + ", ".join(f"{name(d)} ({d['error']})" if name(d) else str(d["error"])
                                 for d in doc["missing"]))
    if doc["left"]:
        lines.append(f"left their site, not asked {len(doc['left'])}: " + ", ".join(name(d) for d in doc["left"]))
    if doc["untrusted"]:
        lines.append(f"untrusted, not asked {len(doc['untrusted'])}: " + ", ".join(doc["untrusted"]))
    if doc["more"]:
        lines.append("more records match: use --limit N (or a narrower --since)")
    return lines


def text_lines(flows: Sequence[flow_pb2.Flow], hosts: Mapping[str, str], *, wide: bool, header: bool) -> list[str]:
    """``meshctl flows`` lines with a HOST column first."""
    from meshnode.cli._flowtext import FlowPrinter, flows_text

    printer = FlowPrinter(wide=wide)
    got = flows_text(flows, wide=wide, header=header, width=200 if wide else 80, row_line=printer._rich_row)
    assert got is not None  # with row_line, every row has a line
    lines = got[0]
    out = []
    if header:
        out.append(f"{'HOST':<{HOST_WIDTH}} {lines[0]}")
        lines = lines[1:]
    for f, line in zip(flows, lines, strict=True):
        host = hosts.get(f.node_id, "") or f.node_id
        host = host if len(host) <= HOST_WIDTH else host[: HOST_WIDTH - 1] + "…"
        out.append(f"{host:<{HOST_WIDTH}} {line}")
    return out


def run(args: argparse.Namespace, node: Node, since: int, until: int, out: TextIO | None = None) -> int:
    """Ask ``node`` for the fleet's records and print them (text or JSON Lines) and the summary."""
    from meshnode.v1 import mesh_pb2

    out = out or sys.stdout
    if getattr(args, "follow", False):
        raise UsageError("--fleet and --follow conflict: a fleet query has an end")
    limit = args.limit
    req = mesh_pb2.FleetFlowsRequest(selector=selector(args.where), deadline_ms=int(args.deadline * 1000),
                                     per_site=args.per_site)
    req.flows.number = min(limit, MAX_PAGE) if limit else 0
    req.flows.since_ns, req.flows.until_ns = since, until
    req.flows.include_interim = args.interim
    from meshnode.cli._commands import flow_filter

    f = flow_filter(args)
    if f is not None:
        req.flows.whitelist.append(f)
    summary = Summary()
    header = True
    for resp in node.fleet_flows(req, limit):
        flows = list(resp.flows)[: limit - summary.records] if limit else list(resp.flows)
        summary.add(resp, len(flows))
        summary.more = bool(resp.next_page_token)
        hosts = summary.hosts()
        if args.json:
            out.write("".join(json_line(x, hosts.get(x.node_id, "")) for x in flows))
        elif flows:
            out.write("\n".join(text_lines(flows, hosts, wide=args.wide, header=header)) + "\n")
            header = False
    doc = summary.doc()
    if args.json:
        out.write(json.dumps({"summary": doc}) + "\n")
        return EXIT_OK
    if header:
        out.write("no flows match" + (f" since {args.since}" if args.since else "") + "\n")
    out.write("\n".join(footer(doc)) + "\n")
    return EXIT_OK
