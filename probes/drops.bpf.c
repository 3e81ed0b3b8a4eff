/* Kernel packet drops (skb:kfree_skb), counted per socket and reason in the kernel; user space reads the
 * counts once per tick and names reasons from the running kernel's tracefs format. */

#ifdef HAVE_KFREE_SKB
TRACEPOINT_PROBE(skb, kfree_skb)
{
    struct drop_key k = {};
    k.sk = (__u64)args->rx_sk;
    k.reason = args->reason;
    __u64 *v = drops.lookup(&k);
    if (v) {
        __sync_fetch_and_add(v, 1);
        return 0;
    }
    __u64 one = 1;
    if (drops.insert(&k, &one) == -E2BIG)
        count(C_DROP_MAP_FULL);
    return 0;
}
#endif
