/* DNS in the kernel: the host's answers (UDP and TCP port 53, seen by the cgroup-skb programs of
 * udp_flows.bpf.c) become a bounded map address -> name, and transactions summed per question, resolver
 * and answer code. Nothing is sent to user space per packet: flows take their name from dns_addrs when
 * they begin (tcp_flows.bpf.c, udp_flows.bpf.c), user space drains dns_txns once per poll and reads
 * names by id from dns_names.
 *
 * A name's id is 32 bits (it is in every flow's row, where 4 bytes more cost a kmalloc class: meshnode.h)
 * and handed out counting up at the name's first answer (dns_ids: 64-bit hash -> id), not a hash folded to
 * 32 bits: with 8,192 names held, a 32-bit hash would give two of them one id about once in a hundred
 * hosts, and a flow the other name. An id is never handed out twice, so a flow's id names its name for as
 * long as the text is held, here and in user space's cache. A question whose hash is held for another
 * text (a 64-bit collision, which hostile names can make) takes a new id and is counted
 * (C_DNS_NAME_COLLISIONS); past 2^32 - 1 ids, questions take none (C_DNS_IDS_SPENT) until the probes
 * are loaded again.
 *
 * The message is copied once into a per-CPU buffer and parsed there by one bounded loop, one step per
 * name byte or fixed-size field. Its state lives in the per-CPU map, not in registers: the verifier then
 * sees every iteration start from the same state and checks the loop body once per iteration, whatever
 * the branches (a loop per name inside a loop per record was exponential for it). bcc cannot pass
 * callbacks, so bpf_loop is not an option here. The parser is a program of its own (mn_dns_answer),
 * entered by tail call from the ingress program, DNS_STEPS steps a run and up to DNS_RUNS runs (it
 * tail-calls itself): each run is verified once. The scratch map is only used on ingress, which runs in
 * softirq with migration disabled, so two parses never share it.
 *
 * Hostile input: compression pointers must point below every position the name has visited (so a name
 * cannot loop) and at most DNS_MAX_JUMPS times; a name longer than 255 wire bytes or a reserved label type
 * stops the parse (C_DNS_MALFORMED). A message longer than the buffer, a record past its end, or one needing
 * more than DNS_STEPS x DNS_RUNS steps is parsed as far as it goes (C_DNS_TRUNCATED); records before the
 * stop stand. */

#ifndef DNS_ADDRS_MAX
#define DNS_ADDRS_MAX 16384
#endif
#ifndef DNS_NAMES_MAX
#define DNS_NAMES_MAX 8192
#endif
#ifndef DNS_QUERIES_MAX
#define DNS_QUERIES_MAX 4096
#endif
#ifndef DNS_TXNS_MAX
#define DNS_TXNS_MAX 4096
#endif

#define DNS_BUF 2048            /* power of two: indices are masked with DNS_BUF - 1 */
#ifndef DNS_STEPS
#define DNS_STEPS 64            /* steps a run of mn_dns_answer; a typical answer takes 60-200 in all */
#endif
#define DNS_RUNS 12             /* runs an answer: DNS_STEPS x DNS_RUNS = 768 steps at most */
#define DNS_MAX_RR 32           /* answer records looked at */
#define DNS_MAX_JUMPS 16
#define DNS_CHAIN 8             /* names of the CNAME chain from the question */
#define DNS_PORT 53
#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

enum { D_QNAME = 1, D_QFIXED, D_OWNER, D_FIXED, D_CNAME, D_DONE };

/* address -> the name resolved to it; LRU: past DNS_ADDRS_MAX the least recently resolved give way */
BPF_TABLE("lru_hash", struct dns_addr_key, struct dns_addr_val, dns_addrs, DNS_ADDRS_MAX);
/* name id -> text; LRU; user space keeps the names it has read */
BPF_TABLE("lru_hash", __u32, struct dns_name, dns_names, DNS_NAMES_MAX);
/* a name's hash -> its id; LRU, as dns_names: a name that left it takes a new id at its next answer */
BPF_TABLE("lru_hash", __u64, __u32, dns_ids, DNS_NAMES_MAX);
/* the last id handed out (u64: it stops at 2^32 - 1, never wraps to an id in use) */
BPF_ARRAY(dns_last_id, __u64, 1);
/* (socket, DNS id) -> when the query left; LRU: a query never answered gives way to newer ones */
BPF_TABLE("lru_hash", struct dns_query_key, struct dns_query_val, dns_queries, DNS_QUERIES_MAX);
/* transactions since the last drain; a full map is counted (C_DNS_TXN_MAP_FULL) */
BPF_HASH(dns_txns, struct dns_txn_key, struct dns_txn_val, DNS_TXNS_MAX);

