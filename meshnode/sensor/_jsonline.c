/* The JSON line of a final eBPF TCP record, in C: `meshnode capture --json`'s per-flow hot path.
 *
 * EbpfSensor.poll_json renders a TCP end record through one bytes %-template. In CPython that costs
 * ~3.5 us a line on the dev machine, ~100 ns for each of its 22 integers, more than every other part of the
 * sensor's user-space work together (bench/RESULTS.md, Sensor). This file does the same from the ring's raw
 * records, a batch per call, through ctypes (meshnode/sensor/_native.py): no Python header, no extension
 * ABI, built by `make setup` with the C compiler the kernel headers already bring.
 *
 * It knows no JSON keys: Python hands it the template (the model's keys and separators, `_TCP_END_LINE`)
 * and every text (owner, service, outcome names, drop reasons), already escaped as json.dumps escapes them.
 * It fills the template's 34 slots in poll_json's order, from struct event as probes/meshnode.h lays it out
 * (the kernel side's own header). What it cannot resolve itself (an owner or a service it has not been
 * given, a record that is not a TCP end) it leaves to Python: the call returns where it stopped and why.
 * tests/unit/test_sensor_json_native.py checks it byte for byte against the Python path.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
#include "meshnode.h"

#define NSLOTS 34
/* slot kinds in poll_json's tuple order: d = integer, s = text */
static const char SLOT_KINDS[NSLOTS + 1] = "dsdsdssdddddddsdddddddsddddsddddds";

enum { NEED_NONE = 0, NEED_SLOW = 1, NEED_OWNER = 2, NEED_SERVICE = 3, NEED_ROOM = 4 };
enum { T_OUTCOME = 1, T_INBOUND = 2, T_OUTBOUND = 3, T_UNKNOWN_LIMIT = 4, T_NO_REASONS = 5, T_SERVICE = 6 };

typedef struct {
    char *p;
    size_t n;
} text;

#define FIRST_SLOTS 4096     /* owner and drop tables: open addressing, doubled when half full */
#define MAX_SLOTS (1u << 22) /* past 2M owners in one poll, the rest take the Python path */
typedef struct {
    __u32 pid, gen;
    __u64 cgroup_id;
    char comm[16];
    text t;
} owner;

typedef struct {
    __u64 sk, count;
    __u32 gen, used;
    text t;
} drop;

typedef struct {
    text lit[NSLOTS + 1];
    size_t lit_total;
    text outcome[256], inbound, outbound, unknown_limit, no_reasons;
    text service[65536];
    owner *owners;
    __u32 owner_cap, owner_gen, owners_used;
    drop *drops;
    __u32 drop_cap, drop_gen, drops_used;
    __int128 offset;
    /* the batch of mn_json_begin, and where mn_json_next writes (one pointer argument a call) */
    const char *buf;
    size_t n, stride, skip, cap;
    char *out;
    size_t *res;
    /* records of that batch that Python renders (ascending indices; mn_json_slow), and the next to meet */
    const size_t *slow;
    size_t nslow, slow_at;
} fmt;

/* A text is copied; where memory runs out the slot is left empty (unresolved), never with an older text. */
static int set_text(text *t, const char *p, size_t n)
{
    char *c = malloc(n ? n : 1);
    free(t->p);
    t->p = c;
    t->n = c ? n : 0;
    if (!c)
        return -1;
    memcpy(c, p, n);
    return 0;
}

void mn_json_free(fmt *f)
{
    if (!f)
        return;
    for (int i = 0; i <= NSLOTS; i++)
        free(f->lit[i].p);
    for (int i = 0; i < 256; i++)
        free(f->outcome[i].p);
    for (int i = 0; i < 65536; i++)
        free(f->service[i].p);
    for (__u32 i = 0; f->owners && i < f->owner_cap; i++)
        free(f->owners[i].t.p);
    for (__u32 i = 0; f->drops && i < f->drop_cap; i++)
        free(f->drops[i].t.p);
    free(f->owners);
    free(f->drops);
    free(f->inbound.p);
    free(f->outbound.p);
    free(f->unknown_limit.p);
    free(f->no_reasons.p);
    free(f);
}

