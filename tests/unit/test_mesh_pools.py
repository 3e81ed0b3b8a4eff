"""Pools on one port: the site pool's shared delegate (digest exchange + hierarchy), admission by labels, locate."""

from __future__ import annotations

import functools
import random

import pytest

from meshnode._exceptions import PeerError
from meshnode.mesh import ManualScheduler, Membership, MemoryNetwork, NodeKey, SiteConfig, SiteNode
from meshnode.mesh._mux import SITE_TAG, DelegateMux, join_state, split_state
from meshnode.mesh._service import _same_group
from meshnode.mesh._sites import SITE
from meshnode.v1 import mesh_pb2


class _Recorder:
    """A delegate that records what reaches it and answers with a fixed state and request answer."""

    def __init__(self, name: str, state: bytes = b"", broadcasts: tuple[bytes, ...] = ()) -> None:
        self.name = name
        self.state = state
        self.broadcasts = list(broadcasts)
        self.got: list[tuple[str, bytes]] = []

    def notify_msg(self, source: str, source_addr: str, payload: bytes) -> None:
        self.got.append(("msg", payload))

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        out = [b for b in self.broadcasts if len(b) + overhead <= limit]
        self.got.append(("overhead", bytes([overhead])))
        return out

    def local_state(self, join: bool, remote: bytes | None) -> bytes:
        self.got.append(("remote", remote if remote is not None else b"<none>"))
        return self.state

    def merge_remote_state(self, payload: bytes, join: bool, source_addr: str) -> None:
        self.got.append(("state", payload))

    def handle_request(self, source_addr: str, payload: bytes) -> bytes:
        self.got.append(("request", payload))
        return self.name.encode()


@pytest.mark.parametrize(("site", "exchange"), [(b"", b"\x0a\x02ab"), (b"\x0a\x01s", b"\x0a\x02ab"),
                                                 (b"\x0a\x01s", b""), (b"", b"")])
def test_state_join_and_split_round_trip(site: bytes, exchange: bytes) -> None:
    joined = join_state(site, exchange)
    assert split_state(joined) == (site, exchange)
    assert joined == exchange if not site else joined.startswith(SITE_TAG)


@pytest.mark.parametrize("bad", [SITE_TAG, SITE_TAG + b"\x00\x00", SITE_TAG + (9).to_bytes(4, "big") + b"abc"])
def test_split_state_refuses_a_site_part_running_past_the_payload(bad: bytes) -> None:
    with pytest.raises(PeerError):
        split_state(bad)


def test_mux_hands_tagged_payloads_to_the_site_and_the_rest_to_the_exchange() -> None:
    ex = _Recorder("ex", state=b"\x0a\x01e", broadcasts=(b"\x0a\x01x",))
    site = _Recorder("site", state=b"\x0a\x01s", broadcasts=(b"\x0a\x01y",))
    mux = DelegateMux(ex, site)
    mux.notify_msg("n", "a", b"\x0a\x01x")
    mux.notify_msg("n", "a", SITE_TAG + b"\x0a\x01y")
    assert (ex.got, site.got) == ([("msg", b"\x0a\x01x")], [("msg", b"\x0a\x01y")])
    assert mux.handle_request("a", SITE_TAG + b"q") == b"site"
    assert mux.handle_request("a", b"\x0a\x01q") == b"ex"
    # broadcasts: the exchange's untouched, the site's tagged (one byte more of overhead each)
    assert mux.get_broadcasts(3, 100) == [b"\x0a\x01x", SITE_TAG + b"\x0a\x01y"]
    assert ("overhead", b"\x04") in site.got
    ex.got.clear()
    site.got.clear()
    state = mux.local_state(False, join_state(b"\x0a\x01S", b"\x0a\x01E"))
    assert split_state(state) == (b"\x0a\x01s", b"\x0a\x01e")
    assert (ex.got, site.got) == ([("remote", b"\x0a\x01E")], [("remote", b"\x0a\x01S")])
    mux.merge_remote_state(state, False, "a")
    assert (ex.got[-1], site.got[-1]) == (("state", b"\x0a\x01e"), ("state", b"\x0a\x01s"))
    mux.merge_remote_state(SITE_TAG + b"\x00", False, "a")
    assert mux.malformed == 1