struct dns_scratch {
    __u8 buf[DNS_BUF];
    struct dns_name text;       /* the question's name */
    __u64 chain[DNS_CHAIN];
    __u64 hash;                 /* of the name being walked */
    __u64 qname;                /* the question's name id (0: none could be given) */
    __u64 owner;                /* the current record's owner name */
    __u64 netns;
    __u64 now;
    __u32 len;                  /* message bytes in buf */
    __u32 pos;                  /* where the parse resumes after the current name */
    __u32 p;                    /* the walk's position inside the current name */
    __u32 lowest;               /* a compression pointer must point below this */
    __u32 name_len;             /* wire bytes of the name so far */
    __u32 label_left;
    __u32 text_len;
    __u32 state;
    __u32 rr_left;
    __u32 rdata;
    __u32 rdata_end;
    __u32 nchain;
    __u32 jumps;
    __u32 addrs;
    __u32 ttl;
    __s32 bad;                  /* -1 malformed, -2 past the end of what buf holds */
    __u16 rtype;
    __u16 qtype;
    /* the answer to parse, as the cgroup-skb program that found it hands it over */
    __u8 server[16];
    __u32 off;                  /* where the DNS header starts */
    __u32 avail;                /* bytes from there in this packet */
    __u32 msg_len;              /* the message's own length (UDP: the datagram's; TCP: its length prefix) */
    __u16 family;
    __u16 tcp;
    __u32 runs;                 /* runs of mn_dns_answer on this answer so far */
    __u32 cut;                  /* 1: the message was longer than what buf holds */
    __u16 id;
    __u16 rcode;
};

BPF_PERCPU_ARRAY(dns_scratch_map, struct dns_scratch, 1);
/* mn_dns_answer, entered by tail call: verified on its own, from one state, where inlined into the packet
 * programs its loop was checked once for every path that reached it (1M instructions at 16 steps) */
BPF_PROG_ARRAY(dns_progs, 1);

/* The parse state is read and written through a volatile pointer: every step loads it from the map and
 * stores it back, so no value is carried in a register from one iteration to the next and the verifier
 * finds each iteration's start equal to the last one's (one check of the body per iteration). */
typedef volatile struct dns_scratch dscratch;

static __always_inline __u8 dns_byte(dscratch *s, __u32 at)
{
    return s->buf[at & (DNS_BUF - 1)];
}

static __always_inline __u32 dns_u16(dscratch *s, __u32 at)
{
    return ((__u32)dns_byte(s, at) << 8) | dns_byte(s, at + 1);
}

static __always_inline void dns_name_start(dscratch *s, __u32 at, __u32 state)
{
    s->p = at;
    s->lowest = at;
    s->hash = FNV_OFFSET;
    s->name_len = 0;
    s->label_left = 0;
    s->jumps = 0;
    s->state = state;
}

/* One step of a name walk: 0 more to do, 1 the name is complete (s->pos is past it), -1 malformed,
 * -2 past the end of what the buffer holds. */
static __always_inline int dns_name_step(dscratch *s)
{
    __u32 p = s->p;
    if (p >= s->len)
        return -2;
    __u8 b = dns_byte(s, p);
    if (s->label_left) {
        if (b >= 'A' && b <= 'Z')
            b += 32;
        s->hash = (s->hash ^ b) * FNV_PRIME;
        if (s->state == D_QNAME) {
            __u32 t = s->text_len;
            s->text.name[t & (DNS_NAME_LEN - 1)] = (b > 32 && b < 127) ? b : '?';
            s->text_len = t + 1;
        }
        s->label_left--;
        s->p = p + 1;
        return 0;
    }
    if (b == 0) {
        if (!s->jumps)
            s->pos = p + 1;
        return 1;
    }
    if ((b & 0xC0) == 0xC0) {
        if (p + 1 >= s->len)
            return -2;
        __u32 to = ((__u32)(b & 0x3F) << 8) | dns_byte(s, p + 1);
        __u32 jumps = s->jumps;
        if (to >= s->lowest || jumps >= DNS_MAX_JUMPS)
            return -1;
        if (!jumps)
            s->pos = p + 2;
        s->jumps = jumps + 1;
        s->lowest = to;
        s->p = to;
        return 0;
    }
    if (b & 0xC0)
        return -1;  /* 0x40 and 0x80: label types nobody uses */
    __u32 len = s->name_len;
    if (len) {
        s->hash = (s->hash ^ '.') * FNV_PRIME;
        if (s->state == D_QNAME) {
            __u32 t = s->text_len;
            s->text.name[t & (DNS_NAME_LEN - 1)] = '.';
            s->text_len = t + 1;
        }
    }
    len += b + 1;
    if (len > 254)  /* with the root's zero byte: over 255, the most a name may have */
        return -1;
    s->name_len = len;
    s->label_left = b;
    s->p = p + 1;
    return 0;
}

