/* cgroup-skb ingress/egress: UDP flows (per socket and remote endpoint, exact payload bytes from the UDP
 * header), TCP resets sent, and inbound handshakes (SYN on a listener; RST that cuts a half-open one).
 * Packet bytes are read with bpf_skb_load_bytes from the IP header on: cgroup-skb programs see the
 * packet from its network header in both directions. */

#define ETH_P_IP_BE 0x0008
#define ETH_P_IPV6_BE 0xDD86

struct l4 {
    __u8 saddr[16];
    __u8 daddr[16];
    __u32 l4off;
    __u16 sport;
    __u16 dport;
    __u8 proto;
    __u8 family;
};

/* `len` header bytes at `off`: read straight from the packet when they lie in its linear part (cgroup-skb
 * programs may read skb->data directly; the headers of nearly every packet are linear), else copied by
 * bpf_skb_load_bytes. A helper call per field cost ~150-200 ns a packet on TCP segments that need only
 * their flags (bench/RESULTS.md, Sensor). `off` is bounded (IP header length <= 60), as the verifier
 * requires of a variable packet offset. */
#define HDR(skb, off, dst, len) ({                                                      \
    void *_d = (void *)(long)(skb)->data;                                               \
    void *_e = (void *)(long)(skb)->data_end;                                           \
    int _r = 0;                                                                          \
    if (_d + (off) + (len) <= _e)                                                        \
        __builtin_memcpy((dst), _d + (off), (len));                                      \
    else                                                                                 \
        _r = bpf_skb_load_bytes((skb), (off), (dst), (len));                             \
    _r; })

/* Family, protocol and transport header offset: all a plain TCP segment needs before its flags. */
static __always_inline int parse_head(struct __sk_buff *skb, struct l4 *p)
{
    __u8 h[10];
    if (skb->protocol == ETH_P_IP_BE) {
        if (HDR(skb, 0, h, 10))
            return -1;
        p->l4off = (h[0] & 0xf) * 4;
        p->proto = h[9];
        p->family = AF_INET;
    } else if (skb->protocol == ETH_P_IPV6_BE) {
        if (HDR(skb, 0, h, 7))
            return -1;
        p->l4off = 40;  /* extension headers are not followed: such packets are not counted as UDP */
        p->proto = h[6];
        p->family = AF_INET6;
    } else {
        return -1;
    }
    return 0;
}

/* Addresses and ports, once the packet is known to matter. */
static __always_inline int parse_tuple(struct __sk_buff *skb, struct l4 *p)
{
    if (p->family == AF_INET) {
        if (HDR(skb, 12, p->saddr, 4) || HDR(skb, 16, p->daddr, 4))
            return -1;
    } else {
        if (HDR(skb, 8, p->saddr, 16) || HDR(skb, 24, p->daddr, 16))
            return -1;
    }
    __u16 ports[2];
    __u32 off = p->l4off & 0x3c;
    if (HDR(skb, off, ports, 4))
        return -1;
    p->sport = bpf_ntohs(ports[0]);
    p->dport = bpf_ntohs(ports[1]);
    return 0;
}

/* DNS over TCP: a segment from port 53 that starts a message (its 2-byte length prefix, then the
 * header) is parsed within the segment; a query to port 53 notes its send time. Messages spread over
 * several segments are parsed as far as the first goes (C_DNS_TRUNCATED). */
static __always_inline void tcp_dns(struct __sk_buff *skb, struct l4 *p, int egress)
{
    __u8 doff;
    __u32 l4 = p->l4off & 0x3c;
    if (bpf_skb_load_bytes(skb, l4 + 12, &doff, 1) || parse_tuple(skb, p))
        return;
    __u32 off = l4 + ((doff >> 4) & 0xf) * 4;
    if (skb->len < off + 2 + 12)
        return;  /* no message start in this segment (an ACK, a FIN) */
    __u8 pre[2];
    if (bpf_skb_load_bytes(skb, off, pre, 2))
        return;
    __u32 msg_len = ((__u32)pre[0] << 8) | pre[1];
    if (egress)
        dns_query(skb, off + 2);
    else
        dns_answer(skb, p->saddr, p->family, off + 2, skb->len - off - 2, msg_len, 1);
}

