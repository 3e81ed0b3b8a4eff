"""Rich renderables for the one-shot commands, built from plain data (the ``--json`` dicts).

Every view fits 80 columns unless ``wide``; with ``plain`` (stdout is not a terminal) tables have no box
characters. Tests render them into ``Console(file=io.StringIO(), width=80)`` and compare text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from meshnode.cli._flowtext import outcome_label
from meshnode.cli._units import (
    format_bytes,
    format_clock,
    format_count,
    format_percent,
    format_seconds,
    format_us,
    printable,
    process,
)

FAILED: Final = frozenset({"refused", "timeout", "reset", "udp_unanswered"})
OUTCOME_LABEL: Final = {
    "established": "established", "refused": "refused", "timeout": "timeout", "reset": "reset",
    "udp_answered": "udp ok", "udp_unanswered": "udp no-ans", "in_progress": "in progress",
}
_OUTCOME_STYLE: Final = {
    "established": "green", "udp_answered": "green", "in_progress": "yellow",
    "refused": "bold red", "timeout": "bold red", "reset": "bold red", "udp_unanswered": "red",
}


def table(*, plain: bool, header: bool = True, title: str | None = None, boxed: bool | None = None) -> Table:
    """A borderless table with one space between columns; a rule under the header on terminals
    (unless ``boxed`` is False)."""
    if boxed is None:
        boxed = not plain
    return Table(
        box=box.SIMPLE_HEAD if boxed else None,
        show_header=header,
        header_style="" if plain else "bold",
        pad_edge=False,
        # Box characters separate columns with one space on terminals; without a box, padding does.
        padding=(0, 0, 0, 0) if boxed else (0, 1, 0, 0),
        show_edge=False,
        title=title,
        title_justify="left",
        title_style="" if plain else "bold",
        expand=False,
    )


def endpoint(addr: str, port: int, width: int = 21) -> str:
    """``10.0.0.2:443``, ``[fd00::2]:443``; cut from the left to ``width`` so the port always shows
    (``…6e6c:6162:1::2]:7000``)."""
    host = f"[{addr}]" if ":" in addr else addr
    return fit_left(f"{host}:{port}" if port else host, width)


def fit_left(text: str, width: int) -> str:
    """``text`` within ``width`` columns, shortened at the start: in an address:port the end matters most."""
    return text if width <= 0 or len(text) <= width else "…" + text[len(text) - width + 1:]


def outcome_text(outcome: str, icmp_unreachable: int = 0) -> Text:
    """The outcome's short label (``cli._flowtext.outcome_label``), red when the flow failed."""
    return Text(outcome_label(outcome, icmp_unreachable), style=_OUTCOME_STYLE.get(outcome, ""))


# --- flows ---------------------------------------------------------------------------------------------

def flows_table(rows: Sequence[Mapping[str, Any]], *, wide: bool = False, plain: bool = False,
                header: bool = True) -> Table:
    """Flow records as a table; the widths are fixed so that batches printed one by one line up."""
    t = table(plain=plain, header=header)
    t.add_column("TIME", width=8, no_wrap=True)
    pw = 14 if not wide else 20
    t.add_column("PROCESS", width=pw, no_wrap=True, overflow="ellipsis")
    if wide:
        t.add_column("SOURCE", width=21, no_wrap=True, overflow="ellipsis")
        t.add_column("DIR", width=3, no_wrap=True)
        t.add_column("PROTO", width=5, no_wrap=True)
    t.add_column("DESTINATION", width=21, no_wrap=True, overflow="ellipsis")
    t.add_column("OUTCOME", width=11, no_wrap=True)
    t.add_column("TX", width=7, justify="right", no_wrap=True)
    t.add_column("RX", width=7, justify="right", no_wrap=True)
    t.add_column("RTT", width=6, justify="right", no_wrap=True)
    if wide:
        t.add_column("RETX", width=5, justify="right", no_wrap=True)
        t.add_column("DUR", width=7, justify="right", no_wrap=True)
        t.add_column("KIND", width=7, no_wrap=True)
        t.add_column("SERVICE", width=8, no_wrap=True, overflow="ellipsis")
        t.add_column("CGROUP", min_width=10, no_wrap=True, overflow="ellipsis")
    for r in rows:
        cells: list[RenderableType] = [
            format_clock(r["end_ns"] or r["start_ns"]),
            process(r["comm"], r["pid"], pw, r.get("thread", "")),
        ]
        if wide:
            cells += [endpoint(r["src"], r["sport"], 21), {"outbound": "out", "inbound": "in"}.get(
                r["direction"], "?"), r["proto"]]
        cells += [
            endpoint(r.get("remote_name") or r["dst"], r["dport"]),  # the name the host resolved, if any
            outcome_text(r["outcome"], r.get("icmp_unreachable", 0)),
            format_bytes(r["bytes_tx"]),
            format_bytes(r["bytes_rx"]),
            format_us(r["srtt_us"]),
        ]
        if wide:
            dur_ns = r["end_ns"] - r["start_ns"] if r["end_ns"] and r["start_ns"] else 0
            cells += [
                str(r["retransmits"]),
                (format_us(dur_ns / 1000) if dur_ns < 60 * 10**9 else format_seconds(dur_ns / 1e9))
                if dur_ns > 0 else "-",
                r["kind"],
                r["service"] or "-",
                r["cgroup"] or "-",
            ]
        t.add_row(*cells)
    return t


