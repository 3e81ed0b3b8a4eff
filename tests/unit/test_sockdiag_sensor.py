"""DiagSensor's bookkeeping over scripted sock_diag dumps: no root, no network, an injected clock."""

from __future__ import annotations

import pytest

from meshnode.probes import _sockdiag as sd
from meshnode.probes._sockdiag import DiagSocket, TcpInfo
from meshnode.sensor._diag import DiagSensor, Owner, _in_scope, payload_rx, payload_tx

MS = 1_000_000  # ns


def ti(**kw: int) -> TcpInfo:
    base = dict(bytes_acked=0, bytes_received=0, bytes_sent=0, bytes_retrans=0, segs_out=0, segs_in=0,
                busy_time=0, rwnd_limited=0, sndbuf_limited=0, data_segs_out=0, total_retrans=0,
                snd_cwnd=10, unacked=0, lost=0, rtt=100, min_rtt=50, rttvar=20)
    base.update(kw)
    return TcpInfo(**base)


def sock(cookie: int, state: int = sd.TCP_ESTABLISHED, src: str = "10.0.0.1", sport: int = 40000,
         dst: str = "10.0.0.2", dport: int = 80, inode: int = 0, info: TcpInfo | None = None,
         family: int = 2) -> DiagSocket:
    return DiagSocket(family=family, proto=6, state=state, timer=0, retrans=0, src=src, sport=sport, dst=dst,
                      dport=dport, ifindex=0, cookie=cookie, expires=0, rqueue=0, wqueue=0, uid=0,
                      inode=inode, tcp_info=info if info is not None or state == sd.TCP_LISTEN else ti())


def listener(port: int, addr: str = "0.0.0.0") -> DiagSocket:
    return sock(10_000 + port, sd.TCP_LISTEN, addr, port, "0.0.0.0", 0, info=None)


class FakeDiag:
    """A scripted SockDiag: each dump returns the next list of sockets (the last one repeats)."""

    def __init__(self) -> None:
        self.script: list[list[DiagSocket]] = [[]]
        self.dumps = 0

    def dump_tcp(self, states: int = sd.ALL_STATES, info: bool = True) -> list[DiagSocket]:
        self.dumps += 1
        assert not states & sd.state_mask(sd.TCP_TIME_WAIT, sd.TCP_NEW_SYN_RECV)
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 1_000 * MS

    def __call__(self) -> int:
        return self.t


@pytest.fixture
def sensor(monkeypatch):
    s = DiagSensor(reason="test")
    fake = FakeDiag()
    clock = Clock()
    s._diag = fake  # type: ignore[assignment]
    s._mono_ns = clock
    s._wall_ns = lambda: clock.t + 1_700_000_000 * 10**9
    s.netns = 4026531840
    owners = {}

    def scan(wanted):
        s.proc_scans += 1
        for ino in wanted:
            if ino in owners:
                s._owners[ino] = owners[ino]
            else:
                s._unowned.add(ino)

    monkeypatch.setattr(s, "_scan_proc", scan)
    return s, fake, clock, owners


def step(s, fake, clock, socks, ms=1000):
    clock.t += ms * MS
    fake.script = [socks]
    return s.poll().ended


def test_outbound_flow_lifecycle(sensor):
    s, fake, clock, _ = sensor
    assert step(s, fake, clock, [sock(1, sd.TCP_SYN_SENT, info=ti(bytes_acked=0))]) == []
    [interim] = s.active()
    assert (interim.outcome, interim.kind, interim.direction) == ("in_progress", "interim", "outbound")
    est = ti(bytes_acked=1 + 5000, bytes_sent=5000, bytes_received=300, segs_out=9, segs_in=7, snd_cwnd=14,
             total_retrans=1)
    step(s, fake, clock, [sock(1, info=est)])
    [final] = step(s, fake, clock, [])
    assert (final.flow_id, final.kind, final.fidelity, final.outcome) == (1, "final", "polled", "established")
    assert (final.bytes_tx, final.bytes_rx, final.packets_tx, final.packets_rx) == (5000, 300, 9, 7)
    assert (final.retransmits, final.srtt_us, final.min_rtt_us, final.rttvar_us) == (1, 100, 50, 20)
    assert (final.cwnd, final.cwnd_min, final.cwnd_max) == (14, 10, 14)
    assert final.netns == 4026531840 and final.proto == "tcp"
    assert final.end_ns > final.start_ns


def test_syn_sent_that_vanishes_is_a_timeout(sensor):
    s, fake, clock, _ = sensor
    step(s, fake, clock, [sock(2, sd.TCP_SYN_SENT)])
    [final] = step(s, fake, clock, [])
    assert final.outcome == "timeout" and final.bytes_tx == 0


