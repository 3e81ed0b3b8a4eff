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

static __always_inline int parse(struct __sk_buff *skb, struct l4 *p)
{
    if (skb->protocol == ETH_P_IP_BE) {
        __u8 vihl;
        if (bpf_skb_load_bytes(skb, 0, &vihl, 1))
            return -1;
        if (bpf_skb_load_bytes(skb, 9, &p->proto, 1))
            return -1;
        if (bpf_skb_load_bytes(skb, 12, p->saddr, 4) || bpf_skb_load_bytes(skb, 16, p->daddr, 4))
            return -1;
        p->l4off = (vihl & 0xf) * 4;
        p->family = AF_INET;
    } else if (skb->protocol == ETH_P_IPV6_BE) {
        if (bpf_skb_load_bytes(skb, 6, &p->proto, 1))
            return -1;
        if (bpf_skb_load_bytes(skb, 8, p->saddr, 16) || bpf_skb_load_bytes(skb, 24, p->daddr, 16))
            return -1;
        p->l4off = 40;  /* extension headers are not followed: such packets are not counted as UDP */
        p->family = AF_INET6;
    } else {
        return -1;
    }
    __u16 ports[2];
    if (bpf_skb_load_bytes(skb, p->l4off, ports, 4))
        return -1;
    p->sport = bpf_ntohs(ports[0]);
    p->dport = bpf_ntohs(ports[1]);
    return 0;
}

static __always_inline void tcp_packet(struct __sk_buff *skb, struct l4 *p, int egress)
{
    __u8 flags;
    if (bpf_skb_load_bytes(skb, p->l4off + 13, &flags, 1))
        return;
    int syn = flags & 0x02, rst = flags & 0x04, ack = flags & 0x10;
    if (!syn && !rst)
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
    if (bpf_skb_load_bytes(skb, p->l4off + 4, &ulen, 2))
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

    struct udp_flow *f = udp_flows.lookup(&k);
    if (!f) {
        struct udp_flow n = {};
        struct bpf_sock *sk = skb->sk;
        n.sk = (__u64)sk;
        n.netns = bpf_get_netns_cookie(skb);
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
}

static __always_inline int on_skb(struct __sk_buff *skb, int egress)
{
    struct l4 p = {};
    if (parse(skb, &p))
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