# --- events --------------------------------------------------------------------------------------------

def event_detail(e: Mapping[str, Any]) -> str:
    """The event's measure in words: ``burst of 5``, ``rtt 1.2ms -> 40ms``, the drop reason."""
    kind, value, detail = e["type"], e["value"], e["detail"]
    if detail:
        return str(detail)
    if kind == "rtt_shift":
        return f"rtt {format_us(value)}"
    if value:
        return f"{value:g}"
    return ""


def events_table(rows: Sequence[Mapping[str, Any]], *, wide: bool = False, plain: bool = False,
                 header: bool = True) -> Table:
    """Events as a table of fixed widths (streams print one per batch)."""
    t = table(plain=plain, header=header)
    t.add_column("TIME", width=8, no_wrap=True)
    t.add_column("EVENT", width=16, no_wrap=True, overflow="ellipsis")
    pw = 14 if not wide else 20
    t.add_column("PROCESS", width=pw, no_wrap=True, overflow="ellipsis")
    t.add_column("DESTINATION", width=21, no_wrap=True, overflow="ellipsis")
    # the last column: fixed in the 80-column layout, as wide as the screen allows in wide mode
    if wide:
        t.add_column("DETAIL", min_width=15, no_wrap=True, overflow="ellipsis")
    else:
        t.add_column("DETAIL", width=15, no_wrap=True, overflow="ellipsis")
    for e in rows:
        f = e.get("flow") or {}
        t.add_row(
            format_clock(e["time_ns"]),
            Text(e["type"], style="" if e["type"] in ("rtt_shift", "zero_window") else "red"),
            process(f.get("comm", ""), f.get("pid", 0), pw, f.get("thread", "")),
            endpoint(f.get("dst", ""), f.get("dport", 0)) if f.get("dst") else "-",
            event_detail(e),
        )
    return t


# --- status --------------------------------------------------------------------------------------------

LOSS_COUNTERS: Final = ("lost_events", "map_evictions", "ringbuf_overruns", "events_dropped",
                        "unattributed_drops", "incomplete_periods", "dns_dropped")


def completeness_text(c: Mapping[str, Any] | None, *, keys: Iterable[str] | None = None) -> Text:
    """``lost_events 0 · map_evictions 3 ...``; counts of lost things in red when not zero."""
    out = Text()
    if not c:
        return Text("-")
    names = list(keys) if keys is not None else list(c)
    for i, k in enumerate(names):
        if i:
            out.append(" · ")
        v = int(c.get(k, 0))
        out.append(f"{k} ")
        out.append(format_count(v), style="bold red" if v and k in LOSS_COUNTERS else "")
    return out


