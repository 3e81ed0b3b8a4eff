/* Inbound attempts to closed ports: a TCP segment answered by a RST because no socket wanted it
 * (tcp:tcp_send_reset without a socket), a UDP datagram answered by ICMP port unreachable (icmp:icmp_send,
 * IPv4). Both tracepoints fire only when the host refuses, so ordinary traffic pays nothing; their
 * arguments carry the addresses and ports (tcp_send_reset's already turned to the RST's direction: source
 * is this host).
 *
 * Aggregated per (source, local address, protocol) in the kernel: a sweep of every port from one source is
 * one entry, its attempts counted and its ports kept as a 1024-bit map (bit port % 1024). User space ends an
 * entry once its source has been quiet a moment (one inbound `refused` flow record per source and burst).
 * The tracepoints name no network namespace: user space keeps the entries of its own addresses. icmp_send
 * fires only for errors the kernel's ICMP rate limit lets out (a remote source gets 6 at once, then one a
 * second): UDP attempts beyond that are only in kfree_skb's NO_SOCKET drops, which name no address. */

#ifndef REFUSED_MAX_SOURCES
#define REFUSED_MAX_SOURCES 4096
#endif

/* not preallocated: memory for the sources seen, not for REFUSED_MAX_SOURCES */
BPF_F_TABLE("hash", struct refused_key, struct refused_val, refused, REFUSED_MAX_SOURCES, BPF_F_NO_PREALLOC);

static __always_inline void refused_attempt(struct refused_key *k, __u16 lport, __u16 rport)
{
    count(C_REFUSED);
    __u64 now = bpf_ktime_get_ns();
    struct refused_val *v = refused.lookup(k);
    if (!v) {
        struct refused_val n = {.first_ns = now};
        if (refused.insert(k, &n) == -E2BIG) {
            count(C_REFUSED_MAP_FULL);
            return;
        }
        v = refused.lookup(k);
        if (!v)
            return;
    }
    __sync_fetch_and_add(&v->attempts, 1);
    v->last_ns = now;
    v->lport = lport;
    v->rport = rport;
    /* a plain OR: an atomic one needs BPF v3 atomics; two CPUs setting bits of one word for one source at
     * the same instant may lose one, which only lowers ports_probed */
    v->ports[(lport >> 6) & (REFUSED_PORT_WORDS - 1)] |= 1ULL << (lport & 63);
}

#ifdef HAVE_TCP_SEND_RESET
/* the tracepoint's `reason` argument has this type (net/rstreason.h, Linux 6.10), which the build headers
 * lack; it is an int-sized enum and is not read */
enum sk_rst_reason { MN_SK_RST_REASON_UNREAD };

TRACEPOINT_PROBE(tcp, tcp_send_reset)
{
    if (args->skaddr)
        return 0;  /* a socket's own reset: its flow counts it (resets_tx) */
    struct refused_key k = {.proto = IPPROTO_TCP};
    __u8 s[28], d[28];  /* struct sockaddr_in / sockaddr_in6: family, port (network order), address */
    __builtin_memcpy(s, args->saddr, 28);
    __builtin_memcpy(d, args->daddr, 28);
    __u16 family = s[0] | (s[1] << 8);
    if (family == AF_INET) {
        __builtin_memcpy(k.laddr, s + 4, 4);
        __builtin_memcpy(k.raddr, d + 4, 4);
    } else if (family == AF_INET6) {
        __builtin_memcpy(k.laddr, s + 8, 16);
        __builtin_memcpy(k.raddr, d + 8, 16);
    } else {
        return 0;
    }
    k.family = family;
    refused_attempt(&k, (s[2] << 8) | s[3], (d[2] << 8) | d[3]);
    return 0;
}
#endif

#ifdef HAVE_ICMP_SEND
TRACEPOINT_PROBE(icmp, icmp_send)
{
    if (args->type != 3 || args->code != 3 || !args->dport)
        return 0;  /* only port unreachable about a UDP datagram (the tracepoint's ports are 0 otherwise) */
    struct refused_key k = {.proto = IPPROTO_UDP, .family = AF_INET};
    __builtin_memcpy(k.laddr, args->daddr, 4);  /* the refused datagram's destination: this host */
    __builtin_memcpy(k.raddr, args->saddr, 4);
    refused_attempt(&k, args->dport, args->sport);
    return 0;
}
#endif
