"""Trust commands: ``meshctl validate`` (per-node trust scores, flagged nodes, their evidence) and ``meshctl
peers`` with flagged members marked.

Both ask ``meshnode.v1.Trust/Validate`` on the node: its view of its peers, from comparing both ends of the
flows they share (issue 7). ``peers`` still works against a node without the trust service (nothing is marked
then). Views are rich renderables from plain data, 80 columns by default.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from meshnode.cli._client import Node
from meshnode.cli._commands import MESH_MISSING
from meshnode.cli._convert import message_dict
from meshnode.cli._exceptions import EXIT_OK, NotAvailable
from meshnode.cli._output import console, emit, is_plain, print_json
from meshnode.cli._units import format_clock

if TYPE_CHECKING:
    from rich.console import RenderableType

CHALLENGE_DEADLINE_MS = 60_000
TRUST_MISSING = "this node has no trust service (it runs an older meshnode; upgrade it)"


def _validate(node: Node, peer: str = "", max_evidence: int = 0) -> dict[str, Any]:
    from meshnode.v1 import trust_pb2

    return message_dict(node.validate(trust_pb2.ValidateRequest(peer=peer, max_evidence=max_evidence)))


def _challenge(node: Node, suspect: str, prober: str = "", count: int = 0, port: int = 0) -> dict[str, Any]:
    from meshnode.v1 import trust_pb2

    # the node answers as soon as the suspect's digests settle it (a few export periods); the deadline only
    # bounds an inconclusive wait, and the call's own deadline is a little longer (Node.challenge)
    doc = message_dict(node.challenge(trust_pb2.ChallengeRequest(suspect=suspect, prober=prober, count=count,
                                                                 port=port, deadline_ms=CHALLENGE_DEADLINE_MS)))
    doc["verdict"] = str(doc.get("verdict", "")).removeprefix("challenge_")
    return doc


def cmd_challenge(args: argparse.Namespace, node: Node) -> int:
    try:
        doc = _challenge(node, args.challenge, args.prober, args.count, args.port)
    except NotAvailable:
        raise NotAvailable(TRUST_MISSING) from None
    if args.json:
        print_json(doc)
        return EXIT_OK
    c = console(wide=args.wide)
    emit(c, challenge_view(doc, wide=args.wide, plain=is_plain(c)))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace, node: Node) -> int:
    if getattr(args, "challenge", None):
        return cmd_challenge(args, node)
    try:
        doc = _validate(node, args.peer or "", args.max_evidence)
    except NotAvailable:
        raise NotAvailable(TRUST_MISSING) from None
    if args.json:
        print_json(doc)
        return EXIT_OK
    c = console(wide=args.wide)
    emit(c, validate_view(doc, wide=args.wide, plain=is_plain(c)))
    return EXIT_OK


def mark_flagged(peers: Mapping[str, Any], trust: Mapping[str, Any] | None) -> dict[str, Any]:
    """The PeersResponse dict with ``flagged`` and ``trust_score`` on each peer, from a ValidateResponse dict
    (None: the node has no trust service; every peer unflagged, score None)."""
    scores = {s["node_id"]: s for s in (trust or {}).get("scores", [])}
    out = dict(peers)
    out["peers"] = []
    for p in peers.get("peers", []):
        s = scores.get(p["node_id"])
        out["peers"].append({**p, "flagged": bool(s and s["flagged"]),
                             "trust_score": None if trust is None else (s["score"] if s else 1.0)})
    return out


def cmd_peers_marked(args: argparse.Namespace, node: Node) -> int:
    try:
        peers = message_dict(node.peers())
    except NotAvailable:
        raise NotAvailable(MESH_MISSING) from None
    try:
        trust: dict[str, Any] | None = _validate(node, max_evidence=1)
    except NotAvailable:
        trust = None
    doc = mark_flagged(peers, trust)
    if args.json:
        print_json(doc)
        return EXIT_OK
    from meshnode.cli._views import peers_view

    c = console(wide=args.wide)
    emit(c, peers_view(doc, wide=args.wide, plain=is_plain(c)))
    return EXIT_OK


# --- views ---------------------------------------------------------------------------------------------

def _short(node_id: str, wide: bool) -> str:
    return node_id if wide else node_id[:8]


def _flow(e: Mapping[str, Any]) -> str:
    def end(addr: str, port: int) -> str:
        return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"

    if not e["proto"]:  # not about a flow: an address the reporter published as its own
        return str(e["src"])
    return f"{e['proto']} {end(e['src'], e['sport'])}→{end(e['dst'], e['dport'])}"


def scores_table(scores: Sequence[Mapping[str, Any]], *, wide: bool = False, plain: bool = False) -> RenderableType:
    """One row per peer with evidence against it, lowest score first."""
    from rich.text import Text

    from meshnode.cli._views import table

    t = table(plain=plain, title="TRUST SCORES")
    t.add_column("NODE", width=16 if wide else 8, no_wrap=True)
    t.add_column("SCORE", width=5, justify="right")
    t.add_column("STATE", width=7, no_wrap=True)
    t.add_column("PENALTIES", width=9, justify="right")
    t.add_column("LAST", width=8, no_wrap=True)
    for s in scores:
        flagged = s["flagged"]
        t.add_row(_short(s["node_id"], wide), f"{s['score']:.2f}",
                  Text("FLAGGED" if flagged else ("low" if s["score"] < 1.0 else "ok"),
                       style="" if plain else ("bold red" if flagged else "yellow")),
                  str(s["evidence"]), format_clock(s["last_evidence_ns"]) if s["last_evidence_ns"] else "-")
    return t


def evidence_table(evidence: Sequence[Mapping[str, Any]], *, wide: bool = False, plain: bool = False,
                   limit: int = 20) -> RenderableType:
    """The newest evidence: the reporter's claim about a flow (its end first) against what the witness, at the
    other end, recorded; ``*`` marks the end held responsible (neither when the blame was shared)."""
    from meshnode.cli._views import fit_left, table

    ids = 17 if wide else 9
    flow = 60 if wide else 34
    t = table(plain=plain, title="EVIDENCE (newest first; * = blamed)")
    t.add_column("REPORTER", width=ids, no_wrap=True)
    t.add_column("WITNESS", width=ids, no_wrap=True)
    t.add_column("FLOW", width=flow, no_wrap=True)
    t.add_column("FIELD", width=9, no_wrap=True, overflow="ellipsis")
    t.add_column("CLAIMED", width=7, justify="right", no_wrap=True, overflow="ellipsis")
    t.add_column("SEEN", width=7, justify="right", no_wrap=True, overflow="ellipsis")
    if wide:
        t.add_column("REASON", min_width=24, no_wrap=True)
    for e in evidence[:limit]:
        row = [_short(e["reporter"], wide) + ("*" if e["blamed"] == e["reporter"] else ""),
               _short(e["witness"], wide) + ("*" if e["blamed"] == e["witness"] else ""),
               fit_left(_flow(e), flow), e["field"], e["claimed"], e["witnessed"]]
        if wide:
            row.append(f"{e['reason']} ({e['severity']})")
        t.add_row(*row)
    return t


def validate_view(v: Mapping[str, Any], *, wide: bool = False, plain: bool = False) -> RenderableType:
    """``meshctl validate``: scores, flagged nodes, the evidence behind them, the validator's counters."""
    from rich.console import Group
    from rich.text import Text

    threshold = v.get("threshold", 0.0)
    scores = v.get("scores", [])
    flagged = [s["node_id"] for s in scores if s["flagged"]]
    parts: list[RenderableType] = []
    if flagged:
        parts.append(Text(f"flagged (left out of fleet aggregates): {', '.join(_short(n, wide) for n in flagged)}",
                          style="" if plain else "bold red"))
    else:
        parts.append(Text("no node flagged: every peer's reports agree with the other ends of its flows"
                          if not scores else "no node flagged"))
    if scores:
        parts += [Text(""), scores_table(scores, wide=wide, plain=plain)]
    evidence = v.get("evidence", [])
    if evidence:
        parts += [Text(""), evidence_table(evidence, wide=wide, plain=plain)]
    counters = v.get("counters") or {}
    keys = ("claims_checked", "claims_matched", "evidence", "digests_validated")
    foot = " · ".join(f"{k} {counters.get(k, 0):,}" for k in keys)
    unverifiable = sum(n for k, n in counters.items() if k.startswith("unverifiable_"))
    parts += [Text(""), Text(f"threshold {threshold:.2f} · {foot} · unverifiable {unverifiable:,}")]
    return Group(*parts)