/* The question's text (m->text) is the text dns_names holds for an id. */
static __always_inline int dns_same_text(struct dns_scratch *m, const struct dns_name *held)
{
    const __u64 *a = (const __u64 *)m->text.name, *b = (const __u64 *)held->name;
    __u64 diff = 0;
#pragma unroll
    for (int i = 0; i < DNS_NAME_LEN / 8; i++)
        diff |= a[i] ^ b[i];
    return !diff;
}

/* The id of the question's name (hash h, text in m->text): the one it was given, else a new one. A held
 * hash whose text left dns_names takes a new id too: the old one may have been a colliding name's. */
static __always_inline __u32 dns_name_id(struct dns_scratch *m, __u64 h)
{
    __u32 *known = dns_ids.lookup(&h);
    if (known) {
        __u32 id = *known;
        struct dns_name *held = dns_names.lookup(&id);
        if (held) {
            if (dns_same_text(m, held))
                return id;
            count(C_DNS_NAME_COLLISIONS);
        }
    }
    int zero = 0;
    __u64 *last = dns_last_id.lookup(&zero);
    if (!last)
        return 0;
    __u64 next = __sync_fetch_and_add(last, 1) + 1;
    if (next > 0xffffffffULL) {
        count(C_DNS_IDS_SPENT);
        return 0;
    }
    __u32 id = next;
    dns_names.update(&id, &m->text);
    dns_ids.update(&h, &id);
    return id;
}

static __always_inline int dns_in_chain(dscratch *s, __u64 h)
{
    /* unused slots hold 0, which no FNV-1a hash of a name is in practice */
    return (s->chain[0] == h) | (s->chain[1] == h) | (s->chain[2] == h) | (s->chain[3] == h) |
           (s->chain[4] == h) | (s->chain[5] == h) | (s->chain[6] == h) | (s->chain[7] == h);
}

/* The next answer record, or the end. */
static __always_inline void dns_next_rr(dscratch *s)
{
    __u32 left = s->rr_left;
    s->pos = s->rdata_end;
    if (left) {
        s->rr_left = left - 1;
        dns_name_start(s, s->rdata_end, D_OWNER);
    } else {
        s->state = D_DONE;
    }
}

/* An A or AAAA record of the question's chain: its address now names the question. */
static __always_inline void dns_note_addr(struct dns_scratch *s)
{
    struct dns_addr_key k = {};
    k.netns = s->netns;
    __u32 at = s->rdata;
    if (s->rtype == 1) {
        if (at > DNS_BUF - 4)
            return;
        __builtin_memcpy(k.addr, &s->buf[at], 4);
        k.family = AF_INET;
    } else {
        if (at > DNS_BUF - 16)
            return;
        __builtin_memcpy(k.addr, &s->buf[at], 16);
        k.family = AF_INET6;
    }
    struct dns_addr_val v = {.name_id = s->qname, .resolved_ns = s->now, .ttl = s->ttl};
    dns_addrs.update(&k, &v);
    count(C_DNS_ADDRS);
    s->addrs++;
}

