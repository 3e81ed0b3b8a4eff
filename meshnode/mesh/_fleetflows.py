"""Fleet history queries: the pure parts (limits, cursors, page tokens, the merge of members' answers).

A fleet flow query (``Mesh.FleetFlows``) asks members for the records in their own stores; each answers in
its store's order, ``(end_ns, table, row_id)``. The asking node merges the answers in the fleet order
``(end_ns, node_id, table, row_id)``, a total order, so a page ends at one record (a ``FleetCursor``) and
the next page asks every member for what follows it (``member_after``): the token stays one record long
however large the fleet is.

A member sends at most ``rows_per_member`` records (``share``: twice its even share of the page) and says
whether more match (``more``). Its records past the last one it sent are unknown to the merge, so the page
is cut at the earliest such "last sent" record among the members that have more: nothing a member holds
before the page's end is ever skipped.
Records merged but not on the page (cut, or past ``number``) are counted as ``rows_dropped``; they come
again on the next page.

An answer is bound to the member that made it: the fan-out sends a random ``challenge``, and the member signs
its answer with its node key over the request and the answer (``sign_answer``). The asking node takes it
only when that member's key signed it (``answer_signed_by``): whoever else answers at the member's address
(a certificate of the same CA on a reused address or port, a relay that rewrites it) cannot make its
records pass for the member's. gRPC's Python client does not show the server's certificate to the caller,
so the check is the signature rather than the TLS peer; it holds in plaintext too.

Site relays pass their members' answers on as the members signed them (``MemberAnswer``), with the asking
node's challenge, and the asking node checks each one (``check_member``): a relay can leave a member out (it
is reported missing) but not change its records, nor pass an answer on cut to none of them (``relay_members``).
A relay that leaves a member out of its answers and of its statuses alike is caught where the asking node
holds the site's signed aggregate (``SiteView``, ``unreported``): a member it names, or a shortfall of its
count, is reported missing.
The signature covers the records through a hash chain,
last record first (``records_sha256``), so that a relay sends only the records that made its page: a prefix
and the chain hash of the rest (``cut``), which still verifies, and says that more records match.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from meshnode.mesh._digest import node_id_from_public_key
from meshnode.mesh._identity import signed_by_node
from meshnode.v1 import flow_pb2, mesh_pb2

if TYPE_CHECKING:
    from meshnode.mesh._digest import NodeKey
    from meshnode.v1 import observer_pb2

DEFAULT_NUMBER: Final = 1_000
"""Records in a merged page when the request says 0 (as ``Observer.Flows``)."""
MAX_NUMBER: Final = 5_000
"""Records in one merged page (a unary answer of ~250 B a record: about 1.3 MB)."""
MAX_ROWS_PER_MEMBER: Final = 5_000
"""Records one member sends for one page."""
MIN_SHARE: Final = 100
"""The fewest records a member is asked for, whatever its share of the page."""
MAX_MEMBERS: Final = 256
"""Members one node asks for one query (more selected: RESOURCE_EXHAUSTED; narrow the selector, or
``per_site``, which asks one member per site)."""
MAX_FAN_OUTS: Final = 4
"""Fleet flow queries one node fans out at once (its own callers' and the sites' it relays for)."""
MAX_LOCAL_ANSWERS: Final = 8
"""Members' requests (``local_only``) one node answers at once from its store."""
DEFAULT_DEADLINE_MS: Final = 2_000
MAX_DEADLINE_MS: Final = 30_000

CHALLENGE_BYTES: Final = 16
"""The random challenge a fan-out sends with each member's request."""
MAX_CHALLENGE_BYTES: Final = 64

_ANSWER_DOMAIN: Final = b"meshnode-fleet-flows-v2\x00"
_RECORD_DOMAIN: Final = b"meshnode-fleet-record-v1\x00"
EMPTY_REST: Final = bytes(32)
"""``MemberAnswer.rest_sha256`` when no record was left out: the chain's end."""

UNTRUSTED_ANSWER: Final = "UNTRUSTED_ANSWER"
"""A fleet flow query's error for a member whose answer its key did not sign (another node answered at its
address, or a relay changed it): its records are not shown."""
MALFORMED_ANSWER: Final = "malformed answer"

TABLE_FINAL: Final = 0
TABLE_INTERIM: Final = 1
_MAX_ID: Final = (1 << 63) - 1