def test_flat_mesh_state_is_the_exchange_state_unchanged() -> None:
    """Without site state the pushed bytes are the digest exchange's alone: a flat mesh's wire is unchanged."""
    ex = _Recorder("ex", state=b"\x0a\x01e")
    mux = DelegateMux(ex, _Recorder("site"))
    assert mux.local_state(True, None) == b"\x0a\x01e"


def _site_membership(net: MemoryNetwork, sched: ManualScheduler, i: int, labels: dict[str, str]) -> Membership:
    return Membership(f"n{i}", net.endpoint(f"a{i}"), sched, labels=labels, rng=random.Random(i),
                      admit_labels=functools.partial(_same_group, SITE, labels))


def test_a_site_pool_lists_only_its_site_and_counts_the_rest() -> None:
    sched = ManualScheduler()
    net = MemoryNetwork(sched, random.Random(1))
    a = {"region": "eu", "site": "a"}
    b = {"region": "eu", "site": "b"}
    nodes = [_site_membership(net, sched, i, a if i < 2 else b) for i in range(4)]
    for n in nodes:
        n.start()
    for n in nodes[1:]:
        n.join(["a0"])  # every node joins through the first, of site a
    sched.run_until(sched.now() + 5.0)
    assert sorted(m.node_id for m in nodes[0].members()) == ["n0", "n1"]
    assert sorted(m.node_id for m in nodes[2].members()) == ["n2"]
    assert nodes[0].counters["members_refused_other_pool"] >= 2  # n2 and n3 pushed their Alive
    assert nodes[2].counters["members_refused_other_pool"] >= 2  # n0 and n1 in the seed's answer


def test_nodes_without_site_labels_share_one_default_site() -> None:
    assert _same_group(SITE, {}, {"host": "h1"})
    assert _same_group(SITE, {"region": "eu", "site": "a"}, {"region": "eu", "site": "a", "host": "x"})
    assert not _same_group(SITE, {"region": "eu", "site": "a"}, {"region": "us", "site": "a"})
    assert not _same_group(SITE, {}, {"region": "eu", "site": "a"})


def test_locate_names_the_site_members_held_and_remembers_askers_bounded() -> None:
    sched = ManualScheduler()
    net = MemoryNetwork(sched, random.Random(2))
    labels = {"region": "eu", "site": "a"}
    node = SiteNode(NodeKey.from_seed(b"loc"), labels, sched, SiteConfig(max_sources=2, max_pull=4))
    m = Membership(node.node_id, net.endpoint("a0"), sched, labels=labels, delegate=node.pools[SITE])
    node.attach(SITE, m)
    m.start()
    got = node.locate_answer("eu/a")
    # its own site: itself, and (as the only member) its own site aggregator
    assert [e.node for e in got.members] == [node.node_id]
    assert [e.node for e in got.aggregators] == [node.node_id]
    assert node.locate_answer("eu/b").members == []
    for i in range(3):  # three askers of site b, room for two
        ask = mesh_pb2.SiteRequest(locate="eu/b", asker=mesh_pb2.PushPullMember(
            node=f"b{i}", addr=f"b-addr-{i}", labels={"region": "eu", "site": "b"}))
        raw = node._on_request(node.pools[SITE], f"b-addr-{i}", ask.SerializeToString())
        answered = mesh_pb2.SiteItems.FromString(raw)
        assert [e.node for e in answered.members] == [f"b{j}" for j in range(max(0, i - 2), i)][::-1]
    assert [e.node for e in node.locate_answer("eu/b").members] == ["b2", "b1"]
    assert node.counters["located_evicted"] == 1
    with pytest.raises(PeerError):
        node._on_request(node.pools[SITE], "x", mesh_pb2.SiteRequest(locate="s" * 300).SerializeToString())