def test_inbound_by_listening_port(sensor):
    s, fake, clock, _ = sensor
    socks = [listener(8080), sock(3, src="10.0.0.1", sport=8080, dst="10.0.0.9", dport=5555),
             sock(4, src="10.0.0.1", sport=40001, dst="10.0.0.9", dport=8080)]
    step(s, fake, clock, socks)
    by_id = {r.flow_id: r for r in s.active()}
    assert set(by_id) == {3, 4}  # the listener is not a flow
    assert by_id[3].direction == "inbound" and by_id[4].direction == "outbound"


def test_listener_on_other_address_does_not_make_inbound(sensor):
    s, fake, clock, _ = sensor
    step(s, fake, clock, [listener(9000, "10.0.0.7"), sock(5, src="10.0.0.1", sport=9000)])
    assert s.active()[0].direction == "outbound"


def test_v4_mapped_on_dual_stack_listener(sensor):
    s, fake, clock, _ = sensor
    step(s, fake, clock, [listener(8443, "::"),
                          sock(6, src="::ffff:127.0.0.1", sport=8443, dst="::ffff:127.0.0.1", dport=6000,
                               family=10)])
    [r] = s.active()
    assert (r.src, r.dst, r.direction) == ("127.0.0.1", "127.0.0.1", "inbound")


def test_owner_and_scope(sensor):
    s, fake, clock, owners = sensor
    s.scope = "/lab/a"
    owners[11] = Owner(100, "curl", "/lab/a/web", 77)
    owners[12] = Owner(101, "wget", "/lab/ab", 78)  # a sibling whose name merely starts the same
    step(s, fake, clock, [sock(7, inode=11), sock(8, inode=12), sock(9, inode=13), sock(10, inode=0)])
    [r] = s.active()
    assert (r.flow_id, r.pid, r.comm, r.cgroup, r.cgroup_id) == (7, 100, "curl", "/lab/a/web", 77)


def test_unowned_kept_when_unscoped(sensor):
    s, fake, clock, _ = sensor
    step(s, fake, clock, [sock(7, inode=13)])
    [r] = s.active()
    assert (r.pid, r.comm) == (0, "")


def test_proc_scanned_once_per_refresh_and_not_again_for_known_inodes(sensor):
    s, fake, clock, owners = sensor
    owners[21] = Owner(5, "a", "/", 1)
    step(s, fake, clock, [sock(1, inode=21), sock(2, inode=22)])
    assert s.proc_scans == 1
    step(s, fake, clock, [sock(1, inode=21), sock(2, inode=22)])
    assert s.proc_scans == 1  # 21 is tracked, 22 is known to have no owner
    step(s, fake, clock, [sock(1, inode=21), sock(2, inode=22), sock(3, inode=23), sock(4, inode=24)])
    assert s.proc_scans == 2


def test_orphaned_socket_keeps_its_owner(sensor):
    s, fake, clock, owners = sensor
    owners[31] = Owner(9, "srv", "/", 1)
    step(s, fake, clock, [sock(1, inode=31)])
    step(s, fake, clock, [sock(1, sd.TCP_FIN_WAIT1, inode=0)])  # the app closed it; the kernel finishes
    [final] = step(s, fake, clock, [])
    assert (final.pid, final.comm) == (9, "srv")


def test_limited_by_over_the_export_window(sensor):
    s, fake, clock, _ = sensor
    step(s, fake, clock, [sock(1, info=ti(data_segs_out=2))])
    s.active()  # starts the window at this sample
    stalled = ti(data_segs_out=2, busy_time=2_000_000, rwnd_limited=1_900_000)
    step(s, fake, clock, [sock(1, info=stalled)], ms=2000)
    [r] = s.active()
    assert r.limited_by == "receiver_window"
    # the next window: the app went quiet after some more sends
    quiet = ti(data_segs_out=40, bytes_acked=40_000, busy_time=2_010_000, rwnd_limited=1_900_000)
    step(s, fake, clock, [sock(1, info=quiet)], ms=2000)
    [r] = s.active()
    assert r.limited_by == "app"


def test_limited_by_keeps_verdict_when_window_too_short(sensor):
    s, fake, clock, _ = sensor
    step(s, fake, clock, [sock(1, info=ti(data_segs_out=2))])
    step(s, fake, clock, [sock(1, info=ti(data_segs_out=2, busy_time=10**6, rwnd_limited=10**6))])
    [r] = s.active()
    assert r.limited_by == "receiver_window"
    clock.t += 10 * MS  # active() right after: a 10 ms window says nothing new
    [r] = s.active()
    assert r.limited_by == "receiver_window"