def status_view(s: Mapping[str, Any], *, wide: bool = False, plain: bool = False) -> RenderableType:
    """The node's status as a two-column grid."""
    g = Table.grid(padding=(0, 2))
    g.add_column(style="" if plain else "bold", no_wrap=True)
    g.add_column(overflow="fold")
    host = s.get("host") or ""
    g.add_row("node", f"{s['node_id'] or '?'}{f' (host {host})' if host and host != s['node_id'] else ''}  "
              f"meshnode {s['version'] or '?'}, up {format_seconds(s['uptime_s'])}")
    security = "INSECURE: plaintext, no client certificates" if s["insecure"] else "mutual TLS"
    g.add_row("listen", Text.assemble(f"{s['listen'] or '?'}  ",
                                      (security, "bold red" if s["insecure"] and not plain else "")))
    sensor = f"{s['sensor_mode'] or '?'}, {s['fidelity']} fidelity"
    if s["sensor_reason"]:
        sensor += f" ({s['sensor_reason']})"
    g.add_row("sensor", sensor)
    g.add_row("scope", s["scope"] or "-")
    g.add_row("export", f"every {format_seconds(s['export_period_s'])}, {format_count(s['periods'])} "
              "periods closed")
    g.add_row("flows", f"{format_count(s['active_flows'])} active")
    g.add_row("store", f"{format_bytes(s['store_bytes'])}, {format_count(s['store_rows'])} rows in "
              f"{s['data_dir'] or '?'}")
    labels = s.get("labels") or {}
    g.add_row("labels", " ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-")
    for e in s.get("exporters") or []:
        g.add_row(e["name"], exporter_text(e, plain=plain))
    c = s.get("completeness") or {}
    lost = [k for k in LOSS_COUNTERS if k in c]
    other = [k for k in c if k not in LOSS_COUNTERS]
    g.add_row("lost", completeness_text(c, keys=lost))
    g.add_row("counted", completeness_text(c, keys=other))
    return g


def exporter_text(e: Mapping[str, Any], *, plain: bool = False) -> Text:
    """One exporter's line and its last error, in red while it fails:
    ``clickhouse://h:9000/net  sent 12 batches (3,400 rows) · queued 0 · dropped 0`` (batches of a spool), or
    ``http://127.0.0.1:4317  exported 1,204 · failed 0 · dropped 0 · pending 0 · requests 31 ok, 0 failed``
    (OTLP's records; failed and dropped in red when not zero)."""
    c = {k: int(v) for k, v in (e.get("counters") or {}).items()}
    text = Text(f"{e.get('target') or '?'}  ")
    if "records_exported" in c:
        for i, (label, key) in enumerate((("exported", "records_exported"), ("failed", "records_failed"),
                                          ("dropped", "records_dropped"), ("pending", "records_pending"))):
            v = c.get(key, 0)
            text.append((" · " if i else "") + f"{label} ")
            text.append(format_count(v), style="bold red" if v and label in ("failed", "dropped") and not plain
                        else "")
        text.append(f" · requests {format_count(c.get('requests_ok', 0))} ok, "
                    f"{format_count(c.get('requests_failed', 0))} failed")
        if c.get("flows_folded"):
            text.append(f" · folded {format_count(c['flows_folded'])}")
    else:
        def part(what: str) -> str:
            batches, rows = c.get(f"{what}_batches", 0), c.get(f"{what}_rows", 0)
            out = f"{what} {format_count(batches)} batches ({format_count(rows)} rows)" if batches or rows \
                else f"{what} 0"
            if what == "queued" and c.get("queued_bytes"):
                out += f" {format_bytes(c['queued_bytes'])} on disk"
            return out

        text.append(" · ".join(part(w) for w in ("sent", "queued", "dropped")))
    if e.get("last_error"):
        text.append(f" · failing: {e['last_error']}", style="" if plain else "bold red")
    return text


# --- health --------------------------------------------------------------------------------------------

def failures_text(failures: Mapping[str, int]) -> str:
    """``refused 12, timeout 3`` (largest first); ``-`` when none."""
    items = sorted(((k, int(v)) for k, v in failures.items() if v), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} {format_count(v)}" for k, v in items) or "-"


def useful_text(fraction: float | None) -> Text:
    """``97.5%``, red under 90 %, yellow under 99 %."""
    style = ""
    if fraction is not None:
        style = "bold red" if fraction < 0.9 else ("yellow" if fraction < 0.99 else "green")
    return Text(format_percent(fraction), style=style)


def _health_rows(title: str, what: str, rows: Sequence[Mapping[str, Any]], *, plain: bool, wide: bool,
                 limit: int) -> Table:
    t = table(plain=plain, title=title)
    t.add_column(what, width=30 if not wide else 50, no_wrap=True, overflow="ellipsis")
    t.add_column("ATTEMPTS", width=8, justify="right")
    t.add_column("USEFUL", width=6, justify="right")
    t.add_column("FAILURES", min_width=20, overflow="fold")
    ordered = sorted(rows, key=lambda r: (r["useful_fraction"] if r["useful_fraction"] is not None else 2,
                                          -r["attempts"], r["key"]))
    for r in ordered[:limit]:
        t.add_row(r["key"], format_count(r["attempts"]), useful_text(r["useful_fraction"]),
                  failures_text(r["failures"]))
    if len(ordered) > limit:
        t.add_row(f"... {len(ordered) - limit} more (--json for all)", "", "", "")
    return t


