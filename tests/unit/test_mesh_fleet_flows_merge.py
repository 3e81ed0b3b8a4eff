"""The merge of members' answers to a fleet flow query: time order, the page limit, the cut at a member that
has more, the page token and the cursor each member continues after, and the check of a relayed site against its
aggregate (pure, table-driven)."""

from __future__ import annotations

import random

import pytest

from meshnode.mesh import (
    Answer,
    FleetRefused,
    ManualScheduler,
    NodeKey,
    SiteConfig,
    SiteNode,
    answer_signed_by,
    decode_token,
    encode_token,
    member_after,
    merge,
    sign_answer,
)
from meshnode.mesh._fleetflows import (
    EMPTY_REST,
    LEFT_SITE,
    MALFORMED_ANSWER,
    MAX_VIEW_AGE_NS,
    TABLE_FINAL,
    TABLE_INTERIM,
    UNTRUSTED_ANSWER,
    SiteView,
    check_member,
    check_request,
    cut,
    member_request,
    records_sha256,
    relay_accounted,
    relay_members,
    share,
    unreported,
)
from meshnode.mesh._sites import HOST, SITE, Source, build_aggregate, sign_aggregate, verify_aggregate
from meshnode.v1 import flow_pb2, mesh_pb2

Rec = tuple[int, str, int, int]  # (end_ns, node_id, table, row_id)


def _answer(recs: list[Rec], more: bool = False) -> Answer:
    recs = sorted(recs)
    return Answer([flow_pb2.Flow(end_ns=e, node_id=n, flow_id=i) for e, n, _, i in recs],
                  [mesh_pb2.FleetFlowKey(table=t, row_id=i) for _, _, t, i in recs], more)


def _got(page: object) -> list[Rec]:
    return [(f.end_ns, f.node_id, k.table, k.row_id) for f, k in zip(page.flows, page.keys, strict=True)]  # type: ignore[attr-defined]


def test_merge_is_in_time_order_then_node_then_store_order() -> None:
    a = _answer([(30, "a", 0, 1), (10, "a", 0, 2), (20, "a", 1, 7)])
    b = _answer([(20, "b", 0, 3), (10, "b", 0, 1), (20, "b", 0, 4)])
    page = merge([a, b], 100)
    assert _got(page) == [(10, "a", 0, 2), (10, "b", 0, 1), (20, "a", 1, 7), (20, "b", 0, 3), (20, "b", 0, 4),
                          (30, "a", 0, 1)]
    assert not page.more and page.dropped == 0
    assert page.last == mesh_pb2.FleetCursor(end_ns=30, node_id="a", table=0, row_id=1)


def test_merge_stops_at_number_and_counts_what_it_dropped() -> None:
    a = _answer([(e, "a", 0, e) for e in range(1, 6)])
    b = _answer([(e, "b", 0, e) for e in range(1, 6)])
    page = merge([a, b], 4)
    assert _got(page) == [(1, "a", 0, 1), (1, "b", 0, 1), (2, "a", 0, 2), (2, "b", 0, 2)]
    assert page.more and page.dropped == 6


def test_merge_cuts_at_the_last_record_of_a_member_that_has_more() -> None:
    # b sent 2 of its records and has more: its third could end at 21, before a's 25 and 30
    a = _answer([(5, "a", 0, 1), (25, "a", 0, 2), (30, "a", 0, 3)])
    b = _answer([(10, "b", 0, 1), (20, "b", 0, 2)], more=True)
    page = merge([a, b], 100)
    assert _got(page) == [(5, "a", 0, 1), (10, "b", 0, 1), (20, "b", 0, 2)]
    assert page.more and page.dropped == 2
    assert page.last == mesh_pb2.FleetCursor(end_ns=20, node_id="b", table=0, row_id=2)


def test_merge_of_nothing() -> None:
    page = merge([], 10)
    assert page.flows == [] and not page.more and page.last is None
    page = merge([_answer([])], 10)
    assert page.flows == [] and not page.more


