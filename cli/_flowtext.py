"""``meshctl flows`` as text without rich's table layout: the same characters, ~20x less CPU.

``cli._views.flows_table`` lays out every cell through rich (~0.6 ms a row: 0.6 s for the default 1,000
records, more than the whole command's budget). Its columns have fixed widths, so the same text comes from
one format per row: cells cut with ``…`` and padded exactly as rich does (``overflow="ellipsis"``, left or
right justified, one space between columns). Rows read straight from the ``Flow`` messages (no dict).

``flows_text`` returns the lines, or None when the batch holds something this layout does not reproduce
(text that is not printable ASCII, whose cell widths rich measures itself; a console too narrow for the
fixed columns): the caller then renders ``flows_table``. A unit test compares both over varied records.
Imports no rich: on a pipe, ``meshctl flows`` never loads it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Final, TextIO

from meshnode.cli._convert import _ENUM_TABLES
from meshnode.cli._units import format_bytes, format_clock, format_seconds, format_us, process

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from meshnode.v1 import flow_pb2

#: Same labels as ``cli._views.OUTCOME_LABEL`` (a test keeps them equal; that module loads rich).
OUTCOME_LABEL: Final = {
    "established": "established", "refused": "refused", "timeout": "timeout", "reset": "reset",
    "udp_answered": "udp ok", "udp_unanswered": "udp no-ans", "in_progress": "in progress",
}
OUTCOME_STYLE: Final = {
    "established": "green", "udp_answered": "green", "in_progress": "yellow",
    "refused": "bold red", "timeout": "bold red", "reset": "bold red", "udp_unanswered": "red",
}
_PROTO, _DIRECTION, _OUTCOME, _LIMITED_BY, _KIND, _FIDELITY = _ENUM_TABLES
_DIR_SHORT: Final = {"outbound": "out", "inbound": "in"}

# (header, width, right-justified) of flows_table's columns; CGROUP (wide) takes what the content needs.
NARROW: Final = (("TIME", 8, False), ("PROCESS", 14, False), ("DESTINATION", 21, False), ("OUTCOME", 11, False),
                 ("TX", 7, True), ("RX", 7, True), ("RTT", 6, True))
WIDE: Final = (("TIME", 8, False), ("PROCESS", 20, False), ("SOURCE", 21, False), ("DIR", 3, False),
               ("PROTO", 5, False), ("DESTINATION", 21, False), ("OUTCOME", 11, False), ("TX", 7, True),
               ("RX", 7, True), ("RTT", 6, True), ("RETX", 5, True), ("DUR", 7, True), ("KIND", 7, False),
               ("SERVICE", 8, False))
CGROUP_MIN: Final = 10
_OUTCOME_COL: Final = 3

_get: Final = attrgetter("end_ns", "start_ns", "comm", "thread", "pid", "dst", "dport", "outcome", "bytes_tx",
                         "bytes_rx", "srtt_us", "src", "sport", "direction", "proto", "retransmits", "kind",
                         "service", "cgroup", "icmp_unreachable", "remote_name")
_FAILED: Final = frozenset({"refused", "timeout", "reset", "udp_unanswered"})


def outcome_label(outcome: str, icmp_unreachable: int = 0) -> str:
    """The OUTCOME cell: the outcome's label, or ``unreachable`` for a failed flow that a router or the peer
    answered with ICMP destination unreachable (the network said no: not a silent timeout)."""
    if icmp_unreachable and outcome in _FAILED:
        return "unreachable"
    return OUTCOME_LABEL.get(outcome, outcome)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def fit_left(text: str, width: int) -> str:
    """As ``cli._views.fit_left``: shortened at the start, the end (the port) matters most."""
    return text if width <= 0 or len(text) <= width else "…" + text[len(text) - width + 1:]


def endpoint(addr: str, port: int, width: int = 21) -> str:
    """As ``cli._views.endpoint``."""
    host = f"[{addr}]" if ":" in addr else addr
    return fit_left(f"{host}:{port}" if port else host, width)


def _cells(f: flow_pb2.Flow, wide: bool, pw: int) -> tuple[list[str], str] | None:
    (end, start, comm, thread, pid, dst, dport, outcome, tx, rx, srtt, src, sport, direction, proto, retx, kind,
     service, cgroup, unreachable, remote_name) = _get(f)
    names = comm + thread + service + cgroup + remote_name
    if not (names + dst + src).isascii() or not names.isprintable():
        return None
    outcome_name = _OUTCOME.get(outcome, str(outcome))
    cells = [format_clock(end or start), process(comm, pid, pw, thread)]
    if wide:
        cells += [endpoint(src, sport, 21), _DIR_SHORT.get(_DIRECTION.get(direction, ""), "?"),
                  _PROTO.get(proto, str(proto))]
    cells += [endpoint(remote_name or dst, dport), outcome_label(outcome_name, unreachable), format_bytes(tx),
              format_bytes(rx), format_us(srtt)]
    if wide:
        dur_ns = end - start if end and start else 0
        cells += [str(retx),
                  (format_us(dur_ns / 1000) if dur_ns < 60 * 10**9 else format_seconds(dur_ns / 1e9))
                  if dur_ns > 0 else "-",
                  _KIND.get(kind, str(kind)), service or "-", cgroup or "-"]
    return cells, outcome_name


def flows_text(
    flows: Sequence[flow_pb2.Flow], *, wide: bool = False, header: bool = True, rule: bool = False,
    width: int = 80, row_line: Callable[[flow_pb2.Flow], str] | None = None,
) -> tuple[list[str], list[tuple[int, int, str] | None]] | None:
    """The lines ``flows_table`` prints for ``flows`` on a ``width``-column console, trailing spaces cut.

    ``rule`` adds the line under the header that terminals get. Also returns, per row, where its outcome
    sits (start, end) and the outcome name, for styling. A row this layout cannot reproduce comes from
    ``row_line`` (rich, one row; its mark is None); without ``row_line`` the whole batch is None, as it is
    when rich would lay out the batch differently (console too narrow, a CGROUP too long for it).
    """
    cols = WIDE if wide else NARROW
    pw = 20 if wide else 14
    widths = [w for _, w, _ in cols]
    heads = [h for h, _, _ in cols]
    right = [r for _, _, r in cols]
    if wide:
        groups = [f.cgroup or "-" for f in flows]
        if not all(g.isascii() for g in groups):
            return None
        fixed = sum(widths) + len(widths)
        longest = max([len("CGROUP"), CGROUP_MIN, *map(len, groups)])
        if fixed + longest > width:  # rich would narrow every column
            return None
        widths.append(longest)
        heads.append("CGROUP")
        right.append(False)
    elif sum(widths) + len(widths) - 1 > width:
        return None
    spans = list(zip(widths, right, strict=True))
    lines = []
    if header:
        lines.append(_line(heads, spans))
        if rule:
            lines.append("─" * (sum(widths) + len(widths) - 1))
    col = _OUTCOME_COL + (3 if wide else 0)
    start = sum(widths[:col]) + col
    marks: list[tuple[int, int, str] | None] = []
    for f in flows:
        got = _cells(f, wide, pw)
        if got is None:
            if row_line is None:
                return None
            lines.append(row_line(f))
            marks.append(None)
            continue
        cells, outcome = got
        lines.append(_line(cells, spans))
        marks.append((start, start + len(_fit(cells[col], widths[col])), outcome))
    return lines, marks


def _line(cells: Sequence[str], spans: Sequence[tuple[int, bool]]) -> str:
    out = []
    for text, (w, right) in zip(cells, spans, strict=True):
        t = _fit(text, w)
        out.append(t.rjust(w) if right else t.ljust(w))
    return " ".join(out).rstrip()


class FlowPrinter:
    """Prints batches of flows as ``meshctl flows`` shows them: the text of ``flows_table``, batch by batch.

    On a pipe (no terminal) the lines are written as they are, 80 columns (200 with ``wide``), and rich is
    never imported; on a terminal they go through a rich ``Text`` (bold header, coloured outcomes) at the
    terminal's width. Batches ``flows_text`` cannot reproduce are rendered by ``flows_table``.
    """

    def __init__(self, *, wide: bool = False, out: TextIO | None = None) -> None:
        self.wide = wide
        self.out = out or sys.stdout
        self.terminal = self.out.isatty()
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from meshnode.cli._output import console

            self._console = console(wide=self.wide)
        return self._console

    def batch(self, flows: Sequence[flow_pb2.Flow], *, header: bool) -> None:
        """Print one batch; ``header`` for the first."""
        if not self.terminal:
            got = flows_text(flows, wide=self.wide, header=header, width=200 if self.wide else 80,
                             row_line=self._rich_row)
            if got is not None:
                self.out.write("\n".join(got[0]) + "\n")
                return
        else:
            got = flows_text(flows, wide=self.wide, header=header, rule=True, width=self.console.width)
            if got is not None:
                self.console.print(_styled(*got, header=header))
                return
        from meshnode.cli._convert import flow_dict
        from meshnode.cli._output import emit, render_text
        from meshnode.cli._views import flows_table

        rows = [flow_dict(x) for x in flows]
        if self.terminal:
            c = self.console
            emit(c, flows_table(rows, wide=self.wide, plain=not c.is_terminal, header=header))
        else:  # what emit prints on a pipe
            table = flows_table(rows, wide=self.wide, plain=True, header=header)
            self.out.write(render_text(table, width=200 if self.wide else 80))

    def _rich_row(self, flow: flow_pb2.Flow) -> str:
        """One row as ``flows_table`` lays it out on a pipe (its columns are fixed: the row is the same
        alone as within its batch, CGROUP being last and its padding cut)."""
        from meshnode.cli._convert import flow_dict
        from meshnode.cli._output import render_text
        from meshnode.cli._views import flows_table

        table = flows_table([flow_dict(flow)], wide=self.wide, plain=True, header=False)
        return render_text(table, width=200 if self.wide else 80).rstrip("\n")

    def message(self, text: str) -> None:
        """One line of text (``no flows match``)."""
        if self.terminal:
            from meshnode.cli._output import emit

            emit(self.console, text)
        else:
            self.out.write(text + "\n")


def _styled(lines: list[str], marks: list[tuple[int, int, str] | None], *, header: bool) -> Text:
    from rich.text import Text

    text = Text("\n".join(lines), no_wrap=True, overflow="crop")
    pos = 0
    if header:
        text.stylize("bold", 0, len(lines[0]))
        pos = len(lines[0]) + len(lines[1]) + 2
    for line, mark in zip(lines[2 if header else 0:], marks, strict=True):
        if mark is not None and (style := OUTCOME_STYLE.get(mark[2])):
            text.stylize(style, pos + mark[0], pos + mark[1])
        pos += len(line) + 1
    return text
