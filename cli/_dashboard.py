"""``meshctl top``'s screen as a pure function of plain data, and the aggregation behind it.

``aggregate`` turns flow dicts (the ``--json`` shape) into process and destination rows; ``dashboard``
turns a view dict into one frame. No I/O here: tests render a frame into a fixed-size Console.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cli._units import format_bytes, format_count, format_percent, format_seconds, format_us
from cli._views import FAILED, event_detail, fit_left, process, table, useful_text

SORT_KEYS: Final = ("bytes", "failures", "flows", "rtt", "retransmits")
_USEFUL: Final = frozenset({"established", "udp_answered"})


def _median(values: list[int]) -> int:
    return int(statistics.median(values)) if values else 0


def latest_per_flow(flows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One record per flow: the newest (interim records of an active flow are superseded; final wins)."""
    best: dict[tuple[str, int], Mapping[str, Any]] = {}
    for f in flows:
        key = (f["node_id"], f["flow_id"])
        old = best.get(key)
        if old is None or (f["end_ns"], f["kind"] == "final") >= (old["end_ns"], old["kind"] == "final"):
            best[key] = f
    return list(best.values())


def aggregate(flows: Iterable[Mapping[str, Any]], *, proc_filter: str = ""
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(process rows, destination rows) over ``flows``, keeping flows whose process name contains
    ``proc_filter``. Processes group by name (short-lived clients change pid); the pid shows when single."""
    procs: dict[str, dict[str, Any]] = {}
    dests: dict[str, dict[str, Any]] = {}
    needle = proc_filter.lower()
    for f in latest_per_flow(flows):
        if needle and needle not in f["comm"].lower():
            continue
        failed = f["outcome"] in FAILED
        settled = f["outcome"] != "in_progress"
        p = procs.setdefault(f["comm"] or "?", {
            "comm": f["comm"] or "?", "pids": set(), "flows": 0, "failures": 0, "useful": 0, "attempts": 0,
            "bytes_tx": 0, "bytes_rx": 0, "retransmits": 0, "_rtts": [],
        })
        host = f"[{f['dst']}]" if ":" in f["dst"] else f["dst"]
        dkey = f"{host}:{f['dport']}"
        d = dests.setdefault(dkey, {
            "destination": dkey, "service": f["service"], "flows": 0, "failures": 0, "useful": 0,
            "attempts": 0, "bytes_tx": 0, "bytes_rx": 0, "retransmits": 0, "_rtts": [],
        })
        for row in (p, d):
            row["flows"] += 1
            row["failures"] += failed
            row["useful"] += f["outcome"] in _USEFUL
            row["attempts"] += settled
            row["bytes_tx"] += f["bytes_tx"]
            row["bytes_rx"] += f["bytes_rx"]
            row["retransmits"] += f["retransmits"]
            if f["srtt_us"]:
                row["_rtts"].append(f["srtt_us"])
        p["pids"].add(f["pid"])
        if f["service"] and not d["service"]:
            d["service"] = f["service"]
    out_p: list[dict[str, Any]] = []
    for p in procs.values():
        pids = p.pop("pids")
        single = len(pids) == 1
        p["process"] = process(p["comm"], next(iter(pids))) if single else f"{p['comm']} ({len(pids)})"
        out_p.append(_finish(p))
    return out_p, [_finish(d) for d in dests.values()]


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    row["rtt_us"] = _median(row.pop("_rtts"))
    row["health"] = row["useful"] / row["attempts"] if row["attempts"] else None
    row["bytes"] = row["bytes_tx"] + row["bytes_rx"]
    return row


def sort_rows(rows: Sequence[Mapping[str, Any]], key: str) -> list[Mapping[str, Any]]:
    """Rows sorted by ``key`` (one of SORT_KEYS), largest first; ties by bytes then name."""
    field = {"bytes": "bytes", "failures": "failures", "flows": "flows", "rtt": "rtt_us",
             "retransmits": "retransmits"}[key]
    return sorted(rows, key=lambda r: (-r[field], -r["bytes"], str(r.get("process", r.get("destination")))))


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


def _processes(rows: Sequence[Mapping[str, Any]], n: int, *, wide: bool, plain: bool) -> Table:
    t = table(plain=plain, boxed=False)
    pw = 20 if not wide else 32
    t.add_column("PROCESS", width=pw, no_wrap=True, overflow="ellipsis")
    t.add_column("FLOWS", width=6, justify="right")
    t.add_column("FAIL", width=5, justify="right")
    t.add_column("USEFUL", width=6, justify="right")
    t.add_column("TX", width=7, justify="right")
    t.add_column("RX", width=7, justify="right")
    t.add_column("RTT", width=6, justify="right")
    t.add_column("RETX", width=6, justify="right")
    for r in rows[:n]:
        t.add_row(
            r["process"][:pw] if len(r["process"]) <= pw else r["process"][: pw - 1] + "…",
            format_count(r["flows"]),
            Text(format_count(r["failures"]), style="bold red" if r["failures"] and not plain else ""),
            format_percent(r["health"]), format_bytes(r["bytes_tx"]), format_bytes(r["bytes_rx"]),
            format_us(r["rtt_us"]), format_count(r["retransmits"]),
        )
    return t


def _destinations(rows: Sequence[Mapping[str, Any]], n: int, *, wide: bool, plain: bool) -> Table:
    t = table(plain=plain, boxed=False)
    t.add_column("DESTINATION", width=21 if not wide else 41, no_wrap=True, overflow="ellipsis")
    t.add_column("SERVICE", width=7, no_wrap=True, overflow="ellipsis")
    t.add_column("FLOWS", width=6, justify="right")
    t.add_column("FAIL", width=5, justify="right")
    t.add_column("HEALTH", width=6, justify="right")
    t.add_column("RTT", width=6, justify="right")
    t.add_column("RETX", width=6, justify="right")
    t.add_column("BYTES", width=7, justify="right")
    for r in rows[:n]:
        t.add_row(
            fit_left(r["destination"], 21 if not wide else 41), r["service"] or "-", format_count(r["flows"]),
            Text(format_count(r["failures"]), style="bold red" if r["failures"] and not plain else ""),
            useful_text(r["health"]) if not plain else format_percent(r["health"]),
            format_us(r["rtt_us"]), format_count(r["retransmits"]), format_bytes(r["bytes"]),
        )
    return t


def _events(events: Sequence[Mapping[str, Any]], n: int, *, wide: bool, plain: bool) -> Table:
    from cli._units import format_clock
    from cli._views import endpoint

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
        t.add_row(format_clock(e["time_ns"]), e["type"], process(f.get("comm", ""), f.get("pid", 0), pw),
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
    ``height`` lines: the process, destination and event sections share what the fixed lines leave."""
    head = _header(v, plain)
    if v.get("blame") is not None:
        head.append(blame_line(v["blame"], plain))
    fixed = len(head) + 1 + 3 * 2 + 1 + 1  # header (+ blame), blank, 3 x (title, column header), mesh, footer
    room = max(3, height - fixed)
    n_proc = max(1, room * 3 // 10)
    n_dest = max(1, room * 4 // 10)
    n_ev = max(1, room - n_proc - n_dest)
    procs = sort_rows(v.get("processes", []), v["sort"])
    dests = sort_rows(v.get("destinations", []), v["sort"])
    by = v["sort"]
    parts: list[RenderableType] = [
        *head,
        Text(""),
        _title(f" PROCESSES by {by} ({len(procs)}) ", plain),
        _processes(procs, n_proc, wide=wide, plain=plain),
        _title(f" DESTINATIONS by {by} ({len(dests)}) ", plain),
        _destinations(dests, n_dest, wide=wide, plain=plain),
        _title(" EVENTS ", plain),
        _events(v.get("events", []), n_ev, wide=wide, plain=plain),
        mesh_line(v.get("mesh"), plain),
        _footer(v, plain),
    ]
    return Group(*parts)


def reconnecting(attempt: int, wait_s: float) -> str:
    """The header's state while the node is away."""
    return f"reconnecting (attempt {attempt}, next in {wait_s:.1f}s)"