def test_poll_counts_recorded_flows(sensor):
    s, fake, clock, _ = sensor
    step(s, fake, clock, [sock(1), sock(2)])
    clock.t += MS
    fake.script = [[]]
    batch = s.poll()
    assert batch.completeness.flows_recorded == 2 and len(batch.ended) == 2


def test_poll_before_start_is_misuse():
    with pytest.raises(RuntimeError):
        DiagSensor().poll()


def test_protocol_attributes():
    s = DiagSensor(scope="/x", reason="no BTF")
    assert (s.mode, s.fidelity, s.scope, s.reason) == ("diag", "polled", "/x", "no BTF")
    assert s.idle_timeout_s == 90.0
    s.close()
    s.close()


@pytest.mark.parametrize(
    ("info", "active_opener", "expected"),
    [
        (ti(bytes_acked=1), True, 0),  # right after connect: the SYN
        (ti(bytes_acked=1_234_568, bytes_sent=1_234_567), True, 1_234_567),
        (ti(bytes_acked=1_234_569, bytes_sent=1_234_567), True, 1_234_567),  # FIN acked too
        (ti(bytes_acked=1_234_567, bytes_sent=1_234_567), False, 1_234_567),  # passive side: no SYN
        (ti(bytes_acked=1_234_568, bytes_sent=1_234_567), False, 1_234_567),  # passive, FIN acked
        (ti(bytes_acked=1001, bytes_sent=3000, bytes_retrans=500), True, 1000),  # data still in flight
        (TcpInfo(bytes_acked=1002), True, 1001),  # a kernel without bytes_sent: SYN only
    ],
)
def test_payload_tx(info, active_opener, expected):
    assert payload_tx(info, active_opener) == expected


@pytest.mark.parametrize(
    ("received", "state", "expected"),
    [
        (1_234_567, sd.TCP_ESTABLISHED, 1_234_567),
        (1_234_568, sd.TCP_CLOSE_WAIT, 1_234_567),
        (1_234_568, sd.TCP_LAST_ACK, 1_234_567),
        (1_234_568, sd.TCP_CLOSING, 1_234_567),
        (0, sd.TCP_SYN_SENT, 0),
    ],
)
def test_payload_rx(received, state, expected):
    assert payload_rx(ti(bytes_received=received), state) == expected


def test_in_scope():
    assert _in_scope("/a/b", "/")
    assert _in_scope("/a/b", "/a/b")
    assert _in_scope("/a/b/c", "/a/b/")
    assert not _in_scope("/a/bc", "/a/b")
    assert not _in_scope("", "/a")


def test_flows_opened_and_closed_between_polls_are_counted(sensor, monkeypatch):
    s, fake, clock, _ = sensor
    opens = [100]
    monkeypatch.setattr(s, "_tcp_opens", lambda: opens[0])
    step(s, fake, clock, [sock(1)])  # baseline
    opens[0] += 6  # six connects/accepts: two are seen, four came and went unseen
    batch_ended = step(s, fake, clock, [sock(1), sock(2), sock(3)])
    assert batch_ended == []
    clock.t += MS
    fake.script = [[sock(1), sock(2), sock(3)]]
    assert s.poll().completeness.lost_events == 0  # the previous poll already handed over its count


def test_missed_count_reaches_poll(sensor, monkeypatch):
    s, fake, clock, _ = sensor
    opens = [100]
    monkeypatch.setattr(s, "_tcp_opens", lambda: opens[0])
    step(s, fake, clock, [])
    opens[0] += 5
    clock.t += MS
    fake.script = [[sock(7)]]
    assert s.poll().completeness.lost_events == 4


def test_socket_seen_before_the_counter_is_credit_not_loss(sensor, monkeypatch):
    s, fake, clock, _ = sensor
    opens = [100]
    monkeypatch.setattr(s, "_tcp_opens", lambda: opens[0])
    step(s, fake, clock, [])
    clock.t += MS
    fake.script = [[sock(1)]]  # opened after the counter was read, before the dump
    assert s.poll().completeness.lost_events == 0
    opens[0] += 1  # ... and counted only at the next refresh
    clock.t += MS
    fake.script = [[sock(1)]]
    assert s.poll().completeness.lost_events == 0


def test_owner_found_once_the_socket_is_accepted(sensor):
    s, fake, clock, owners = sensor
    owners[41] = Owner(12, "server", "/", 1)
    step(s, fake, clock, [listener(80, "10.0.0.2"), sock(1, src="10.0.0.2", sport=80, inode=0)])
    assert s.active()[0].pid == 0  # in the accept queue: no file, no owner yet
    step(s, fake, clock, [listener(80, "10.0.0.2"), sock(1, src="10.0.0.2", sport=80, inode=41)])
    [r] = s.active()
    assert (r.pid, r.comm, r.direction) == (12, "server", "inbound")
