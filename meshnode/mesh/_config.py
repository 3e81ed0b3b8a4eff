"""Protocol parameters of the mesh, memberlist's LAN profile by default."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """Timers and bounds of membership and dissemination.

    The defaults follow memberlist's ``DefaultLANConfig``; ``probe_interval`` is halved (0.5 s) so that a
    dead member of 1,000 is declared within 10 s (see bench/RESULTS.md).

    Attributes:
        probe_interval: seconds between two probes of this node (scaled by local health).
        probe_timeout: seconds to wait for a direct ack before indirect probes.
        indirect_checks: members asked to probe indirectly (SWIM's k).
        suspicion_mult: minimum suspicion timeout = mult * max(1, log10(n)) * probe_interval.
        suspicion_max_timeout_mult: a lone suspicion starts at this multiple of the minimum.
        awareness_max_multiplier: the largest Lifeguard timeout multiplier (health score below it).
        gossip_interval: seconds between two gossip rounds.
        gossip_nodes: members a gossip round sends to (fanout).
        gossip_to_the_dead_time: keep gossiping to a dead member this long (so that it can refute).
        retransmit_mult: each broadcast is sent mult * ceil(log10(n + 1)) times.
        push_pull_interval: seconds between two full-state exchanges (scaled up beyond 32 members); 0
            disables them.
        reconnect_interval: every this many seconds, with probability dead / alive members, push-pull with
            a random dead member, so that the two sides of a healed partition find each other again
            (Serf's reconnect); 0 disables it.
        stream_timeout: deadline of a reliable request (push-pull, digest pull).
        packet_budget: the largest packet in bytes, piggybacked broadcasts included.
        dead_retention: seconds a dead or left member stays listed before it is forgotten.
        max_labels: the most labels a member may carry; more is a peer error.
        max_label_bytes: the longest label key or value.
        max_members: the most members the table lists, this node included; an Alive about one more is
            refused (counted ``members_refused_table_full``) until dead members are reaped. A push-pull
            naming more members than this is refused whole. The default is the digest layer's
            ``DigestConfig.max_nodes``: the largest fleet the mesh is sized for.
        max_stream_bytes: the largest reliable request or answer (push-pull, digest pull) in bytes; larger
            ones are refused before they are decoded (``streams_oversize``). gRPC's default receive bound,
            which also bounds the node's shared API server; a push-pull of a full table takes about 1.6 MB
            (10,000 members with three labels each: 0.82 MB measured; ``DigestConfig.max_pull`` digests:
            0.5 MB at most; the seq vector: 0.2 MB). memberlist allows 20 MB for the same state.
    """

    probe_interval: float = 0.5
    probe_timeout: float = 0.25
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    awareness_max_multiplier: int = 8
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    gossip_to_the_dead_time: float = 30.0
    retransmit_mult: int = 4
    push_pull_interval: float = 30.0
    reconnect_interval: float = 30.0
    stream_timeout: float = 5.0
    packet_budget: int = 1400
    dead_retention: float = 300.0
    max_labels: int = 16
    max_label_bytes: int = 256
    max_members: int = 10_000
    max_stream_bytes: int = 4 * 1024 * 1024
