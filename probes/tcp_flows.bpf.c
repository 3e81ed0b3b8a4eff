/* TCP flows from cgroup sock_ops: lifecycle, outcome, exact byte/segment totals, RTT, cwnd, retransmits.
 * Attached to the scope cgroup, so it sees exactly that subtree's sockets (inbound children inherit the
 * listener's cgroup). Everything comes from bpf_sock_ops context fields, which the verifier rewrites for
 * the running kernel. */

#ifndef RTT_SHIFT_MIN_US
#define RTT_SHIFT_MIN_US 2000
#endif
#ifndef BURST_THRESHOLD
#define BURST_THRESHOLD 3
#endif
#ifndef BURST_WINDOW_MS
#define BURST_WINDOW_MS 1000
#endif

/* A context load at a constant offset, which the verifier requires; plain array reads let clang compute
 * a pointer into the context first ("dereference of modified ctx ptr"). */
#define CTX_U32(dst, ctx, field) \
    asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(dst) : "r"(ctx), "i"(__builtin_offsetof(struct bpf_sock_ops, field)))

/* exchange times are us modulo 2^32 (meshnode.h): a difference this large is a reading taken just before
 * the exchange began (a race with the opener), not 71 minutes after */
#define XCHG_BEFORE 0xfff00000u

#define MN_TCP_SYN_SENT 2
#define MN_TCP_CLOSE 7

/* Fills the flow's addresses, ports and family flag; returns the family. */
static __always_inline __u32 fill_tuple(struct bpf_sock_ops *skops, struct tcp_flow *f)
{
    /* every context field is read unconditionally, then chosen: a branch per family lets the compiler
     * merge the two loads into one computed ctx pointer, which the verifier rejects */
    __u32 family = skops->family;
    __u32 s4 = skops->local_ip4, d4 = skops->remote_ip4;
    __u32 s6[4], d6[4];
    CTX_U32(s6[0], skops, local_ip6[0]); CTX_U32(s6[1], skops, local_ip6[1]);
    CTX_U32(s6[2], skops, local_ip6[2]); CTX_U32(s6[3], skops, local_ip6[3]);
    CTX_U32(d6[0], skops, remote_ip6[0]); CTX_U32(d6[1], skops, remote_ip6[1]);
    CTX_U32(d6[2], skops, remote_ip6[2]); CTX_U32(d6[3], skops, remote_ip6[3]);
    f->sport = skops->local_port;
    f->dport = bpf_ntohl(skops->remote_port) & 0xffff;
    if (family == AF_INET) {
        __builtin_memcpy(f->saddr, &s4, 4);
        __builtin_memcpy(f->daddr, &d4, 4);
    } else {
        f->flags |= F_INET6;
        __builtin_memcpy(f->saddr, s6, 16);
        __builtin_memcpy(f->daddr, d6, 16);
    }
    return family;
}


static __always_inline void sample(struct bpf_sock_ops *skops, struct tcp_flow *f, __u64 now)
{
    f->last_ns = now;
    f->segs_out = skops->segs_out;
    f->segs_in = skops->segs_in;
    f->total_retrans = skops->total_retrans;
    __u32 cwnd = skops->snd_cwnd;
    if (cwnd) {
        f->cwnd = cwnd;
        if (!f->cwnd_min || cwnd < f->cwnd_min)
            f->cwnd_min = cwnd;
        if (cwnd > f->cwnd_max)
            f->cwnd_max = cwnd;
    }
}

static __always_inline void on_rtt(struct bpf_sock_ops *skops, struct tcp_flow *f, __u64 sk)
{
    __u32 srtt = skops->srtt_us >> 3;
    if (!srtt)
        return;
    f->srtt_us = srtt;
    if (srtt > f->srtt_max_us)
        f->srtt_max_us = srtt;
    f->rtt_min_us = skops->rtt_min;
    __u32 ref = f->rtt_ref_us;
    if (!ref) {
        f->rtt_ref_us = srtt;
        return;
    }
    /* a shift: the smoothed RTT doubled or halved against the last reference, by at least the floor */
    __u32 diff = srtt > ref ? srtt - ref : ref - srtt;
    if (diff >= RTT_SHIFT_MIN_US && (srtt >= 2 * ref || 2 * srtt <= ref)) {
        f->rtt_ref_us = srtt;
        emit(EV_RTT_SHIFT, f->cookie, sk, f, srtt, ref);
    }
}

static __always_inline void on_retrans(struct tcp_flow *f, __u64 sk, __u64 now)
{
    __u32 now_ms = now / 1000000;
    if (now_ms - f->burst_start_ms > BURST_WINDOW_MS) {
        f->burst_start_ms = now_ms;
        f->burst = 0;
    }
    if (f->burst < 255)  /* BURST_THRESHOLD <= 255 (the loader checks) */
        f->burst++;
    if (f->burst == BURST_THRESHOLD)
        emit(EV_RETRANS_BURST, f->cookie, sk, f, f->burst, 0);
}

