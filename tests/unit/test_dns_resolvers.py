"""DNS transactions through the node and its API: stored at each period close, served by DnsTransactions
(filters, limits, hostile requests), counted per resolver by Health, and a failing resolver blamed."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from rich.console import Console

from meshnode._dns import DnsBatch
from meshnode.cli._convert import message_dict
from meshnode.cli._dns import dns_view
from meshnode.cli._views import resolvers_table
from meshnode.diagnosis import (
    BlameConfig,
    DiagnosisServicer,
    MemorySource,
    blame,
    resolver_suspects,
    with_resolvers,
)
from meshnode.diagnosis._transaction import Transaction
from meshnode.health import ResolverHealth, resolver_health
from meshnode.sensor import DnsRecord
from meshnode.v1 import diagnosis_pb2, diagnosis_pb2_grpc, observer_pb2
from tests.unit._flows import T0, S
from tests.unit._node import Harness, running_node

R1, R2 = "10.0.0.53", "fd00::53"


def answer(i: int, query: str, rcode: str = "NOERROR", server: str = R1, latency_us: int = 1000, timed: int = 1,
           answers: int = 1, time_ns: int = 0, **kw: Any) -> DnsRecord:
    return DnsRecord(time_ns=time_ns or T0 + i, server=server, query=query, qtype="A", rcode=rcode, answers=answers,
                     timed=timed, latency_us=latency_us, latency_max_us=latency_us, addresses=int(rcode == "NOERROR"),
                     pid=700 + i, comm="dig", **kw)


# -- the rollup -------------------------------------------------------------------------------------------------


def test_resolver_health_counts_failures_by_code_and_weighs_latency_by_timed_answers() -> None:
    recs = [answer(i, f"n{i}.test", latency_us=1000 * (i + 1)) for i in range(8)]  # 1..8 ms
    recs += [answer(10, "gone.test", "NXDOMAIN", latency_us=20_000, timed=2, answers=2),
             answer(11, "x.test", "SERVFAIL", latency_us=50_000),
             answer(12, "y.test", "REFUSED", server=R2, port=5353, latency_us=300),
             answer(13, "z.test", "NOERROR", server=R2, port=5353, timed=0, latency_us=0)]
    rows = resolver_health(DnsBatch.from_records(recs))
    assert rows == [
        # 11 answers to R1: 8 fine, 2 NXDOMAIN (one transaction of two), 1 SERVFAIL; latencies 1..8 ms once,
        # 20 ms twice, 50 ms once: the median of 11 is the 6th (6 ms), p95 the 11th (50 ms)
        ResolverHealth(resolver="10.0.0.53:53", queries=11, failed=3, failures={"NXDOMAIN": 2, "SERVFAIL": 1},
                       latency_p50_us=6000, latency_p95_us=50_000, names=10),
        # an untimed answer is counted, not timed
        ResolverHealth(resolver="[fd00::53]:5353", queries=2, failed=1, failures={"REFUSED": 1},
                       latency_p50_us=300, latency_p95_us=300, names=2),
    ]
    assert rows[0].failed_fraction == pytest.approx(3 / 11)
    assert resolver_health(DnsBatch.from_records([])) == []


# -- blame ------------------------------------------------------------------------------------------------------


def _flow_txns(n: int, bad: int) -> list[Transaction]:
    return [Transaction(host="h1", site="s1", region="eu", comm="curl", pid=5, dst="10.0.9.9", dport=443,
                        service="https", dst_host="", dst_site="", dst_region="", problem=i < bad,
                        kind="timeout" if i < bad else "ok") for i in range(n)]


def test_a_resolver_is_flagged_by_the_entity_rule_with_its_evidence() -> None:
    failing = ResolverHealth("10.0.0.53:53", queries=25, failed=20, failures={"SERVFAIL": 20})
    mixed = ResolverHealth("10.0.0.54:53", queries=40, failed=10, failures={"NXDOMAIN": 6, "REFUSED": 4})
    healthy = ResolverHealth("10.0.0.55:53", queries=100, failed=3, failures={"NXDOMAIN": 3})
    few = ResolverHealth("10.0.0.56:53", queries=4, failed=4, failures={"SERVFAIL": 4})  # 4 of 4: no evidence
    found = resolver_suspects([healthy, few, mixed, failing], host="h1")
    assert [(s.rank, s.kind, s.name, s.stats.problems, s.stats.transactions, s.stats.hosts) for s in found] == [
        (1, "resolver", "10.0.0.53:53", 20, 25, ("h1",)), (2, "resolver", "10.0.0.54:53", 10, 40, ("h1",))]
    assert [s.verdict for s in found] == [
        "resolver 10.0.0.53:53 is failing: 20 of 25 queries failed (SERVFAIL)",
        "resolver 10.0.0.54:53 is failing: 10 of 40 queries failed (NXDOMAIN 6, REFUSED 4)"]
    assert found[0].stats.problem_kinds == {"SERVFAIL": 20} and found[0].shared
    assert [s.name for s in resolver_suspects([failing, mixed], target="10.0.0.54")] == ["10.0.0.54:53"]
    assert resolver_suspects([failing], target="10.0.9.9:443") == []
    # over a short regime sequential evidence stands in for the counts, as for any entity
    assert [s.name for s in resolver_suspects([few], BlameConfig(evidence=3.0))] == ["10.0.0.56:53"]


def test_resolver_suspects_merge_with_flow_suspects_by_the_problems_they_explain() -> None:
    report = blame(_flow_txns(40, 30))  # the flow rule names one suspect with 30 problems
    assert report.suspects and report.suspects[0].stats.problems == 30
    big = resolver_suspects([ResolverHealth("10.0.0.53:53", 50, 45, {"SERVFAIL": 45})])
    small = resolver_suspects([ResolverHealth("10.0.0.53:53", 50, 12, {"REFUSED": 12})])
    first = with_resolvers(report, big, 10)
    assert [(s.rank, s.kind) for s in first.suspects] == [(1, "resolver"), (2, report.suspects[0].kind)]
    assert first.verdict == "resolver 10.0.0.53:53 is failing: 45 of 50 queries failed (SERVFAIL)"
    second = with_resolvers(report, small, 10)
    assert [(s.rank, s.kind) for s in second.suspects] == [(1, report.suspects[0].kind), (2, "resolver")]
    assert second.verdict == report.verdict
    assert [s.kind for s in with_resolvers(report, big, 1).suspects] == ["resolver"]
    assert with_resolvers(report, [], 10) is report


class _DnsSource(MemorySource):
    """Periods of healthy flows, and DNS answers, as the node's source holds them."""

    def __init__(self, answers: list[DnsRecord]) -> None:
        super().__init__({"host": "h1", "site": "s1"})
        self.answers = DnsBatch.from_records(answers)
        self.asked: list[tuple[int, int]] = []

    def dns(self, since_ns: int, until_ns: int) -> DnsBatch:
        self.asked.append((since_ns, until_ns))
        times = self.answers["time_ns"]
        return self.answers.take((times >= since_ns) & (times <= until_ns))