/* The template: literal text around exactly 34 %d/%s slots of SLOT_KINDS, no other '%'. NULL otherwise. */
fmt *mn_json_new(const char *tmpl, size_t n, size_t event_size)
{
    if (event_size != sizeof(struct event))
        return NULL;
    fmt *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->owner_gen = f->drop_gen = 1;
    f->owner_cap = f->drop_cap = FIRST_SLOTS;
    f->owners = calloc(FIRST_SLOTS, sizeof(owner));
    f->drops = calloc(FIRST_SLOTS, sizeof(drop));
    if (!f->owners || !f->drops) {
        mn_json_free(f);
        return NULL;
    }
    size_t start = 0, slot = 0;
    for (size_t i = 0; i < n; i++) {
        if (tmpl[i] != '%')
            continue;
        if (i + 1 >= n || slot >= NSLOTS || tmpl[i + 1] != SLOT_KINDS[slot] ||
            set_text(&f->lit[slot], tmpl + start, i - start)) {
            mn_json_free(f);
            return NULL;
        }
        f->lit_total += i - start;
        slot++;
        start = i + 2;
        i++;
    }
    if (slot != NSLOTS || set_text(&f->lit[NSLOTS], tmpl + start, n - start)) {
        mn_json_free(f);
        return NULL;
    }
    f->lit_total += n - start;
    return f;
}

int mn_json_set_text(fmt *f, int which, int index, const char *p, size_t n)
{
    switch (which) {
    case T_OUTCOME:
        return index >= 0 && index < 256 ? set_text(&f->outcome[index], p, n) : -1;
    case T_INBOUND:
        return set_text(&f->inbound, p, n);
    case T_OUTBOUND:
        return set_text(&f->outbound, p, n);
    case T_UNKNOWN_LIMIT:
        return set_text(&f->unknown_limit, p, n);
    case T_NO_REASONS:
        return set_text(&f->no_reasons, p, n);
    case T_SERVICE:
        return index >= 0 && index < 65536 ? set_text(&f->service[index], p, n) : -1;
    }
    return -1;
}

/* The wall clock's offset from the monotonic clock the kernel stamps (start_ns, last_ns). */
void mn_json_set_offset(fmt *f, int64_t hi, uint64_t lo)
{
    f->offset = (__int128)(((unsigned __int128)(uint64_t)hi << 64) | lo);
}

static __u32 mix(__u64 x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (__u32)x;
}

static __u32 owner_hash(__u32 pid, const char *comm, __u64 cgroup_id)
{
    __u64 c0, c1;
    memcpy(&c0, comm, 8);
    memcpy(&c1, comm + 8, 8);
    return mix(pid ^ (cgroup_id * 0x9e3779b97f4a7c15ULL) ^ c0 ^ (c1 * 31));
}

static owner *owner_find(fmt *f, __u32 pid, const char *comm, __u64 cgroup_id, int insert)
{
    __u32 h = owner_hash(pid, comm, cgroup_id);
    for (__u32 i = 0; i < f->owner_cap; i++) {
        owner *o = &f->owners[(h + i) & (f->owner_cap - 1)];
        if (o->gen != f->owner_gen)
            return insert ? o : NULL;
        if (o->pid == pid && o->cgroup_id == cgroup_id && !memcmp(o->comm, comm, 16))
            return o;
    }
    return NULL;
}

/* A new poll: owners are resolved per poll (a process's comm and cgroup can change), as poll_json does. */
void mn_json_clear_owners(fmt *f)
{
    f->owner_gen++;
    f->owners_used = 0;
}

/* Double the owner table, keeping this poll's owners (texts move, older ones are freed); -1 when it is at
 * its bound or memory runs out (the table is left as it was). */