/* One step of the parse; nonzero when it is over. */
static __always_inline int dns_step(struct dns_scratch *m)
{
    dscratch *s = m;
    __u32 state = s->state;
    if (state == D_QNAME || state == D_OWNER || state == D_CNAME) {
        int r = dns_name_step(s);
        if (r < 0) {
            s->bad = r;
            return 1;
        }
        if (r == 0)
            return 0;
        __u64 h = s->hash;
        if (state == D_QNAME) {
            s->qname = dns_name_id(m, h);  /* the text is complete: D_QNAME wrote it on the way */
            s->chain[0] = h;
            s->nchain = 1;
            s->state = D_QFIXED;
        } else if (state == D_OWNER) {
            s->owner = h;
            s->state = D_FIXED;
        } else {
            __u32 c = s->nchain;
            if (c < DNS_CHAIN) {
                s->chain[c & (DNS_CHAIN - 1)] = h;
                s->nchain = c + 1;
            }
            dns_next_rr(s);
        }
        return 0;
    }
    __u32 at = s->pos;
    if (state == D_QFIXED) {
        if (at + 4 > s->len) {
            s->bad = -2;
            return 1;
        }
        s->qtype = dns_u16(s, at);
        s->rdata_end = at + 4;
        dns_next_rr(s);
        return 0;
    }
    if (state != D_FIXED)
        return 1;  /* D_DONE */
    /* type, class, TTL, data length */
    if (at + 10 > s->len) {
        s->bad = -2;
        return 1;
    }
    __u32 rtype = dns_u16(s, at);
    __u32 rdlen = dns_u16(s, at + 8);
    s->rtype = rtype;
    s->ttl = (dns_u16(s, at + 4) << 16) | dns_u16(s, at + 6);
    s->rdata = at + 10;
    s->rdata_end = at + 10 + rdlen;
    if (at + 10 + rdlen > s->len) {
        s->bad = -2;
        return 1;
    }
    if (dns_in_chain(s, s->owner)) {
        if (rtype == 5) {  /* CNAME: its target joins the chain */
            dns_name_start(s, at + 10, D_CNAME);
            return 0;
        }
        if ((rtype == 1 && rdlen == 4) || (rtype == 28 && rdlen == 16))
            dns_note_addr(m);
    }
    dns_next_rr(s);
    return 0;
}

/* Sum one answer into dns_txns. */
static __always_inline void dns_txn(struct dns_txn_key *k, __u64 now, __u64 latency, __u32 pid, __u32 addrs)
{
    struct dns_txn_val *v = dns_txns.lookup(k);
    if (!v) {
        struct dns_txn_val n = {.first_ns = now};
        if (dns_txns.insert(k, &n) == -E2BIG) {
            count(C_DNS_TXN_MAP_FULL);
            return;
        }
        v = dns_txns.lookup(k);
        if (!v)
            return;
    }
    v->last_ns = now;
    __sync_fetch_and_add(&v->answers, 1);
    __sync_fetch_and_add(&v->addrs, addrs);
    if (latency) {
        __sync_fetch_and_add(&v->timed, 1);
        __sync_fetch_and_add(&v->latency_sum_ns, latency);
        if (latency > v->latency_max_ns)
            v->latency_max_ns = latency;
    }
    if (pid)
        v->pid = pid;
}

/* A query leaving: remember when, by socket and DNS id. `off` is where the DNS header starts. */
static __always_inline void dns_query(struct __sk_buff *skb, __u32 off)
{
    __u8 h[3];
    if (bpf_skb_load_bytes(skb, off, h, 3) || (h[2] & 0x80))
        return;  /* too short, or a response (this host serving DNS) */
    struct dns_query_key k = {.cookie = mn_socket_cookie(skb), .id = ((__u16)h[0] << 8) | h[1]};
    struct dns_query_val v = {.sent_ns = bpf_ktime_get_ns(), .pid = bpf_get_current_pid_tgid() >> 32};
    dns_queries.update(&k, &v);
}

/* An answer arriving: hand it to mn_dns_answer (a tail call: the caller's work must be done). `off` is
 * where the DNS header starts, `avail` the bytes from there in this packet, `msg_len` the message's own
 * length (UDP: the datagram's; TCP: its length prefix). Without the parser loaded nothing happens. */
static __always_inline void dns_answer(struct __sk_buff *skb, const __u8 *server, __u16 family, __u32 off,
                                       __u32 avail, __u32 msg_len, int tcp)
{
    int zero = 0;
    struct dns_scratch *s = dns_scratch_map.lookup(&zero);
    if (!s || avail < 12)
        return;
    __builtin_memcpy(s->server, server, 16);
    s->family = family;
    s->off = off;
    s->avail = avail;
    s->msg_len = msg_len;
    s->tcp = tcp;
    s->runs = 0;
    dns_progs.call(skb, 0);
}