Key = tuple[int, int, int]
"""A record's place in its node's store, ``(end_ns, table, row_id)`` (``meshnode.store``'s paging key)."""


class FleetRefused(Exception):
    """A fleet flow query this node will not run; ``code`` is the ``grpc.StatusCode`` name to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def member_after(cursor: mesh_pb2.FleetCursor | None, node_id: str) -> Key | None:
    """The store key after which member ``node_id`` continues a query whose last page ended at ``cursor``.

    Keys for "every record with end_ns > E" and "end_ns >= E" are written as the store compares them: an
    interim key with the largest row id, and a key with a table before the final one.
    """
    if cursor is None:
        return None
    if node_id < cursor.node_id:  # its records at end_ns == E sort before the cursor: already sent
        return (cursor.end_ns, TABLE_INTERIM, _MAX_ID)
    if node_id > cursor.node_id:  # its records at end_ns == E sort after the cursor: still due
        return (cursor.end_ns, -1, 0)
    return (cursor.end_ns, cursor.table, cursor.row_id)


@dataclass
class Answer:
    """One member's (or one site's) records, in the fleet order, and whether more match past the last."""

    flows: Sequence[flow_pb2.Flow]
    keys: Sequence[mesh_pb2.FleetFlowKey]
    more: bool = False


@dataclass
class Page:
    """The merged page: records in the fleet order, their keys, where it ended, whether more match."""

    flows: list[flow_pb2.Flow] = field(default_factory=list)
    keys: list[mesh_pb2.FleetFlowKey] = field(default_factory=list)
    more: bool = False
    last: mesh_pb2.FleetCursor | None = None
    dropped: int = 0
    taken: list[int] = field(default_factory=list)
    """Records of each answer (by position) on the page: a prefix of that answer's records."""


def _order(f: flow_pb2.Flow, k: mesh_pb2.FleetFlowKey) -> tuple[int, str, int, int]:
    return (f.end_ns, f.node_id, k.table, k.row_id)


def _ordered(i: int, a: Answer) -> Iterator[tuple[int, str, int, int, int, int]]:
    """Answer ``i``'s records as order keys (with their answer and position), made as the merge reaches them."""
    for j, (f, k) in enumerate(zip(a.flows, a.keys, strict=True)):
        yield (f.end_ns, f.node_id, k.table, k.row_id, i, j)


def merge(answers: Sequence[Answer], number: int) -> Page:
    """Merge sorted answers into one page of at most ``number`` records (see the module docstring).

    Lazy: only the records up to the page's end are looked at (a page of 1,000 out of 20 members' 1,000
    each reads about 1,020 records, not 20,000).
    """
    cut: tuple[int, str, int, int] | None = None
    total = 0
    for a in answers:
        if len(a.flows) != len(a.keys):
            raise ValueError(f"an answer with {len(a.flows)} records and {len(a.keys)} keys")
        total += len(a.flows)
        if a.more and a.flows:
            last = _order(a.flows[-1], a.keys[-1])
            cut = last if cut is None else min(cut, last)
    page = Page(more=any(a.more for a in answers), taken=[0] * len(answers))
    for end, node, table, row, i, j in heapq.merge(*(_ordered(i, a) for i, a in enumerate(answers))):
        if (cut is not None and (end, node, table, row) > cut) or len(page.flows) == number:
            page.more = True
            break
        page.flows.append(answers[i].flows[j])
        page.keys.append(answers[i].keys[j])
        page.taken[i] += 1
    page.dropped = total - len(page.flows)
    if page.flows:
        f, k = page.flows[-1], page.keys[-1]
        page.last = mesh_pb2.FleetCursor(end_ns=f.end_ns, node_id=f.node_id, table=k.table, row_id=k.row_id)
    return page


def records_sha256(flows: Sequence[flow_pb2.Flow], keys: Sequence[mesh_pb2.FleetFlowKey],
                   rest: bytes = EMPTY_REST) -> bytes:
    """The hash chain of records and their keys, last first, ending in ``rest``: each link is the SHA-256 of
    a domain tag, the record, its key (each serialized deterministically, length-prefixed) and the next link.
    A prefix of the records and the chain of the others (``rest``) give the same hash as all of them."""
    if len(flows) != len(keys):
        raise ValueError(f"{len(flows)} records and {len(keys)} keys")
    h = rest
    for i in range(len(flows) - 1, -1, -1):
        fb = flows[i].SerializeToString(deterministic=True)
        kb = keys[i].SerializeToString(deterministic=True)
        h = hashlib.sha256(_RECORD_DOMAIN + len(fb).to_bytes(4, "big") + fb + len(kb).to_bytes(4, "big") + kb
                           + h).digest()
    return h


