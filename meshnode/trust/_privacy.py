"""Privacy filters applied at the source, before data leaves the node.

Seed 002 §6: an end-system monitor can filter per endpoint and application *before* anything is recorded
elsewhere, instead of scrubbing it later; seed 000 lets hosts identify themselves only coarsely. A policy
rewrites every address of what leaves the node (flow records, digest rollups and endpoint records):

* inside a ``keep`` CIDR: unchanged (the fleet's own networks, which operators need to see);
* inside a ``coarsen`` CIDR: its /24 (IPv4) or /48 (IPv6) prefix, ``10.1.2.0/24``;
* anywhere else: ``outside`` decides, ``keep``, ``coarsen`` or ``hash``. A hash is HMAC-SHA256 under the fleet
  secret, truncated (``anon-`` and 16 hex digits): every node with the same secret maps an address to the
  same token, so two nodes' records of one flow still match for cross-validation and rollups of one
  destination still add up across hosts, while a reader without the secret cannot reverse it (no
  dictionary over the address space without the key).

A flow's ``remote_name`` (and a destination rollup's) is dropped wherever its address is rewritten: the name
would tell what the rewrite hides. ``comm`` is dropped for flows in the listed cgroups (path prefixes).
Coarsened and hashed values are not addresses, so applying a policy twice changes nothing; the
cross-validator uses ``address`` to normalize records from nodes that published raw addresses. Endpoint records
are hashed but never coarsened: a /24 cannot name the other end of a flow, and cross-validation needs that.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from meshnode._exceptions import ConfigError
from meshnode.summary._timing import merge as merge_hist

if TYPE_CHECKING:
    from meshnode._model import FlowRecord
    from meshnode.trust._validate import EndpointClaim
    from meshnode.v1 import flow_pb2, mesh_pb2

Action = Literal["keep", "coarsen", "hash"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HASH_PREFIX = "anon-"


def _networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    out: list[Network] = []
    for c in cidrs:
        try:
            out.append(ipaddress.ip_network(c, strict=False))
        except ValueError as exc:
            raise ConfigError(f"privacy: {c!r} is not a CIDR: {exc}") from exc
    return tuple(out)


@dataclass(frozen=True, slots=True)
class PrivacyPolicy:
    """Rules that drop or coarsen data before it leaves the node.

    Attributes:
        keep: networks whose addresses stay as they are.
        coarsen: networks whose addresses become their /24 or /48.
        outside: what happens to every other address.
        secret: the fleet's hashing key (the same on every node; required when anything is hashed).
        hash_hex: hex digits of the truncated HMAC kept.
        drop_comm_cgroups: cgroup path prefixes whose flows lose ``comm``.
    """

    keep: tuple[Network, ...] = ()
    coarsen: tuple[Network, ...] = ()
    outside: Action = "keep"
    secret: bytes = field(default=b"", repr=False)
    hash_hex: int = 16
    drop_comm_cgroups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.outside not in ("keep", "coarsen", "hash"):
            raise ConfigError(f"privacy: outside must be keep, coarsen or hash, not {self.outside!r}")
        if (self.outside != "keep" or self.coarsen) and len(self.secret) < 16:
            # coarsened addresses are hashed where they must name one host (endpoint records)
            raise ConfigError("privacy: hashing or coarsening addresses needs a fleet secret of at least 16 "
                              "bytes (secret = \"...\", the same on every node)")
        if not 8 <= self.hash_hex <= 64:
            raise ConfigError("privacy: hash_hex must be between 8 and 64")

    @classmethod
    def from_config(cls, data: dict[str, object]) -> PrivacyPolicy:
        """A policy from a config mapping: ``keep``, ``coarsen`` (CIDR lists), ``outside``, ``secret`` (str,
        at least 16 characters), ``drop_comm_cgroups`` (list of cgroup path prefixes).

        Raises:
            ConfigError: an unknown key, a bad CIDR, a bad action, or hashing without a secret.
        """
        known = {"keep", "coarsen", "outside", "secret", "hash_hex", "drop_comm_cgroups"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"privacy: unknown keys {sorted(unknown)}; known: {sorted(known)}")

        def strs(key: str) -> list[str]:
            v = data.get(key, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"privacy: {key} must be a list of strings")
            return v

        outside = data.get("outside", "keep")
        secret = data.get("secret", "")
        hash_hex = data.get("hash_hex", 16)
        if not isinstance(outside, str) or not isinstance(secret, str) or not isinstance(hash_hex, int):
            raise ConfigError("privacy: outside and secret must be strings, hash_hex an integer")
        return cls(
            keep=_networks(strs("keep")), coarsen=_networks(strs("coarsen")),
            outside=outside,  # type: ignore[arg-type]  # checked in __post_init__
            secret=secret.encode(), hash_hex=hash_hex, drop_comm_cgroups=tuple(strs("drop_comm_cgroups")),
        )

    # ------------------------------------------------------------------ addresses

    def action(self, addr: str) -> Action | None:
        """What the policy does to ``addr``; None when it is not an address (already filtered)."""
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return None
        if any(ip in n for n in self.keep):
            return "keep"
        if any(ip in n for n in self.coarsen):
            return "coarsen"
        return self.outside

    def hash_address(self, addr: str) -> str:
        """The keyed hash token of an address (its packed bytes, so spellings of one address agree)."""
        packed = ipaddress.ip_address(addr).packed
        digest = hmac.new(self.secret, packed, hashlib.sha256).hexdigest()
        return HASH_PREFIX + digest[: self.hash_hex]

    @staticmethod
    def coarsen_address(addr: str) -> str:
        """The /24 (IPv4) or /48 (IPv6) network of an address, as CIDR text."""
        ip = ipaddress.ip_address(addr)
        prefix = 24 if ip.version == 4 else 48
        return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))

    def address(self, addr: str, *, allow_coarsen: bool = True) -> str:
        """``addr`` as it may leave the node. With ``allow_coarsen=False`` a coarsen rule hashes instead
        (endpoint records must keep naming one host)."""
        act = self.action(addr)
        if act is None or act == "keep":
            return addr
        if act == "coarsen" and allow_coarsen:
            return self.coarsen_address(addr)
        if not self.secret:
            raise ConfigError("privacy: an endpoint address must be hashed but no fleet secret is configured")
        return self.hash_address(addr)

    def endpoint_address(self, addr: str) -> str:
        """``address`` for endpoint records: hashed or kept, never coarsened."""
        return self.address(addr, allow_coarsen=False)

    # ------------------------------------------------------------------ records

    def filter_flow(self, rec: FlowRecord) -> FlowRecord:
        """A flow record as it may leave the node: addresses rewritten (and ``remote_name`` dropped with a
        rewritten destination), ``comm`` dropped where listed."""
        changes: dict[str, object] = {}
        src, dst = self.address(rec.src), self.address(rec.dst)
        if src != rec.src:
            changes["src"] = src
        if dst != rec.dst:
            changes["dst"] = dst
            if rec.remote_name:  # the name would tell what the rewritten address hides
                changes["remote_name"] = ""
        if rec.comm and any(rec.cgroup.startswith(p) for p in self.drop_comm_cgroups):
            changes["comm"] = ""
        return rec.replace(**changes) if changes else rec

    def filter_flows(self, recs: Iterable[FlowRecord]) -> list[FlowRecord]:
        """``filter_flow`` over many records."""
        return [self.filter_flow(r) for r in recs]

    def filter_claim(self, claim: EndpointClaim) -> EndpointClaim:
        """An endpoint claim with both addresses hashed or kept (never coarsened)."""
        import dataclasses

        return dataclasses.replace(claim, src=self.endpoint_address(claim.src),
                                   dst=self.endpoint_address(claim.dst))

    def destination_key(self, key: str) -> str:
        """A rollup key ``dst:dport`` (``[v6]:port``) with its address filtered."""
        host, sep, port = key.rpartition(":")
        if not sep:
            return key
        bracketed = host.startswith("[") and host.endswith("]")
        addr = host[1:-1] if bracketed else host
        new = self.address(addr)
        if new == addr:
            return key
        return f"[{new}]:{port}" if ":" in new else f"{new}:{port}"

    def filter_digest(self, digest: mesh_pb2.Digest) -> mesh_pb2.Digest:
        """A copy of an unsigned digest with rollup keys and endpoint addresses filtered (sign after this).

        Rollups whose keys become equal (two hosts of one /24) are merged: counts add up, ``rtt_p50_us``
        becomes the flow-weighted mean and ``rtt_p95_us`` the maximum of the merged rollups (an upper bound:
        the true percentiles of the merged flows are not recoverable from rollups); ``throughput_p50_bps``
        the flow-weighted mean and ``throughput_p05_bps`` the minimum of those that have one.
        """
        from meshnode.v1 import flow_pb2, mesh_pb2

        out = mesh_pb2.Digest()
        out.CopyFrom(digest)
        del out.by_destination[:]
        merged: dict[str, flow_pb2.Rollup] = {}
        for r in digest.by_destination:
            key = self.destination_key(r.key)
            cur = merged.get(key)
            if cur is None:
                cur = merged[key] = flow_pb2.Rollup()
                cur.CopyFrom(r)
                if key != r.key:  # the address was rewritten: its name would tell what the rewrite hides
                    cur.remote_name = ""
                cur.key = key
                continue
            _merge_rollup(cur, r)
        out.by_destination.extend(merged[k] for k in merged)
        for e in out.endpoints:
            e.src = self.endpoint_address(e.src)
            e.dst = self.endpoint_address(e.dst)
        return out


def _merge_rollup(cur: flow_pb2.Rollup, r: flow_pb2.Rollup) -> None:
    total = cur.flows + r.flows
    if total:
        cur.rtt_p50_us = (cur.rtt_p50_us * cur.flows + r.rtt_p50_us * r.flows) // total
    cur.rtt_p95_us = max(cur.rtt_p95_us, r.rtt_p95_us)
    if r.throughput_p50_bps and cur.throughput_p50_bps:  # as RTT, mirrored: the slow tail is the lower bound
        cur.throughput_p50_bps = (cur.throughput_p50_bps * cur.flows + r.throughput_p50_bps * r.flows) // max(1, total)
        cur.throughput_p05_bps = min(cur.throughput_p05_bps, r.throughput_p05_bps)
    elif r.throughput_p50_bps:
        cur.throughput_p50_bps, cur.throughput_p05_bps = r.throughput_p50_bps, r.throughput_p05_bps
    cur.flows = total
    cur.useful += r.useful
    cur.bytes_tx += r.bytes_tx
    cur.bytes_rx += r.bytes_rx
    cur.retransmits += r.retransmits
    cur.flows_retransmitting += r.flows_retransmitting
    cur.flows_slow_connect += r.flows_slow_connect
    cur.flows_slow_path += r.flows_slow_path
    cur.flows_slow_server += r.flows_slow_server
    cur.responses += r.responses
    cur.response_us_sum += r.response_us_sum
    cur.response_us_max = max(cur.response_us_max, r.response_us_max)
    for name in ("response_hist", "first_byte_hist", "connect_hist"):
        merged = merge_hist(getattr(cur, name), getattr(r, name))
        del getattr(cur, name)[:]
        getattr(cur, name).extend(merged)
    for k, v in r.failures.items():
        cur.failures[k] = cur.failures.get(k, 0) + v
    if not cur.service:
        cur.service = r.service