static int grow_owners(fmt *f)
{
    __u32 cap = f->owner_cap * 2;
    owner *t = cap <= MAX_SLOTS ? calloc(cap, sizeof(owner)) : NULL;
    if (!t)
        return -1;
    for (__u32 i = 0; i < f->owner_cap; i++) {
        owner *o = &f->owners[i];
        if (o->gen != f->owner_gen) {
            free(o->t.p);
            continue;
        }
        __u32 h = owner_hash(o->pid, o->comm, o->cgroup_id);
        __u32 j = 0;
        while (t[(h + j) & (cap - 1)].gen == f->owner_gen)
            j++;
        t[(h + j) & (cap - 1)] = *o;
    }
    free(f->owners);
    f->owners = t;
    f->owner_cap = cap;
    return 0;
}

/* The slot of an owner, claimed (with no text yet) when new; NULL when this poll's table is full. */
static owner *owner_slot(fmt *f, __u32 pid, const char *comm, __u64 cgroup_id)
{
    if (f->owners_used >= f->owner_cap / 2 && grow_owners(f))
        return owner_find(f, pid, comm, cgroup_id, 0);  /* full: only an owner already held */
    owner *o = owner_find(f, pid, comm, cgroup_id, 1);
    if (o && o->gen != f->owner_gen) {
        o->gen = f->owner_gen;
        o->pid = pid;
        o->cgroup_id = cgroup_id;
        memcpy(o->comm, comm, 16);
        free(o->t.p);
        o->t.p = NULL;
        o->t.n = 0;
        f->owners_used++;
    }
    return o;
}

int mn_json_set_owner(fmt *f, __u32 pid, const char *comm, __u64 cgroup_id, const char *p, size_t n)
{
    owner *o = owner_slot(f, pid, comm, cgroup_id);
    return o ? set_text(&o->t, p, n) : -1;
}

/* Indices of the TCP end records of [0, n) whose owner or service has no text yet, each owner and
 * service listed once (up to cap): Python resolves them all before rendering, instead of one stop of
 * the render per new owner. Returns how many (cap >= n lists them all). */
size_t mn_json_unresolved(fmt *f, const char *buf, size_t n, size_t stride, size_t skip, size_t *idx, size_t cap)
{
    static __thread __u8 listed[65536 / 8];
    size_t k = 0;
    memset(listed, 0, sizeof(listed));
    for (size_t i = 0; i < n && k < cap; i++) {
        struct event e;
        memcpy(&e, buf + i * stride + skip, sizeof(e));
        if (e.kind != EV_TCP_END || !e.flow.cookie)
            continue;
        int want = 0;
        owner *o = owner_find(f, e.flow.pid, e.comm, e.flow.cgroup_id, 0);
        if (!o) {
            o = owner_slot(f, e.flow.pid, e.comm, e.flow.cgroup_id);  /* listed once: claimed now */
            want = o != NULL;
        }
        __u16 port = e.flow.flags & F_INBOUND ? e.flow.sport : e.flow.dport;
        if (!f->service[port].p && !(listed[port / 8] & (1 << (port % 8)))) {
            listed[port / 8] |= 1 << (port % 8);
            want = 1;
        }
        if (want)
            idx[k++] = i;
    }
    return k;
}

static drop *drop_find(fmt *f, __u64 sk, int insert)
{
    __u32 h = mix(sk);
    for (__u32 i = 0; i < f->drop_cap; i++) {
        drop *d = &f->drops[(h + i) & (f->drop_cap - 1)];
        if (d->gen != f->drop_gen)
            return insert ? d : NULL;
        if (d->sk == sk)
            return d;
    }
    return NULL;
}

/* The drops joined to sockets (sensor._drops_by_sk), each taken by the first flow of its socket. */
void mn_json_clear_drops(fmt *f)
{
    f->drop_gen++;
    f->drops_used = 0;
}

/* Double the drop table, keeping this poll's drops; -1 at its bound or out of memory. */
static int grow_drops(fmt *f)
{
    __u32 cap = f->drop_cap * 2;
    drop *t = cap <= MAX_SLOTS ? calloc(cap, sizeof(drop)) : NULL;
    if (!t)
        return -1;
    for (__u32 i = 0; i < f->drop_cap; i++) {
        drop *d = &f->drops[i];
        if (d->gen != f->drop_gen) {
            free(d->t.p);
            continue;
        }
        __u32 h = mix(d->sk), j = 0;
        while (t[(h + j) & (cap - 1)].gen == f->drop_gen)
            j++;
        t[(h + j) & (cap - 1)] = *d;
    }
    free(f->drops);
    f->drops = t;
    f->drop_cap = cap;
    return 0;
}