@pytest.mark.parametrize(("node", "want"), [
    ("a", (100, TABLE_INTERIM, (1 << 63) - 1)),  # sorts before the cursor's node: end_ns > 100 only
    ("m", (100, TABLE_FINAL, 42)),               # the cursor's node: after its record
    ("z", (100, -1, 0)),                         # sorts after: end_ns >= 100
])
def test_member_after(node: str, want: tuple[int, int, int]) -> None:
    cursor = mesh_pb2.FleetCursor(end_ns=100, node_id="m", table=TABLE_FINAL, row_id=42)
    assert member_after(cursor, node) == want
    assert member_after(None, node) is None


def _member_rows(node: str, rows: list[Rec], after: tuple[int, int, int] | None, limit: int) -> Answer:
    """What a member's store answers (the store's key semantics, as meshnode.store applies them)."""
    def later(r: Rec) -> bool:
        if after is None:
            return True
        end, table, row_id = after
        if table < TABLE_FINAL:
            return r[0] >= end
        if table == TABLE_FINAL:
            return (r[0], r[2], r[3]) > (end, table, row_id)
        return r[0] > end if row_id == (1 << 63) - 1 else (r[0], r[2], r[3]) > (end, table, row_id)

    mine = sorted((r for r in rows if r[1] == node and later(r)), key=lambda r: (r[0], r[2], r[3]))
    return _answer(mine[:limit], more=len(mine) > limit)


@pytest.mark.parametrize("seed", range(8))
def test_paging_through_every_page_returns_every_record_once_in_order(seed: int) -> None:
    rng = random.Random(seed)
    nodes = ["n0", "n1", "n2", "n3", "n4"]
    rows = sorted({(rng.randrange(40), n, rng.choice((0, 1)), i) for n in nodes for i in range(rng.randrange(30))})
    number, per_member = rng.choice(((7, 7), (10, 4), (3, 10), (50, 50)))
    req = mesh_pb2.FleetFlowsRequest(selector={"site": "s1"})
    req.flows.number = number
    out: list[Rec] = []
    for _ in range(1000):
        cursor = decode_token(req)
        page = merge([_member_rows(n, rows, member_after(cursor, n), per_member) for n in nodes], number)
        assert len(page.flows) <= number
        out += _got(page)
        if not page.more:
            break
        assert page.last is not None
        req.flows.page_token = encode_token(req, page.last)
    assert out == sorted(rows)


def test_a_token_belongs_to_its_request() -> None:
    req = mesh_pb2.FleetFlowsRequest(selector={"site": "s1"})
    req.flows.since_ns = 5
    token = encode_token(req, mesh_pb2.FleetCursor(end_ns=9, node_id="n", table=0, row_id=3))
    req.flows.page_token = token
    req.deadline_ms = 900  # a deadline is not part of the query
    assert decode_token(req) == mesh_pb2.FleetCursor(end_ns=9, node_id="n", table=0, row_id=3)
    other = mesh_pb2.FleetFlowsRequest()
    other.CopyFrom(req)
    other.flows.since_ns = 6
    with pytest.raises(FleetRefused, match="other filters") as err:
        decode_token(other)
    assert err.value.code == "INVALID_ARGUMENT"
    req.flows.page_token = "garbage!"
    with pytest.raises(FleetRefused, match="not a token"):
        decode_token(req)


@pytest.mark.parametrize(("change", "code", "field"), [
    ({"follow": True}, "INVALID_ARGUMENT", "flows.follow"),
    ({"batch_size": 10}, "INVALID_ARGUMENT", "flows.batch_size"),
    ({"number": 5001}, "RESOURCE_EXHAUSTED", "flows.number"),
    ({"since_ns": 10, "until_ns": 5}, "INVALID_ARGUMENT", "flows.until_ns"),
])
def test_requests_refused(change: dict[str, object], code: str, field: str) -> None:
    req = mesh_pb2.FleetFlowsRequest(flows=change)  # type: ignore[arg-type]
    with pytest.raises(FleetRefused, match=field) as err:
        check_request(req)
    assert err.value.code == code
    assert check_request(mesh_pb2.FleetFlowsRequest()) == (1000, 2.0)
    with pytest.raises(FleetRefused, match="deadline_ms"):
        check_request(mesh_pb2.FleetFlowsRequest(deadline_ms=30_001))


