/* Shared kernel/user structs of meshnode's probes. probes/_records.py mirrors these with ctypes.
 * Every field is filled from tracepoint arguments, BPF context fields or helper results: never from a
 * kernel struct offset (the build headers are not the running kernel's). */
#ifndef MESHNODE_H
#define MESHNODE_H

#define MN_OUT 1
#define MN_IN 2

/* outcomes (values match meshnode.v1.Outcome) */
#define OC_ESTABLISHED 1
#define OC_REFUSED 2
#define OC_TIMEOUT 3
#define OC_RESET 4
#define OC_IN_PROGRESS 7

/* tcp_flow.flags */
#define F_ZERO_WINDOW 1
#define F_CLOSED 2
#define F_INET6 4               /* family AF_INET6 (else AF_INET) */
#define F_INBOUND 8             /* direction inbound (else outbound) */
#define F_SYNACK 16             /* a passive child: 1 + synack_retrans SYN-ACKs went out before segs_out counts */

/* ring buffer record kinds */
#define EV_TCP_END 1
#define EV_HALFOPEN_RESET 2
#define EV_RETRANS_BURST 3
#define EV_RTT_SHIFT 4
#define EV_RESET_RX 5
#define EV_RESET_TX 6
#define EV_UDP_RELEASE 7
#define EV_ZERO_WINDOW 8
#define EV_ICMP 9               /* value: proto << 24 | ICMP_K_* << 16 | ICMPv4-numbered code; value2: MTU */

/* per-CPU counters: nothing is lost silently */
#define C_RINGBUF_FULL 0
#define C_TCP_MAP_FULL 1
#define C_UDP_MAP_FULL 2
#define C_PENDING_MAP_FULL 3
#define C_TRACKED_MAP_FULL 4     /* unused since `tracked` merged into tcp_flows; the index stays */
#define C_DROP_MAP_FULL 5
#define C_EVENTS 6
#define C_TCP_OPENED 7
#define C_PROC_MAP_FULL 8        /* a process name the LRU map could not take (procs.bpf.c) */
#define C_ICMP_MAP_FULL 9       /* an ICMP error for a flow the icmp_flows map could not take */
#define C_REFUSED_MAP_FULL 10   /* a refused inbound attempt from a source the refused map could not take */
#define C_ICMP_ERRORS 11        /* ICMP errors about TCP/UDP received (joined to a flow or not) */
#define C_REFUSED 12            /* refused inbound attempts seen (before aggregation) */
#define C_DNS_ANSWERS 13         /* DNS answers parsed (dns.bpf.c) */
#define C_DNS_MALFORMED 14       /* DNS answers refused part-way: a compression loop, an overlong name, a bad label */
#define C_DNS_TRUNCATED 15       /* DNS answers parsed only in part: cut short, or past the parse buffer or budget */
#define C_DNS_TXN_MAP_FULL 16    /* DNS transactions the dns_txns map could not take until the next drain */
#define C_DNS_ADDRS 17           /* addresses written to dns_addrs (LRU: the oldest give way past its bound) */
#define C_DNS_NAME_COLLISIONS 18 /* a question whose 64-bit name hash was another name's: it took a new id */
#define C_DNS_IDS_SPENT 19       /* questions left without a name id: all 2^32 - 1 were handed out since load */
#define C_NCOUNTERS 20

/* One TCP socket, keyed by its kernel address (created at connect or at passive establishment).
 *
 * The address, not the cookie, is the key because the syscall tracepoints (sock_send_length/recv_length)
 * know only the address: one map then serves every program, where a second `tracked` map (address ->
 * cookie, 80 B a flow) was needed before. The cookie is in the value, and every program that knows the
 * cookie checks it, so a row left by a socket whose destroy was not seen is never taken for a new socket
 * at the same address (track() ends such a row when the address is reused).
 *
 * Kernel memory per flow is one kmalloc object of this value + 8 B key + 48 B hash element header + 8 B
 * allocator list node (the map is not preallocated), + 16 B of bucket per slot, so every byte here counts
 * (bench/RESULTS.md, Sensor): no field is stored that a record does not need or that the kernel logic does
 * not read, counters are as wide as the kernel's own (u32 segs/retrans/cwnd/rtt, u64 bytes), family and
 * direction are flag bits. 192 B fills the 256 B kmalloc class exactly: one byte more and each live flow
 * takes a 512 B object. So the DNS name id is 32 bits (ids are handed out counting up, never reused:
 * dns.bpf.c), and the open exchange's start is the monotonic clock in microseconds modulo 2^32: the
 * difference of two such readings is exact for any exchange shorter than 2^32 us (71.6 minutes, the range
 * of the u32 durations it ends up in), whatever the flow's age. An exchange open longer than that on a
 * flow older than that would be timed modulo 71.6 minutes (a 64-bit start saturated it at 71.6).
 *
 * Timing of exchanges (owners.bpf.c, on the same sock_send_length/sock_recv_length calls that count bytes):
 * an exchange opens at the first byte this end's role sends first (outbound: a write; inbound: a read)
 * while none is open, and closes at the first byte the other way (outbound: a read; inbound: a write). A
 * client's exchange is its request to the first byte of the answer as its application read it; a server's,
 * the request read to the first byte of its answer written (its own service time, without the network).
 * An exchange splits at the last ACK of new data while it is open: before, the path was carrying the
 * request; after, the peer had it and was answering. */