int mn_json_set_drops(fmt *f, __u64 sk, __u64 count, const char *p, size_t n)
{
    if (f->drops_used >= f->drop_cap / 2 && grow_drops(f))
        return -1;
    drop *d = drop_find(f, sk, 1);
    if (!d)
        return -1;
    if (d->gen != f->drop_gen) {
        d->gen = f->drop_gen;
        d->sk = sk;
        f->drops_used++;
    }
    d->count = count;
    d->used = 0;
    return set_text(&d->t, p, n);
}

static char *put(char *o, const text *t)
{
    memcpy(o, t->p, t->n);
    return o + t->n;
}

static char *put_u64(char *o, __u64 v)
{
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = '0' + v % 10;
        v /= 10;
    } while (v);
    while (n)
        *o++ = tmp[--n];
    return o;
}

static char *put_i128(char *o, __int128 v)
{
    unsigned __int128 u = v < 0 ? -(unsigned __int128)v : (unsigned __int128)v;
    char tmp[40];
    int n = 0;
    if (v < 0)
        *o++ = '-';
    do {
        tmp[n++] = '0' + (int)(u % 10);
        u /= 10;
    } while (u);
    while (n)
        *o++ = tmp[--n];
    return o;
}

static char *put_hex(char *o, unsigned v)
{
    static const char hex[] = "0123456789abcdef";
    int started = 0;
    for (int s = 12; s >= 0; s -= 4) {
        unsigned d = (v >> s) & 0xf;
        if (d || started || s == 0) {
            *o++ = hex[d];
            started = 1;
        }
    }
    return o;
}

static char *put_ipv4(char *o, const __u8 *a)
{
    for (int i = 0; i < 4; i++) {
        if (i)
            *o++ = '.';
        o = put_u64(o, a[i]);
    }
    return o;
}

/* An address as JSON text, exactly as probes._records._addr and json.dumps write it: IPv4 dotted; IPv6 as
 * Python's ipaddress prints it (lowercase hextets, the first longest run of two or more zero hextets as
 * "::"), a v4-mapped one as IPv4. Not inet_ntop: glibc prints "::a.b.c.d" for v4-compatible addresses. */
static char *put_addr(char *o, const __u8 *a, int inet6)
{
    *o++ = '"';
    static const __u8 mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (!inet6) {
        o = put_ipv4(o, a);
    } else if (!memcmp(a, mapped, 12)) {
        o = put_ipv4(o, a + 12);
    } else {
        unsigned h[8];
        int best = -1, best_len = 0, run = -1, run_len = 0;
        for (int i = 0; i < 8; i++) {
            h[i] = (unsigned)a[2 * i] << 8 | a[2 * i + 1];
            if (h[i] == 0) {
                if (run < 0)
                    run = i;
                if (++run_len > best_len) {
                    best_len = run_len;
                    best = run;
                }
            } else {
                run = -1;
                run_len = 0;
            }
        }
        if (best_len < 2)
            best = -1;
        for (int i = 0; i < 8; i++) {
            if (i == best) {
                *o++ = ':';
                *o++ = ':';
                i += best_len - 1;
                continue;
            }
            if (i && i != best + best_len)
                *o++ = ':';
            o = put_hex(o, h[i]);
        }
    }
    *o++ = '"';
    return o;
}

/* Record kinds that end no flow (capture --json writes no line for them; their handling touches nothing
 * a line is made of: EbpfSensor._handle). */
static int is_event(__u32 kind)
{
    return kind == EV_RETRANS_BURST || kind == EV_RTT_SHIFT || kind == EV_RESET_RX || kind == EV_RESET_TX ||
           kind == EV_ZERO_WINDOW;
}

