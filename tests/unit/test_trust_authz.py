"""Signed queries and tasks: trusted key, fresh timestamp, unused nonce, not denied, bound to method and bytes."""

from __future__ import annotations

import pytest

from meshnode.mesh import NodeKey
from meshnode.trust import (
    AUTH_METADATA_KEY,
    AUTH_REASONS,
    Authorizer,
    Unauthorized,
    auth_metadata,
    request_payload,
    sign_request,
)
from meshnode.v1 import mesh_pb2, trust_pb2

S = 10**9
NOW = 1_700_000_000 * S
METHOD = "/meshnode.v1.Mesh/FleetQuery"
OPERATOR = NodeKey.from_seed(b"operator")
STRANGER = NodeKey.from_seed(b"stranger")
AUD = "0123456789abcdef"
"""The node id of the node the requests are for (this authorizer's)."""
REQ = mesh_pb2.FleetQueryRequest(destination="10.9.0.5:5432", selector={"region": "eu", "site": "a"})


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


def authorizer(clock: Clock | None = None, **kw) -> Authorizer:
    return Authorizer([OPERATOR.public_raw], clock=clock or Clock(), audience=AUD, **kw)


def nonce(i: int) -> bytes:
    return i.to_bytes(16, "big")


def test_a_signed_fresh_request_is_allowed_and_names_its_signer():
    auth = sign_request(OPERATOR, METHOD, request_payload(REQ), AUD, NOW, nonce(1))
    assert authorizer().check(METHOD, request_payload(REQ), auth) == OPERATOR.node_id


def reject(case: str) -> tuple[str, bytes, trust_pb2.RequestAuth | None]:
    payload = request_payload(REQ)
    good = sign_request(OPERATOR, METHOD, payload, AUD, NOW, nonce(2))
    if case == "unsigned":
        return METHOD, payload, None
    if case == "unknown_key":
        return METHOD, payload, sign_request(STRANGER, METHOD, payload, AUD, NOW, nonce(2))
    if case == "other_method":
        return "/meshnode.v1.Mesh/Digests", payload, good
    if case == "other_request":
        other = mesh_pb2.FleetQueryRequest(destination="10.9.0.6:5432")
        return METHOD, request_payload(other), good
    if case == "forged_key":
        # a stranger's signature under the operator's public key
        forged = sign_request(STRANGER, METHOD, payload, AUD, NOW, nonce(2))
        forged.public_key = OPERATOR.public_raw
        return METHOD, payload, forged
    if case == "stale":
        return METHOD, payload, sign_request(OPERATOR, METHOD, payload, AUD, NOW - 31 * S, nonce(2))
    if case == "future":
        return METHOD, payload, sign_request(OPERATOR, METHOD, payload, AUD, NOW + 31 * S, nonce(2))
    if case == "other_audience":  # signed for another node: not replayable here
        return METHOD, payload, sign_request(OPERATOR, METHOD, payload, "fedcba9876543210", NOW, nonce(2))
    if case == "audience_rewritten":  # the audience is signed: changing it breaks the signature
        moved = sign_request(OPERATOR, METHOD, payload, "fedcba9876543210", NOW, nonce(2))
        moved.audience = AUD
        return METHOD, payload, moved
    if case == "short_nonce":
        bad = trust_pb2.RequestAuth()
        bad.CopyFrom(good)
        bad.nonce = b"x"
        return METHOD, payload, bad
    raise AssertionError(case)


@pytest.mark.parametrize(("case", "reason"), [
    ("unsigned", "unsigned"), ("unknown_key", "unknown_key"), ("other_method", "bad_signature"),
    ("other_request", "bad_signature"), ("forged_key", "bad_signature"), ("stale", "stale"), ("future", "stale"),
    ("short_nonce", "malformed"), ("other_audience", "wrong_audience"), ("audience_rewritten", "bad_signature"),
])
def test_rejections_are_typed(case, reason):
    method, payload, auth = reject(case)
    with pytest.raises(Unauthorized) as exc:
        authorizer().check(method, payload, auth)
    assert exc.value.reason == reason and reason in AUTH_REASONS


def test_replay_within_the_window_is_refused_and_expired_nonces_are_forgotten():
    clock = Clock()
    a = authorizer(clock)
    auth = sign_request(OPERATOR, METHOD, request_payload(REQ), AUD, NOW, nonce(3))
    a.check(METHOD, request_payload(REQ), auth)
    with pytest.raises(Unauthorized) as exc:
        a.check(METHOD, request_payload(REQ), auth)
    assert exc.value.reason == "replayed"
    clock.now = NOW + 40 * S  # the same bytes later are stale, not replayed
    with pytest.raises(Unauthorized) as exc:
        a.check(METHOD, request_payload(REQ), auth)
    assert exc.value.reason == "stale"


