/* Process attribution and application byte counts from tracepoints that fire in process context.
 * sock_ops and cgroup-skb often run in softirq, where the current task is whoever was interrupted; these
 * record who really read or wrote, and how many bytes the application moved (connect callers are noted by
 * sock_ops' CONNECT_CB, which runs inside connect(2), or on kernels before 6.16 here). A tracked TCP
 * socket is found by its address, the key of tcp_flows (rows are made by sock_ops), which also scopes
 * this work to the sensor's cgroup for free. */

#define MN_MSG_PEEK 2

static __always_inline int in_scope(void)
{
#ifdef SCOPED
    return scope_cg.check_current_task(0) == 1;
#else
    return 1;
#endif
}

#ifdef HAVE_SOCK_LENGTH  /* sock_send_length and sock_recv_length came together (Linux 6.4) */
/* One call's part in the flow's exchanges (meshnode.h): the clock is read only when an exchange opens or
 * closes, twice an exchange, not on every call. Times are microseconds modulo 2^32 (xchg_us): a duration
 * is the difference of two, exact below 71.6 minutes. Not atomic: two threads racing on one socket can
 * lose one exchange's timing, never its bytes; an ACK (softirq) racing a close can leave one exchange
 * unsplit. */
static __always_inline void exchange(struct tcp_flow *f, int tx)
{
    int opens = tx == !(f->flags & F_INBOUND);
    __u32 began = f->xchg_us;
    if (opens) {
        if (!began) {
            __u32 now_us = bpf_ktime_get_ns() / 1000;
            f->acked_us = 0;
            f->xchg_us = now_us ? now_us : 1;  /* 0 means none open: one reading in 2^32 is 1 us late */
        }
        return;
    }
    if (!began)
        return;
    __u32 d = (__u32)(bpf_ktime_get_ns() / 1000) - began;
    __u32 acked = f->acked_us;
    f->xchg_us = 0;
    f->answer_sum_us += acked < d ? d - acked : 0;  /* no ACK seen: all of it (a server's own exchanges) */
    if (!f->resp_count)
        f->first_byte_us = d;
    f->resp_count++;
    f->resp_sum_us += d;
    if (d > f->resp_max_us)
        f->resp_max_us = d;
}

static __always_inline void app_bytes(__u64 sk, __u16 protocol, int ret, int tx)
{
    if (ret <= 0)
        return;
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (protocol == IPPROTO_UDP) {
        /* UDP bytes come exact from the datagrams; here only the sender's comm is worth keeping */
        if (in_scope())
            note_comm(tgid);
        return;
    }
    if (protocol != IPPROTO_TCP)
        return;
    struct tcp_flow *f = tcp_flows.lookup(&sk);  /* the tracepoint knows no cookie to check */
    if (!f)
        return;
    if (tx)
        __sync_fetch_and_add(&f->bytes_tx, ret);
    else
        __sync_fetch_and_add(&f->bytes_rx, ret);
    exchange(f, tx);
#ifdef HAVE_SOCKOPS_COMM
    if (f->pid != tgid) {
        f->pid = tgid;  /* the owner is whoever last moved data: the accepting worker, not the listener */
        note_comm(tgid);
    }  /* else its comm was noted when it became the owner (connect, listen or an earlier read) */
#else
    if (f->pid != tgid)
        f->pid = tgid;
    note_comm(tgid);  /* listen and connect could not note it (sock_ops has no comm helper before 6.16) */
#endif
}

TRACEPOINT_PROBE(sock, sock_send_length)
{
    app_bytes((__u64)args->sk, args->protocol, args->ret, 1);
    return 0;
}

TRACEPOINT_PROBE(sock, sock_recv_length)
{
    if (args->flags & MN_MSG_PEEK)
        return 0;
    app_bytes((__u64)args->sk, args->protocol, args->ret, 0);
    return 0;
}
#endif

#ifndef HAVE_SOCKOPS_COMM
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    /* CLOSE -> SYN_SENT happens inside connect(2): remember the caller's comm (sock_ops notes it itself
     * where it may call bpf_get_current_comm: HAVE_SOCKOPS_COMM) */
    if (args->protocol != IPPROTO_TCP || args->newstate != 2 /* TCP_SYN_SENT */)
        return 0;
    if (in_scope())
        note_comm(bpf_get_current_pid_tgid() >> 32);
    return 0;
}
#endif