def answer_bytes(req: mesh_pb2.FleetFlowsRequest, resp: mesh_pb2.FleetFlowsResponse,
                 rest: bytes = EMPTY_REST) -> bytes:
    """The bytes an answer's signature covers: the request, ``resp`` without its records, ``public_key`` and
    ``signature``, and the chain of its records ending in ``rest`` (the records a relay left out)."""
    bare = mesh_pb2.FleetFlowsResponse()
    bare.CopyFrom(resp)
    for name in ("flows", "keys", "public_key", "signature"):
        bare.ClearField(name)
    return (_ANSWER_DOMAIN + hashlib.sha256(req.SerializeToString(deterministic=True)).digest()
            + hashlib.sha256(bare.SerializeToString(deterministic=True)).digest()
            + records_sha256(resp.flows, resp.keys, rest))


def sign_answer(key: NodeKey, req: mesh_pb2.FleetFlowsRequest, resp: mesh_pb2.FleetFlowsResponse) -> None:
    """Sign ``resp``, the answer of ``key``'s node to ``req``, in place."""
    resp.ClearField("public_key")
    resp.ClearField("signature")
    signature = key.sign(answer_bytes(req, resp))
    resp.public_key, resp.signature = key.public_raw, signature


def answer_signed_by(node_id: str, req: mesh_pb2.FleetFlowsRequest, resp: mesh_pb2.FleetFlowsResponse,
                     rest: bytes = EMPTY_REST) -> bool:
    """True when ``resp`` (its records chained onto ``rest``) is signed, as the answer to ``req``, by the key
    whose fingerprint is ``node_id``."""
    return signed_by_node(node_id, resp.public_key, resp.signature, answer_bytes(req, resp, rest))


def member_request(flows: observer_pb2.FlowsRequest, after: mesh_pb2.FleetCursor | None, rows: int,
                   challenge: bytes) -> mesh_pb2.FleetFlowsRequest:
    """What a fan-out asks each member: its own records of ``flows`` after ``after``, at most ``rows``."""
    sub = mesh_pb2.FleetFlowsRequest(local_only=True, rows_per_member=rows, challenge=challenge)
    sub.flows.CopyFrom(flows)
    sub.flows.page_token = ""
    if after is not None:
        sub.after.CopyFrom(after)
    return sub


def cut(m: mesh_pb2.MemberAnswer, k: int) -> mesh_pb2.MemberAnswer:
    """``m`` with its first ``k`` records only; the others go into ``rest_sha256`` (the signature holds)."""
    if k >= len(m.answer.flows):
        return m
    out = mesh_pb2.MemberAnswer()
    out.CopyFrom(m)
    out.rest_sha256 = records_sha256(m.answer.flows[k:], m.answer.keys[k:], m.rest_sha256 or EMPTY_REST)
    del out.answer.flows[k:]
    del out.answer.keys[k:]
    return out



def relay_members(members: Sequence[mesh_pb2.MemberAnswer], page: Page) -> list[mesh_pb2.MemberAnswer]:
    """What a relay passes on of its members' answers after merging them into ``page``: each cut to its records
    on the page, but never to none of them. A relay's page may end (at its ``number``) before a member's first
    record; cut to nothing, that answer would bound nothing at the asking node, whose page could then run past
    the member's records (the next page asks after it: they would never be shown). Its first record kept, the
    asking node's page ends at it at the latest (the member has more)."""
    return [cut(m, max(k, 1)) for m, k in zip(members, page.taken, strict=True)]


NOT_REPORTED: Final = "not reported by its relay"
"""A fleet flow query's error for a member of a relayed site that the site's aggregate names but its relay
accounted for nowhere (no answer, no status, not excluded); ``via`` names the relay."""
LEFT_SITE: Final = "left its site"
"""A relay's status for a member of its site that left it (still listed, ``State.LEFT``): the member the
site's aggregate may still name is accounted for, and the answer is not partial for it."""
MAX_VIEW_AGE_NS: Final = 120 * 1_000_000_000
"""The oldest site aggregate a relayed answer is checked against. A member that left before it is still
listed by its relay (members stay listed as left for ``MeshConfig.dead_retention``, 300 s by default); an
older aggregate could name members forgotten since."""