def challenge_view(c: Mapping[str, Any], *, wide: bool = False, plain: bool = False) -> RenderableType:
    """``meshctl validate --challenge``: the verdict, who probed what, and the counts behind it."""
    from rich.console import Group
    from rich.text import Text

    verdict = c.get("verdict", "unknown")
    style = "" if plain else {"passed": "bold green", "failed": "bold red"}.get(verdict, "yellow")
    took = (c["finished_ns"] - c["started_ns"]) / 1e9 if c.get("finished_ns") and c.get("started_ns") else 0.0
    lines = [
        Text(f"challenge of {_short(c['suspect'], wide)}: {verdict.upper()}", style=style),
        Text(c.get("detail", "")),
        Text(""),
        Text(f"prober     {_short(c['prober'], wide)} connected {c['connected']} of {c['attempts']} times "
             f"to {c['target']}"),
        Text(f"reported   {c['reported']} by the suspect (tolerance {c['tolerance']}) in {c['digests']} digest(s), "
             f"{took:.1f} s"),
        Text(f"trust now  {c['score']:.2f}" + (" FLAGGED" if c.get("flagged") else "")),
    ]
    return Group(*lines)


def run(args: argparse.Namespace) -> int:
    """Run ``validate`` or ``peers`` against ``args.node``."""
    with Node(args.node, timeout=args.timeout) as node:
        if args.command == "validate":
            return cmd_validate(args, node)
        return cmd_peers_marked(args, node)
