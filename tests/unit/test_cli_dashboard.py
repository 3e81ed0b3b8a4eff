"""meshctl top: one frame rendered from the node's rollups (plain data), sparklines, and the keys."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from meshnode.cli._convert import message_dict
from meshnode.cli._dashboard import SORT_KEYS, dashboard, mesh_line, mesh_summary, rollup_rows, sort_rows, sparkline
from meshnode.cli._output import render_text
from meshnode.cli._top import TopState
from meshnode.v1 import flow_pb2, observer_pb2
from tests._support.fakenode import sample_events, sample_peers, sample_rollups, sample_status


def _view(**changes: Any) -> dict[str, Any]:
    v: dict[str, Any] = {
        "node": "127.0.0.1:7400", "conn": "reconnecting (attempt 2, next in 1.0s)",
        "status": message_dict(sample_status()), "health": {"useful_fraction": 0.95},
        "rollups": message_dict(sample_rollups()), "events": [message_dict(e) for e in sample_events()],
        "mesh": {"alive": 4, "suspect": 1, "dead": 0, "down": ["77aa00bb"], "flagged": []},
        "sort": "failures", "filter": "", "input": None, "paused": False, "window_s": 40, "error": None,
    }
    v.update(changes)
    return v


def _many_rollups(n: int) -> dict[str, Any]:
    """``n`` rows in every section, busy over 150 periods (more periods than a sparkline has columns)."""
    rows = [flow_pb2.WindowRollup(totals=flow_pb2.Rollup(key=f"proc{i}/{1000 + i}", flows=150, useful=150,
                                                         bytes_tx=i), flows=[1] * 150, failures=[0] * 150,
                                  retransmits=[i % 3] * 150) for i in range(n)]
    return message_dict(observer_pb2.RollupsResponse(by_process=rows, by_destination=rows, by_service=rows,
                                                     by_destination_omitted=7))


def test_one_frame_at_80_by_24() -> None:
    out = render_text(dashboard(_view(), height=24), width=80)
    assert out == textwrap.dedent("""\
        node 127.0.0.1:7400 3f2a9c0d · ebpf/exact · period 10s · window 40s
        lost 3 · evicted 0 · overruns 0 · ev-dropped 0 · active 42 · host 95.0% useful
        reconnecting (attempt 2, next in 1.0s)

         PROCESSES by failures (4)
        PROCESS                  FLOWS  FAIL USEFUL    RTT   BYTES FLOWS/S FAIL/S RETX/S
        fakeclient/777               2     2   0.0%      -     0 B      ██     ██
        nginx/1                      4     0   100% 45.0ms  50 MiB    ████          ▄▅██
         DESTINATIONS by failures (3)
        DESTINATION      SVC     FLOWS  FAIL USEFUL    RTT   BYTES FLOWS/S FAIL/S RETX/S
        10.0.0.9:8080    -           2     2   0.0%      -     0 B      ██     ██
        10.0.0.2:443     https       1     0   100%  1.2ms 1.2 MiB       █             █
         SERVICES by failures (1)
        SERVICE          SVC     FLOWS  FAIL USEFUL    RTT   BYTES FLOWS/S FAIL/S RETX/S
        10.0.0.1:8000    -           4     0   100% 45.0ms  50 MiB    ████          ▄▅██
         EVENTS
        TIME     EVENT            PROCESS        DESTINATION           DETAIL
        11:06:38 retransmit_burst curl/4242      10.0.0.2:443          5
        11:06:39 connect_failed   fakeclient/777 10.0.0.9:8080         refused
        11:06:40 rtt_shift        nginx/1        10.0.0.7:51234        rtt 1.2ms -> 4…
        mesh: 4 alive · 1 suspect · 0 dead (77aa00bb)
        q quit  s sort: failures  / filter  p pause
        """)


def test_header_names_the_host_of_a_mesh_node() -> None:
    status = message_dict(sample_status())
    status["host"] = "web1"
    first = render_text(dashboard(_view(status=status), height=24), width=80).splitlines()[0]
    assert first == "node 127.0.0.1:7400 web1 (3f2a9c0d) · ebpf/exact · period 10s · window 40s"


def test_frame_never_exceeds_its_height_or_80_columns() -> None:
    v = _view(rollups=_many_rollups(200), events=[message_dict(e) for e in sample_events()] * 20)
    for height in (24, 40, 60):
        lines = render_text(dashboard(v, height=height), width=80).splitlines()
        assert len(lines) == height
        assert max(len(line) for line in lines) <= 80
        assert " DESTINATIONS by failures (200 of 207)" in lines
        row = next(line for line in lines if line.startswith("proc199/1199 "))  # the most bytes
        assert row.endswith(" ███████ " + " " * 6 + " ██████")  # steady flows, no failures, retransmits


def test_mesh_not_enabled_pause_filter_prompt_and_error() -> None:
    out = render_text(dashboard(_view(mesh=None, paused=True, input="cur", error="node error: x"), height=30))
    lines = out.splitlines()
    assert lines[2] == "PAUSED (p resumes)"
    assert lines[3] == "node error: x"
    assert "mesh: not enabled" in lines
    assert lines[-1] == "filter process: cur▏  (Enter apply · Esc clear)"


@pytest.mark.parametrize(
    ("values", "width", "line"),
    [
        ([], 4, "    "),
        ([0, 0], 4, "    "),
        ([1, 2, 3, 4, 5, 6, 7, 8], 8, "▁▂▃▄▅▆▇█"),
        ([1, 8], 4, "  ▁█"),                      # a short history sits at the right, newest last
        ([0, 5, 0, 5], 4, " █ █"),                 # a period without flows is blank
        ([1, 100], 2, "▁█"),                       # anything above zero shows
        ([1, 1, 1, 1, 0, 0, 4, 4], 4, "▂▂ █"),     # more periods than columns: each column sums a run
        ([3, 0, 0, 0, 0, 0, 0, 0, 0, 0], 3, "█  "),
    ],
)
def test_sparkline(values: list[int], width: int, line: str) -> None:
    assert sparkline(values, width) == line


def test_sparkline_spans_the_window_when_the_node_is_younger() -> None:
    assert sparkline([1, 8], 4, span=8) == "   █"  # two periods of a window of eight: the newest quarter
    assert sparkline([1, 8], 4, span=2) == sparkline([1, 8], 4) == "  ▁█"
    frame = render_text(dashboard(_view(window_s=300), height=24), width=80)  # 30 periods of 10 s, 4 known
    assert "nginx/1                      4     0   100% 45.0ms  50 MiB       █             █" in frame


def test_rows_are_the_node_totals_with_failures_counted_and_useful_of_the_settled() -> None:
    rows = {r["key"]: r for r in rollup_rows(message_dict(sample_rollups())["by_process"])}
    fake, curl = rows["fakeclient/777"], rows["curl/4242"]
    assert (fake["flows"], fake["failures"], fake["useful"], fake["failures_series"]) == (2, 2, 0.0, [0, 0, 1, 1])
    assert (curl["bytes"], curl["rtt_us"], curl["useful"], curl["retransmits_series"]) == (1_259_591, 1200, 1.0,
                                                                                           [0, 0, 0, 2])
    empty = rollup_rows([{"totals": {"key": "x", "flows": 1, "useful": 0, "failures": {}, "bytes_tx": 0,
                                     "bytes_rx": 0, "rtt_p50_us": 0, "rtt_p95_us": 0, "retransmits": 0}}])
    assert empty[0]["useful"] is None and empty[0]["flows_series"] == []  # an in-progress flow settles nothing


def test_sort_rows_by_every_key() -> None:
    procs = rollup_rows(message_dict(sample_rollups())["by_process"])
    assert [r["key"] for r in sort_rows(procs, "flows")] == ["nginx/1", "fakeclient/777", "curl/4242", "dig/99"]
    assert [r["key"] for r in sort_rows(procs, "bytes")][:2] == ["nginx/1", "curl/4242"]
    assert sort_rows(procs, "failures")[0]["key"] == "fakeclient/777"
    assert sort_rows(procs, "rtt")[0]["key"] == "nginx/1"
    assert sort_rows(procs, "resp")[0]["key"] == "curl/4242" and procs[2]["resp_us"] == 210_000
    for key in SORT_KEYS:
        assert len(sort_rows(procs, key)) == len(procs)


def test_mesh_summary_from_peers() -> None:
    m = mesh_summary(message_dict(sample_peers()))
    assert m == {"alive": 1, "suspect": 1, "dead": 1, "down": ["77aa00bb", "01234567"], "flagged": []}
    assert mesh_line(m, plain=True).plain == "mesh: 1 alive · 1 suspect · 1 dead (77aa00bb, 01234567)"
    assert mesh_line(None, plain=True).plain == "mesh: not enabled"


def _process_rows(v: dict[str, Any]) -> list[str]:
    """The keys in the PROCESSES section of ``v``'s frame."""
    lines = render_text(dashboard(v, height=40), width=80).splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(" PROCESSES")) + 2
    last = next(i for i, line in enumerate(lines) if line.startswith(" DESTINATIONS"))
    return [line.split()[0] for line in lines[first:last]]


