"""``meshctl top``'s screen as a pure function of plain data.

The node merges the window's rollups (Observer.Rollups); this module only shapes them for the screen:
``dashboard`` turns a view dict into one frame, with a sparkline per row of the flows, failures and
retransmits of each export period. No I/O here: tests render a frame into a fixed-size Console.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from meshnode.cli._units import format_bytes, format_count, format_percent, format_seconds, format_us, process
from meshnode.cli._views import event_detail, fit_left, table, useful_text

SORT_KEYS: Final = ("flows", "failures", "bytes", "rtt", "retransmits", "resp")
BLOCKS: Final = "▁▂▃▄▅▆▇█"
SECTIONS: Final = (("processes", "by_process", "PROCESS"), ("destinations", "by_destination", "DESTINATION"),
                   ("services", "by_service", "SERVICE"))
"""The view's row lists: (name, the RollupsResponse field, the first column's header)."""


def sparkline(values: Sequence[int], width: int, span: int = 0) -> str:
    """``values`` (oldest first) as ``width`` block characters scaled to their largest, newest at the right.

    ``span`` is how many periods the line stands for (the window over the export period): a shorter series
    (a node younger than the window) is padded with empty periods on the left, so that the line's left edge
    is the window's start. More values than columns: each column shows the sum of an equal run of them.
    Fewer: the line is padded on the left too. 0 is blank.
    """
    if len(values) < span:
        values = [0] * (span - len(values)) + list(values)
    n = len(values)
    if n > width:
        cols = [sum(values[i * n // width:(i + 1) * n // width]) for i in range(width)]
    else:
        cols = [0] * (width - n) + list(values)
    top = max(cols, default=0)
    if not top:
        return " " * width
    last = len(BLOCKS) - 1
    return "".join(" " if not v else BLOCKS[min(last, max(0, -(-v * len(BLOCKS) // top) - 1))] for v in cols)


def rollup_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Screen rows from ``WindowRollup`` dicts (``message_dict`` of the node's answer): the node's totals,
    with the failed outcomes counted together, ``useful`` as a fraction of the flows that settled (useful
    or failed; None without any), the mean exchange time (0 without exchanges) and the three series."""
    out = []
    for r in rows:
        t = r["totals"]
        failures = sum(int(v) for v in (t.get("failures") or {}).values())
        settled = int(t["useful"]) + failures
        out.append({
            "key": named_key(t["key"], t.get("remote_name", "")), "address": t["key"],
            "service": t.get("service", ""), "flows": int(t["flows"]), "failures": failures,
            "useful": int(t["useful"]) / settled if settled else None, "bytes": int(t["bytes_tx"]) + int(t["bytes_rx"]),
            "rtt_us": int(t["rtt_p50_us"]), "rtt_p95_us": int(t["rtt_p95_us"]), "retransmits": int(t["retransmits"]),
            "resp_us": int(t.get("response_us_sum") or 0) // max(1, int(t.get("responses") or 0)),
            "resp_p95_us": int(t.get("response_p95_us") or 0),
            "flows_series": list(r.get("flows") or []), "failures_series": list(r.get("failures") or []),
            "retransmits_series": list(r.get("retransmits") or []),
        })
    return out


def named_key(key: str, name: str) -> str:
    """A destination key as ``top`` shows it: ``name:port`` when the host resolved a DNS name to it."""
    _host, sep, port = key.rpartition(":")
    return f"{name}:{port}" if name and sep and port.isdigit() else key


def sort_rows(rows: Sequence[Mapping[str, Any]], key: str) -> list[Mapping[str, Any]]:
    """Rows sorted by ``key`` (one of SORT_KEYS), largest first; ties by flows, bytes, then key."""
    field = {"bytes": "bytes", "failures": "failures", "flows": "flows", "rtt": "rtt_us",
             "retransmits": "retransmits", "resp": "resp_us"}[key]
    return sorted(rows, key=lambda r: (-r[field], -r["flows"], -r["bytes"], str(r["key"])))


def _title(text: str, plain: bool) -> Text:
    return Text(text, style="" if plain else "bold reverse")