@pytest.mark.parametrize(("number", "asked", "most", "want"), [
    (1000, 20, 5000, 100),   # twice the even share (50), raised to the minimum
    (5000, 20, 5000, 500),   # twice the even share
    (5000, 2, 5000, 5000),   # twice the even share is the page
    (50, 20, 5000, 50),      # never more than the page
    (1000, 1, 300, 300),     # never more than the node's maximum
    (1000, 0, 5000, 1000),   # nobody asked: still a sane number
])
def test_share(number: int, asked: int, most: int, want: int) -> None:
    assert share(number, asked, most) == want


def test_an_answer_holds_only_signed_by_the_member_asked_for_the_request_asked() -> None:
    b, c = NodeKey.from_seed(b"b"), NodeKey.from_seed(b"c")

    def signed(key: NodeKey, req: mesh_pb2.FleetFlowsRequest) -> mesh_pb2.FleetFlowsResponse:
        resp = mesh_pb2.FleetFlowsResponse(more=True)
        resp.flows.add(node_id=b.node_id, flow_id=1, end_ns=10, bytes_tx=512)
        resp.keys.add(table=TABLE_FINAL, row_id=1)
        sign_answer(key, req, resp)
        return resp

    req = mesh_pb2.FleetFlowsRequest(local_only=True, challenge=b"\x01" * 16)
    good = signed(b, req)
    assert answer_signed_by(b.node_id, req, good) and answer_signed_by(b.node_id, req, good)  # proof kept
    other_challenge = mesh_pb2.FleetFlowsRequest(local_only=True, challenge=b"\x02" * 16)
    assert not answer_signed_by(b.node_id, other_challenge, signed(b, req))
    assert not answer_signed_by(b.node_id, req, signed(c, req))  # C's valid signature, but B was asked
    tampered = signed(b, req)
    tampered.flows[0].bytes_tx = 1 << 40
    unsigned = mesh_pb2.FleetFlowsResponse()
    assert not answer_signed_by(b.node_id, req, tampered) and not answer_signed_by(b.node_id, req, unsigned)
    with pytest.raises(FleetRefused, match="challenge: 65 bytes"):
        check_request(mesh_pb2.FleetFlowsRequest(challenge=bytes(65)))


def _member_answer(key: NodeKey, flows_req: mesh_pb2.FleetFlowsRequest, challenge: bytes, n: int = 4,
                   after: mesh_pb2.FleetCursor | None = None) -> mesh_pb2.MemberAnswer:
    """Member ``key``'s signed answer of ``n`` records to the member request a relay makes of ``flows_req``."""
    sub = member_request(flows_req.flows, after, 100, challenge)
    sub.deadline_ms = 1234  # the relay's to choose
    resp = mesh_pb2.FleetFlowsResponse(more=False)
    for i in range(n):
        resp.flows.add(node_id=key.node_id, flow_id=i, end_ns=10 + i, bytes_tx=100 * i)
        resp.keys.add(table=TABLE_FINAL, row_id=i + 1)
    resp.nodes.add(node_id=key.node_id, host="h-b", answered=True, records=n)
    sign_answer(key, sub, resp)
    return mesh_pb2.MemberAnswer(request=sub, answer=resp, rest_sha256=EMPTY_REST)