def test_keys_sort_filter_pause_quit() -> None:
    st = TopState("n:1", 300)
    st.rollups = message_dict(sample_rollups())
    assert st.view()["rollups"]["by_process"][0]["totals"]["key"] == "nginx/1"  # the node's answer, as is
    assert st.key("s") and st.sort == "failures"
    for k in "/dig\x7fg":
        st.key(k)
    assert st.input == "dig" and st.filter == ""
    st.key("\r")
    assert st.filter == "dig" and st.input is None
    assert _process_rows(st.view()) == ["dig/99"]
    st.key("p")
    frozen = st.view()
    st.rollups = None
    assert st.view()["rollups"] == frozen["rollups"] and st.view()["paused"]
    st.key("p")
    assert st.view()["rollups"] is None and _process_rows(st.view()) == []
    st.key("/")
    st.key("x")
    st.key("\x1b")
    assert st.filter == "" and st.input is None
    assert st.key("q") is False


def test_event_tail_resumes_after_the_last_event_shown() -> None:
    import threading

    from meshnode.cli._top import EventTail

    events = sample_events()
    asked: list[observer_pb2.EventsRequest] = []

    class StubNode:
        def events(self, req: observer_pb2.EventsRequest):  # type: ignore[no-untyped-def]
            asked.append(req)
            yield from events  # a node that ignores since_ns sends everything again

    st = TopState("n:1", 300)
    tail = EventTail(StubNode(), st, threading.Event())  # type: ignore[arg-type]
    tail._follow()
    tail._follow()  # as after a reconnect
    assert [e["type"] for e in st.events] == ["retransmit_burst", "connect_failed", "rtt_shift"]
    assert asked[0].since_ns == 0 and asked[1].since_ns == events[-1].time_ns + 1
    assert asked[1].follow and asked[1].number == 50