def _header(v: Mapping[str, Any], plain: bool) -> list[RenderableType]:
    s = v.get("status")
    line1 = Text(f"node {v['node']}", style="" if plain else "bold")
    if s:
        ident = s["node_id"][:8] or "?"
        if s.get("host"):  # a mesh node's id is its key's fingerprint: the host name says which one it is
            ident = f"{s['host']} ({ident})"
        line1.append(f" {ident} · {s['sensor_mode'] or '?'}/{s['fidelity']}"
                     f" · period {format_seconds(s['export_period_s']) if s['export_period_s'] else '?'}")
    line1.append(f" · window {format_seconds(v['window_s'])}")
    line2 = Text()
    if s:
        c = s.get("completeness") or {}
        counters = (("lost", "lost_events"), ("evicted", "map_evictions"), ("overruns", "ringbuf_overruns"),
                    ("ev-dropped", "events_dropped"))
        for i, (label, key) in enumerate(counters):
            if i:
                line2.append(" · ")
            n = int(c.get(key, 0))
            line2.append(f"{label} ")
            line2.append(format_count(n), style="bold red" if n and not plain else "")
        line2.append(f" · active {format_count(s['active_flows'])}")
    else:
        line2.append("no status yet")
    h = v.get("health")
    if h:
        line2.append(" · host ")
        line2.append_text(useful_text(h.get("useful_fraction")) if not plain
                          else Text(format_percent(h.get("useful_fraction"))))
        line2.append(" useful")
    conn = str(v.get("conn", ""))
    line3 = Text(conn, style="" if plain else ("green" if conn.startswith("connected") else "bold yellow"))
    if v.get("paused"):
        line3 = Text("PAUSED (p resumes)", style="" if plain else "bold magenta")
    out: list[RenderableType] = [line1, line2, line3]
    if v.get("error"):
        out.append(Text(str(v["error"]), style="" if plain else "bold red"))
    return out


def _rollup_table(rows: Sequence[Mapping[str, Any]], n: int, first: str, *, services: bool, span: int,
                  wide: bool, plain: bool) -> Table:
    """One section's table: the node's window totals, then the trends (sparklines over ``span`` periods)
    of flows, failures and retransmits. Exactly 80 columns (120 wide) with ``services``; processes have no
    service column and give its room to the name. Wide, RESP is the exchanges' mean (request to the first
    byte of the answer) and RESP95 the node's bound of their 95th percentile: a slow server shows there
    while RTT stays low."""
    t = table(plain=plain, boxed=False)
    svc_w = 8 if wide else 6
    name_w = (24 if wide else 16) + (0 if services else svc_w + 1)
    spark_w = (7, 7, 7) if wide else (7, 6, 6)
    t.add_column(first, width=name_w, no_wrap=True, overflow="ellipsis")
    if services:
        t.add_column("SVC", width=svc_w, no_wrap=True, overflow="ellipsis")
    t.add_column("FLOWS", width=6, justify="right")
    t.add_column("FAIL", width=5, justify="right")
    t.add_column("USEFUL", width=6, justify="right")
    t.add_column("RTT", width=6, justify="right")
    if wide:
        t.add_column("RTT95", width=6, justify="right")
        t.add_column("RETX", width=6, justify="right")
        t.add_column("RESP", width=6, justify="right")
        t.add_column("RESP95", width=6, justify="right")
    t.add_column("BYTES", width=7, justify="right")
    for header, w in zip(("FLOWS/S", "FAIL/S", "RETX/S"), spark_w, strict=True):
        t.add_column(header, width=w, no_wrap=True)
    red = "" if plain else "bold red"
    for r in rows[:n]:
        cells: list[str | Text] = [fit_left(r["key"], name_w) if services else r["key"]]
        if services:
            cells.append(r["service"] or "-")
        cells += [
            format_count(r["flows"]),
            Text(format_count(r["failures"]), style=red if r["failures"] else ""),
            useful_text(r["useful"]) if not plain else format_percent(r["useful"]),
            format_us(r["rtt_us"]),
        ]
        if wide:
            cells += [format_us(r["rtt_p95_us"]), format_count(r["retransmits"]), format_us(r["resp_us"]),
                      format_us(r["resp_p95_us"])]
        cells += [
            format_bytes(r["bytes"]),
            Text(sparkline(r["flows_series"], spark_w[0], span), style="" if plain else "cyan"),
            Text(sparkline(r["failures_series"], spark_w[1], span), style=red),
            Text(sparkline(r["retransmits_series"], spark_w[2], span), style="" if plain else "yellow"),
        ]
        t.add_row(*cells)
    return t


