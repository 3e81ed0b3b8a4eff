"""probes/_sockdiag parsers and the request/answer state machine, on hand-built netlink bytes (no root)."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from meshnode.probes import _sockdiag as sd

# struct tcp_info of Linux 6.1 written out independently of the module's table, as the C header reads.
TCP_INFO_FMT = (
    "="
    "8B"  # state, ca_state, retransmits, probes, backoff, options, wscale nibbles, app_limited/fastopen bits
    "24I"  # rto .. total_retrans
    "4Q"  # pacing_rate, max_pacing_rate, bytes_acked, bytes_received
    "2I"  # segs_out, segs_in
    "4I"  # notsent_bytes, min_rtt, data_segs_in, data_segs_out
    "Q"  # delivery_rate
    "3Q"  # busy_time, rwnd_limited, sndbuf_limited
    "2I"  # delivered, delivered_ce
    "2Q"  # bytes_sent, bytes_retrans
    "2I"  # dsack_dups, reord_seen
    "I"  # rcv_ooopack
    "I"  # snd_wnd
)
U32_NAMES = (
    "rto", "ato", "snd_mss", "rcv_mss", "unacked", "sacked", "lost", "retrans", "fackets",
    "last_data_sent", "last_ack_sent", "last_data_recv", "last_ack_recv", "pmtu", "rcv_ssthresh", "rtt",
    "rttvar", "snd_ssthresh", "snd_cwnd", "advmss", "reordering", "rcv_rtt", "rcv_space", "total_retrans",
)


def tcp_info_bytes() -> bytes:
    """A 6.1-sized tcp_info where every u32 field i holds 1000 + i and the 64-bit ones distinct big values."""
    head = [1, 0, 2, 3, 4, 7, 0x73, 0b101]  # ESTABLISHED, ..., snd_wscale 3 rcv_wscale 7, app_limited + tfo 2
    u32 = [1000 + i for i in range(24)]
    return struct.pack(
        TCP_INFO_FMT, *head, *u32,
        10**10, 2 * 10**10, 1_234_569, 1_234_568,  # pacing, max pacing, bytes_acked, bytes_received
        900, 800,  # segs
        11, 12, 13, 14,  # notsent, min_rtt, data_segs_in, data_segs_out
        5 * 10**9,  # delivery_rate
        3_000_000, 1_000_000, 500_000,  # busy, rwnd, sndbuf
        21, 22,  # delivered, delivered_ce
        1_234_567, 4096,  # bytes_sent, bytes_retrans
        31, 32, 33, 65535,
    )


def sockid(family: int, src: str, sport: int, dst: str, dport: int, cookie: int, ifindex: int = 0) -> bytes:
    def raw(a: str) -> bytes:
        return socket.inet_pton(family, a).ljust(16, b"\0")

    return struct.pack(">HH16s16s", sport, dport, raw(src), raw(dst)) + struct.pack(
        "=III", ifindex, cookie & 0xFFFFFFFF, cookie >> 32)


def rtattr(atype: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + b"\0" * (-len(raw) % 4)


def diag_msg(family=socket.AF_INET, state=1, src="127.0.0.1", sport=40000, dst="127.0.0.1", dport=8080,
             cookie=0x1_0000_0042, inode=555, attrs: bytes = b"") -> bytes:
    return (struct.pack("=BBBB", family, state, 0, 0) + sockid(family, src, sport, dst, dport, cookie)
            + struct.pack("=IIIII", 0, 7, 9, 0, inode) + attrs)


def nlmsg(mtype: int, payload: bytes, seq: int = 1, flags: int = 0) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(payload), mtype, flags, seq, 4242) + payload
    return raw + b"\0" * (-len(raw) % 4)


def done(seq: int = 1, code: int = 0) -> bytes:
    return nlmsg(sd.NLMSG_DONE, struct.pack("=i", code), seq, sd.NLM_F_MULTI)


def error(code: int, seq: int = 1) -> bytes:
    return nlmsg(sd.NLMSG_ERROR, struct.pack("=i", code) + struct.pack("=IHHII", 72, 20, 1, seq, 0), seq)


# --- tcp_info ----------------------------------------------------------------------------------------


def test_tcp_info_full_6_1_layout():
    raw = tcp_info_bytes()
    assert len(raw) == sd.TCP_INFO_LEN_6_1 == 232
    ti = sd.parse_tcp_info(raw)
    assert (ti.state, ti.ca_state, ti.retransmits, ti.probes, ti.backoff, ti.options) == (1, 0, 2, 3, 4, 7)
    assert (ti.snd_wscale, ti.rcv_wscale) == (3, 7)
    assert ti.delivery_rate_app_limited is True and ti.fastopen_client_fail == 2
    for i, name in enumerate(U32_NAMES):
        assert getattr(ti, name) == 1000 + i, name
    assert (ti.pacing_rate, ti.max_pacing_rate) == (10**10, 2 * 10**10)
    assert (ti.bytes_acked, ti.bytes_received) == (1_234_569, 1_234_568)
    assert (ti.segs_out, ti.segs_in, ti.notsent_bytes, ti.min_rtt) == (900, 800, 11, 12)
    assert (ti.data_segs_in, ti.data_segs_out, ti.delivery_rate) == (13, 14, 5 * 10**9)
    assert (ti.busy_time, ti.rwnd_limited, ti.sndbuf_limited) == (3_000_000, 1_000_000, 500_000)
    assert (ti.delivered, ti.delivered_ce, ti.bytes_sent, ti.bytes_retrans) == (21, 22, 1_234_567, 4096)
    assert (ti.dsack_dups, ti.reord_seen, ti.rcv_ooopack, ti.snd_wnd) == (31, 32, 33, 65535)
    assert ti.length == 232


@pytest.mark.parametrize(
    ("length", "last_present", "first_absent"),
    [
        (0, None, "state"),
        (8, "rcv_wscale", "rto"),
        (104, "total_retrans", "pacing_rate"),  # a 3.x-era kernel
        (108, "total_retrans", "pacing_rate"),  # cut inside a u64: the field is absent, not half-read
        (128, "bytes_acked", "bytes_received"),
        (168, "delivery_rate", "busy_time"),  # before the chrono timers (4.10)
        (192, "sndbuf_limited", "delivered"),
        (228, "rcv_ooopack", "snd_wnd"),
    ],
)
def test_tcp_info_prefix_leaves_later_fields_none(length, last_present, first_absent):
    ti = sd.parse_tcp_info(tcp_info_bytes()[:length])
    assert ti.length == length
    if last_present:
        assert getattr(ti, last_present) is not None
    assert getattr(ti, first_absent) is None
    assert ti.snd_wnd is None


def test_tcp_info_longer_than_known_is_accepted():
    ti = sd.parse_tcp_info(tcp_info_bytes() + b"\xff" * 48)  # 6.18 returns 280 bytes
    assert ti.length == 280 and ti.snd_wnd == 65535


# --- inet_diag_msg -----------------------------------------------------------------------------------


def test_diag_msg_ipv4_with_info_and_cong():
    attrs = rtattr(sd.INET_DIAG_INFO, tcp_info_bytes()) + rtattr(99, b"xyz") + rtattr(sd.INET_DIAG_CONG,
                                                                                        b"cubic\0")
    s = sd.parse_diag_msg(diag_msg(attrs=attrs), socket.IPPROTO_TCP)
    assert (s.family, s.state, s.state_name) == (socket.AF_INET, 1, "ESTABLISHED")
    assert (s.src, s.sport, s.dst, s.dport) == ("127.0.0.1", 40000, "127.0.0.1", 8080)
    assert s.cookie == 0x1_0000_0042  # cookie[0] low word, cookie[1] high word
    assert (s.rqueue, s.wqueue, s.inode) == (7, 9, 555)
    assert s.tcp_info is not None and s.tcp_info.bytes_acked == 1_234_569
    assert s.cong == "cubic"


def test_diag_msg_ipv6_without_attrs():
    s = sd.parse_diag_msg(diag_msg(socket.AF_INET6, 10, "::1", 443, "::", 0, cookie=7), socket.IPPROTO_TCP)
    assert (s.src, s.dst, s.state_name, s.cookie, s.tcp_info) == ("::1", "::", "LISTEN", 7, None)


def test_diag_msg_udp_ignores_info():
    s = sd.parse_diag_msg(diag_msg(attrs=rtattr(sd.INET_DIAG_INFO, b"\0" * 32)), socket.IPPROTO_UDP)
    assert s.proto == socket.IPPROTO_UDP and s.tcp_info is None


def test_diag_msg_too_short():
    with pytest.raises(sd.SockDiagError) as ei:
        sd.parse_diag_msg(b"\0" * 40, socket.IPPROTO_TCP)
    assert ei.value.errno == errno.EPROTO


def test_malformed_rtattr_stops_parsing():
    bad = struct.pack("=HH", 200, sd.INET_DIAG_INFO) + b"\0" * 8  # claims more than there is
    assert list(sd.iter_rtattrs(bad, 0)) == []


# --- requests ----------------------------------------------------------------------------------------


def test_pack_dump_request():
    raw = sd.pack_request(7, socket.AF_INET6, socket.IPPROTO_TCP, sd.ALL_STATES, 0b1010,
                          sd.pack_sockid(socket.AF_INET6), dump=True)
    assert len(raw) == 16 + sd.REQ_V2_LEN == 72
    mlen, mtype, flags, seq, pid = struct.unpack_from("=IHHII", raw)
    assert (mlen, mtype, flags, seq, pid) == (72, 20, 0x301, 7, 0)
    fam, proto, ext, pad, states = struct.unpack_from("=BBBBI", raw, 16)
    assert (fam, proto, ext, pad, states) == (socket.AF_INET6, 6, 0b1010, 0, 0xFFFFFFFF)
    assert struct.unpack_from("=II", raw, 16 + 8 + 40) == (sd.INET_DIAG_NOCOOKIE, sd.INET_DIAG_NOCOOKIE)


def test_pack_get_request_carries_tuple_and_cookie():
    sid = sd.pack_sockid(socket.AF_INET, "10.0.0.1", 1234, "10.0.0.2", 80, cookie=0x2_0000_0001)
    raw = sd.pack_request(1, socket.AF_INET, 6, sd.ALL_STATES, 0, sid, dump=False)
    assert struct.unpack_from("=H", raw, 6)[0] == sd.NLM_F_REQUEST
    assert struct.unpack_from(">HH", raw, 24) == (1234, 80)
    assert raw[28:32] == bytes([10, 0, 0, 1]) and raw[44:48] == bytes([10, 0, 0, 2])
    assert struct.unpack_from("=II", raw, 64) == (1, 2)


def test_state_mask():
    assert sd.state_mask(sd.TCP_ESTABLISHED, sd.TCP_LISTEN) == (1 << 1) | (1 << 10)


# --- answers -----------------------------------------------------------------------------------------


def test_multipart_dump_over_several_buffers():
    col = sd._Collector(seq=5, proto=socket.IPPROTO_TCP, dump=True)
    buf1 = (nlmsg(20, diag_msg(sport=1, cookie=1), 5, sd.NLM_F_MULTI)
            + nlmsg(20, diag_msg(sport=2, cookie=2), 5, sd.NLM_F_MULTI))
    col.feed(buf1)
    assert not col.done
    col.feed(nlmsg(20, diag_msg(sport=3, cookie=3), 5, sd.NLM_F_MULTI) + done(5))
    assert col.done
    assert [s.sport for s in col.sockets] == [1, 2, 3]


def test_stale_sequence_numbers_are_ignored():
    col = sd._Collector(seq=9, proto=6, dump=True)
    col.feed(nlmsg(20, diag_msg(cookie=1), 8, sd.NLM_F_MULTI) + done(8) + nlmsg(20, diag_msg(cookie=2), 9,
                                                                               sd.NLM_F_MULTI))
    assert not col.done and [s.cookie for s in col.sockets] == [2]
    col.feed(done(9))
    assert col.done


def test_nlmsg_error_raises_with_errno():
    col = sd._Collector(seq=1, proto=6, dump=False)
    with pytest.raises(sd.SockDiagError) as ei:
        col.feed(error(-errno.ENOENT))
    assert ei.value.errno == errno.ENOENT


def test_nlmsg_error_zero_is_an_ack():
    col = sd._Collector(seq=1, proto=6, dump=True)
    col.feed(error(0))
    assert col.done and col.sockets == []


def test_done_with_negative_code_raises():
    col = sd._Collector(seq=1, proto=6, dump=True)
    with pytest.raises(sd.SockDiagError) as ei:
        col.feed(nlmsg(20, diag_msg(), 1, sd.NLM_F_MULTI) + done(1, -errno.EINTR))
    assert ei.value.errno == errno.EINTR


def test_single_get_answer_needs_no_done():
    col = sd._Collector(seq=3, proto=6, dump=False)
    col.feed(nlmsg(20, diag_msg(cookie=77), 3))
    assert col.done and col.sockets[0].cookie == 77


def test_truncated_netlink_message_raises():
    with pytest.raises(sd.SockDiagError):
        list(sd.iter_nlmsgs(nlmsg(20, diag_msg())[:50]))  # header says 88 bytes, 50 arrived


def test_unexpected_message_type_raises():
    col = sd._Collector(seq=1, proto=6, dump=True)
    with pytest.raises(sd.SockDiagError):
        col.feed(nlmsg(77, b"\0" * 8))


# --- the client with a fake socket -------------------------------------------------------------------


class FakeNetlink:
    """Stands in for the AF_NETLINK socket: records requests, replays answers (an exception = raise it)."""

    def __init__(self, answers: list[bytes | BaseException]) -> None:
        self.answers = answers
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: object) -> int:
        self.sent.append(data)
        return len(data)

    def recvmsg(self, n: int) -> tuple[bytes, list[object], int, object]:
        a = self.answers.pop(0)
        if isinstance(a, BaseException):
            raise a
        if len(a) > n:
            return a[:n], [], socket.MSG_TRUNC, None
        return a, [], 0, None

    def close(self) -> None:
        pass


def client(answers: list[bytes | BaseException]) -> tuple[sd.SockDiag, FakeNetlink]:
    c = sd.SockDiag.__new__(sd.SockDiag)
    fake = FakeNetlink(answers)
    c._sock = fake  # type: ignore[assignment]
    c._seq = 0
    return c, fake


def test_dump_retries_after_eintr():
    c, fake = client([InterruptedError(), nlmsg(20, diag_msg(cookie=5), 1, sd.NLM_F_MULTI), done(1)])
    socks = c.dump(socket.AF_INET)
    assert [s.cookie for s in socks] == [5]
    ext = struct.unpack_from("=B", fake.sent[0], 18)[0]
    assert ext == (1 << (sd.INET_DIAG_INFO - 1)) | (1 << (sd.INET_DIAG_CONG - 1))


def test_get_returns_none_when_gone():
    c, _ = client([error(-errno.ENOENT)])
    assert c.get(socket.AF_INET, "127.0.0.1", 1, "127.0.0.1", 2, cookie=3) is None


def test_get_propagates_other_errors():
    c, _ = client([error(-errno.EPERM)])
    with pytest.raises(sd.SockDiagError):
        c.get(socket.AF_INET, "127.0.0.1", 1, "127.0.0.1", 2)


def test_tcp_info_by_cookie_filters_one_dump_per_family():
    info = rtattr(sd.INET_DIAG_INFO, tcp_info_bytes())
    c, fake = client([
        nlmsg(20, diag_msg(cookie=1, attrs=info), 1, sd.NLM_F_MULTI)
        + nlmsg(20, diag_msg(cookie=2, attrs=info), 1, sd.NLM_F_MULTI) + done(1),
        nlmsg(20, diag_msg(socket.AF_INET6, 1, "::1", 5, "::1", 6, cookie=3, attrs=info), 2, sd.NLM_F_MULTI)
        + done(2),
    ])
    got = sd.tcp_info_by_cookie([2, 3, 99], diag=c)
    assert set(got) == {2, 3} and got[3].bytes_acked == 1_234_569
    assert len(fake.sent) == 2
    states = struct.unpack_from("=I", fake.sent[0], 20)[0]
    assert not states & sd.state_mask(sd.TCP_LISTEN, sd.TCP_TIME_WAIT)


def test_tcp_info_by_cookie_empty_asks_nothing():
    assert sd.tcp_info_by_cookie([]) == {}


def test_truncated_receive_is_an_error():
    big = b"".join(nlmsg(20, diag_msg(cookie=i), 1, sd.NLM_F_MULTI) for i in range(1000))  # 88 kB
    c, _ = client([big])
    with pytest.raises(sd.SockDiagError) as ei:
        c.dump(socket.AF_INET)
    assert ei.value.errno == errno.EMSGSIZE


def test_find_by_cookie_alone():
    c, fake = client([
        nlmsg(20, diag_msg(cookie=1), 1, sd.NLM_F_MULTI) + done(1),
        nlmsg(20, diag_msg(socket.AF_INET6, 1, "::1", 5, "::1", 6, cookie=9), 2, sd.NLM_F_MULTI) + done(2),
    ])
    found = c.find(9)
    assert found is not None and found.src == "::1" and len(fake.sent) == 2