def test_wide_frame_keeps_every_column_whole_at_120() -> None:
    out = render_text(dashboard(_view(), height=30, wide=True), width=120)
    assert "…" not in out
    assert "11:06:40 rtt_shift        nginx/1              10.0.0.7:51234" in out
    assert "rtt 1.2ms -> 45ms" in out
    assert ("nginx/1                                4     0   100% 45.0ms 52.0ms     31      -      -  50 MiB    ████"
            "            ▄▅██") in out
    assert "10.0.0.53:53             domain        1     0   100%      -      -      0      -      -   160 B" in out
    # a slow server: the exchanges' mean and the node's bound of their p95, beside a low RTT
    assert "10.0.0.2:443             https         1     0   100%  1.2ms  1.2ms      2  210ms  262ms 1.2 MiB" in out
    assert max(len(line) for line in out.splitlines()) <= 120


def _blame_response(**kw: Any) -> Any:
    from meshnode.v1 import diagnosis_pb2

    return diagnosis_pb2.BlameResponse(**kw)


def test_blame_line_names_the_top_suspect_and_its_fraction() -> None:
    from meshnode.cli._dashboard import blame_line, blame_summary
    from meshnode.v1 import diagnosis_pb2

    resp = _blame_response(
        verdict="destination host db1 (10.77.1.5) is failing: 100% of 240 transactions from 4 hosts in 2 sites "
                "(timeout)", transactions=900, problems=240, hosts=4,
        suspects=[diagnosis_pb2.BlameSuspect(rank=1, kind=diagnosis_pb2.ENTITY_KIND_DST_HOST, name="db1",
                                             problem_fraction=1.0, shared=True)])
    b = blame_summary(message_dict(resp), 6.0)
    assert b["top"] == {"kind": "dst_host", "name": "db1", "problem_fraction": 1.0, "shared": True}
    assert blame_line(b, plain=True).plain == (
        "blame 6s: dst_host db1 100% · destination host db1 (10.77.1.5) is failing: 100% of 240 transactions "
        "from 4 hosts in 2 sites (timeout)")
    lone = blame_summary(message_dict(_blame_response(
        verdict="process app2/billing-sync is failing", suspects=[diagnosis_pb2.BlameSuspect(
            kind=diagnosis_pb2.ENTITY_KIND_PROCESS, name="app2/billing-sync", problem_fraction=0.625)])), 6.0)
    assert blame_line(lone, plain=True).plain.startswith("blame 6s: process app2/billing-sync ? 62.5% · ")
    healthy = blame_summary(message_dict(_blame_response(verdict="no problem above 20%", transactions=1234,
                                                         hosts=6)), 20.0)
    assert healthy["top"] is None
    assert blame_line(healthy, plain=True).plain == (
        "blame 20s: no problem above 20% · 1,234 transactions from 6 hosts")