def _events(events: Sequence[Mapping[str, Any]], n: int, *, wide: bool, plain: bool) -> Table:
    from meshnode.cli._units import format_clock
    from meshnode.cli._views import endpoint

    t = table(plain=plain, boxed=False)
    pw = 14 if not wide else 20
    t.add_column("TIME", width=8, no_wrap=True)
    t.add_column("EVENT", width=16, no_wrap=True, overflow="ellipsis")
    t.add_column("PROCESS", width=pw, no_wrap=True, overflow="ellipsis")
    t.add_column("DESTINATION", width=21 if not wide else 41, no_wrap=True, overflow="ellipsis")
    if wide:
        t.add_column("DETAIL", min_width=10, no_wrap=True, overflow="ellipsis")
    else:
        t.add_column("DETAIL", width=15, no_wrap=True, overflow="ellipsis")
    for e in list(events)[-n:] if n > 0 else []:
        f = e.get("flow") or {}
        t.add_row(format_clock(e["time_ns"]), e["type"],
                  process(f.get("comm", ""), f.get("pid", 0), pw, f.get("thread", "")),
                  endpoint(f.get("dst", ""), f.get("dport", 0), 21 if not wide else 41) if f.get("dst") else "-",
                  event_detail(e))
    return t


def mesh_line(mesh: Mapping[str, Any] | None, plain: bool) -> Text:
    """``mesh: 4 alive · 1 suspect · 0 dead · flagged: b1c2`` or ``mesh: not enabled``."""
    if mesh is None:
        return Text("mesh: not enabled", style="" if plain else "dim")
    out = Text("mesh: ", no_wrap=True, overflow="ellipsis")
    for i, (k, style) in enumerate((("alive", "green"), ("suspect", "yellow"), ("dead", "bold red"))):
        if i:
            out.append(" · ")
        n = int(mesh.get(k, 0))
        out.append(f"{n} {k}", style="" if plain or not n else style)
    down = mesh.get("down") or []
    if down:
        out.append(" (" + ", ".join(down[:3]) + (" …" if len(down) > 3 else "") + ")")
    flagged = mesh.get("flagged") or []
    if flagged:
        out.append(" · flagged: " + ", ".join(flagged[:4]) + (" …" if len(flagged) > 4 else ""),
                   style="" if plain else "bold red")
    return out


def mesh_summary(peers: Mapping[str, Any]) -> dict[str, Any]:
    """The mesh line's data from a PeersResponse dict: counts by state, the peers suspect or dead
    (``down``), and ``flagged`` peers (empty until a trust service flags peers whose reports disagree)."""
    counts = {"alive": 0, "suspect": 0, "dead": 0}
    down: list[str] = []
    for p in peers.get("peers", []):
        state = p["state"]
        if state in counts:
            counts[state] += 1
        if state in ("suspect", "dead"):
            down.append(p["node_id"][:8])
    return {**counts, "down": down, "flagged": []}


def blame_summary(doc: Mapping[str, Any], window_s: float) -> dict[str, Any]:
    """The blame line's data from a BlameResponse dict (``cli._blame.blame_dict`` names or proto names):
    the verdict, the top suspect's kind, name, problem fraction and whether it is a shared cause, and the
    figures it stands on."""
    top: dict[str, Any] | None = None
    suspects = doc.get("suspects") or []
    if suspects:
        s = suspects[0]
        kind = str(s.get("kind", ""))
        top = {"kind": kind.removeprefix("entity_kind_"), "name": str(s.get("name", "")),
               "problem_fraction": float(s.get("problem_fraction", 0.0)), "shared": bool(s.get("shared", True))}
    return {"window_s": window_s, "verdict": str(doc.get("verdict", "")), "top": top,
            "transactions": int(doc.get("transactions", 0)), "problems": int(doc.get("problems", 0)),
            "hosts": int(doc.get("hosts", 0))}