@dataclass(frozen=True)
class SiteView:
    """What the asking node verified itself of a relayed site's membership: the newest site aggregate it
    decided (signed by an aggregator of the site, cross-checked by the site's members and its region's
    aggregators), with the hosts it covers and, when its source list is held, the members it names."""

    group: str
    period_end_ns: int
    hosts: int
    members: frozenset[str] | None = None
    """The node ids of the digests summed (``None``: only the count is known here)."""


def relay_accounted(resp: mesh_pb2.FleetFlowsResponse, bound: int) -> set[str]:
    """The members a relay's answer accounts for: those whose answers it passed on (named by the key that
    signed them, checked or not), those it gave a status for, those it excluded; at most ``bound`` of each."""
    out = {node_id_from_public_key(m.answer.public_key) for m in resp.members[:bound]
           if len(m.answer.public_key) == 32}
    out.update(n.node_id for n in resp.nodes[:bound] if n.node_id)
    out.update(resp.excluded[:bound])
    return out


def unreported(view: SiteView, accounted: set[str], relay: str) -> tuple[list[str], str]:
    """What a relay's answer for ``view``'s site leaves out: the members the aggregate names that the relay
    accounted for nowhere (``accounted``: the members whose answers it passed on, those it gave a status for,
    those it excluded), sorted; or, when only the aggregate's count is known, a note when the relay accounted
    for fewer members than the aggregate summed. Members that joined after the aggregate's period are not in
    it and cannot be flagged; members that left since are listed by an honest relay (``LEFT_SITE``)."""
    if view.members is not None:
        return sorted(view.members - accounted), ""
    if len(accounted) < view.hosts:
        return [], f"site {view.group}: relay {relay} listed {len(accounted)} of {view.hosts} members"
    return [], ""


@dataclass
class Checked:
    """A relayed member answer, checked: whose it is, and its records (None when refused, with ``error``)."""

    node_id: str
    host: str = ""
    answer: Answer | None = None
    error: str = ""


def check_member(m: mesh_pb2.MemberAnswer, flows: observer_pb2.FlowsRequest,
                 after: mesh_pb2.FleetCursor | None, challenge: bytes) -> Checked:
    """Check a member's answer a relay passed on, against the asking node's own query (``flows``, ``after``)
    and the ``challenge`` it sent: the request the member signed must be a member's request for exactly
    that, and the member's key (whose fingerprint names it) must have signed the answer; every record must
    name the member. ``error`` is ``UNTRUSTED_ANSWER`` (another request, or not signed by that key) or
    ``MALFORMED_ANSWER``.
    """
    a, r = m.answer, m.request
    nid = node_id_from_public_key(a.public_key) if len(a.public_key) == 32 else ""
    if not nid or len(a.flows) != len(a.keys) or len(m.rest_sha256) not in (0, 32):
        return Checked(nid, error=MALFORMED_ANSWER)
    if len(a.flows) > (r.rows_per_member or MAX_ROWS_PER_MEMBER) or len(a.flows) > MAX_ROWS_PER_MEMBER:
        return Checked(nid, error=MALFORMED_ANSWER)
    if not a.flows and m.rest_sha256 not in (b"", EMPTY_REST):  # cut to no record: says nothing of where they
        return Checked(nid, error=MALFORMED_ANSWER)             # are, and would hide them (``relay_members``)
    want = member_request(flows, after, r.rows_per_member, challenge)
    want.deadline_ms = r.deadline_ms  # the relay's to choose; the rest is the asking node's
    rest = m.rest_sha256 or EMPTY_REST
    if (not challenge or r.SerializeToString(deterministic=True) != want.SerializeToString(deterministic=True)
            or not answer_signed_by(nid, r, a, rest)):
        return Checked(nid, error=UNTRUSTED_ANSWER)
    if any(f.node_id != nid for f in a.flows):
        return Checked(nid, error=MALFORMED_ANSWER)
    host = a.nodes[0].host if a.nodes and a.nodes[0].node_id == nid else ""
    return Checked(nid, host, Answer(a.flows, a.keys, a.more or rest != EMPTY_REST))


