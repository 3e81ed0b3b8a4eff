/* ICMP errors received for this host's flows: destination unreachable (by code), fragmentation needed /
 * packet too big (with the next-hop MTU), time exceeded.
 *
 * Socket filters on a raw ICMP and a raw ICMPv6 socket that the loader opens in the sensor's network
 * namespace: the kernel hands every ICMP packet the namespace receives to its raw sockets (the sockets'
 * ICMP_FILTER lets only these three error types reach the program), and the program reads the error and the
 * header it quotes, the flow as this host sent it, counts it in icmp_flows under that 5-tuple and returns 0,
 * so nothing is queued on the socket or copied to user space. User space joins the counts to the flow by
 * its 5-tuple. The packet is read with bpf_skb_load_bytes: no kernel struct is read. One ring record goes
 * out per flow and kind of error the first time it is seen (and when a smaller MTU is reported), never one
 * per ICMP packet. */

#ifndef ICMP_MAX_FLOWS
#define ICMP_MAX_FLOWS 16384
#endif

/* not preallocated: entries are rare and drained every poll, so the kernel holds memory for those alone */
BPF_F_TABLE("hash", struct icmp_key, struct icmp_val, icmp_flows, ICMP_MAX_FLOWS, BPF_F_NO_PREALLOC);

static __always_inline void icmp_error(struct icmp_key *k, __u32 kind, __u32 code, __u32 mtu)
{
    count(C_ICMP_ERRORS);
    __u64 now = bpf_ktime_get_ns();
    struct icmp_val *v = icmp_flows.lookup(k);
    if (!v) {
        struct icmp_val n = {.first_ns = now};
        if (icmp_flows.insert(k, &n) == -E2BIG) {
            count(C_ICMP_MAP_FULL);
            return;
        }
        v = icmp_flows.lookup(k);
        if (!v)
            return;
    }
    v->last_ns = now;
    __u32 first = 0;
    if (kind == ICMP_K_UNREACH) {
        /* the atomic add's result is not used: bcc's target has no fetching atomics (BPF v3) */
        first = v->unreach == 0 || v->code != code;
        __sync_fetch_and_add(&v->unreach, 1);
        v->code = code;
    } else if (kind == ICMP_K_FRAG) {
        __sync_fetch_and_add(&v->frag, 1);
        if (mtu && (!v->mtu || mtu < v->mtu)) {
            v->mtu = mtu;
            first = 1;
        }
    } else {
        first = v->ttl == 0;
        __sync_fetch_and_add(&v->ttl, 1);
    }
    if (!first)
        return;
    struct tcp_flow f = {};
    __builtin_memcpy(f.saddr, k->laddr, 16);
    __builtin_memcpy(f.daddr, k->raddr, 16);
    f.sport = k->lport;
    f.dport = k->rport;
    f.flags = k->family == AF_INET6 ? F_INET6 : 0;
    f.start_ns = v->first_ns;
    f.last_ns = now;
    emit(EV_ICMP, 0, 0, &f, ((__u64)k->proto << 24) | (kind << 16) | code, mtu);
}

/* The ports of the quoted transport header at `off`; 0 when the protocol is not TCP or UDP. */
static __always_inline int quoted_ports(struct __sk_buff *skb, __u32 off, struct icmp_key *k)
{
    if (k->proto != IPPROTO_TCP && k->proto != IPPROTO_UDP)
        return -1;
    __u16 ports[2];
    if (bpf_skb_load_bytes(skb, off, ports, 4))
        return -1;
    k->lport = bpf_ntohs(ports[0]);
    k->rport = bpf_ntohs(ports[1]);
    return 0;
}

/* IPv4: the raw socket's packet starts at the IP header. */
int mn_icmp4(struct __sk_buff *skb)
{
    __u8 vihl;
    if (bpf_skb_load_bytes(skb, 0, &vihl, 1))
        return 0;
    __u32 off = (vihl & 0xf) * 4;
    __u8 h[8];                  /* type, code, checksum, unused / next-hop MTU */
    if (bpf_skb_load_bytes(skb, off & 0x3c, h, 8))
        return 0;
    __u32 kind, code = h[1], mtu = 0;
    if (h[0] == 3) {
        kind = code == 4 ? ICMP_K_FRAG : ICMP_K_UNREACH;
        if (code == 4)
            mtu = ((__u32)h[6] << 8) | h[7];
    } else if (h[0] == 11 && code == 0) {
        kind = ICMP_K_TTL;
    } else {
        return 0;
    }
    __u8 ip[20];                /* the quoted header: what this host sent */
    __u32 in = (off & 0x3c) + 8;
    if (bpf_skb_load_bytes(skb, in, ip, 20))
        return 0;
    struct icmp_key k = {};
    k.family = AF_INET;
    k.proto = ip[9];
    __builtin_memcpy(k.laddr, ip + 12, 4);
    __builtin_memcpy(k.raddr, ip + 16, 4);
    if (quoted_ports(skb, in + (ip[0] & 0xf) * 4, &k))
        return 0;
    icmp_error(&k, kind, kind == ICMP_K_UNREACH ? code : 0, mtu);
    return 0;
}

/* IPv6: the raw socket's packet starts at the ICMPv6 header. Codes are given in ICMPv4's numbering, so that
 * one table names them. Extension headers in the quoted packet are not followed. */
int mn_icmp6(struct __sk_buff *skb)
{
    __u8 h[8];                  /* type, code, checksum, MTU (packet too big) */
    if (bpf_skb_load_bytes(skb, 0, h, 8))
        return 0;
    __u32 kind, code = 0, mtu = 0;
    if (h[0] == 1) {
        kind = ICMP_K_UNREACH;
        switch (h[1]) {
        case 0: code = 0; break;                    /* no route: network unreachable */
        case 3: code = 1; break;                    /* address unreachable: host unreachable */
        case 4: code = 3; break;                    /* port unreachable */
        default: code = 13; break;                  /* prohibited, policy, reject route */
        }
    } else if (h[0] == 2) {
        kind = ICMP_K_FRAG;
        mtu = ((__u32)h[4] << 24) | ((__u32)h[5] << 16) | ((__u32)h[6] << 8) | h[7];
    } else if (h[0] == 3 && h[1] == 0) {
        kind = ICMP_K_TTL;
    } else {
        return 0;
    }
    __u8 ip[40];
    if (bpf_skb_load_bytes(skb, 8, ip, 40))
        return 0;
    struct icmp_key k = {};
    k.family = AF_INET6;
    k.proto = ip[6];
    __builtin_memcpy(k.laddr, ip + 8, 16);
    __builtin_memcpy(k.raddr, ip + 24, 16);
    if (quoted_ports(skb, 48, &k))
        return 0;
    icmp_error(&k, kind, code, mtu);
    return 0;
}