/* The first run on an answer: copy the message and check its header; nonzero when there is nothing to parse. */
static __always_inline int dns_begin(struct __sk_buff *skb, struct dns_scratch *s)
{
    __u32 off = s->off, avail = s->avail, msg_len = s->msg_len;
    __u32 n = avail < msg_len ? avail : msg_len;
    s->cut = n < msg_len;
    if (n > DNS_BUF) {
        n = DNS_BUF;
        s->cut = 1;
    }
    if (n < 12 || off > 0xffff)
        return 1;
    /* n - 1 is below DNS_BUF already: the mask is for the verifier */
    __u32 want = ((n - 1) & (DNS_BUF - 1)) + 1;
    if (bpf_skb_load_bytes(skb, off, s->buf, want))
        return 1;
    s->len = want;
    __u8 flags = s->buf[2];
    if (!(flags & 0x80) || (flags & 0x78))
        return 1;  /* a query, or not a standard query's answer */
    if (s->buf[4] || s->buf[5] != 1)
        return 1;  /* not exactly one question: nothing to name */
    count(C_DNS_ANSWERS);
    __u32 ancount = ((__u32)s->buf[6] << 8) | s->buf[7];
    s->id = ((__u16)s->buf[0] << 8) | s->buf[1];
    s->rcode = s->buf[3] & 0x0F;
    s->now = bpf_ktime_get_ns();
    s->netns = bpf_get_netns_cookie(skb);
    __builtin_memset(&s->text, 0, sizeof(s->text));
    __builtin_memset(s->chain, 0, sizeof(s->chain));
    s->text_len = 0;
    s->nchain = 0;
    s->addrs = 0;
    s->bad = 0;
    s->qname = 0;
    s->qtype = 0;
    s->rr_left = ancount < DNS_MAX_RR ? ancount : DNS_MAX_RR;
    s->rdata_end = 12;
    dns_name_start(s, 12, D_QNAME);
    return 0;
}

/* The parse is over: count how it went, and sum the transaction. */
static __always_inline void dns_end(struct __sk_buff *skb, struct dns_scratch *s)
{
    if (s->bad == -1)
        count(C_DNS_MALFORMED);
    else if (s->bad || s->cut || s->state != D_DONE)
        count(C_DNS_TRUNCATED);
    if (!s->nchain)
        return;  /* the question itself did not parse: no transaction to sum */
    /* its query's send time by (socket, id), taken once */
    struct dns_query_key qk = {.cookie = mn_socket_cookie(skb), .id = s->id};
    struct dns_query_val *q = dns_queries.lookup(&qk);
    __u64 latency = 0;
    __u32 pid = 0;
    if (q) {
        latency = s->now > q->sent_ns ? s->now - q->sent_ns : 1;
        pid = q->pid;
        dns_queries.delete(&qk);
    }
    struct dns_txn_key tk = {};
    tk.netns = s->netns;
    tk.name_id = s->qname;
    __builtin_memcpy(tk.server, s->server, 16);
    tk.family = s->family;
    tk.qtype = s->qtype;
    tk.rcode = s->rcode;
    tk.tcp = s->tcp;
    dns_txn(&tk, s->now, latency, pid, s->addrs);
}

/* The DNS answer the packet program handed over in dns_scratch_map, DNS_STEPS steps a run: parsed into
 * dns_addrs, dns_names and dns_txns. A run that has not finished tail-calls the next (each run is
 * verified once, from one state; the verifier checks ~2,300 instructions a step, so one run of all 768
 * would pass its 1M limit). Always lets the packet through. */
int mn_dns_answer(struct __sk_buff *skb)
{
    int zero = 0;
    struct dns_scratch *s = dns_scratch_map.lookup(&zero);
    if (!s)
        return 1;
    __u32 runs = s->runs;
    if (runs == 0 && dns_begin(skb, s))
        return 1;
    s->runs = runs + 1;
    for (int i = 0; i < DNS_STEPS; i++) {
        if (dns_step(s))
            goto end;
    }
    if (runs + 1 < DNS_RUNS)
        dns_progs.call(skb, 0);
    /* the budget is spent (or the tail call failed): what was parsed stands, the rest is truncated */
end:
    dns_end(skb, s);
    return 1;
}

/* The name last resolved to an address in a network namespace (0: none). IPv4-mapped IPv6 addresses
 * are looked up as IPv4: an A record's address reached through an AF_INET6 socket. */
static __always_inline __u32 dns_name_of(__u64 netns, __u16 family, const __u8 *addr)
{
    struct dns_addr_key k = {};
    k.netns = netns;
    k.family = family;
    __builtin_memcpy(k.addr, addr, 16);
    if (family == AF_INET6 && !(k.addr[0] | k.addr[1] | k.addr[2] | k.addr[3] | k.addr[4] | k.addr[5] |
                                k.addr[6] | k.addr[7] | k.addr[8] | k.addr[9]) &&
        k.addr[10] == 0xff && k.addr[11] == 0xff) {
        __builtin_memcpy(k.addr, addr + 12, 4);
        __builtin_memset(k.addr + 4, 0, 12);
        k.family = AF_INET;
    }
    struct dns_addr_val *v = dns_addrs.lookup(&k);
    return v ? v->name_id : 0;
}