def health_view(h: Mapping[str, Any], *, wide: bool = False, plain: bool = False,
                limit: int = 20) -> RenderableType:
    """Host health, then the least healthy processes and destinations, retry and scan patterns."""
    parts: list[RenderableType] = []
    host = h.get("host") or {}
    line = Text("host  ")
    line.append_text(useful_text(host.get("useful_fraction")))
    line.append(f" useful of {format_count(host.get('attempts', 0))} attempts")
    line.append(f"  ({format_clock(h['since_ns'])} to {format_clock(h['until_ns'])} UTC)")
    parts.append(line)
    fails = failures_text(host.get("failures") or {})
    extra = f"failures: {fails}"
    if h.get("failures_after_address_change"):
        extra += f"; {h['failures_after_address_change']} within 60s of an address change"
    if h.get("scan_flows"):
        extra += f"; {format_count(h['scan_flows'])} scan flows left out"
    parts.append(Text(extra))
    parts.append(Text(""))
    parts.append(_health_rows("PROCESSES (least useful first)", "PROCESS", h.get("by_process", []),
                              plain=plain, wide=wide, limit=limit))
    parts.append(Text(""))
    parts.append(_health_rows("DESTINATIONS (least useful first)", "DESTINATION", h.get("by_destination", []),
                              plain=plain, wide=wide, limit=limit))
    retries = h.get("retries") or []
    if retries:
        t = table(plain=plain, title="RETRY PATTERNS")
        t.add_column("PROCESS", width=16, no_wrap=True, overflow="ellipsis")
        t.add_column("DESTINATION", width=21, no_wrap=True, overflow="ellipsis")
        t.add_column("FAILS", width=6, justify="right")
        t.add_column("EVERY", width=8, justify="right")
        t.add_column("LAST", width=8)
        for r in retries[:limit]:
            t.add_row(process(r["comm"], r["pid"]), r["destination"], format_count(r["failures"]),
                      format_seconds(r["interval_p50_ms"] / 1000), format_clock(r["last_ns"]))
        parts += [Text(""), t]
    scans = h.get("scans") or []
    if scans:
        t = table(plain=plain, title="INBOUND SCANS")
        t.add_column("SOURCE", width=39, no_wrap=True, overflow="ellipsis")
        t.add_column("PORTS", width=6, justify="right")
        t.add_column("FAILS", width=8, justify="right")
        for r in scans[:limit]:
            t.add_row(r["src"], str(r["ports"]), format_count(r["failures"]))
        parts += [Text(""), t]
    resolvers = h.get("resolvers") or []
    if resolvers:
        parts += [Text(""), resolvers_table(resolvers, plain=plain, wide=wide, limit=limit)]
    mtus = h.get("path_mtu") or []
    if mtus:
        t = table(plain=plain, title="PATH MTU (fragmentation needed)")
        t.add_column("DESTINATION", width=39, no_wrap=True, overflow="ellipsis")
        t.add_column("MTU", width=6, justify="right")
        t.add_column("FLOWS", width=8, justify="right")
        t.add_column("ERRORS", width=8, justify="right")
        for r in mtus[:limit]:
            t.add_row(r["destination"], str(r.get("mtu", 0)), format_count(r.get("flows", 0)),
                      format_count(r.get("errors", 0)))
        parts += [Text(""), t]
    return Group(*parts)


def resolvers_table(rows: Sequence[Mapping[str, Any]], *, plain: bool, wide: bool = False,
                    limit: int = 20) -> Table:
    """DNS resolvers, the most failed answers first (as the node sorts them): SERVFAIL, NXDOMAIN and
    REFUSED are failures of the resolver that sent them."""
    t = table(plain=plain, title="DNS RESOLVERS (most failed first)")
    t.add_column("RESOLVER", width=21 if not wide else 47, no_wrap=True, overflow="ellipsis")
    t.add_column("QUERIES", width=7, justify="right")
    t.add_column("FAILED", width=6, justify="right")
    t.add_column("FAILURES", min_width=14, overflow="fold")
    t.add_column("P50", width=6, justify="right")
    t.add_column("P95", width=6, justify="right")
    for r in rows[:limit]:
        failed = Text(format_percent(r["failed"] / r["queries"] if r["queries"] else None),
                      style="bold red" if r["failed"] and not plain else "")
        t.add_row(Text(printable(r["resolver"])), format_count(r["queries"]), failed, failures_text(r["failures"]),
                  format_us(r["latency_p50_us"]), format_us(r["latency_p95_us"]))
    if len(rows) > limit:
        t.add_row(f"... {len(rows) - limit} more (--json for all)", "", "", "", "", "")
    return t