/* The row of the socket at this address, if it is this socket's (cookie checked). */
static __always_inline struct tcp_flow *flow_of(__u64 sk, __u64 cookie)
{
    struct tcp_flow *f = tcp_flows.lookup(&sk);
    return f && f->cookie == cookie ? f : 0;
}

/* Start tracking a socket under its address. A row already there is a flow that ended: another socket's,
 * freed without the destroy we saw (its address is reused now), or this socket's own failed connect, which
 * Linux lets it make again (same address, same cookie). It is emitted, not lost, and not counted as a full
 * map. */
static __always_inline int track(struct bpf_sock_ops *skops, __u64 sk, struct tcp_flow *f)
{
    /* insert first: the address is nearly always free, and a lookup before every insert cost ~200 ns of
     * the ~1.2 us a connect took here (a cold bucket, then walked again by the insert) */
    int err = tcp_flows.insert(&sk, f);
    if (err == -EEXIST) {
        struct tcp_flow *old = tcp_flows.lookup(&sk);
        if (old) {
            emit(EV_TCP_END, old->cookie, sk, old, 0, 0);
            tcp_flows.delete(&sk);
            err = tcp_flows.insert(&sk, f);
        }
    }
    if (err) {
        count(C_TCP_MAP_FULL);
        return -1;
    }
    count(C_TCP_OPENED);
    bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG |
                                         BPF_SOCK_OPS_RETRANS_CB_FLAG);
    return 0;
}

/* TCP_CLOSE: the outcome and the kernel's counters are final now. The record is emitted when the socket
 * is destroyed (tcp_destroy_sock), because the application may still read queued data after CLOSE
 * (e.g. FIN_WAIT2 -> TIME_WAIT with unread bytes), and those reads belong to the flow. */
static __always_inline void closed(struct bpf_sock_ops *skops, struct tcp_flow *f, __u32 oldstate, __u64 now)
{
    sample(skops, f, now);
    f->flags |= F_CLOSED;
    if (f->outcome == OC_IN_PROGRESS) {
        if (oldstate == MN_TCP_SYN_SENT)
            f->outcome = f->resets_rx ? OC_REFUSED : OC_TIMEOUT;
        else
            f->outcome = OC_RESET;
    }
}