def share(number: int, asked: int, most: int = MAX_ROWS_PER_MEMBER) -> int:
    """Records to ask of each of ``asked`` members for a page of ``number``: twice an even share (at least
    ``MIN_SHARE``, at most ``number`` and ``most``). Asking each member for the whole page would move
    ``asked`` times the page for one page; with shares a page holds fewer than ``number`` records when one
    member's share ran out first (the cut), and the next page continues from there.
    """
    return min(number, most, max(MIN_SHARE, -(-2 * number // max(1, asked))))


def _fingerprint(req: mesh_pb2.FleetFlowsRequest) -> str:
    """What a token is bound to: the query, its selector and fan-out shape, not its deadline or challenge."""
    bare = mesh_pb2.FleetFlowsRequest()
    bare.CopyFrom(req)
    bare.flows.page_token = ""
    bare.deadline_ms = 0
    bare.ClearField("after")
    bare.rows_per_member = 0
    bare.challenge = b""
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()[:16]


def encode_token(req: mesh_pb2.FleetFlowsRequest, last: mesh_pb2.FleetCursor) -> str:
    """An opaque token continuing ``req`` after ``last``, valid only for the same request."""
    data = {"e": last.end_ns, "n": last.node_id, "t": last.table, "i": last.row_id, "h": _fingerprint(req)}
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(req: mesh_pb2.FleetFlowsRequest) -> mesh_pb2.FleetCursor | None:
    """The cursor ``req.flows.page_token`` continues after (None: first page).

    Raises:
        FleetRefused: INVALID_ARGUMENT, a token this method did not issue or one of another request.
    """
    token = req.flows.page_token
    if not token:
        return None
    if len(token) > 1024:
        raise FleetRefused("INVALID_ARGUMENT", "flows.page_token: not a token of FleetFlows")
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor = mesh_pb2.FleetCursor(end_ns=int(data["e"]), node_id=str(data["n"]), table=int(data["t"]),
                                      row_id=int(data["i"]))
        fp = str(data["h"])
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        raise FleetRefused("INVALID_ARGUMENT", "flows.page_token: not a token of FleetFlows") from None
    if cursor.table not in (TABLE_FINAL, TABLE_INTERIM) or len(cursor.node_id) > 128:
        raise FleetRefused("INVALID_ARGUMENT", "flows.page_token: not a token of FleetFlows")
    if fp != _fingerprint(req):
        raise FleetRefused("INVALID_ARGUMENT", "flows.page_token: the token belongs to a request with other "
                                               "filters, range or selector")
    return cursor


def check_request(req: mesh_pb2.FleetFlowsRequest) -> tuple[int, float]:
    """The page size and deadline (seconds) of ``req``; what the Flows filters cannot say is checked here.

    Raises:
        FleetRefused: INVALID_ARGUMENT (follow, batch_size, a deadline over the maximum), RESOURCE_EXHAUSTED
            (number over ``MAX_NUMBER``).
    """
    f = req.flows
    if f.follow:
        raise FleetRefused("INVALID_ARGUMENT", "flows.follow: a fleet query has an end; leave follow unset")
    if f.batch_size:
        raise FleetRefused("INVALID_ARGUMENT", "flows.batch_size: must be unset (the answer is one message)")
    if f.number > MAX_NUMBER:
        raise FleetRefused("RESOURCE_EXHAUSTED", f"flows.number: {f.number} is over the fleet maximum of "
                                                 f"{MAX_NUMBER:,} a page; follow next_page_token for more")
    if len(req.challenge) > MAX_CHALLENGE_BYTES:
        raise FleetRefused("INVALID_ARGUMENT", f"challenge: {len(req.challenge)} bytes, at most "
                                               f"{MAX_CHALLENGE_BYTES}")
    if req.deadline_ms > MAX_DEADLINE_MS:
        raise FleetRefused("INVALID_ARGUMENT", f"deadline_ms: {req.deadline_ms} is over {MAX_DEADLINE_MS:,}")
    if f.until_ns and f.until_ns < f.since_ns:
        raise FleetRefused("INVALID_ARGUMENT", f"flows.until_ns: {f.until_ns} is before since_ns {f.since_ns}")
    return (f.number or DEFAULT_NUMBER), (req.deadline_ms or DEFAULT_DEADLINE_MS) / 1000.0
