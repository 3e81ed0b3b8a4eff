/* meshnode sensor: maps shared by every concern, then one file per concern.
 * Compiled by probes/_loader.py with -I<probes> and -D options (see the loader's cflags). */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <net/dropreason.h>  /* only so the kfree_skb tracepoint struct has its enum type */
#include "meshnode.h"

/* bcc 0.26 declares bpf_get_socket_cookie as returning u32, truncating cookies: declare it right */
static __u64 (*mn_socket_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;

#ifndef TCP_MAX_FLOWS
#define TCP_MAX_FLOWS 65536
#endif
#ifndef UDP_MAX_FLOWS
#define UDP_MAX_FLOWS 65536
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 2048
#endif

#ifndef TCP_FLOWS_FLAGS
#define TCP_FLOWS_FLAGS 0           /* or BPF_F_NO_PREALLOC: ProbeConfig.tcp_prealloc */
#endif

/* socket address -> flow (meshnode.h) */
BPF_F_TABLE("hash", __u64, struct tcp_flow, tcp_flows, TCP_MAX_FLOWS, TCP_FLOWS_FLAGS);
BPF_HASH(udp_flows, struct udp_key, struct udp_flow, UDP_MAX_FLOWS);
BPF_HASH(pending, struct pending_key, struct pending_val, 8192);
BPF_HASH(listeners, struct pending_key, __u32, 4096);      /* (netns, lport) -> tgid that listened */
BPF_TABLE("lru_hash", __u32, struct owner, comms, 16384);     /* tgid -> comm */
BPF_HASH(drops, struct drop_key, __u64, 16384);
BPF_PERCPU_ARRAY(counters, __u64, C_NCOUNTERS);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#ifdef SCOPED
BPF_CGROUP_ARRAY(scope_cg, 1);
#endif

static __always_inline void count(int idx)
{
    __u64 *v = counters.lookup(&idx);
    if (v)
        (*v)++;
}

/* Remember a task group's comm, in process context (the current task is the socket's user). */
static __always_inline void note_comm(__u32 tgid)
{
    if (comms.lookup(&tgid))
        return;
    struct owner n = {.tgid = tgid};
    bpf_get_current_comm(n.comm, sizeof(n.comm));
    comms.update(&tgid, &n);
}

/* Emit one ring-buffer record about a flow (a copy of it, and its owner's comm). Records are per flow
 * or per rare event, never per packet. */
static __always_inline void emit(__u32 kind, __u64 cookie, __u64 sk, struct tcp_flow *f, __u64 value,
                                 __u64 value2)
{
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    if (!e) {
        count(C_RINGBUF_FULL);
        return;
    }
    /* every byte written once: the ring's memory holds older records */
    e->kind = kind;
    e->pad = 0;
    e->ts_ns = bpf_ktime_get_ns();
    e->cookie = cookie;
    e->sk = sk;
    e->value = value;
    e->value2 = value2;
    struct owner *c = 0;
    if (f) {
        __builtin_memcpy(&e->flow, f, sizeof(*f));
        __u32 pid = f->pid;
        c = comms.lookup(&pid);
    } else {
        __builtin_memset(&e->flow, 0, sizeof(e->flow));
    }
    if (c)
        __builtin_memcpy(e->comm, c->comm, 16);
    else
        __builtin_memset(e->comm, 0, 16);
    events.ringbuf_submit(e, 0);
    count(C_EVENTS);
}

#include "dns.bpf.c"
#include "tcp_flows.bpf.c"
#include "udp_flows.bpf.c"
#include "owners.bpf.c"
#include "procs.bpf.c"
#include "drops.bpf.c"
#include "icmp.bpf.c"
#include "refused.bpf.c"
