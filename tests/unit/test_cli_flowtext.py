"""``meshctl flows`` human output without rich's table layout prints what ``flows_table`` prints.

Compared as text, over varied records (long names, IPv6, zero values, unknown enum numbers, durations
over a minute, long cgroups), narrow and wide, with and without the header, plain and on a terminal.
"""

from __future__ import annotations

import io
import random

import pytest

from meshnode.cli._convert import flow_dict
from meshnode.cli._flowtext import OUTCOME_LABEL, OUTCOME_STYLE, FlowPrinter, _styled, flows_text
from meshnode.cli._output import render_text
from meshnode.cli._views import _OUTCOME_STYLE, flows_table
from meshnode.cli._views import OUTCOME_LABEL as VIEW_LABELS
from meshnode.v1 import flow_pb2
from tests._support.fakenode import sample_flows

S = 1_000_000_000
T0 = 1_700_000_000 * S


def varied(n: int, seed: int) -> list[flow_pb2.Flow]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        end = rng.choice([0, T0 + i * S])
        out.append(flow_pb2.Flow(
            flow_id=i, src=rng.choice(["10.0.0.1", "fd00::1", "fe80::1%eth0", ""]),
            sport=rng.choice([0, 22, 40000, 65535]),
            dst=rng.choice(["10.0.0.2", "192.168.100.200", "2001:db8:1234:5678:9abc:def0:1234:5678", "fd00::7",
                            "fd00:ab::1", "2001:100:1::1", "::1", ""]),
            dport=rng.choice([0, 53, 443, 65535]), proto=rng.choice([0, 6, 17, 99]),
            direction=rng.choice([0, 1, 2, 7]), pid=rng.choice([0, 1, 4194304]),
            comm=rng.choice(["", "curl", "a-very-long-process-name", "x" * 15, "[kworker]", "a b"]),
            thread=rng.choice(["", "", "isc-net-0000", "w", "event_engine" + "x" * 3]),
            cgroup=rng.choice(["", "/", "/system.slice/nginx.service", "/lab/" + "c" * rng.randrange(1, 70)]),
            start_ns=rng.choice([0, end - rng.randrange(1, 10**12) if end else 0]), end_ns=end,
            bytes_tx=rng.choice([0, 999, 1000, 10**6, 1 << 50]), bytes_rx=rng.randrange(1 << 40),
            outcome=rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 42]), retransmits=rng.choice([0, 3, 123456]),
            srtt_us=rng.choice([0, 999, 1000, 99_999, 100_000, 5_000_000]), kind=rng.choice([0, 1, 2, 9]),
            service=rng.choice(["", "https", "postgresql-extra"]), icmp_unreachable=rng.choice([0, 0, 1]),
        ))
    return out


def rich_text(flows: list[flow_pb2.Flow], *, wide: bool, header: bool, plain: bool, width: int) -> str:
    rows = [flow_dict(f) for f in flows]
    return render_text(flows_table(rows, wide=wide, plain=plain, header=header), width=width, plain=plain)


CASES = [(wide, header) for wide in (False, True) for header in (True, False)]


def test_a_failed_flow_answered_by_icmp_unreachable_reads_unreachable() -> None:
    f = flow_pb2.Flow(flow_id=1, dst="10.2.1.7", dport=8081, proto=6, direction=1, outcome=flow_pb2.TIMEOUT,
                      end_ns=T0, icmp_unreachable=1, icmp_unreachable_code=1)
    ok = flow_pb2.Flow(flow_id=2, dst="10.2.1.7", dport=8082, proto=6, direction=1, outcome=flow_pb2.ESTABLISHED,
                       end_ns=T0, icmp_unreachable=1)
    got = flows_text([f, ok], wide=False, header=False, width=80)
    assert got is not None
    assert [line.split()[3] for line in got[0]] == ["unreachable", "established"]
    assert "\n".join(got[0]) + "\n" == rich_text([f, ok], wide=False, header=False, plain=True, width=80)


def test_labels_and_styles_are_the_views() -> None:
    assert OUTCOME_LABEL == VIEW_LABELS
    assert OUTCOME_STYLE == _OUTCOME_STYLE


@pytest.mark.parametrize(("wide", "header"), CASES)
def test_plain_text_equals_the_rich_table(wide: bool, header: bool) -> None:
    width = 200 if wide else 80
    batches = [sample_flows(), *[varied(rng_n, seed) for seed, rng_n in enumerate((1, 5, 40, 200))]]
    done = 0
    for flows in batches:
        for f in flows:  # row by row, so one row that needs rich does not hide the rest
            got = flows_text([f], wide=wide, header=header, width=width)
            if got is None:
                continue
            assert "\n".join(got[0]) + "\n" == rich_text([f], wide=wide, header=header, plain=True, width=width)
            done += 1
        got = flows_text(flows, wide=wide, header=header, width=width)
        if got is not None:
            assert "\n".join(got[0]) + "\n" == rich_text(flows, wide=wide, header=header, plain=True,
                                                         width=width)
    assert done > 150  # most rows take the fast layout


@pytest.mark.parametrize(("wide", "header"), CASES)
def test_terminal_text_equals_the_rich_table(wide: bool, header: bool) -> None:
    width = 200 if wide else 80
    flows = [f for f in varied(300, 9) if flows_text([f], wide=wide, width=width) is not None]
    got = flows_text(flows, wide=wide, header=header, rule=True, width=width)
    assert got is not None
    assert render_text(_styled(*got, header=header), width=width, plain=False) == rich_text(
        flows, wide=wide, header=header, plain=False, width=width)


def test_ipv6_groups_that_spell_emoji_shortcodes_print_verbatim() -> None:
    """Rich's default console prints ``[fd00:ab::1]`` as ``[fd00🆎:1]``; ours has emoji off, both ways."""
    for dst in ("fd00:ab::1", "2001:100:1::1"):
        f = flow_pb2.Flow(dst=dst, dport=443, end_ns=T0)
        fast = flows_text([f])
        assert fast is not None and f"[{dst}]:443" in "\n".join(fast[0])
        assert f"[{dst}]:443" in rich_text([f], wide=False, header=True, plain=True, width=80)


def test_what_the_layout_cannot_reproduce_is_left_to_rich() -> None:
    wide_name = flow_pb2.Flow(comm="名前", end_ns=T0)
    control = flow_pb2.Flow(comm="a\tb", end_ns=T0)
    long_cgroup = flow_pb2.Flow(cgroup="/" + "x" * 80, end_ns=T0)
    for f in (wide_name, control):
        assert flows_text([f]) is None
    assert flows_text([long_cgroup], wide=True, width=200) is None
    assert flows_text([flow_pb2.Flow(end_ns=T0)], width=79) is None
    assert flows_text([long_cgroup], width=80) is not None  # no CGROUP column when not wide


@pytest.mark.parametrize("wide", [False, True])
def test_printer_output_equals_the_command_before(wide: bool) -> None:
    """FlowPrinter on a pipe prints what ``emit(console, flows_table(...))`` printed, fallbacks included."""
    batches = [varied(50, 3), [flow_pb2.Flow(comm="名前", dst="fd00:ab::1", end_ns=T0)], varied(20, 4)]
    buf = io.StringIO()
    printer = FlowPrinter(wide=wide, out=buf)
    want = []
    for i, batch in enumerate(batches):
        printer.batch(batch, header=i == 0)
        want.append(rich_text(batch, wide=wide, header=i == 0, plain=True, width=200 if wide else 80))
    printer.message("no flows match")
    assert buf.getvalue() == "".join(want) + "no flows match\n"
