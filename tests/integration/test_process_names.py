"""Process names from the kernel side (probes/procs.bpf.c) against real processes on loopback (root).

``Probes.process_names`` gives a process's name as ``ps`` shows it, its thread-group leader's comm, also
after the process exited; the flow records' own comm is the name of the thread that connected. Each
program below is a real ``python3`` started by exec (so its leader is named ``python3``), whose threads
rename themselves or the leader as runtimes do.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._support.env import require_kernel

# A worker thread names itself, connects to the port in argv[1], sends 100 bytes and closes; the leader
# keeps the name exec gave it.
WORKER_CONNECTS = r"""
import ctypes, socket, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
def work():
    assert libc.prctl(15, b"worker-xyz", 0, 0, 0) == 0  # PR_SET_NAME: this thread only
    with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as s:
        s.sendall(b"x" * 100)
t = threading.Thread(target=work)
t.start()
t.join()
"""

# The leader renames itself; a thread then names itself too, which must not rename the process.
LEADER_RENAMES = r"""
import ctypes, threading
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(15, b"lead-renamed", 0, 0, 0) == 0
t = threading.Thread(target=lambda: libc.prctl(15, b"side-thread", 0, 0, 0))
t.start()
t.join()
"""

# Renames across threads through /proc/self/task/<tid>/comm (as pthread_setname_np does for another
# thread): a worker names the leader (the process's name), then the leader names the worker (not it).
RENAMES_THROUGH_PROC = r"""
import os, threading
named, done = threading.Event(), threading.Event()
def work():
    with open(f"/proc/self/task/{os.getpid()}/comm", "w") as f:
        f.write("via-proc")
    named.set()
    done.wait()
t = threading.Thread(target=work)
t.start()
named.wait()
with open(f"/proc/self/task/{t.native_id}/comm", "w") as f:
    f.write("not-the-proc")
with open(f"/proc/self/task/{t.native_id}/comm") as f:
    assert f.read() == "not-the-proc\n"
done.set()
t.join()
"""

# A thread named "forking-thr" forks (no exec): the child process is named with a copy of the forking
# thread's comm, as ps shows it. The child connects to argv[1] and prints its pid.
FORK_NO_EXEC = r"""
import ctypes, os, socket, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
def work():
    libc.prctl(15, b"forking-thr", 0, 0, 0)
    pid = os.fork()
    if pid == 0:
        with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as s:
            s.sendall(b"y" * 50)
        os._exit(0)
    os.waitpid(pid, 0)
    print(pid, flush=True)
t = threading.Thread(target=work)
t.start()
t.join()
"""

# Renamed before the sensor starts; lives until its stdin closes.
LONG_RUNNING = r"""
import ctypes, sys
ctypes.CDLL(None).prctl(15, b"seeded-proc", 0, 0, 0)
print("ready", flush=True)
sys.stdin.read()
"""


def python3() -> str:
    """A python3 to exec by a path whose last part is ``python3``, which is then its process name."""
    exe = shutil.which("python3")
    assert exe is not None and Path(exe).name == "python3", exe
    return exe


@pytest.fixture(scope="module")
def seeded() -> Iterator[subprocess.Popen[str]]:
    """A process renamed and running before the probes open."""
    require_kernel()
    proc = subprocess.Popen([python3(), "-c", LONG_RUNNING], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def probes(seeded: subprocess.Popen[str]) -> Iterator[Any]:
    """The whole host's probes, opened after ``seeded`` started."""
    from meshnode.probes import ProbeConfig, Probes

    p = Probes(ProbeConfig())
    p.open()
    try:
        yield p
    finally:
        p.close()