static __always_inline void tcp_packet(struct __sk_buff *skb, struct l4 *p, int egress)
{
    __u8 th[14];  /* ports .. flags: one copy for both */
    if (HDR(skb, p->l4off & 0x3c, th, 14))
        return;
    __u8 flags = th[13];
    int syn = flags & 0x02, rst = flags & 0x04, ack = flags & 0x10;
    __u8 *port = egress ? &th[2] : &th[0];  /* the peer's port: the resolver's is 53 */
    if (!syn && !rst && port[0] == 0 && port[1] == DNS_PORT) {
        tcp_dns(skb, p, egress);  /* may end in a tail call: nothing may follow it */
        return;
    }
    if (!syn && !rst)
        return;  /* nearly every segment: sock_ops and the tracepoints count those */
    if (egress ? !rst : ack && !rst)
        return;  /* what is left matters only as an egress RST, an ingress SYN or an ingress RST */
    if (parse_tuple(skb, p))
        return;
    if (egress) {
        if (rst) {
            __u64 sk = (__u64)skb->sk;
            struct tcp_flow *f = flow_of(sk, mn_socket_cookie(skb));
            if (f) {
                f->resets_tx++;
                emit(EV_RESET_TX, f->cookie, sk, f, 0, 0);
            }
        }
        return;
    }
    /* ingress: the socket is the listener for SYNs and for packets to request sockets */
    struct pending_key k = {};
    k.netns = bpf_get_netns_cookie(skb);
    __builtin_memcpy(k.laddr, p->daddr, 16);
    __builtin_memcpy(k.raddr, p->saddr, 16);
    k.lport = p->dport;
    k.rport = p->sport;
    k.family = p->family;
    if (syn && !ack) {
        struct bpf_sock *sk = skb->sk;
        if (!sk)
            return;
        sk = bpf_sk_fullsock(sk);
        if (!sk || sk->state != 10 /* TCP_LISTEN */)
            return;
        struct pending_val v = {.syn_ns = bpf_ktime_get_ns(), .cgroup_id = bpf_skb_cgroup_id(skb)};
        if (pending.insert(&k, &v) == -E2BIG)
            count(C_PENDING_MAP_FULL);
        return;
    }
    if (rst) {
        struct pending_val *v = pending.lookup(&k);
        if (!v)
            return;
        struct tcp_flow f = {};
        f.netns = k.netns;
        f.cgroup_id = v->cgroup_id;
        f.start_ns = v->syn_ns;
        f.last_ns = bpf_ktime_get_ns();
        f.flags = F_INBOUND | (p->family == AF_INET6 ? F_INET6 : 0);
        __builtin_memcpy(f.saddr, p->daddr, 16);
        __builtin_memcpy(f.daddr, p->saddr, 16);
        f.sport = p->dport;
        f.dport = p->sport;
        f.outcome = OC_RESET;
        f.resets_rx = 1;
        f.segs_in = 2;
        struct pending_key lk = {.netns = k.netns, .lport = k.lport};
        __u32 *tgid = listeners.lookup(&lk);
        if (tgid)
            f.pid = *tgid;
        pending.delete(&k);
        emit(EV_HALFOPEN_RESET, 0, 0, &f, 0, 0);
    }
}

static __always_inline void udp_packet(struct __sk_buff *skb, struct l4 *p, int egress)
{
    __u16 ulen;
    __u32 off = (p->l4off & 0x3c) + 4;
    if (parse_tuple(skb, p) || HDR(skb, off, &ulen, 2))
        return;
    __u64 payload = bpf_ntohs(ulen);
    payload = payload >= 8 ? payload - 8 : 0;
    __u32 segs = skb->gso_segs ? skb->gso_segs : 1;
    if (segs > 1)  /* UDP GSO: the header's length is one segment's; the skb carries them all */
        payload = skb->len - p->l4off - 8 * segs;
    __u64 now = bpf_ktime_get_ns();
    __u64 cookie = mn_socket_cookie(skb);

    struct udp_key k = {};
    k.cookie = cookie;
    k.family = p->family;
    __builtin_memcpy(k.raddr, egress ? p->daddr : p->saddr, 16);
    k.rport = egress ? p->dport : p->sport;

    __u64 netns = bpf_get_netns_cookie(skb);
    struct udp_flow *f = udp_flows.lookup(&k);
    if (!f) {
        struct udp_flow n = {};
        struct bpf_sock *sk = skb->sk;
        n.sk = (__u64)sk;
        n.netns = netns;
        n.name_id = dns_name_of(netns, p->family, k.raddr);
        n.cgroup_id = bpf_skb_cgroup_id(skb);
        n.first_ns = now;
        n.direction = egress ? MN_OUT : MN_IN;
        n.lport = egress ? p->sport : p->dport;
        __builtin_memcpy(n.laddr, egress ? p->saddr : p->daddr, 16);
        if (udp_flows.insert(&k, &n) == -E2BIG) {
            count(C_UDP_MAP_FULL);
            return;
        }
        f = udp_flows.lookup(&k);
        if (!f)
            return;
    }
    f->last_ns = now;
    if (egress) {
        __sync_fetch_and_add(&f->bytes_tx, payload);
        __sync_fetch_and_add(&f->packets_tx, segs);
        if (!f->first_tx_ns)
            f->first_tx_ns = now;
        /* UDP egress runs in the sending syscall: the current task owns the socket */
        if (!f->pid)
            f->pid = bpf_get_current_pid_tgid() >> 32;
    } else {
        __sync_fetch_and_add(&f->bytes_rx, payload);
        __sync_fetch_and_add(&f->packets_rx, segs);
        if (!f->first_rx_ns)
            f->first_rx_ns = now;
    }
    if (k.rport == DNS_PORT) {  /* a query to a resolver (egress), or its answer (ingress): last, a tail call */
        __u32 dns_off = (p->l4off & 0x3c) + 8;
        if (egress)
            dns_query(skb, dns_off);
        else if (skb->len > dns_off)
            dns_answer(skb, p->saddr, p->family, dns_off, skb->len - dns_off, payload, 0);
    }
}

static __always_inline int on_skb(struct __sk_buff *skb, int egress)
{
    struct l4 p = {};
    if (parse_head(skb, &p))
        return 1;
    if (p.proto == IPPROTO_UDP)
        udp_packet(skb, &p, egress);
    else if (p.proto == IPPROTO_TCP)
        tcp_packet(skb, &p, egress);
    return 1;
}

int mn_skb_egress(struct __sk_buff *skb) { return on_skb(skb, 1); }
int mn_skb_ingress(struct __sk_buff *skb) { return on_skb(skb, 0); }

/* A socket released: user space ends its UDP flows now rather than after the idle timeout. */
int mn_sock_release(struct bpf_sock *sk)
{
    if (sk->protocol != IPPROTO_UDP)
        return 1;
    __u64 cookie = mn_socket_cookie(sk);
    emit(EV_UDP_RELEASE, cookie, 0, 0, 0, 0);
    return 1;
}