def test_a_relayed_member_answer_holds_cut_to_any_prefix_and_not_once_changed() -> None:
    """What a site relay passes on: the member's own signed answer, cut to the records on the relay's page
    (twice, as two relays in a row do); the asking node checks it against its own query and challenge."""
    b, r = NodeKey.from_seed(b"b"), NodeKey.from_seed(b"relay")
    q = mesh_pb2.FleetFlowsRequest()
    q.flows.number = 50
    q.flows.whitelist.add(dport=[443])
    q.flows.page_token = "ignored by members"
    ch = b"\x07" * 16
    m = _member_answer(b, q, ch)
    whole = check_member(m, q.flows, None, ch)
    assert (whole.node_id, whole.host, whole.error) == (b.node_id, "h-b", "")
    assert whole.answer is not None and [f.flow_id for f in whole.answer.flows] == [0, 1, 2, 3]
    assert not whole.answer.more
    half = cut(m, 2)
    got = check_member(half, q.flows, None, ch)
    assert got.answer is not None and [f.flow_id for f in got.answer.flows] == [0, 1] and got.answer.more
    assert half.rest_sha256 == records_sha256(m.answer.flows[2:], m.answer.keys[2:])
    again = check_member(cut(half, 1), q.flows, None, ch)  # a relay of a relay cuts the cut
    assert again.answer is not None and [f.flow_id for f in again.answer.flows] == [0] and again.answer.more
    assert cut(m, 4) is m and cut(m, 9) is m

    def changed(edit: object) -> str:
        c = mesh_pb2.MemberAnswer()
        c.CopyFrom(half)
        edit(c)  # type: ignore[operator]
        return check_member(c, q.flows, None, ch).error

    assert changed(lambda c: setattr(c.answer.flows[0], "bytes_tx", 1 << 40)) == UNTRUSTED_ANSWER
    def add(c: mesh_pb2.MemberAnswer) -> None:
        c.answer.flows.add(node_id=b.node_id, flow_id=9, end_ns=99)
        c.answer.keys.add(row_id=99)

    def drop(c: mesh_pb2.MemberAnswer) -> None:
        c.answer.flows.pop()
        c.answer.keys.pop()

    assert changed(add) == UNTRUSTED_ANSWER
    assert changed(drop) == UNTRUSTED_ANSWER
    assert changed(lambda c: setattr(c, "rest_sha256", EMPTY_REST)) == UNTRUSTED_ANSWER  # "nothing more"
    assert changed(lambda c: setattr(c.answer, "more", True)) == UNTRUSTED_ANSWER
    assert changed(lambda c: setattr(c.answer.nodes[0], "host", "elsewhere")) == UNTRUSTED_ANSWER
    assert changed(lambda c: c.answer.flows.pop()) == MALFORMED_ANSWER  # a record without its key
    # signed for another request: another challenge, filter, cursor, or not a member's request
    assert check_member(half, q.flows, None, b"\x08" * 16).error == UNTRUSTED_ANSWER
    other = mesh_pb2.FleetFlowsRequest()
    other.flows.CopyFrom(q.flows)
    other.flows.whitelist[0].dport[0] = 80
    assert check_member(half, other.flows, None, ch).error == UNTRUSTED_ANSWER
    after = mesh_pb2.FleetCursor(end_ns=5, node_id="a", table=0, row_id=1)
    assert check_member(half, q.flows, after, ch).error == UNTRUSTED_ANSWER
    assert changed(lambda c: setattr(c.request, "local_only", False)) == UNTRUSTED_ANSWER
    # the relay re-signs the changed answer with its own key, or a key it made: it names that key's node
    forged = mesh_pb2.MemberAnswer()
    forged.CopyFrom(half)
    forged.answer.flows[0].bytes_tx = 7
    forged.rest_sha256 = EMPTY_REST
    sign_answer(r, forged.request, forged.answer)
    bad = check_member(forged, q.flows, None, ch)
    assert (bad.node_id, bad.answer is None, bad.error) == (r.node_id, True, MALFORMED_ANSWER)  # b's records
    # an answer that names the member's records but lacks a key: not the member's
    nokey = mesh_pb2.MemberAnswer()
    nokey.CopyFrom(half)
    nokey.answer.public_key = b""
    assert (check_member(nokey, q.flows, None, ch).node_id, check_member(nokey, q.flows, None, ch).error) == (
        "", MALFORMED_ANSWER)