def test_frame_with_blame_and_flagged_peers_keeps_its_height() -> None:
    from meshnode.cli._dashboard import blame_summary

    b = blame_summary({"verdict": "service 10.77.1.6:6379 is failing: 100% of 88 transactions (refused)",
                       "suspects": [{"kind": "service", "name": "10.77.1.6:6379", "problem_fraction": 1.0}]},
                      6.0)
    v = _view(blame=b, mesh={"alive": 5, "suspect": 0, "dead": 0, "down": [], "flagged": ["3f2a9c0d"]},
              rollups=_many_rollups(200), events=[message_dict(e) for e in sample_events()] * 20)
    for height in (24, 40):
        lines = render_text(dashboard(v, height=height), width=80).splitlines()
        assert len(lines) == height and max(len(line) for line in lines) <= 80
        assert lines[3] == "blame 6s: service 10.77.1.6:6379 100% · service 10.77.1.6:6379 is failing: 100%…"
        assert lines[-2] == "mesh: 5 alive · 0 suspect · 0 dead · flagged: 3f2a9c0d"


def test_diagnoser_fills_blame_and_flagged_and_stops_asking_a_node_without_the_services() -> None:
    import threading

    from meshnode.cli._exceptions import NotAvailable
    from meshnode.cli._top import Diagnoser
    from meshnode.v1 import diagnosis_pb2, trust_pb2

    asked: list[diagnosis_pb2.BlameRequest] = []

    class StubNode:
        trust = True

        def validate(self, req: trust_pb2.ValidateRequest) -> trust_pb2.ValidateResponse:
            if not self.trust:
                raise NotAvailable("no trust")
            return trust_pb2.ValidateResponse(scores=[
                trust_pb2.TrustScore(node_id="aaaabbbbccccdddd", score=0.2, flagged=True),
                trust_pb2.TrustScore(node_id="1111222233334444", score=0.9, flagged=False)])

    st = TopState("n:1", 300)
    st.status = {"export_period_s": 2.0}
    st.mesh = {"alive": 2, "suspect": 0, "dead": 0, "down": [], "flagged": []}
    node = StubNode()
    d = Diagnoser(node, st, threading.Event())  # type: ignore[arg-type]

    def blame(req: diagnosis_pb2.BlameRequest) -> diagnosis_pb2.BlameResponse:
        asked.append(req)
        return _blame_response(verdict="no problem above 20%", transactions=10, hosts=1)

    d.blame = blame
    d.poll_once()
    v = st.view()
    assert v["blame"]["verdict"] == "no problem above 20%" and v["blame"]["window_s"] == 6.0
    assert v["mesh"]["flagged"] == ["aaaabbbb"]
    assert asked[0].max_suspects == 1 and asked[0].since_ns > 0

    def absent(req: diagnosis_pb2.BlameRequest) -> diagnosis_pb2.BlameResponse:
        raise NotAvailable("no diagnosis")

    d.blame = absent
    node.trust = False
    d.poll_once()
    assert not d.has_blame and not d.has_trust
    d.run()  # returns at once: nothing left to ask
    st.status = {"export_period_s": 10.0}
    assert d.window_s() == 30.0