/* Render records [start, n) of `buf` (record i's struct event at i * stride + skip) as JSON lines into
 * `out` (cap bytes), stopping before the first it cannot render. Returns the bytes written; *next is the
 * index it stopped at (n when all are done), *need why (NEED_*), *lines how many it wrote. The drops of
 * sockets whose flows were rendered are marked taken; mn_json_taken_drops lists them. */
size_t mn_json_render(fmt *f, const char *buf, size_t n, size_t stride, size_t skip, size_t start, char *out,
                      size_t cap, size_t *next, int *need, size_t *lines)
{
    char *o = out;
    size_t i = start, count = 0;
    *need = NEED_NONE;
    for (; i < n; i++) {
        struct event e;
        memcpy(&e, buf + i * stride + skip, sizeof(e));
        const struct tcp_flow *fl = &e.flow;
        if (is_event(e.kind))
            continue;  /* no line: Python handles these after the lines (mn_json_events) */
        if (e.kind != EV_TCP_END || !fl->cookie || fl->name_id) {
            *need = NEED_SLOW;  /* a named flow too: Python knows the names */
            break;
        }
        while (f->slow_at < f->nslow && f->slow[f->slow_at] < i)
            f->slow_at++;
        if (f->slow_at < f->nslow && f->slow[f->slow_at] == i) {
            *need = NEED_SLOW;  /* Python holds something of this flow's (its ICMP errors) */
            break;
        }
        owner *ow = owner_find(f, fl->pid, e.comm, fl->cgroup_id, 0);
        if (!ow || !ow->t.p) {
            *need = NEED_OWNER;
            break;
        }
        int inbound = fl->flags & F_INBOUND;
        const text *svc = &f->service[inbound ? fl->sport : fl->dport];
        if (!svc->p) {
            *need = NEED_SERVICE;
            break;
        }
        drop *d = drop_find(f, e.sk, 0);
        if (d && d->used)
            d = NULL;
        const text *reasons = d ? &d->t : &f->no_reasons;
        const text *oc = f->outcome[fl->outcome].p ? &f->outcome[fl->outcome] : &f->outcome[OC_IN_PROGRESS];
        const text *dir = inbound ? &f->inbound : &f->outbound;
        /* 2 addresses <= 41 + 2 chars each; 24 integers <= 20 digits; 2 times <= 41 chars */
        size_t room = f->lit_total + 2 * 43 + 25 * 20 + 2 * 41 + dir->n + ow->t.n + oc->n + f->unknown_limit.n +
                      svc->n + reasons->n;
        if ((size_t)(out + cap - o) < room) {
            *need = NEED_ROOM;
            break;
        }
        if (d)
            d->used = 1;
        int inet6 = fl->flags & F_INET6;
        __u64 segs_out = fl->segs_out;
        if (fl->flags & F_SYNACK)
            segs_out += 1 + (__u64)fl->synack_retrans;
        const text *L = f->lit;
        o = put(o, &L[0]);  o = put_u64(o, fl->cookie);
        o = put(o, &L[1]);  o = put_addr(o, fl->saddr, inet6);
        o = put(o, &L[2]);  o = put_u64(o, fl->sport);
        o = put(o, &L[3]);  o = put_addr(o, fl->daddr, inet6);
        o = put(o, &L[4]);  o = put_u64(o, fl->dport);
        o = put(o, &L[5]);  o = put(o, dir);
        o = put(o, &L[6]);  o = put(o, &ow->t);
        o = put(o, &L[7]);  o = put_u64(o, fl->netns);
        o = put(o, &L[8]);  o = put_i128(o, (__int128)fl->start_ns + f->offset);
        o = put(o, &L[9]);  o = put_i128(o, (__int128)fl->last_ns + f->offset);
        o = put(o, &L[10]); o = put_u64(o, fl->bytes_tx);
        o = put(o, &L[11]); o = put_u64(o, fl->bytes_rx);
        o = put(o, &L[12]); o = put_u64(o, segs_out);
        o = put(o, &L[13]); o = put_u64(o, fl->segs_in);
        o = put(o, &L[14]); o = put(o, oc);
        o = put(o, &L[15]); o = put_u64(o, fl->total_retrans);
        o = put(o, &L[16]); o = put_u64(o, fl->srtt_us);
        o = put(o, &L[17]); o = put_u64(o, fl->rtt_min_us);
        o = put(o, &L[18]); o = put_u64(o, fl->srtt_max_us);
        o = put(o, &L[19]); o = put_u64(o, fl->cwnd);
        o = put(o, &L[20]); o = put_u64(o, fl->cwnd_min);
        o = put(o, &L[21]); o = put_u64(o, fl->cwnd_max);
        o = put(o, &L[22]); o = put(o, &f->unknown_limit);
        o = put(o, &L[23]); o = put_u64(o, fl->connect_us);
        o = put(o, &L[24]); o = put_u64(o, fl->resets_tx);
        o = put(o, &L[25]); o = put_u64(o, fl->resets_rx);
        o = put(o, &L[26]); o = put_u64(o, d ? d->count : 0);
        o = put(o, &L[27]); o = put(o, svc);
        o = put(o, &L[28]); o = put_u64(o, fl->first_byte_us);
        o = put(o, &L[29]); o = put_u64(o, fl->resp_count);
        o = put(o, &L[30]); o = put_u64(o, fl->resp_sum_us);
        o = put(o, &L[31]); o = put_u64(o, fl->resp_max_us);
        o = put(o, &L[32]); o = put_u64(o, fl->answer_sum_us);
        o = put(o, &L[33]); o = put(o, reasons);
        o = put(o, &L[34]);
        count++;
    }
    *next = i;
    *lines = count;
    return (size_t)(o - out);
}