struct tcp_flow {
    __u64 cookie;           /* socket cookie: the flow's id */
    __u64 netns;            /* netns cookie */
    __u64 cgroup_id;
    __u64 start_ns;         /* monotonic: SYN sent (outbound) or SYN received (inbound, else accept) */
    __u64 last_ns;
    __u64 bytes_tx;         /* payload the application wrote (sock_send_length), exact */
    __u64 bytes_rx;         /* payload the application read (sock_recv_length), exact */
    __u32 segs_out;
    __u32 segs_in;
    __u32 total_retrans;
    __u32 connect_us;
    __u32 srtt_us;
    __u32 srtt_max_us;
    __u32 rtt_min_us;       /* kernel's windowed min RTT: never 0 once an RTT was sampled */
    __u32 rtt_ref_us;       /* RTT at the last shift event: baseline for the next */
    __u32 cwnd;
    __u32 cwnd_min;
    __u32 cwnd_max;
    __u32 pid;
    __u32 burst_start_ms;
    __u16 resets_rx;
    __u16 resets_tx;
    __u16 sport;            /* host order */
    __u16 dport;            /* host order */
    __u8 burst;             /* retransmits in the current window; only compared with BURST_THRESHOLD */
    __u8 synack_retrans;    /* F_SYNACK: SYN-ACK retransmits (<= 255: the retry limits are u8) */
    __u8 outcome;
    __u8 flags;             /* F_* above */
    __u8 saddr[16];         /* IPv4 in the first 4 bytes */
    __u8 daddr[16];
    __u32 xchg_us;          /* the open exchange's start: monotonic us modulo 2^32 (never 0); 0 when none is open */
    __u32 name_id;          /* dns_names key of the name the host resolved to daddr before the flow began, or 0 */
    __u64 resp_sum_us;      /* closed exchanges: the sum of their durations */
    __u32 resp_count;       /* closed exchanges */
    __u32 resp_max_us;      /* the longest closed exchange */
    __u32 first_byte_us;    /* the first exchange: first request byte to the first byte back */
    __u32 acked_us;         /* the open exchange: its last ACK of new data (sock_ops RTT_CB), us after it began */
    __u64 answer_sum_us;    /* closed exchanges: the part after their last ACK, the peer's time to answer */
};

/* One UDP flow: a socket and one remote endpoint. */
struct udp_key {
    __u64 cookie;
    __u8 raddr[16];
    __u16 rport;            /* host order */
    __u16 family;
    __u32 pad;
};

struct udp_flow {
    __u64 sk;
    __u64 netns;
    __u64 cgroup_id;
    __u64 first_ns;
    __u64 last_ns;
    __u64 first_tx_ns;
    __u64 first_rx_ns;
    __u64 bytes_tx;
    __u64 bytes_rx;
    __u32 packets_tx;
    __u32 packets_rx;
    __u32 pid;
    __u16 lport;
    __u8 direction;
    __u8 pad;
    __u8 laddr[16];
    __u32 name_id;          /* as tcp_flow.name_id, for the remote address */
    __u32 pad2;
};

/* An inbound SYN seen on a listener, waiting for the handshake to complete. */
struct pending_key {
    __u64 netns;
    __u8 laddr[16];
    __u8 raddr[16];
    __u16 lport;
    __u16 rport;
    __u16 family;
    __u16 pad;
};

struct pending_val {
    __u64 syn_ns;
    __u64 cgroup_id;
};

/* A task group's comm, recorded in process context. */
struct owner {
    __u32 tgid;
    __u32 pad;
    char comm[16];
};

