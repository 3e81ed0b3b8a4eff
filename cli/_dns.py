"""``meshctl dns``: the host's DNS transactions as the node stored them (question, resolver, answer code,
latency, asking process), the newest that match, oldest first."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from meshnode.cli._client import Node
from meshnode.cli._convert import message_dict
from meshnode.cli._exceptions import EXIT_OK, UsageError
from meshnode.cli._output import console, emit, is_plain, print_json
from meshnode.cli._units import format_clock, format_count, format_us, parse_time_ns, printable, process
from meshnode.cli._views import table
from meshnode.v1 import observer_pb2

DEFAULT_SINCE_S = 15 * 60


def _flat(values: list[list[str]] | None) -> list[str]:
    return [v for group in values or [] for v in group]


def request(args: argparse.Namespace, now_ns: int) -> observer_pb2.DnsTransactionsRequest:
    """The request of the flags (values of one flag ORed, flags ANDed)."""
    since = 1 if args.since == "all" else parse_time_ns(args.since, now_ns) if args.since else 0
    until = parse_time_ns(args.until, now_ns) if args.until else 0
    if since and until and until < since:
        raise UsageError(f"--until ({args.until}) is before --since ({args.since})")
    return observer_pb2.DnsTransactionsRequest(
        since_ns=since, until_ns=until, names=_flat(args.name), rcodes=[r.upper() for r in _flat(args.rcode)],
        servers=_flat(args.server), failed_only=args.failed, limit=args.limit)


def resolver(t: Mapping[str, Any]) -> str:
    """``address:port`` of a transaction's resolver (IPv6 in brackets)."""
    host = f"[{t['server']}]" if ":" in t["server"] else t["server"]
    return f"{host}:{t['port']}"


def _span(doc: Mapping[str, Any]) -> str:
    """"from 02:16:22 to 02:31:22 UTC"; ``--since all`` asks from the first nanosecond: "up to ..." then."""
    until = f"{format_clock(doc['until_ns'])} UTC"
    return f"from {format_clock(doc['since_ns'])} to {until}" if doc["since_ns"] > 1 else f"up to {until}"


def dns_view(doc: Mapping[str, Any], *, wide: bool = False, plain: bool = False) -> RenderableType:
    """The transactions, a row per question, resolver and answer code between two sensor polls (N answers
    each), and how many answers they hold."""
    rows: Sequence[Mapping[str, Any]] = doc.get("transactions") or []
    t = table(plain=plain)
    t.add_column("TIME", width=8, no_wrap=True)
    t.add_column("PROCESS", width=12 if not wide else 20, no_wrap=True, overflow="ellipsis")
    t.add_column("RESOLVER", width=15 if not wide else 24, no_wrap=True, overflow="ellipsis")
    if wide:
        t.add_column("QUERY", min_width=24, overflow="fold")
    else:
        t.add_column("QUERY", width=15, no_wrap=True, overflow="ellipsis")
    t.add_column("TYPE", width=4, no_wrap=True)
    t.add_column("RCODE", width=8, no_wrap=True)
    # a row is one question's answers between two sensor polls: a process asking again soon adds to it
    t.add_column("N", width=3, justify="right", no_wrap=True)
    t.add_column("LATENCY", width=7, justify="right", no_wrap=True)
    if wide:
        t.add_column("MAX", width=7, justify="right", no_wrap=True)
        t.add_column("ADDRS", width=5, justify="right")
        t.add_column("PROTO", width=5)
    for r in rows:
        rcode = Text(r["rcode"], style="" if plain or not r["failed"] else "bold red")
        # names and addresses as Text: "[fd00::53]:53" is not rich markup (and printable: not a terminal command)
        cells: list[Any] = [format_clock(r["time_ns"]), Text(process(r["comm"], r["pid"])),
                            Text(printable(resolver(r))), Text(printable(r["query"]) or "?"),
                            Text(printable(r["qtype"])), rcode, format_count(r["answers"]), format_us(r["latency_us"])]
        if wide:
            cells += [format_us(r["latency_max_us"]), str(r["addresses"]), "tcp" if r["tcp"] else "udp"]
        t.add_row(*cells)
    # count answers, not rows: a row sums a question's answers within one poll
    answers = sum(r["answers"] for r in rows)
    failed = sum(r["answers"] for r in rows if r["failed"])
    plural = "s" if answers != 1 else ""
    note = (f"{format_count(answers)} answer{plural} ({format_count(failed)} failed) in {format_count(len(rows))} "
            f"row{'s' if len(rows) != 1 else ''} {_span(doc)}")
    if doc.get("matched", 0) > len(rows):
        note += f"; the newest of {format_count(doc['matched'])} rows that matched (--limit for more)"
    if not rows:
        return Text(f"no DNS transactions {_span(doc)}")
    return Group(t, Text(note))


def run(args: argparse.Namespace) -> int:
    """``meshctl dns``."""
    req = request(args, time.time_ns())
    with Node(args.node, timeout=args.timeout) as node:
        doc = message_dict(node.dns(req))
    if args.json:
        print_json(doc)
        return EXIT_OK
    c = console(wide=args.wide)
    emit(c, dns_view(doc, wide=args.wide, plain=is_plain(c)))
    return EXIT_OK