def test_site_aggregators_setting_parses_and_refuses_out_of_range(tmp_path: object) -> None:
    from meshnode._exceptions import ConfigError
    from meshnode.daemon._config import load_config

    env = {"HOME": str(tmp_path), "MESHNODE_SITE_AGGREGATORS": "3"}
    assert load_config({}, env).site_aggregators == 3
    assert load_config({"site_aggregators": "2"}, env).site_aggregators == 2  # the flag wins
    assert load_config({}, {"HOME": str(tmp_path)}).site_aggregators == 0  # flat mesh by default
    with pytest.raises(ConfigError, match="site_aggregators"):
        load_config({"site_aggregators": "9"}, env)


def test_located_entries_are_dialled_only_when_well_formed_and_under_mtls_signed_by_their_member() -> None:
    from meshnode.mesh import MeshService, sign_alive

    svc = MeshService(advertise="127.0.0.1:1", key=NodeKey.from_seed(b"me"), site_config=SiteConfig())
    other = NodeKey.from_seed(b"other")
    alive = mesh_pb2.Alive(node=other.node_id, incarnation=3, addr="127.0.0.1:2", labels={"site": "a"})
    sign_alive(other, alive)
    signed = mesh_pb2.PushPullMember(node=alive.node, incarnation=3, addr=alive.addr, labels=alive.labels,
                                     public_key=alive.public_key, signature=alive.signature)
    moved = mesh_pb2.PushPullMember()
    moved.CopyFrom(signed)
    moved.addr = "10.6.6.6:7400"  # someone else says where the member is: its signature no longer covers it
    assert svc._dialable_entry(signed) and svc._dialable_entry(moved)  # without mTLS, as seeds are
    svc.node_certificates_only = True
    assert svc._dialable_entry(signed) and not svc._dialable_entry(moved)
    assert not svc._dialable_entry(mesh_pb2.PushPullMember(node="x" * 65, addr="127.0.0.1:3"))
    assert not svc._dialable_entry(mesh_pb2.PushPullMember(node="n", addr="a" * 300))
    assert not svc._dialable_entry(mesh_pb2.PushPullMember(node="n", addr="h:1", labels={"k": "v" * 300}))
    assert (svc.counters["located_unsigned"], svc.counters["located_malformed"]) == (1, 3)


def test_pool_transports_share_the_port_and_tag_their_calls() -> None:
    from meshnode.mesh import GrpcTransport

    base = GrpcTransport("127.0.0.1:1")
    region = base.pool("region")
    assert region.address == base.address and base.pool("region") is region
    region.set_handlers(lambda a, p: None, lambda a, p: b"r")
    handlers = base.handlers("region")
    assert handlers is not None and handlers[1]("x", b"") == b"r"
    assert base.handlers("fleet") is None and base.handlers("") == (base.on_packet, base.on_stream)
    region.close()
    assert base.handlers("region") is None and base.pool("region") is not region  # re-elected: a new pool
    with pytest.raises(ValueError, match="pool name"):
        base.pool("p" * 17)


def test_a_quiet_exchange_spreads_no_digest_but_answers_pulls() -> None:
    """With sites the digest exchange holds and verifies, but digests travel by push and validation pull."""
    from meshnode.mesh import DigestExchange

    sched = ManualScheduler()
    ex = DigestExchange(NodeKey.from_seed(b"quiet"), sched)
    ex.gossip = False
    signed = ex.publish(mesh_pb2.Digest(period_start_ns=1, period_end_ns=2))
    assert (ex.get_broadcasts(0, 10_000), ex.local_state(False, None)) == ([], b"")
    ex.notify_msg("x", "a", mesh_pb2.DigestAnnounce(node_id="n1", seq=5).SerializeToString())
    assert ex.counters["announces_not_gossiped"] == 1
    ex.merge_remote_state(mesh_pb2.DigestState(digests=[signed]).SerializeToString(), False, "a")
    answer = mesh_pb2.DigestState.FromString(
        ex.handle_request("a", mesh_pb2.DigestPull(node_ids=[ex.node_id]).SerializeToString()))
    assert list(answer.digests) == [signed]
    peer = DigestExchange(NodeKey.from_seed(b"peer"), sched)
    peer.gossip = False
    assert peer.ingest(signed, "a") and peer.latest(ex.node_id) is not None  # a pulled digest is taken
