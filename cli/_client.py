"""The one boundary to gRPC: calls to a node, and the translation of its errors into meshctl's.

Every ``grpc.RpcError`` becomes a ``cli._exceptions`` error here (``raise ... from exc``), with a message
that says what happened and what to try. Nothing above this module sees gRPC exceptions.

The channel is mutual TLS when meshctl has a client certificate (``cli._security``: ``--tls-dir``), else
plaintext. A plaintext call that a TLS node cuts off, or a TLS handshake that fails, is told apart from a
node that is down, and the message says which flag to pass. Fleet queries carry the operator's signature.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import grpc

from meshnode.cli._exceptions import (
    DeadlineExceeded,
    MeshctlError,
    NodeError,
    NotAvailable,
    PermissionDenied,
    Unreachable,
    UsageError,
)
from meshnode.cli._security import ISSUE_HINT, ClientSecurity, Signer, current, speaks_tls
from meshnode.v1 import observer_pb2, observer_pb2_grpc

if TYPE_CHECKING:
    from meshnode.v1 import flow_pb2, mesh_pb2, mesh_pb2_grpc, trust_pb2

BATCH_SIZE: Final = 1000
RESUME_METADATA: Final = "meshnode-page-token"
"""Trailing metadata of a Flows stream the node ended early (ABORTED at its maximum age): the page token
that resumes it (``FlowsRequest.page_token`` in observer.proto)."""
_MAX_MESSAGE: Final = 64 * 1024 * 1024


def _reason(details: str) -> str:
    low = details.lower()
    for needle, short in (
        ("connection refused", "connection refused"),
        ("no route to host", "no route to host"),
        ("name resolution", "name not resolved"),
        ("dns resolution failed", "name not resolved"),
        ("timeout occurred", "connect timed out"),
        ("socket closed", "connection closed"),
        ("connection reset", "connection reset"),
    ):
        if needle in low:
            return short
    return details.strip().splitlines()[0][:120] if details.strip() else "no details"


def translate(exc: grpc.RpcError, node: str, what: str, timeout: float | None) -> MeshctlError:
    """A meshctl error for a failed call ``what`` (e.g. ``"Observer.Flows"``) to ``node``."""
    code: grpc.StatusCode = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else "") or ""
    name = code.name
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unreachable(
            f"cannot reach the node at {node} ({_reason(details)}); is meshnode running there? "
            "try --node HOST:PORT or $MESHCTL_NODE",
            name,
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        limit = f"{timeout:g}s" if timeout else "the deadline"
        return DeadlineExceeded(
            f"the node at {node} did not answer {what} within {limit}; "
            "try a narrower range or filter, or a longer --timeout",
            name,
        )
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return PermissionDenied(
            f"the node at {node} refused {what}: {details or name.lower()}; "
            "check meshctl's credentials and the node's access rules",
            name,
        )
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return NotAvailable(f"the node at {node} does not implement {what} (it may be older than meshctl)")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return NodeError(f"the node rejected the request: {details or 'invalid argument'}; check the flags",
                         name)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # a quota or a rate passes with time, whatever the request's size; a size limit wants a smaller one
        hint = "retry later" if what == "Mesh.Measure" else "try a smaller --limit"
        return NodeError(f"the node refused: {details or 'resource exhausted'}; {hint}", name)
    return NodeError(f"{what} failed on the node at {node}: {name} {details}".rstrip(), name)


def _resume_token(exc: grpc.RpcError) -> str:
    """The token that resumes a stream the node ended early (ABORTED), or ""."""
    if not isinstance(exc, grpc.Call) or exc.code() != grpc.StatusCode.ABORTED:
        return ""
    for key, value in exc.trailing_metadata() or ():
        if key == RESUME_METADATA:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


class Node:
    """A connection to one node. Calls raise ``cli._exceptions`` errors, never ``grpc.RpcError``."""

    def __init__(
        self, address: str, timeout: float = 10.0, *, fast_reconnect: bool = False,
        security: ClientSecurity | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.security = security or current()
        self._signer: Signer | None = None
        self._audience: str | None = None
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.enable_retries", 0),
        ]
        if fast_reconnect:
            # A dashboard must notice a restarted node within its own backoff, not gRPC's (up to 120 s).
            options += [
                ("grpc.initial_reconnect_backoff_ms", 250),
                ("grpc.min_reconnect_backoff_ms", 250),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ]
        creds = self.security.channel_credentials()
        if creds is not None:
            self._channel = grpc.secure_channel(address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._observer = observer_pb2_grpc.ObserverStub(self._channel)  # type: ignore[no-untyped-call]
        self._mesh_stub: mesh_pb2_grpc.MeshStub | None = None

    def close(self) -> None:
        """Close the channel; streams in progress end with CANCELLED."""
        self._channel.close()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, exc: grpc.RpcError, what: str, timeout: float | None) -> MeshctlError:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = (exc.details() if isinstance(exc, grpc.Call) else "") or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            if self.security.tls_dir is None and speaks_tls(self.address, min(self.timeout, 2.0)):
                return PermissionDenied(
                    f"the node at {self.address} requires mutual TLS and meshctl has no client certificate; "
                    f"pass --tls-dir DIR or set $MESHCTL_TLS_DIR (ca.crt and NAME.crt/NAME.key from: "
                    f"{ISSUE_HINT})", code.name)
            low = details.lower()
            if self.security.tls_dir is not None and ("ssl" in low or "handshake" in low or "tls" in low):
                return PermissionDenied(
                    f"TLS with the node at {self.address} failed ({_reason(details)}); a node run with "
                    f"--insecure wants no --tls-dir, and a TLS node needs a certificate from the same fleet CA "
                    f"as {self.security.tls_dir}/ca.crt, issued for this address (meshnode ca issue NAME --ip "
                    "ADDR)", code.name)
        return translate(exc, self.address, what, timeout)

    def _sign(self, method: str, request: Any) -> tuple[tuple[str, bytes]] | None:
        """Signature metadata for ``request``, for this node (its id from ``Status``); None without a key.

        Raises:
            UsageError: a key, but plaintext (no ``--tls-dir``) and no ``--sign-plaintext``.
        """
        if self._signer is None:
            path = self.security.signing_key_path()
            if path is None:
                return None
            if self.security.tls_dir is None and not self.security.sign_plaintext:
                raise UsageError(f"refusing to sign {method} to {self.address} in plaintext: anyone on the path "
                                 "could replay the signature, and nodes refuse it; use --tls-dir DIR "
                                 "($MESHCTL_TLS_DIR), or drop --sign-key for an --insecure node")
            self._signer = Signer(path)
        if self._audience is None:
            self._audience = self.status().node_id
        return self._signer.metadata(method, request, self._audience)

    def status(self) -> observer_pb2.StatusResponse:
        """Observer.Status."""
        try:
            resp: observer_pb2.StatusResponse = self._observer.Status(
                observer_pb2.StatusRequest(), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            raise self._fail(exc, "Observer.Status", self.timeout) from exc
        return resp

    def health(self, req: observer_pb2.HealthRequest) -> observer_pb2.HealthResponse:
        """Observer.Health."""
        try:
            resp: observer_pb2.HealthResponse = self._observer.Health(req, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._fail(exc, "Observer.Health", self.timeout) from exc
        return resp

    def dns(self, req: observer_pb2.DnsTransactionsRequest) -> observer_pb2.DnsTransactionsResponse:
        """Observer.DnsTransactions."""
        try:
            resp: observer_pb2.DnsTransactionsResponse = self._observer.DnsTransactions(req, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._fail(exc, "Observer.DnsTransactions", self.timeout) from exc
        return resp

    def rollups(self, req: observer_pb2.RollupsRequest) -> observer_pb2.RollupsResponse:
        """Observer.Rollups."""
        try:
            resp: observer_pb2.RollupsResponse = self._observer.Rollups(req, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._fail(exc, "Observer.Rollups", self.timeout) from exc
        return resp

    def flows(self, req: observer_pb2.FlowsRequest) -> Iterator[Sequence[flow_pb2.Flow]]:
        """Observer.Flows as batches of records, following page tokens up to ``req.number``.

        Asks for batched responses (``batch_size``); a node that ignores it sends one record per
        response, which works, only slower. A page token is bound to the request it came from, so the
        next page repeats the request unchanged but for ``page_token``, and meshctl stops reading at
        its limit. With ``req.number == 0`` (the node's default) a token is not followed; a note on
        stderr says more records remain. A stream the node ends early (ABORTED with a token in the
        ``meshnode-page-token`` trailing metadata: it reached its maximum age) is resumed with that token,
        following or not, as long as each resumption makes progress.
        """
        req.batch_size = BATCH_SIZE
        # With follow, number bounds only the history sent first; the stream itself has no end.
        limit = 0 if req.follow else req.number
        timeout = None if req.follow else self.timeout
        seen = 0
        resumed_from = ""
        while True:
            token = ""
            try:
                for resp in self._observer.Flows(req, timeout=timeout):
                    if resp.flows:
                        batch: Sequence[flow_pb2.Flow] = resp.flows
                    elif resp.HasField("flow"):
                        batch = (resp.flow,)
                    else:
                        batch = ()
                    if limit and seen + len(batch) > limit:
                        batch = batch[: limit - seen]
                    if batch:
                        seen += len(batch)
                        yield batch
                    if resp.next_page_token:
                        token = resp.next_page_token
                    if limit and seen >= limit:
                        return
            except grpc.RpcError as exc:
                resume = _resume_token(exc)
                if not resume or resume == resumed_from:
                    raise self._fail(exc, "Observer.Flows", timeout) from exc
                req.page_token = resumed_from = resume
                continue
            if not token or req.follow:
                return
            if not limit:
                sys.stderr.write(
                    f"meshctl flows: showing the node's default of {seen:,} records; more remain "
                    "(use --limit N or a narrower --since)\n"
                )
                return
            req.page_token = token

    def events(self, req: observer_pb2.EventsRequest,
               coverage: Callable[[str], None] | None = None) -> Iterator[flow_pb2.Event]:
        """Observer.Events, one event at a time; what the node says about the range it holds (a response
        without an event) goes to ``coverage``."""
        timeout = None if req.follow else self.timeout
        try:
            for resp in self._observer.Events(req, timeout=timeout):
                if not resp.HasField("event"):
                    if resp.coverage and coverage is not None:
                        coverage(resp.coverage)
                    continue
                yield resp.event
        except grpc.RpcError as exc:
            raise self._fail(exc, "Observer.Events", timeout) from exc

    @property
    def _mesh(self) -> mesh_pb2_grpc.MeshStub:
        # Imported on first use: mesh_pb2 is large and most commands never need it.
        if self._mesh_stub is None:
            from meshnode.v1 import mesh_pb2_grpc

            self._mesh_stub = mesh_pb2_grpc.MeshStub(self._channel)  # type: ignore[no-untyped-call]
        return self._mesh_stub

    def peers(self) -> mesh_pb2.PeersResponse:
        """Mesh.Peers; NotAvailable when the node runs without the mesh."""
        from meshnode.v1 import mesh_pb2

        try:
            resp: mesh_pb2.PeersResponse = self._mesh.Peers(mesh_pb2.PeersRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._fail(exc, "Mesh.Peers", self.timeout) from exc
        return resp

    def measure(self, req: mesh_pb2.MeasureRequest, deadline: float) -> mesh_pb2.MeasureResponse:
        """Mesh.Measure on this node (signed like fleet queries); ``deadline`` is how long the task may take."""
        timeout = max(self.timeout, deadline + 2.0)
        metadata = self._sign("/meshnode.v1.Mesh/Measure", req)
        try:
            resp: mesh_pb2.MeasureResponse = self._mesh.Measure(req, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            err = self._fail(exc, "Mesh.Measure", timeout)
            if isinstance(err, PermissionDenied) and metadata is None and "unsigned" in err.message:
                err.message += (f"; sign active tasks with an operator key the node lists: --sign-key FILE or "
                                f"$MESHCTL_SIGN_KEY (NAME.sign.key from: {ISSUE_HINT})")
            raise err from exc
        return resp

    def measurements(self, req: mesh_pb2.MeasurementsRequest) -> mesh_pb2.MeasurementsResponse:
        """Mesh.Measurements: the active-task results this node stored, newest first."""
        try:
            resp: mesh_pb2.MeasurementsResponse = self._mesh.Measurements(req, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._fail(exc, "Mesh.Measurements", self.timeout) from exc
        return resp

    def fleet_query(self, req: mesh_pb2.FleetQueryRequest) -> mesh_pb2.FleetQueryResponse:
        """Mesh.FleetQuery; the call's deadline leaves the node's fan-out deadline room to answer."""
        timeout = max(self.timeout, req.deadline_ms / 1000 + 2.0)
        metadata = self._sign("/meshnode.v1.Mesh/FleetQuery", req)
        try:
            resp: mesh_pb2.FleetQueryResponse = self._mesh.FleetQuery(req, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            err = self._fail(exc, "Mesh.FleetQuery", timeout)
            if isinstance(err, PermissionDenied) and metadata is None and "unsigned" in err.message:
                err.message += (f"; sign fleet queries with an operator key the node lists: --sign-key FILE or "
                                f"$MESHCTL_SIGN_KEY (NAME.sign.key from: {ISSUE_HINT})")
            raise err from exc
        return resp

    def fleet_flows(self, req: mesh_pb2.FleetFlowsRequest, limit: int) -> Iterator[mesh_pb2.FleetFlowsResponse]:
        """Mesh.FleetFlows pages, each signed, following page tokens until ``limit`` records (0: one page)."""
        timeout = max(self.timeout, req.deadline_ms / 1000 + 2.0)
        seen = 0
        while True:
            metadata = self._sign("/meshnode.v1.Mesh/FleetFlows", req)
            try:
                resp: mesh_pb2.FleetFlowsResponse = self._mesh.FleetFlows(req, timeout=timeout, metadata=metadata)
            except grpc.RpcError as exc:
                err = self._fail(exc, "Mesh.FleetFlows", timeout)
                if isinstance(err, PermissionDenied) and metadata is None and "unsigned" in err.message:
                    err.message += (f"; sign fleet queries with an operator key the node lists: --sign-key FILE "
                                    f"or $MESHCTL_SIGN_KEY (NAME.sign.key from: {ISSUE_HINT})")
                raise err from exc
            yield resp
            seen += len(resp.flows)
            if not resp.next_page_token or not limit or seen >= limit:
                return
            req.flows.page_token = resp.next_page_token

    def validate(self, req: trust_pb2.ValidateRequest) -> trust_pb2.ValidateResponse:
        """Trust.Validate; NotAvailable when the node has no trust service."""
        from meshnode.v1 import trust_pb2_grpc

        stub = trust_pb2_grpc.TrustStub(self._channel)  # type: ignore[no-untyped-call]
        try:
            resp: trust_pb2.ValidateResponse = stub.Validate(req, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._fail(exc, "Trust.Validate", self.timeout) from exc
        return resp

    def challenge(self, req: trust_pb2.ChallengeRequest) -> trust_pb2.ChallengeResponse:
        """Trust.Challenge (signed like other active tasks); the deadline leaves the node's own room to answer."""
        from meshnode.v1 import trust_pb2_grpc

        stub = trust_pb2_grpc.TrustStub(self._channel)  # type: ignore[no-untyped-call]
        timeout = max(self.timeout, req.deadline_ms / 1000 + 5.0)
        try:
            resp: trust_pb2.ChallengeResponse = stub.Challenge(
                req, timeout=timeout, metadata=self._sign("/meshnode.v1.Trust/Challenge", req))
        except grpc.RpcError as exc:
            raise self._fail(exc, "Trust.Challenge", timeout) from exc
        return resp

    def services(self) -> frozenset[str] | None:
        """Service names from server reflection; None when the node does not serve reflection."""
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(self._channel)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        try:
            for resp in stub.ServerReflectionInfo(iter((req,)), timeout=self.timeout):
                return frozenset(s.name for s in resp.list_services_response.service)
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise self._fail(exc, "server reflection", self.timeout) from exc
        return frozenset()