# --- mesh ----------------------------------------------------------------------------------------------

def peers_view(p: Mapping[str, Any], *, wide: bool = False, plain: bool = False) -> RenderableType:
    """Mesh members, this node first."""
    t = table(plain=plain)
    t.add_column("NODE", width=17, no_wrap=True, overflow="ellipsis")
    t.add_column("ADDRESS", width=21, no_wrap=True, overflow="ellipsis")
    t.add_column("STATE", width=7, no_wrap=True)
    t.add_column("DIGEST", width=8, justify="right", no_wrap=True)
    t.add_column("RTT", width=6, justify="right", no_wrap=True)
    t.add_column("LABELS", min_width=10, no_wrap=not wide, overflow="ellipsis")
    style = {"alive": "green", "suspect": "yellow", "dead": "bold red", "left": "dim"}
    for r in p.get("peers", []):
        age = r["digest_age_ms"]
        t.add_row(
            r["node_id"] + ("*" if r["is_self"] else "") + ("!" if r.get("flagged") else ""),
            r["addr"],
            Text(r["state"], style=style.get(r["state"], "")),
            "-" if age < 0 else format_seconds(age / 1000),
            format_us(r["rtt_us"]),
            " ".join(f"{k}={v}" for k, v in sorted(r["labels"].items())) or "-",
        )
    counters = p.get("counters") or {}
    flagged = [r["node_id"] for r in p.get("peers", []) if r.get("flagged")]
    foot = Text()
    if flagged:
        foot.append(f"! flagged by cross-validation (left out of fleet aggregates): {', '.join(flagged)}\n",
                    style="" if plain else "bold red")
    foot.append(f"health score {p.get('health_score', 0)} (0 is healthy)")
    if counters:
        foot.append("  ·  " + " · ".join(f"{k} {v}" for k, v in sorted(counters.items())))
    if not p.get("accounts"):
        return Group(t, foot)
    from meshnode.cli._measure import accounts_view

    return Group(t, foot, Text("\naccounts (served and asked: active tasks/fleet queries; quotas per hour):"),
                 accounts_view(p["accounts"], wide=wide, plain=plain))


def query_view(q: Mapping[str, Any], *, wide: bool = False, plain: bool = False) -> RenderableType:
    """Fleet-wide destination health, and the nodes that did not answer."""
    t = table(plain=plain)
    t.add_column("GROUP", width=10, no_wrap=True, overflow="ellipsis")
    t.add_column("DESTINATION", width=21, no_wrap=True, overflow="ellipsis")
    t.add_column("HOSTS", width=5, justify="right")
    t.add_column("USEFUL", width=6, justify="right")
    t.add_column("RTT50", width=6, justify="right")
    t.add_column("RTT95", width=6, justify="right")
    t.add_column("RETX", width=6, justify="right")
    t.add_column("AGE", width=5, justify="right")
    for a in q.get("aggregates", []):
        t.add_row(a["group"], fit_left(a["destination"], 21), str(a["hosts"]),
                  useful_text(a["useful_fraction_median"] if a["attempts"] else None),
                  format_us(a["rtt_p50_us_median"]), format_us(a["rtt_p95_us_median"]),
                  format_count(a["retransmits"]), format_seconds(max(a["newest_age_ms"], 0) / 1000))
    parts: list[RenderableType] = [t]
    clamped = [f"{a['group']} {a['destination']}" for a in q.get("aggregates", []) if a.get("hosts_clamped")]
    if clamped:
        parts.append(Text("clamped: a host reported more than one host can (counted at the limit; the "
                          "medians are unmoved, the sums are not) in: " + ", ".join(clamped),
                          style="" if plain else "yellow"))
    if q.get("hosts_excluded"):
        parts.append(Text(f"excluded: {q['hosts_excluded']} flagged host(s) left out of the aggregates: "
                          + ", ".join(q.get("excluded", [])), style="" if plain else "bold red"))
    missing = [n for n in q.get("nodes", []) if not n["answered"]]
    if missing:
        parts.append(Text(f"partial: {len(missing)} node(s) did not answer: " + ", ".join(
            f"{n['node_id']} ({n['error']})" for n in missing), style="" if plain else "yellow"))
    return Group(*parts)