def _signed_rows(key: NodeKey, rows: list[Rec], flows_req: mesh_pb2.FleetFlowsRequest,
                 cursor: mesh_pb2.FleetCursor | None, limit: int, challenge: bytes) -> mesh_pb2.MemberAnswer:
    """Member ``key``'s signed answer, from its store (``_member_rows``), to the request a fan-out makes."""
    sub = member_request(flows_req.flows, cursor, limit, challenge)
    a = _member_rows(key.node_id, rows, member_after(cursor, key.node_id), limit)
    resp = mesh_pb2.FleetFlowsResponse(flows=a.flows, keys=a.keys, more=a.more)
    sign_answer(key, sub, resp)
    return mesh_pb2.MemberAnswer(request=sub, answer=resp, rest_sha256=EMPTY_REST)


@pytest.mark.parametrize("seed", range(6))
def test_paging_through_a_site_relay_returns_every_record_once(seed: int) -> None:
    """Two members asked directly, two more through a relay that passes on their answers cut to its own page
    (as ``MeshService._fan_out_flows`` does): every record comes out once. A relay's page can end at its
    ``number`` before a member's first record; cut to no record at all, that member's answer bounded nothing
    and the asker's page ran past its records, which no later page asked for again."""
    rng = random.Random(seed)
    keys = [NodeKey.from_seed(bytes([65 + i])) for i in range(4)]
    direct, site = keys[:2], keys[2:]
    rows = sorted({(rng.randrange(900), k.node_id, 0, i) for k in direct for i in range(rng.randrange(1, 250))})
    # the relay's share of a page of 300 is 200 (twice a third): one site member holds exactly that many,
    # all before the other's records, which come right after the relay's page ends
    number = 300
    rows += [(rng.randrange(600), site[0].node_id, 0, i) for i in range(200)]
    rows += [(650 + i, site[1].node_id, 0, i) for i in range(5)]
    rows.sort()
    req = mesh_pb2.FleetFlowsRequest()
    req.flows.number = number
    ch = b"\x05" * 16
    out: list[Rec] = []
    for _ in range(1000):
        cursor = decode_token(req)
        per = share(number, 3)
        answers = [check_member(_signed_rows(k, rows, req, cursor, per, ch), req.flows, cursor, ch) for k in direct]
        proofs = [_signed_rows(k, rows, req, cursor, share(per, 2), ch) for k in site]
        relay_page = merge([check_member(m, req.flows, cursor, ch).answer for m in proofs], per)  # type: ignore[misc]
        answers += [check_member(m, req.flows, cursor, ch) for m in relay_members(proofs, relay_page)]
        assert all(a.answer is not None for a in answers), [a.error for a in answers]
        page = merge([a.answer for a in answers], number)  # type: ignore[misc]
        out += _got(page)
        if not page.more:
            break
        assert page.last is not None
        req.flows.page_token = encode_token(req, page.last)
    assert out == rows


def test_a_relay_that_cuts_a_member_to_no_record_has_its_answer_refused() -> None:
    """A relay passing on a member's answer without one of its records (all of them in ``rest_sha256``) could
    hide the member while it is listed as answered: the asking node refuses such an answer, so the member is
    listed with an error."""
    b = NodeKey.from_seed(b"b")
    q = mesh_pb2.FleetFlowsRequest()
    q.flows.number = 50
    ch = b"\x07" * 16
    m = _member_answer(b, q, ch)
    assert check_member(cut(m, 0), q.flows, None, ch).error == MALFORMED_ANSWER
    assert check_member(cut(m, 1), q.flows, None, ch).error == ""
    empty = _member_answer(b, q, ch, n=0)  # a member with nothing to send: an answer
    assert check_member(cut(empty, 0), q.flows, None, ch).error == ""