/* A process's name as `ps` shows it: its thread-group leader's comm (procs.bpf.c). */
struct proc_name {
    char comm[16];
};

struct drop_key {
    __u64 sk;               /* 0: no socket known */
    __u32 reason;
    __u32 pad;
};

/* One ring-buffer record. For EV_TCP_END, flow holds the final counters. */
struct event {
    __u32 kind;
    __u32 pad;
    __u64 ts_ns;
    __u64 cookie;
    __u64 sk;               /* the flow's socket address (its tcp_flows key): join key for drops */
    __u64 value;            /* burst size, new RTT, ... */
    __u64 value2;           /* previous RTT, ... */
    struct tcp_flow flow;
    char comm[16];
};

/* ICMP errors received (icmp.bpf.c): kinds in EV_ICMP's value */
#define ICMP_K_UNREACH 1
#define ICMP_K_FRAG 2
#define ICMP_K_TTL 3

/* A flow as this host sent it, from the header an ICMP error quotes: the join key to the flow record. */
struct icmp_key {
    __u8 laddr[16];
    __u8 raddr[16];
    __u16 lport;            /* host order */
    __u16 rport;            /* host order */
    __u8 proto;
    __u8 family;
    __u16 pad;
};

struct icmp_val {
    __u64 first_ns;
    __u64 last_ns;
    __u32 unreach;          /* destination unreachable, other than fragmentation needed */
    __u32 frag;             /* fragmentation needed / packet too big */
    __u32 ttl;              /* time exceeded in transit */
    __u32 mtu;              /* smallest next-hop MTU reported */
    __u32 code;             /* last unreachable code, ICMPv4 numbering */
    __u32 pad;
};

/* Inbound attempts to closed ports (refused.bpf.c), one entry per source and local address: a sweep of
 * every port costs one entry. */
struct refused_key {
    __u8 laddr[16];
    __u8 raddr[16];
    __u8 proto;
    __u8 family;
    __u16 pad;
};

#define REFUSED_PORT_WORDS 16   /* 1024 bits: bit (port % 1024) of each local port tried */

struct refused_val {
    __u64 first_ns;
    __u64 last_ns;
    __u32 attempts;
    __u16 lport;            /* last local port tried, host order */
    __u16 rport;            /* its remote port */
    __u64 ports[REFUSED_PORT_WORDS];
};

/* DNS (dns.bpf.c). A name's id is a number handed out at its first answer (counting up from 1, never
 * reused while the probes are loaded); names are found by the FNV-1a hash of their wire labels,
 * lower-cased, joined by '.'. */
#define DNS_NAME_LEN 256

/* An address a DNS answer gave, in one network namespace. */
struct dns_addr_key {
    __u64 netns;
    __u8 addr[16];          /* IPv4 in the first 4 bytes */
    __u16 family;
    __u16 pad[3];
};

struct dns_addr_val {
    __u64 resolved_ns;      /* monotonic: when the answer arrived */
    __u32 name_id;          /* the question's name (the name the application asked for, before any CNAME) */
    __u32 ttl;              /* the address record's TTL, seconds */
};

/* A name's text: lower-case, dotted, NUL-terminated (at most 253 characters). */
struct dns_name {
    char name[DNS_NAME_LEN];
};

/* A query waiting for its answer: the socket that sent it and the DNS id. */
struct dns_query_key {
    __u64 cookie;
    __u16 id;
    __u16 pad[3];
};

struct dns_query_val {
    __u64 sent_ns;
    __u32 pid;              /* the sender (egress runs in the sending syscall) */
    __u32 pad;
};

/* DNS transactions summed between two drains: one row per question, resolver and answer code. */
struct dns_txn_key {
    __u64 netns;
    __u32 name_id;          /* 0: the question took no id (C_DNS_IDS_SPENT) */
    __u32 pad;
    __u8 server[16];
    __u16 family;
    __u16 qtype;
    __u16 rcode;
    __u16 tcp;              /* 1: DNS over TCP */
};

struct dns_txn_val {
    __u64 first_ns;         /* monotonic, first answer */
    __u64 last_ns;
    __u64 latency_sum_ns;   /* over the answers whose query was seen */
    __u64 latency_max_ns;
    __u32 answers;
    __u32 timed;            /* answers whose query was seen (the latency's count) */
    __u32 pid;              /* the last query's sender */
    __u32 addrs;            /* address records of the question's CNAME chain, over the answers */
};

#endif
