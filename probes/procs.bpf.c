/* Process names as `ps` shows them: tgid -> the thread-group leader's comm, kept from the moments a
 * process gets its name (fork, exec, the leader renaming itself), so a process that has exited by the time
 * user space reads its flows (a `dig` that ran for 20 ms) is still named. The flows' own comm (the ring
 * record's, from `comms`) is the name of the thread that connected or moved data, which for multithreaded
 * programs is a worker's (`isc-net-0000`, `event_engine`); user space shows it as the thread.
 *
 * Every program here runs per fork, exec or rename, never per packet or flow. Each reads only its
 * tracepoint's arguments (layout from tracefs, checked by the loader) and helper results. An LRU map: the
 * oldest names give way (an exited process's first), and user space seeds it at load with the processes
 * already running. The loader defines HAVE_<tracepoint> for each tracepoint this kernel has. */

#ifndef PROC_NAMES_MAX
#define PROC_NAMES_MAX 16384
#endif

#define MN_CLONE_THREAD 0x00010000  /* uapi linux/sched.h */

BPF_TABLE("lru_hash", __u32, struct proc_name, proc_names, PROC_NAMES_MAX);

/* comm: 16 bytes of tracepoint arguments (or the stack); copied whole, NUL padding included */
static __always_inline void set_proc_name(__u32 tgid, const void *comm)
{
    struct proc_name n = {};
    bpf_probe_read_kernel(n.comm, sizeof(n.comm), comm);
    if (proc_names.update(&tgid, &n))
        count(C_PROC_MAP_FULL);
}

#ifdef HAVE_SCHED_PROCESS_EXEC
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    /* exec has made the caller its group's leader (other threads are gone, it holds the tgid as pid) and
     * named it after the new program: the current comm is the process's name now. task_rename fires
     * inside exec too, but only where it has the arguments the loader checks for; this needs none. */
    if (!in_scope())
        return 0;
    char comm[16];
    bpf_get_current_comm(comm, sizeof(comm));
    set_proc_name(bpf_get_current_pid_tgid() >> 32, comm);
    return 0;
}
#endif

#ifdef HAVE_TASK_RENAME
TRACEPOINT_PROBE(task, task_rename)
{
    /* args->pid is the renamed task: the caller (prctl PR_SET_NAME), or another thread of its group
     * (writing /proc/self/task/<tid>/comm, as pthread_setname_np does). Only the leader's name is the
     * process's; a worker naming itself is what the flows' thread name shows. */
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if ((__u32)args->pid != tgid || !in_scope())
        return 0;
    set_proc_name(tgid, args->newcomm);
    return 0;
}
#endif

#ifdef HAVE_TASK_NEWTASK
TRACEPOINT_PROBE(task, task_newtask)
{
    /* a new process (not a thread) leads its own group under its pid, named with a copy of the forking
     * thread's comm until it execs or renames itself: a pre-fork server's workers connect under it. The
     * entry also replaces whatever an earlier process of the same pid left. In the parent's context:
     * scoped by the parent's cgroup, which the child starts in. */
    if ((args->clone_flags & MN_CLONE_THREAD) || !in_scope())
        return 0;
    set_proc_name(args->pid, args->comm);
    return 0;
}
#endif