def blame_line(blame: Mapping[str, Any], plain: bool) -> Text:
    """``blame 6s: dst_host db1 100% · destination host db1 (10.0.0.5) is failing: …`` (one line, cut
    at the screen's edge) or ``blame 6s: no problem above 20% · 1,234 transactions from 6 hosts``."""
    out = Text(f"blame {format_seconds(blame['window_s'])}: ", no_wrap=True, overflow="ellipsis")
    top = blame.get("top")
    if top is None:
        out.append(str(blame.get("verdict", "")), style="" if plain else "green")
        hosts = int(blame.get("hosts", 0))
        out.append(f" · {format_count(int(blame.get('transactions', 0)))} transactions from {hosts} "
                   f"host{'s' if hosts != 1 else ''}")
        return out
    mark = "" if top.get("shared", True) else " ?"
    out.append(f"{top['kind']} {top['name']}{mark} {format_percent(top['problem_fraction'])}",
               style="" if plain else "bold red")
    out.append(f" · {blame.get('verdict', '')}")
    return out


def _footer(v: Mapping[str, Any], plain: bool) -> Text:
    if v.get("input") is not None:
        return Text(f"filter process: {v['input']}▏  (Enter apply · Esc clear)",
                    style="" if plain else "bold")
    keys = Text()
    for k, label in (("q", "quit"), ("s", f"sort: {v['sort']}"), ("/", "filter"), ("p", "pause")):
        keys.append(k, style="" if plain else "bold reverse")
        keys.append(f" {label}  ")
    if v.get("filter"):
        keys.append(f"process ~ '{v['filter']}'", style="" if plain else "bold cyan")
    return keys


def dashboard(v: Mapping[str, Any], *, height: int = 24, wide: bool = False, plain: bool = False
              ) -> RenderableType:
    """One frame of ``meshctl top`` from the view dict (see ``cli._top.TopState.view``), fitted to
    ``height`` lines: the process, destination, service and event sections share what the fixed lines
    leave. ``v["rollups"]`` is the node's RollupsResponse as a dict (None before the first answer); the
    filter keeps the processes whose key holds it (the other sections count every process's flows)."""
    head = _header(v, plain)
    if v.get("blame") is not None:
        head.append(blame_line(v["blame"], plain))
    fixed = len(head) + 1 + 4 * 2 + 1 + 1  # header (+ blame), blank, 4 x (title, column header), mesh, footer
    room = max(4, height - fixed)
    counts = [max(1, room // 4), max(1, room // 4), max(1, room // 5)]
    counts.append(max(1, room - sum(counts)))
    rollups = v.get("rollups") or {}
    needle = str(v.get("filter") or "").lower()
    by = v["sort"]
    period = float((v.get("status") or {}).get("export_period_s") or 0.0)
    span = round(float(v["window_s"]) / period) if period else 0
    parts: list[RenderableType] = [*head, Text("")]
    for (name, field, first), n in zip(SECTIONS, counts, strict=False):
        rows = rollup_rows(rollups.get(field) or [])
        omitted = int(rollups.get(f"{field}_omitted") or 0)
        if name == "processes" and needle:
            rows = [r for r in rows if needle in str(r["key"]).lower() or needle in str(r.get("address", "")).lower()]
        shown = sort_rows(rows, by)
        total = f"{len(shown)}" if not omitted else f"{len(shown)} of {len(shown) + omitted}"
        parts += [_title(f" {name.upper()} by {by} ({total}) ", plain),
                  _rollup_table(shown, n, first, services=name != "processes", span=span, wide=wide,
                                plain=plain)]
    parts += [
        _title(" EVENTS ", plain),
        _events(v.get("events", []), counts[3], wide=wide, plain=plain),
        mesh_line(v.get("mesh"), plain),
        _footer(v, plain),
    ]
    return Group(*parts)


def reconnecting(attempt: int, wait_s: float) -> str:
    """The header's state while the node is away."""
    return f"reconnecting (attempt {attempt}, next in {wait_s:.1f}s)"
