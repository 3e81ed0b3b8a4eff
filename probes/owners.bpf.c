/* Process attribution and application byte counts from tracepoints that fire in process context.
 * sock_ops and cgroup-skb often run in softirq, where the current task is whoever was interrupted; these
 * record who really read or wrote, and how many bytes the application moved (connect callers are noted by
 * sock_ops' CONNECT_CB, which runs inside connect(2), or on kernels before 6.16 here). A tracked TCP
 * socket is found through its storage (made by sock_ops), which also scopes this work to the sensor's
 * cgroup for free. */

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
/* BTF tracepoints (tp_btf, loaded by probes/_loader.py, which checks their arguments in the running kernel's
 * BTF): sock_send_length(struct sock *sk, int ret, int flags) and sock_recv_length(same). Every socket
 * family passes here; a tracked TCP socket has a flow in its storage, and nothing else does. */
static __always_inline void app_bytes(void *sk, int ret, int tx)
{
    if (ret <= 0)
        return;
    struct tcp_sock_state *st = sock_flow(sk);
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!st) {
#ifndef HAVE_SOCKOPS_COMM
        /* UDP senders' comm: cgroup-skb cannot call bpf_get_current_comm before Linux 6.16 */
        if (tx && in_scope())
            note_comm(tgid);
#endif
        return;
    }
    struct tcp_flow *f = &st->flow;
    if (tx)
        __sync_fetch_and_add(&f->bytes_tx, ret);
    else
        __sync_fetch_and_add(&f->bytes_rx, ret);
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

int mn_sock_send_length(__u64 *ctx)
{
    app_bytes((void *)ctx[0], (int)ctx[1], 1);
    return 0;
}

int mn_sock_recv_length(__u64 *ctx)
{
    if ((int)ctx[2] & MN_MSG_PEEK)
        return 0;
    app_bytes((void *)ctx[0], (int)ctx[1], 0);
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