def test_full_nonce_memory_refuses_what_it_can_no_longer_tell_from_a_replay():
    a = authorizer(max_nonces=2)
    auths = [sign_request(OPERATOR, METHOD, request_payload(REQ), AUD, NOW + i, nonce(10 + i)) for i in range(3)]
    for x in auths:
        a.check(METHOD, request_payload(REQ), x)
    with pytest.raises(Unauthorized) as exc:
        a.check(METHOD, request_payload(REQ), auths[0])  # forgotten nonce, but older than the floor
    assert exc.value.reason == "stale"


def test_denylist_and_allow():
    a = authorizer(denied=[OPERATOR.node_id])
    with pytest.raises(Unauthorized) as exc:
        a.check(METHOD, request_payload(REQ), sign_request(OPERATOR, METHOD, request_payload(REQ), AUD, NOW, nonce(4)))
    assert exc.value.reason == "denied"
    a.allow(OPERATOR.node_id)
    assert a.check(METHOD, request_payload(REQ), sign_request(OPERATOR, METHOD, request_payload(REQ), AUD, NOW,
                                                               nonce(5))) == OPERATOR.node_id
    a.deny(OPERATOR.node_id)
    with pytest.raises(Unauthorized):
        a.check(METHOD, request_payload(REQ), sign_request(OPERATOR, METHOD, request_payload(REQ), AUD, NOW, nonce(6)))


def test_trusting_a_key_later():
    a = authorizer()
    assert a.trust(STRANGER.public_raw) == STRANGER.node_id
    auth = sign_request(STRANGER, METHOD, request_payload(REQ), AUD, NOW, nonce(7))
    assert a.check(METHOD, request_payload(REQ), auth) == STRANGER.node_id


def test_metadata_round_trip_and_bad_metadata():
    md = auth_metadata(OPERATOR, METHOD, REQ, AUD, NOW)
    a = authorizer()
    # a receiver re-parses the request: deterministic serialization gives the same signed bytes
    parsed = mesh_pb2.FleetQueryRequest.FromString(REQ.SerializeToString())
    assert a.check_metadata(METHOD, parsed, [("user-agent", "x"), *md]) == OPERATOR.node_id
    for metadata, reason in [((), "unsigned"), (((AUTH_METADATA_KEY, b"\xff\xff"),), "malformed"),
                             (((AUTH_METADATA_KEY, "text"),), "malformed")]:
        with pytest.raises(Unauthorized) as exc:
            a.check_metadata(METHOD, REQ, metadata)
        assert exc.value.reason == reason


class _Context:
    """The parts of a grpc.aio ServicerContext the signed-request check reads."""

    def __init__(self, metadata: tuple[tuple[str, bytes], ...], pem: bytes | None = None, tls: bool = True) -> None:
        self.metadata = metadata
        self.auth = {"transport_security_type": [b"ssl" if tls else b"insecure"]}
        if pem is not None:
            self.auth["x509_pem_cert"] = [pem]

    def invocation_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self.metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self.auth

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5"

    async def abort(self, code: object, details: str) -> None:
        raise PermissionError(details)


def test_the_interceptor_names_a_signing_member_and_not_an_operator(tmp_path):
    """Servicers learn (``MEMBER_CALLER``) when a member's node key signed: Challenge refuses a member's
    challenge of itself and does not score one whose prober a member chose. A member's key counts only on
    the member's own connection (its certificate binds the key); no signature counts in plaintext."""
    import asyncio
    import time

    from meshnode.trust import SignedRequestInterceptor, init_ca, issue

    member = NodeKey.from_seed(b"member")
    init_ca(tmp_path, "t")
    member_pem = issue(tmp_path, "member", node_key=member.node_id).cert.read_bytes()
    other_pem = issue(tmp_path, "other").cert.read_bytes()  # another node's certificate (a fresh key)
    client_pem = issue(tmp_path, "alice", client_only=True).cert.read_bytes()
    authz = Authorizer([OPERATOR.public_raw], member=lambda nid: nid == member.node_id, audience=AUD)
    check = SignedRequestInterceptor(authz, [METHOD])

    def ctx(key: NodeKey, pem: bytes, tls: bool = True) -> _Context:
        return _Context(auth_metadata(key, METHOD, REQ, AUD, time.time_ns()), pem, tls)

    assert asyncio.run(check._check(METHOD, REQ, ctx(member, member_pem))) == member.node_id
    assert asyncio.run(check._check(METHOD, REQ, ctx(OPERATOR, client_pem))) is None
    for pem in (other_pem, client_pem):
        with pytest.raises(PermissionError, match="not_own_connection"):
            asyncio.run(check._check(METHOD, REQ, ctx(member, pem)))
    with pytest.raises(PermissionError, match="plaintext"):
        asyncio.run(check._check(METHOD, REQ, ctx(OPERATOR, client_pem, tls=False)))
    with pytest.raises(PermissionError, match="not a trusted key"):
        asyncio.run(check._check(METHOD, REQ, ctx(STRANGER, client_pem)))
    assert check.counters["requests_not_own_connection"] == 2 and check.counters["requests_plaintext"] == 1
    lab = SignedRequestInterceptor(authz, [METHOD], allow_unsigned=True)
    assert asyncio.run(lab._check(METHOD, REQ, _Context((), tls=False))) is None