int mn_sockops(struct bpf_sock_ops *skops)
{
    __u32 op = skops->op;

    /* Most runs are callbacks this program does not use (TIMEOUT_INIT, RWND_INIT, NEEDS_ECN, state
     * changes other than to CLOSE): about half of its ~10 runs a flow. They leave before any helper. */
    switch (op) {
    case BPF_SOCK_OPS_TCP_LISTEN_CB:
    case BPF_SOCK_OPS_TCP_CONNECT_CB:
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
    case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
    case BPF_SOCK_OPS_RTT_CB:
    case BPF_SOCK_OPS_RETRANS_CB:
        break;
    case BPF_SOCK_OPS_STATE_CB:
        if (skops->args[1] != MN_TCP_CLOSE)
            return 1;
        break;
    default:
        return 1;
    }
    __u64 now = bpf_ktime_get_ns();

    switch (op) {
    case BPF_SOCK_OPS_TCP_LISTEN_CB: {
        /* process context: remember who listens on (netns, port) for the inbound children */
        struct pending_key k = {};
        k.netns = bpf_get_netns_cookie(skops);
        k.lport = skops->local_port;
        __u32 tgid = bpf_get_current_pid_tgid() >> 32;
        listeners.update(&k, &tgid);
#ifdef HAVE_SOCKOPS_COMM
        note_comm(tgid);  /* inbound flows' owner until a reader shows */
#endif
        return 1;
    }
    case BPF_SOCK_OPS_TCP_CONNECT_CB: {
        /* process context (connect(2)): the caller owns the flow, and its comm is noted here where sock_ops
         * may call bpf_get_current_comm (Linux 6.16), else by the inet_sock_set_state tracepoint */
        struct tcp_flow f = {};
        __u32 family = fill_tuple(skops, &f);
        f.cookie = mn_socket_cookie(skops);
        f.netns = bpf_get_netns_cookie(skops);
        /* the name resolved to the peer before the flow began: one map lookup a connect, no join later */
        f.name_id = dns_name_of(f.netns, family, f.daddr);
        f.cgroup_id = bpf_get_current_cgroup_id();
        f.start_ns = now;
        f.last_ns = now;
        f.pid = bpf_get_current_pid_tgid() >> 32;
        f.outcome = OC_IN_PROGRESS;
#ifdef HAVE_SOCKOPS_COMM
        note_comm(f.pid);
#endif
        track(skops, (__u64)skops->sk, &f);
        return 1;
    }
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
        __u64 sk = (__u64)skops->sk;
        struct tcp_flow *f = flow_of(sk, mn_socket_cookie(skops));
        if (!f)
            return 1;
        f->outcome = OC_ESTABLISHED;
        f->connect_us = (now - f->start_ns) / 1000;
        sample(skops, f, now);
        on_rtt(skops, f, sk);
        return 1;
    }
    case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: {
        /* softirq: the current task is not the owner; the listener's owner stands in until a reader shows */
        struct tcp_flow f = {};
        struct pending_key k = {};
        k.family = fill_tuple(skops, &f);
        f.cookie = mn_socket_cookie(skops);
        f.netns = k.netns = bpf_get_netns_cookie(skops);
        f.flags |= F_INBOUND | F_SYNACK;
        f.outcome = OC_ESTABLISHED;
        f.name_id = dns_name_of(f.netns, k.family, f.daddr);
        f.start_ns = now;
        __builtin_memcpy(k.laddr, f.saddr, 16);
        __builtin_memcpy(k.raddr, f.daddr, 16);
        k.lport = f.sport;
        k.rport = f.dport;
        struct pending_val *p = pending.lookup(&k);
        if (p) {
            f.start_ns = p->syn_ns;
            f.cgroup_id = p->cgroup_id;
            f.connect_us = (now - p->syn_ns) / 1000;
            pending.delete(&k);
        }
        struct pending_key lk = {};
        lk.netns = k.netns;
        lk.lport = k.lport;
        __u32 *tgid = listeners.lookup(&lk);
        if (tgid)
            f.pid = *tgid;
        sample(skops, &f, now);
        f.synack_retrans = f.total_retrans;  /* the child inherits the request's SYN-ACK retransmits */
        track(skops, (__u64)skops->sk, &f);
        return 1;
    }
    case BPF_SOCK_OPS_RTT_CB: {
        __u64 sk = (__u64)skops->sk;
        struct tcp_flow *f = flow_of(sk, mn_socket_cookie(skops));
        if (!f)
            return 1;
        sample(skops, f, now);
        on_rtt(skops, f, sk);
        /* an RTT sample is an ACK of new data: during an exchange, the peer has the request up to here */
        __u32 began = f->xchg_us;
        if (began) {
            /* `now` was read before an exchange that opened since on another CPU: a few us "before" it */
            __u32 us = (__u32)(now / 1000) - began;
            if (us < XCHG_BEFORE)
                f->acked_us = us ? us : 1;
        }
        return 1;
    }
    case BPF_SOCK_OPS_RETRANS_CB: {
        __u64 sk = (__u64)skops->sk;
        struct tcp_flow *f = flow_of(sk, mn_socket_cookie(skops));
        if (f)
            on_retrans(f, sk, now);
        return 1;
    }
    case BPF_SOCK_OPS_STATE_CB: {  /* to CLOSE (checked above) */
        struct tcp_flow *f = flow_of((__u64)skops->sk, mn_socket_cookie(skops));
        if (f)
            closed(skops, f, skops->args[0], now);
        return 1;
    }
    }
    return 1;
}

/* The socket is gone: emit the flow's one lifecycle record and forget it. Whatever row is at this
 * address ends here (one of another cookie would be a socket freed unseen: it ended too). */
TRACEPOINT_PROBE(tcp, tcp_destroy_sock)
{
    __u64 sk = (__u64)args->skaddr;
    struct tcp_flow *f = tcp_flows.lookup(&sk);
    if (!f)
        return 0;
    if (!(f->flags & F_CLOSED) && f->outcome == OC_IN_PROGRESS)
        f->outcome = OC_TIMEOUT;  /* destroyed without a state change we saw: the SYN went unanswered */
    emit(EV_TCP_END, f->cookie, sk, f, 0, 0);
    tcp_flows.delete(&sk);
    return 0;
}

/* A RST received on a full socket: counts toward refused (in SYN_SENT) and the flow's resets. */
TRACEPOINT_PROBE(tcp, tcp_receive_reset)
{
    __u64 sk = (__u64)args->skaddr;
    struct tcp_flow *f = flow_of(sk, args->sock_cookie);
    if (!f)
        return 0;
    f->resets_rx++;
    emit(EV_RESET_RX, f->cookie, sk, f, 0, 0);
    return 0;
}

#ifdef HAVE_TCP_PROBE
/* Zero window: the peer advertised no room. Early exit keeps this cheap on every other segment. */
TRACEPOINT_PROBE(tcp, tcp_probe)
{
    if (args->snd_wnd != 0)
        return 0;
    __u64 sk = (__u64)args->skaddr;
    struct tcp_flow *f = flow_of(sk, args->sock_cookie);
    if (!f || (f->flags & F_ZERO_WINDOW))
        return 0;
    f->flags |= F_ZERO_WINDOW;
    emit(EV_ZERO_WINDOW, f->cookie, sk, f, 0, 0);
    return 0;
}
#endif