def _blame_over_grpc(source: _DnsSource, **request: Any) -> diagnosis_pb2.BlameResponse:
    async def main() -> diagnosis_pb2.BlameResponse:
        server = grpc.aio.server()
        servicer = DiagnosisServicer(source, clock=lambda: T0 + 40 * S)
        diagnosis_pb2_grpc.add_DiagnosisServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                resp: diagnosis_pb2.BlameResponse = await diagnosis_pb2_grpc.DiagnosisStub(ch).Blame(
                    diagnosis_pb2.BlameRequest(since_ns=T0, **request), timeout=10)
                return resp
        finally:
            await server.stop(0)

    return asyncio.run(main())


def test_a_resolver_that_begins_to_fail_begins_a_regime_and_is_named_on_the_wire() -> None:
    # 30 periods of 10 good answers, then 2 periods of 10 SERVFAILs: 20 of 320 (6 %) over the whole range
    answers = [answer(p * 100 + i, f"n{i}.test", "NOERROR" if p < 30 else "SERVFAIL", time_ns=T0 + p * S + S // 2)
               for p in range(32) for i in range(10)]
    source = _DnsSource(answers)
    for p in range(32):
        source.add(T0 + (p + 1) * S, _flow_txns(30, 0))
    whole = _blame_over_grpc(source, whole_range=True)
    assert [s.kind for s in whole.suspects] == [] and whole.change == ""
    resp = _blame_over_grpc(source)
    assert [(s.rank, s.kind, s.name, s.problems, s.transactions, dict(s.problem_kinds), s.shared)
            for s in resp.suspects] == [
        (1, diagnosis_pb2.ENTITY_KIND_RESOLVER, "10.0.0.53:53", 20, 20, {"SERVFAIL": 20}, True)]
    assert resp.verdict == "resolver 10.0.0.53:53 is failing: 20 of 20 queries failed (SERVFAIL)"
    assert (resp.change, resp.regime_since_ns) == ("resolver 10.0.0.53:53 rose to 100% problems", T0 + 30 * S)
    assert source.asked == [(T0, T0 + 40 * S)] * 2


def test_blame_says_when_it_judged_resolvers_on_only_the_newest_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source gives blame at most ``MAX_BLAME_DNS`` transactions (the newest of the range); when it gave
    that many, the answer says the older ones were not read instead of judging on part of the range quietly."""
    from meshnode.diagnosis import _resolvers

    answers = [answer(p * 100 + i, f"n{i}.test", "NOERROR", time_ns=T0 + p * S + S // 2)
               for p in range(4) for i in range(10)]
    source = _DnsSource(answers)
    for p in range(4):
        source.add(T0 + (p + 1) * S, _flow_txns(30, 0))
    assert "DNS transactions" not in _blame_over_grpc(source).coverage
    monkeypatch.setattr(_resolvers, "MAX_BLAME_DNS", 40)
    assert _blame_over_grpc(source).coverage.endswith(  # after the note on the periods held, when there is one
        "resolvers judged on the newest 40 DNS transactions of the range (the most one blame reads); narrow "
        "--since for all of them")


# -- the node and its API ---------------------------------------------------------------------------------------


def run(tmp_path: Path, body: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with running_node(tmp_path) as h:
            await body(h)

    asyncio.run(main())


async def period(h: Harness, dns: list[DnsRecord]) -> None:
    h.sensor.feed_dns(dns)
    await h.node.tick()
    await h.node.close_period()


def test_the_node_stores_each_periods_transactions_and_serves_them(tmp_path: Path) -> None:
    first = [answer(1, "web.test"), answer(2, "gone.test", "NXDOMAIN", latency_us=2500),
             answer(3, "api.corp.test", "SERVFAIL", server=R2, tcp=True)]
    second = [answer(4, "web.test", latency_us=900), answer(5, "other.test", "REFUSED")]

    async def body(h: Harness) -> None:
        await period(h, first)
        await period(h, second)

        async def ask(**kw: Any) -> observer_pb2.DnsTransactionsResponse:
            resp: observer_pb2.DnsTransactionsResponse = await h.stub.DnsTransactions(
                observer_pb2.DnsTransactionsRequest(since_ns=T0, until_ns=T0 + 100, **kw), timeout=10)
            return resp

        everything = await ask()
        assert [(t.query, t.rcode, t.failed, t.server, t.port, t.latency_us, t.pid, t.comm, t.tcp)
                for t in everything.transactions] == [
            ("web.test", "NOERROR", False, R1, 53, 1000, 701, "dig", False),
            ("gone.test", "NXDOMAIN", True, R1, 53, 2500, 702, "dig", False),
            ("api.corp.test", "SERVFAIL", True, R2, 53, 1000, 703, "dig", True),
            ("web.test", "NOERROR", False, R1, 53, 900, 704, "dig", False),
            ("other.test", "REFUSED", True, R1, 53, 1000, 705, "dig", False)]
        assert (everything.matched, everything.since_ns, everything.until_ns) == (5, T0, T0 + 100)

        def queries(resp: observer_pb2.DnsTransactionsResponse) -> list[str]:
            return [t.query for t in resp.transactions]

        assert queries(await ask(failed_only=True)) == ["gone.test", "api.corp.test", "other.test"]
        assert queries(await ask(rcodes=["nxdomain", "REFUSED"])) == ["gone.test", "other.test"]
        assert queries(await ask(names=["*.test"], servers=[R2])) == ["api.corp.test"]
        assert queries(await ask(names=["web.test"])) == ["web.test", "web.test"]
        limited = await ask(limit=2)
        assert (queries(limited), limited.matched) == (["web.test", "other.test"], 5)

        health = await h.stub.Health(observer_pb2.HealthRequest(since_ns=T0, until_ns=T0 + 100), timeout=10)
        assert [(r.resolver, r.queries, r.failed, dict(r.failures)) for r in health.resolvers] == [
            ("10.0.0.53:53", 4, 2, {"NXDOMAIN": 1, "REFUSED": 1}), ("[fd00::53]:53", 1, 1, {"SERVFAIL": 1})]
        stats = h.node.store.stats()
        assert stats.dns_rows == 5

    run(tmp_path, body)


def test_health_refuses_a_range_of_more_dns_transactions_than_it_rolls_up(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("meshnode.api._servicer.MAX_HEALTH_DNS", 2)

    async def body(h: Harness) -> None:
        await period(h, [answer(i, f"n{i}.test") for i in range(3)])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.stub.Health(observer_pb2.HealthRequest(since_ns=T0, until_ns=T0 + 100), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.value.details() == "since_ns: the range holds more than 2 DNS transactions; narrow it"
        health = await h.stub.Health(observer_pb2.HealthRequest(since_ns=T0 + 1, until_ns=T0 + 100), timeout=10)
        assert [(r.resolver, r.queries) for r in health.resolvers] == [("10.0.0.53:53", 2)]

    run(tmp_path, body)


BAD = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(("kw", "code", "field"), [
    ({"rcodes": ["NOPE"]}, BAD, "rcodes[0]"),
    ({"servers": ["resolver.local"]}, BAD, "servers[0]"),
    ({"names": ["*."]}, BAD, "names[0]"),
    ({"names": ["x" * 5000]}, BAD, "names[0]"),
    ({"names": ["a.test"] * 1025}, BAD, "names"),
    ({"names": ["a.test"] * 1024, "servers": ["10.0.0.1"] * 1024, "rcodes": ["NOERROR"] * 1024,
      "failed_only": True}, grpc.StatusCode.OK, ""),
    ({"limit": 10_001}, grpc.StatusCode.RESOURCE_EXHAUSTED, "limit"),
    ({"since_ns": 10, "until_ns": 5}, BAD, "until_ns"),
    ({"until_ns": 2**64 - 1}, BAD, "until_ns"),
])
def test_bad_dns_requests_are_refused_naming_the_field(tmp_path: Path, kw: dict[str, Any], code: grpc.StatusCode,
                                                       field: str) -> None:
    async def body(h: Harness) -> None:
        try:
            await h.stub.DnsTransactions(observer_pb2.DnsTransactionsRequest(**kw), timeout=10)
            got = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            got = exc.code()
            assert (exc.details() or "").startswith(field + ":"), exc.details()
        assert got == code

    run(tmp_path, body)


# -- the views --------------------------------------------------------------------------------------------------


def _render(renderable: Any, width: int = 80) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(renderable)
    return out.getvalue()


def test_meshctl_dns_and_the_health_resolvers_table_fit_80_columns() -> None:
    resp = observer_pb2.DnsTransactionsResponse(
        transactions=[
            {"time_ns": 1_700_000_000 * 10**9, "server": R1, "port": 53, "query": "web.test", "qtype": "A",
             "rcode": "NOERROR", "latency_us": 850, "pid": 701, "comm": "dig", "answers": 1},
            {"time_ns": 1_700_000_001 * 10**9, "server": R2, "port": 53, "query": "gone.test", "qtype": "AAAA",
             "rcode": "NXDOMAIN", "failed": True, "latency_us": 2500, "pid": 702, "comm": "curl", "answers": 3}],
        matched=7, since_ns=1_699_999_000 * 10**9, until_ns=1_700_000_100 * 10**9)
    assert _render(dns_view(message_dict(resp), plain=True)).splitlines() == [
        "TIME     PROCESS      RESOLVER        QUERY           TYPE RCODE      N LATENCY",
        "22:13:20 dig/701      10.0.0.53:53    web.test        A    NOERROR    1   850us",
        "22:13:21 curl/702     [fd00::53]:53   gone.test       AAAA NXDOMAIN   3   2.5ms",
        "4 answers (3 failed) in 2 rows from 21:56:40 to 22:15:00 UTC; the newest of 7 ",
        "rows that matched (--limit for more)"]
    # --since all asks from the first nanosecond: no "from 00:00:00"
    resp.since_ns = 1
    assert _render(dns_view(message_dict(resp), plain=True)).splitlines()[3] == \
        "4 answers (3 failed) in 2 rows up to 22:15:00 UTC; the newest of 7 rows that "
    rows = message_dict(observer_pb2.HealthResponse(resolvers=[
        {"resolver": "[fd00::53]:53", "queries": 25, "failed": 20, "failures": {"SERVFAIL": 20},
         "latency_p50_us": 1200, "latency_p95_us": 30_000},
        {"resolver": "10.0.0.53:53", "queries": 9, "latency_p50_us": 800, "latency_p95_us": 900}]))["resolvers"]
    assert [line.rstrip() for line in _render(resolvers_table(rows, plain=True)).splitlines()] == [
        "DNS RESOLVERS (most failed first)",
        "RESOLVER              QUERIES FAILED FAILURES          P50    P95",
        "[fd00::53]:53              25  80.0% SERVFAIL 20     1.2ms 30.0ms",
        "10.0.0.53:53                9   0.0% -               800us  900us"]


def test_names_from_the_host_reach_the_terminal_as_text_not_as_commands() -> None:
    """A process names itself (prctl PR_SET_NAME, 15 bytes): an escape sequence in its name must not reach the
    terminal (``\\x1b[2J`` clears it), and rich markup in a name or an address must print as it is written
    (``[/bold]`` made ``meshctl blame`` fail; a resolver ``[fd00::53]:53`` showed as ``:53``)."""
    from meshnode.cli._blame import blame_view

    resp = observer_pb2.DnsTransactionsResponse(
        transactions=[{"time_ns": 1_700_000_000 * 10**9, "server": R2, "port": 53, "query": "a\x1b[31m.test",
                       "qtype": "A", "rcode": "NXDOMAIN", "failed": True, "pid": 7, "comm": "ev\x1b[2Jil",
                       "answers": 1}],
        since_ns=1_699_999_000 * 10**9, until_ns=1_700_000_100 * 10**9)
    text = _render(dns_view(message_dict(resp), wide=True, plain=True), width=120)
    assert "\x1b" not in text
    assert text.splitlines()[1].split()[1:4] == ["ev?[2Jil/7", "[fd00::53]:53", "a?[31m.test"]

    def suspect(kind: str, name: str) -> dict[str, Any]:
        return {"rank": 1, "kind": kind, "name": name, "display": f"{kind} {name}", "problem_fraction": 0.8,
                "transactions": 25, "hosts": ["h1"], "problem_kinds": {"SERVFAIL": 20}}

    for kind, name, shown in (("resolver", "[fd00::53]:53", "[fd00::53]:53"), ("process", "[/bold]x", "[/bold]x"),
                              ("process", "ev\x1b[2Jil", "ev?[2Jil")):
        out = _render(blame_view({"verdict": "suspects", "suspects": [suspect(kind, name)]}, plain=True))
        assert "\x1b" not in out
        [row] = [line for line in out.splitlines() if line.startswith(" 1 ")]
        assert row.split()[2] == shown, out
        assert f"evidence for #1 {kind} {shown}:" in out


def test_a_period_holds_at_most_max_period_dns_transactions_and_counts_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of DNS answers (a process asking for random names, answers sent to any open UDP port: the
    kernel sums answers without a query it saw too) gives up to 4,096 transactions a poll, ~86,000 a 10 s
    period held in memory and written as one chunk that pushes flows out of a size-bound store: a period
    keeps the first ``MAX_PERIOD_DNS`` and counts the others (``dns_dropped``, status and metrics)."""
    monkeypatch.setattr("meshnode.daemon._node.MAX_PERIOD_DNS", 3)

    async def body(h: Harness) -> None:
        h.sensor.feed_dns([answer(i, f"r{i}.flood.test") for i in range(1, 3)])
        await h.node.tick()
        h.sensor.feed_dns([answer(i, f"r{i}.flood.test") for i in range(3, 6)])
        await h.node.tick()
        await h.node.close_period()
        await period(h, [answer(9, "web.test")])
        resp = await h.stub.DnsTransactions(observer_pb2.DnsTransactionsRequest(since_ns=T0, until_ns=T0 + 100),
                                            timeout=10)
        assert [t.query for t in resp.transactions] == ["r1.flood.test", "r2.flood.test", "r3.flood.test",
                                                        "web.test"]
        status = await h.stub.Status(observer_pb2.StatusRequest(), timeout=10)
        assert status.completeness.dns_dropped == 2

    run(tmp_path, body)
