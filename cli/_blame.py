"""``meshctl blame`` (and ``blame --compare``): the node's Diagnosis service, as a table or JSON.

Blame prints the one-line verdict, where the analysed regime begins (the latest change the node
detected), a note when the range asked begins before what the node holds, the ranked suspects with their
evidence (problem fraction, transactions, contributing hosts, problem kinds, example flows), then seed
004's taxonomy: how the node's own processes retry failing destinations (with the backoff suggestion), and
the discovery chatter left out of blame.
``--compare`` places this host among its peers for each destination instead.

JSON keeps the proto field names; an entity's ``kind`` is the short name (``dst_host``, ``path``...).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import grpc

from meshnode.cli._client import Node, translate
from meshnode.cli._convert import message_dict
from meshnode.cli._exceptions import EXIT_OK, NotAvailable, UsageError
from meshnode.cli._output import console, emit, is_plain, print_json
from meshnode.cli._units import parse_time_ns

if TYPE_CHECKING:
    from rich.console import RenderableType

    from meshnode.v1 import diagnosis_pb2

DIAGNOSIS_MISSING: Final = "this node has no diagnosis service (it runs an older meshnode; upgrade it)"
_KIND_PREFIX: Final = "entity_kind_"


def call_diagnosis(node: Node, method: str, req: Any) -> Any:
    """``Diagnosis.<method>(req)`` on ``node``; NotAvailable when the node has no Diagnosis service."""
    from meshnode.v1 import diagnosis_pb2_grpc

    # The channel is the Node's own: one connection, the same options and timeout as every other call.
    stub = diagnosis_pb2_grpc.DiagnosisStub(node._channel)  # type: ignore[no-untyped-call]
    try:
        return getattr(stub, method)(req, timeout=node.timeout)
    except grpc.RpcError as exc:
        if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise NotAvailable(DIAGNOSIS_MISSING) from exc
        raise translate(exc, node.address, f"Diagnosis.{method}", node.timeout) from exc


def _range(args: argparse.Namespace, now_ns: int) -> tuple[int, int]:
    since = parse_time_ns(args.since, now_ns) if args.since else 0
    until = parse_time_ns(args.until, now_ns) if args.until else 0
    if since and until and until < since:
        raise UsageError(f"--until ({args.until}) is before --since ({args.since})")
    return since, until


def blame_dict(resp: diagnosis_pb2.BlameResponse) -> dict[str, Any]:
    """The ``--json`` document of a BlameResponse: proto names, short entity kinds."""
    doc = message_dict(resp)
    for s in doc["suspects"]:
        kind = str(s["kind"])
        s["kind"] = kind[len(_KIND_PREFIX):] if kind.startswith(_KIND_PREFIX) else kind
    return doc


def run(args: argparse.Namespace) -> int:
    """``meshctl blame``."""
    from meshnode.v1 import diagnosis_pb2

    since, until = _range(args, time.time_ns())
    with Node(args.node, timeout=args.timeout) as node:
        if args.compare:
            creq = diagnosis_pb2.CompareRequest(destination=args.target or "", since_ns=since, until_ns=until,
                                                group_by=args.group_by)
            doc = message_dict(call_diagnosis(node, "Compare", creq))
            view: RenderableType | None = None if args.json else compare_view(doc, wide=args.wide)
        else:
            breq = diagnosis_pb2.BlameRequest(target=args.target or "", since_ns=since, until_ns=until,
                                              threshold=args.threshold or 0.0, max_suspects=args.max,
                                              whole_range=bool(getattr(args, "whole", False)))
            doc = blame_dict(call_diagnosis(node, "Blame", breq))
            view = None
    if args.json:
        print_json(doc)
        return EXIT_OK
    c = console(wide=args.wide)
    plain = is_plain(c)
    if view is None:
        view = blame_view(doc, wide=args.wide, plain=plain)
    emit(c, view)
    return EXIT_OK


# --- views ---------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    p = 100 * x
    return "100%" if p >= 99.95 else f"{p:.1f}%" if p < 10 else f"{p:.0f}%"


def _kinds(kinds: Mapping[str, int]) -> str:
    return " ".join(f"{k} {n}" for k, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))


def _example(e: Mapping[str, Any]) -> str:
    def ep(addr: str, port: int) -> str:
        return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"

    return f"{e['proto']} {ep(e['src'], e['sport'])} -> {ep(e['dst'], e['dport'])}"


def blame_view(doc: Mapping[str, Any], *, wide: bool = False, plain: bool = False) -> RenderableType:
    """Verdict, suspects (with evidence under each), retry advice and discovery chatter."""
    from rich.console import Group
    from rich.text import Text

    from meshnode.cli._units import format_clock, printable
    from meshnode.cli._views import table

    parts: list[RenderableType] = []
    suspects: Sequence[Mapping[str, Any]] = doc.get("suspects", [])
    head = Text("verdict: ", style="" if plain else "bold")
    head.append(str(doc.get("verdict", "")), style="" if plain else ("bold red" if suspects else "green"))
    parts.append(head)
    parts.append(Text(
        f"{doc.get('transactions', 0):,} transactions, {doc.get('problems', 0):,} with problems, from "
        f"{doc.get('hosts', 0)} host(s), {format_clock(doc.get('since_ns', 0))}-{format_clock(doc.get('until_ns', 0))}"
        f" UTC; threshold {_pct(doc.get('threshold', 0.0))}"))
    if doc.get("change"):
        parts.append(Text(f"analysed since {format_clock(doc.get('regime_since_ns', 0))} UTC, when "
                          f"{doc['change']} (--whole for the whole range)"))
    if doc.get("coverage"):
        parts.append(Text(f"note: {doc['coverage']}", style="" if plain else "yellow"))
    if suspects:
        t = table(plain=plain)
        t.add_column("#", width=2, justify="right")
        t.add_column("KIND", width=11, no_wrap=True, overflow="ellipsis")
        t.add_column("SUSPECT", width=None if wide else 26, no_wrap=not wide, overflow="ellipsis")
        t.add_column("PROBLEM", width=7, justify="right")
        t.add_column("TXNS", width=7, justify="right")
        t.add_column("HOSTS", width=5, justify="right")
        t.add_column("KINDS", min_width=10, no_wrap=not wide, overflow="ellipsis")
        for s in suspects:
            # as Text: a name is not rich markup ("[fd00::53]:53", a process named "[/bold]")
            name = Text(printable(str(s["name"])) + ("" if s.get("shared", True) else " ?"))
            t.add_row(str(s["rank"]), Text(printable(str(s["kind"]))), name, _pct(s["problem_fraction"]),
                      f"{s['transactions']:,}", str(len(s.get("hosts", []))), _kinds(s.get("problem_kinds", {})))
        parts += [Text(""), t]
        top = suspects[0]
        evidence = Text(f"evidence for #1 {printable(str(top['display']))}:\n")
        evidence.append(f"  hosts: {printable(', '.join(top.get('hosts', []))) or '-'}")
        if top.get("sites"):
            evidence.append(f"  ·  sites: {', '.join(top['sites'])}")
        dsts = top.get("problem_destinations", {})
        if dsts:
            shown = sorted(dsts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            evidence.append("\n  problems to: " + ", ".join(f"{d} ({n:,})" for d, n in shown))
        for e in top.get("examples", []):
            evidence.append(f"\n  e.g. {_example(e)}")
        if not top.get("shared", True):
            evidence.append("\n  (one client and one destination: the data cannot tell which end is at fault)")
        parts += [Text(""), evidence]
    advice = doc.get("retry_advice", [])
    if advice:
        parts.append(Text(""))
        parts.append(Text("retries (seed 004, outage inertia):", style="" if plain else "bold"))
        for a in advice[:5]:
            mark = "!" if a.get("suggest_backoff") else "-"
            parts.append(Text(f" {mark} {a['suggestion']}", style="" if plain or mark == "-" else "yellow"))
    chatter = doc.get("discovery", [])
    if chatter:
        parts.append(Text(""))
        parts.append(Text("discovery chatter, left out of blame: " + ", ".join(
            f"{d['comm'] or '?'} {d['protocol']} {d['flows']:,}" for d in chatter[:5])))
    scans = doc.get("scans", [])
    if scans:
        parts.append(Text(""))
        parts.append(Text("inbound scans, left out of blame: " + ", ".join(
            f"{s['src']} ({s['ports']:,} ports, {s['failures']:,} attempts)" for s in scans[:5])))
    return Group(*parts)


def compare_view(doc: Mapping[str, Any], *, wide: bool = False, plain: bool = False) -> RenderableType:
    """This host among its peers, per destination and metric."""
    from rich.console import Group
    from rich.text import Text

    from meshnode.cli._views import table

    parts: list[RenderableType] = [Text(f"{doc.get('host', '')} in {doc.get('group', '')}: {doc.get('verdict', '')}")]
    t = table(plain=plain)
    t.add_column("DESTINATION", width=21, no_wrap=True, overflow="ellipsis")
    t.add_column("METRIC", width=12, no_wrap=True)
    t.add_column("VALUE", width=10, justify="right")
    t.add_column("MEDIAN", width=10, justify="right")
    t.add_column("PEERS", width=5, justify="right")
    t.add_column("WORST", width=6, justify="right")
    t.add_column("", width=7)
    for d in doc.get("destinations", []):
        for m in d.get("metrics", []):
            t.add_row(d["destination"], m["metric"], _metric(m["metric"], m["value"]),
                      _metric(m["metric"], m["median"]), str(m["peers"]), _pct(m["worst_fraction"]),
                      "outlier" if m["outlier"] else "")
    if doc.get("destinations"):
        parts += [Text(""), t]
    return Group(*parts)


def _metric(name: str, value: float) -> str:
    if name.startswith("rtt"):
        return f"{value / 1000:.2f} ms"
    if name == "failure_rate":
        return _pct(value)
    if name == "throughput":
        return f"{value / 1e6:.1f} Mbit/s"
    return f"{value:g}"