/* The sockets whose drops a render took since mn_json_clear_drops (up to cap); returns how many. */
size_t mn_json_taken_drops(fmt *f, __u64 *sks, size_t cap)
{
    size_t k = 0;
    for (__u32 i = 0; i < f->drop_cap && k < cap; i++) {
        drop *d = &f->drops[i];
        if (d->gen == f->drop_gen && d->used)
            sks[k++] = d->sk;
    }
    return k;
}

/* The socket addresses of records [0, n) (their tcp_flows keys), for the caller to pick the drops to give. */
void mn_json_sks(const char *buf, size_t n, size_t stride, size_t skip, __u64 *sks)
{
    for (size_t i = 0; i < n; i++)
        memcpy(&sks[i], buf + i * stride + skip + offsetof(struct event, sk), sizeof(__u64));
}

/* A poll's batch for mn_json_next (the caller keeps buf and out alive until the next begin/output):
 * res receives {next, need, lines} of each call. */
void mn_json_begin(fmt *f, const char *buf, size_t n, size_t stride, size_t skip, size_t *res)
{
    f->buf = buf;
    f->n = n;
    f->stride = stride;
    f->skip = skip;
    f->res = res;
    f->nslow = f->slow_at = 0;
}

/* Records of the batch of mn_json_begin that mn_json_next must leave to Python (NEED_SLOW), by ascending
 * index; the caller keeps idx alive until the next begin. */
void mn_json_slow(fmt *f, const size_t *idx, size_t n)
{
    f->slow = idx;
    f->nslow = n;
    f->slow_at = 0;
}

void mn_json_output(fmt *f, char *out, size_t cap)
{
    f->out = out;
    f->cap = cap;
}

/* mn_json_render over the batch of mn_json_begin from record `start`, into the buffer of mn_json_output:
 * two arguments, where a ctypes call costs ~0.2 us an argument. */
size_t mn_json_next(fmt *f, size_t start)
{
    int need;
    size_t size = mn_json_render(f, f->buf, f->n, f->stride, f->skip, start, f->out, f->cap, &f->res[0], &need,
                                 &f->res[2]);
    f->res[1] = (size_t)need;
    return size;
}

/* Indices of the batch's event records (is_event), in ring order, up to cap; returns how many. */
size_t mn_json_events(fmt *f, size_t *idx, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < f->n && k < cap; i++) {
        __u32 kind;
        memcpy(&kind, f->buf + i * f->stride + f->skip + offsetof(struct event, kind), sizeof(kind));
        if (is_event(kind))
            idx[k++] = i;
    }
    return k;
}