def _site_b(members: list[NodeKey], signer: NodeKey, with_sources: bool) -> tuple[SiteNode, int]:
    """An asking node of site eu/a that decided site eu/b's aggregate of ``members``' digests (signed by
    ``signer``, an aggregator of b), holding its source list or only its count; and the period's end."""
    cfg = SiteConfig(aggregators=1)
    node = SiteNode(NodeKey.from_seed(b"asker"), {"region": "eu", "site": "a"}, ManualScheduler(), cfg)
    end = node.period_end_ns()
    srcs = [Source(mesh_pb2.AggregateRef(level=HOST, signer=k.node_id, period_end_ns=end, seq=7), [], 1, 10.0)
            for k in members]
    agg = build_aggregate(SITE, "eu/b", signer.node_id, end, srcs)
    signed = sign_aggregate(signer, agg)
    node._hold(signed, verify_aggregate(signed, cfg), "b-addr", sources=list(agg.sources) if with_sources else None)
    return node, end


def _view(node: SiteNode, end: int) -> SiteView:
    held = node.site_members("eu/b", since_ns=end - MAX_VIEW_AGE_NS)
    assert held is not None
    agg, names = held
    return SiteView("eu/b", agg.period_end_ns, agg.hosts, names)


def test_a_relay_that_leaves_a_member_out_of_both_its_lists_has_it_reported_by_the_sites_aggregate() -> None:
    """A site relay passes on 3 of its 4 members' signed answers and names only those 3 in its statuses: every
    answer it passed on checks, so nothing in the answer shows the fourth member. The site's aggregate, signed
    by the site's other aggregator and held by the asking node, names it: reported missing, naming the relay;
    with only the aggregate's count held, the shortfall is reported. An honest relay is not flagged, nor a
    member that joined after the aggregate's period, nor one its relay says left since."""
    keys = [NodeKey.from_seed(bytes([0x62, i])) for i in range(5)]
    relay, other_aggregator, hidden = keys[0], keys[1], keys[3]
    flows_req = mesh_pb2.FleetFlowsRequest()
    flows_req.flows.whitelist.add(dport=[443])
    challenge = b"c" * 16

    def relayed(members: list[NodeKey], left: tuple[NodeKey, ...] = ()) -> mesh_pb2.FleetFlowsResponse:
        resp = mesh_pb2.FleetFlowsResponse()
        for k in members:
            resp.members.append(_member_answer(k, flows_req, challenge))
            resp.nodes.add(node_id=k.node_id, answered=True, records=4, via=relay.node_id)
        for k in left:
            resp.nodes.add(node_id=k.node_id, error=LEFT_SITE)
        return resp

    hiding = relayed([k for k in keys[:4] if k is not hidden])
    assert all(check_member(m, flows_req.flows, None, challenge).answer is not None for m in hiding.members)
    named, _ = _site_b(keys[:4], other_aggregator, with_sources=True)
    counted, end = _site_b(keys[:4], other_aggregator, with_sources=False)
    by_name, by_count = _view(named, end), _view(counted, end)
    assert (by_name.hosts, by_name.members) == (4, frozenset(k.node_id for k in keys[:4]))
    assert (by_count.hosts, by_count.members) == (4, None)

    assert unreported(by_name, relay_accounted(hiding, 1024), relay.node_id) == ([hidden.node_id], "")
    assert unreported(by_count, relay_accounted(hiding, 1024), relay.node_id) == (
        [], f"site eu/b: relay {relay.node_id} listed 3 of 4 members")
    for honest in (relayed(keys[:4]),                       # every member answered
                   relayed(keys[:5]),                       # keys[4] joined after the aggregate's period
                   relayed(keys[:3], left=(keys[3],))):     # keys[3] left since: listed as left
        for view in (by_name, by_count):
            assert unreported(view, relay_accounted(honest, 1024), relay.node_id) == ([], "")
    # too old an aggregate is not checked against (members it names may have been forgotten since)
    assert named.site_members("eu/b", since_ns=end + 1) is None