class Sink:
    """A loopback TCP server in this process that reads each connection to its end."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self.received: list[int] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                n = 0
                while chunk := conn.recv(65536):
                    n += len(chunk)
                self.received.append(n)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    try:
        yield s
    finally:
        s.close()


def start(program: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([python3(), "-c", program, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not Path(f"/proc/{proc.pid}").exists()  # exited and reaped: /proc cannot name it any more
    return out


def flow_end(probes: Any, pid: int, dport: int, timeout: float = 10.0) -> Any:
    """The TCP end record of the flow that ``pid`` opened to ``dport``, from the ring."""
    from meshnode.probes._records import EV_TCP_END

    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        for ev in probes.poll_events():
            if ev.kind == EV_TCP_END and ev.flow is not None and ev.flow.dport == dport:
                seen.append(ev.flow)
        mine = [f for f in seen if f.pid == pid]
        if mine:
            assert len(mine) == 1, mine
            return mine[0]
        time.sleep(0.05)
    raise AssertionError(f"no flow end from pid {pid} to port {dport}; saw {seen}")


@pytest.mark.kernel
def test_a_worker_thread_connects_the_process_keeps_its_exec_name(probes: Any, sink: Sink) -> None:
    proc = start(WORKER_CONNECTS, sink.port)
    finish(proc)
    flow = flow_end(probes, proc.pid, sink.port)
    assert (flow.comm, flow.bytes_tx, flow.outcome) == ("worker-xyz", 100, "established")
    assert probes.process_names([proc.pid]) == {proc.pid: "python3"}


@pytest.mark.kernel
def test_the_leader_renaming_itself_renames_the_process(probes: Any) -> None:
    proc = start(LEADER_RENAMES)
    finish(proc)
    assert probes.process_names([proc.pid]) == {proc.pid: "lead-renamed"}


@pytest.mark.kernel
def test_renames_through_proc_count_only_for_the_leader(probes: Any) -> None:
    """A worker naming the leader renames the process; the leader naming a worker does not."""
    proc = start(RENAMES_THROUGH_PROC)
    finish(proc)
    assert probes.process_names([proc.pid]) == {proc.pid: "via-proc"}


@pytest.mark.kernel
def test_a_forked_child_that_never_execs_has_its_forking_threads_name(probes: Any, sink: Sink) -> None:
    proc = start(FORK_NO_EXEC, sink.port)
    child = int(finish(proc))
    flow = flow_end(probes, child, sink.port)
    assert (flow.comm, flow.bytes_tx) == ("forking-thr", 50)
    assert probes.process_names([proc.pid, child]) == {proc.pid: "python3", child: "forking-thr"}


@pytest.mark.kernel
def test_a_process_running_before_open_is_named(probes: Any, seeded: subprocess.Popen[str]) -> None:
    assert probes.process_names([seeded.pid]) == {seeded.pid: "seeded-proc"}
    assert probes.process_names([os.getpid()])[os.getpid()] == Path("/proc/self/comm").read_text().strip()


@pytest.mark.kernel
def test_unknown_tgids_are_left_out_and_nothing_was_lost(probes: Any) -> None:
    assert probes.process_names([]) == {}
    assert probes.process_names([2**31 - 1]) == {}  # above pid_max: never a process
    assert probes.process_name_gaps() == []  # this kernel has every tracepoint procs.bpf.c uses
    assert probes.counters()["proc_map_full"] == 0


def test_a_missing_tracepoint_or_argument_is_named_with_what_is_lost(tmp_path: Path) -> None:
    from meshnode.probes import missing_proc_tracepoints

    rename = tmp_path / "events" / "task" / "task_rename"
    rename.mkdir(parents=True)
    (rename / "format").write_text(
        "name: task_rename\nformat:\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n"
        "\tfield:char oldcomm[16];\toffset:8;\tsize:16;\tsigned:0;\n"
        "\tfield:char newcomm[16];\toffset:24;\tsize:16;\tsigned:0;\n")
    gaps = missing_proc_tracepoints(tmp_path)
    assert gaps[("task", "task_rename")] == (
        "tracepoint task:task_rename lacks argument(s) pid: a process whose main thread renames itself "
        "(prctl PR_SET_NAME) keeps its earlier name")
    assert gaps[("sched", "sched_process_exec")].startswith("tracepoint sched:sched_process_exec is missing: ")
    assert set(gaps) == {("task", "task_rename"), ("sched", "sched_process_exec"), ("task", "task_newtask")}

