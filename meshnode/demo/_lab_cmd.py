"""``meshnode lab``: a local demo lab of 6 hosts in 2 sites with real traffic and a node on each host.

    meshnode lab up        build it, print what was built, open ``meshctl top`` on web1's node
    meshnode lab status    hosts, nodes, faults in force, traffic counters
    meshnode lab fault N   inject a named fault (scenario); prints what blame should name
    meshnode lab heal      remove faults
    meshnode lab meshctl   run meshctl against a host's node (inside the lab's network)
    meshnode lab down      remove everything (also after a crash of the ``up`` process)

``up`` starts a supervisor process that owns the lab and returns once the lab is up; the lab lives on after
``up`` (and after ``meshctl top``) exits. Where ``top`` opens: in this terminal when stdin and stdout are
terminals (``q`` closes top, not the lab), else in a detached tmux session on a private socket (``tmux -L
meshnode-lab attach -t top``). Exit codes: 0 done, 1 the machine or the lab refused (message says why), 2
misuse (unknown fault, fault already in force).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from meshnode import lab
from meshnode.demo import _control
from meshnode.demo._control import LabCommandError

PROG = "meshnode lab"
TOP_MODES = ("auto", "foreground", "tmux", "none")
_SUPERVISOR = "meshnode.demo._supervisor"


def _scenario_help() -> str:
    return "\n".join(f"  {name:<17} {s.description}" for name, s in lab.SCENARIOS.items())


def configure(subparsers: Any) -> None:
    """Add the ``lab`` parser (with its own subcommands) to the ``meshnode`` dispatcher."""
    fmt = argparse.RawDescriptionHelpFormatter
    p: argparse.ArgumentParser = subparsers.add_parser(
        "lab", help="a demo lab: 6 hosts in 2 sites, real traffic, a node on each; inject faults",
        description=__doc__, formatter_class=fmt)
    p.add_argument("--state-dir", metavar="DIR",
                   help=f"where the lab keeps its state (default ${_control.STATE_DIR_ENV} or "
                        f"{_control.DEFAULT_STATE_DIR}); one lab per directory")
    p.set_defaults(func=run)
    sub = p.add_subparsers(dest="lab_command", metavar="COMMAND")

    up = sub.add_parser(
        "up", help="build the lab and open meshctl top on one node", formatter_class=fmt,
        description="Build the lab: network namespaces and cgroups for web1, web2, db1 (site ams1) and app1, "
        "app2, cache1 (site fra1), servers (postgres 5432, redis 6379, DNS 53/udp, HTTP 8080, exporters 9100), "
        "client loops making a request to each of their backends every 100-200 ms, and `meshnode run "
        "--insecure` with the eBPF sensor on every host, joined in one mesh. Needs root and eBPF (BTF, bcc). "
        "Returns once everything answers (about 30-60 s: six eBPF compiles), then "
        "opens meshctl top; the lab stays up until `meshnode lab down`.")
    up.add_argument("--top", choices=TOP_MODES, default="auto",
                    help="where to open meshctl top: auto (this terminal if it is one, else tmux), foreground, "
                    "tmux (detached session on a private socket), none")
    up.add_argument("--node", metavar="HOST", default="web1", help="the host whose node top shows (default web1)")
    up.add_argument("--export-period", type=float, default=2.0, metavar="SECONDS",
                    help="the nodes' export period (default 2)")
    up.add_argument("--sensor", choices=("ebpf", "diag", "auto"), default="ebpf",
                    help="the nodes' sensor (default ebpf)")
    up.add_argument("--timeout", type=float, default=240.0, metavar="SECONDS",
                    help="give up when the lab is not up after this long (default 240)")
    up.set_defaults(func=run, lab_fn=cmd_up)

    st = sub.add_parser("status", help="hosts, nodes, faults in force and traffic counters",
                        description="What the running lab holds: hosts and their addresses, services and clients, "
                        "whether each node runs, the faults in force, and each client's requests so far.")
    st.add_argument("--json", action="store_true", help="print one JSON document")
    st.set_defaults(func=run, lab_fn=cmd_status)

    fault = sub.add_parser("fault", help="inject a named fault into the running lab", formatter_class=fmt,
                           description="Inject a named fault (several can be in force, each once):\n\n"
                           + _scenario_help() + "\n\nPrints what blame should name. `meshnode lab heal` removes it.")
    fault.add_argument("name", metavar="NAME", help="the fault (see above)")
    fault.add_argument("--json", action="store_true", help="print one JSON document")
    fault.set_defaults(func=run, lab_fn=cmd_fault)

    heal = sub.add_parser("heal", help="remove the faults in force (or one)",
                          description="Remove every fault in force, or only NAME.")
    heal.add_argument("name", nargs="?", metavar="NAME", help="only this fault")
    heal.set_defaults(func=run, lab_fn=cmd_heal)

    ctl = sub.add_parser("meshctl", help="run meshctl against a host's node, inside the lab's network",
                         description="Run `meshctl --node <host's node> ARGS` in the host's network namespace "
                         "(the lab's addresses are not reachable from this one), e.g. `meshnode lab meshctl "
                         "blame` or `meshnode lab meshctl --host cache1 peers`.")
    ctl.add_argument("--host", default="web1", help="whose node to ask (default web1)")
    ctl.add_argument("args", nargs=argparse.REMAINDER, help="meshctl arguments")
    ctl.set_defaults(func=run, lab_fn=cmd_meshctl)

    down = sub.add_parser("down", help="remove the lab: processes, namespaces, cgroups, files",
                          description="Stop the nodes, kill every lab process, delete the namespaces, cgroups, "
                          "data and the tmux session. Works after a crash of `meshnode lab up` too (what is left "
                          "is found by its name prefix); with no lab up it says so and does nothing.")
    down.set_defaults(func=run, lab_fn=cmd_down)


def _run(fn: Any, args: argparse.Namespace) -> int:
    try:
        code: int = fn(args, _control.state_dir(args.state_dir))
        return code
    except LabCommandError as exc:
        print(f"{PROG} {args.lab_command}: {exc}", file=sys.stderr)
        return exc.code


# -- up ---------------------------------------------------------------------------------------------------


def _missing(sensor: str) -> list[str]:
    """What this machine lacks for the lab, as phrases (root first: without it nothing else is checkable)."""
    if os.geteuid() != 0:
        return ["root (network namespaces, cgroups and eBPF need it): run it with sudo"]
    missing: list[str] = list(lab.missing_prerequisites())
    if sensor == "ebpf":
        if not Path("/sys/kernel/btf/vmlinux").exists():
            missing.append("eBPF: this kernel has no BTF (/sys/kernel/btf/vmlinux); try --sensor diag")
        if importlib.util.find_spec("bcc") is None:
            missing.append("eBPF: the bcc Python module (apt-get install python3-bpfcc, then make setup)")
    return missing


def cmd_up(args: argparse.Namespace, directory: Path) -> int:
    if _control.is_up(directory):
        state = _control.read_state(directory) or {}
        since = time.strftime("%H:%M:%S", time.localtime(state.get("started", 0)))
        raise LabCommandError(
            f"a lab is already up (lab {state.get('lab_id', '(still building)')}, supervisor pid "
            f"{state.get('pid', '?')}, since {since}); `meshnode lab down` removes it")
    missing = _missing(args.sensor)
    if missing:
        raise LabCommandError("cannot build the lab: needs " + "; ".join(missing))
    if _control.read_state(directory) is not None:
        print(f"{PROG} up: removing what a crashed lab left: {', '.join(_cleanup_crashed(directory)) or 'nothing'}")
    wants_tmux = args.top == "tmux" or (args.top == "auto" and not _interactive())
    if wants_tmux and shutil.which("tmux") is None:
        raise LabCommandError("no tmux to open meshctl top in (apt-get install tmux), or use --top none")

    config = {"nodes": True, "export_period": args.export_period, "sensor": args.sensor}
    directory.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    with open(directory / _control.LOG, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", _SUPERVISOR, str(directory), json.dumps(config), str(write_fd)],
            pass_fds=(write_fd,), start_new_session=True, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT)
    os.close(write_fd)
    print(f"building the lab: 6 hosts in 2 sites, 7 services, 5 client loops, 6 nodes ({args.sensor} sensor, "
          f"export period {args.export_period:g} s); up to a minute...", flush=True)
    started = time.monotonic()
    try:
        answer = _wait_ready(read_fd, proc, args.timeout)
    except BaseException:
        _stop_supervisor(proc.pid, directory)
        raise
    finally:
        os.close(read_fd)
    if not answer.get("ok"):
        tail = _tail(directory / _control.LOG)
        raise LabCommandError(f"the lab did not come up: {answer.get('error')}\n{tail}")
    state = _control.read_state(directory) or {}
    print(f"lab {state.get('lab_id')} up in {time.monotonic() - started:.0f} s\n")
    print(_describe(state, directory))
    return _open_top(args, directory, state)


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _wait_ready(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LabCommandError(f"the lab was not up after {timeout:g} s (see the supervisor log); removed it")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
        elif proc.poll() is not None:
            break
    if b"\n" not in buf:
        return {"ok": False, "error": f"the supervisor exited ({proc.wait()}) before the lab was up"}
    doc: dict[str, Any] = json.loads(buf.split(b"\n")[0])
    return doc


def _describe(state: dict[str, Any], directory: Path) -> str:
    lines = [f"{'SITE':<6} {'HOST':<7} {'ADDRESS':<15} {'NODE':<5} SERVICES / CLIENTS"]
    for h in state.get("hosts", []):
        what = ", ".join(h["services"] + [f"client {c}" for c in h["clients"]])
        lines.append(f"{h['site']:<6} {h['host']:<7} {h['ip']:<15} {':7400' if h['node'] else '-':<5} {what}")
    lines += ["", "faults:  meshnode lab fault NAME    (meshnode lab heal removes them)"]
    lines += [f"  {name:<17} {s.description}" for name, s in lab.SCENARIOS.items() if name != "none"]
    lines += [
        "",
        "ask a node:   meshnode lab meshctl [--host HOST] blame|peers|flows|health|query ...",
        "status:       meshnode lab status",
        "remove all:   meshnode lab down",
        f"state:        {directory}  (node logs and data: {state.get('data_dir')})",
    ]
    return "\n".join(lines)


def _host(state: dict[str, Any], name: str) -> dict[str, Any]:
    for h in state.get("hosts", []):
        if h["host"] == name:
            return dict(h)
    raise LabCommandError(f"no host {name!r} in the lab (hosts: {[h['host'] for h in state.get('hosts', [])]})", 2)


def _meshctl_argv(state: dict[str, Any], host: str, args: list[str]) -> list[str]:
    h = _host(state, host)
    meshctl = Path(sys.executable).with_name("meshctl")
    exe = [str(meshctl)] if meshctl.exists() else [sys.executable, "-m", "meshnode.cli.main"]
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    return [nsenter, f"--net=/run/netns/{h['netns']}", "--", *exe, "--node", h["node"], *args]


def _open_top(args: argparse.Namespace, directory: Path, state: dict[str, Any]) -> int:
    mode = args.top if args.top != "auto" else ("foreground" if _interactive() else "tmux")
    if mode == "none":
        print("\nmeshctl top: meshnode lab meshctl top")
        return 0
    argv = _meshctl_argv(state, args.node, ["top"])
    if mode == "foreground":
        print(f"\nopening meshctl top on {args.node}'s node (q quits top; the lab stays up)...", flush=True)
        time.sleep(1.5)
        subprocess.run(argv, check=False)
        print(f"\nthe lab is still up: `meshnode lab fault NAME`, `meshnode lab down` ({directory})")
        return 0
    sock = str(state.get("tmux_socket") or _control.tmux_socket(directory))
    tmux = ["tmux", "-L", sock]
    subprocess.run([*tmux, "kill-session", "-t", "top"], capture_output=True, check=False)
    subprocess.run([*tmux, "new-session", "-d", "-s", "top", "-x", "120", "-y", "45", shlex.join(argv)], check=True,
                   capture_output=True)
    print(f"\nmeshctl top runs in tmux (stdin is not a terminal): tmux -L {sock} attach -t top")
    return 0


# -- the others -------------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, directory: Path) -> int:
    if not _control.is_up(directory):
        hint = " (a crashed lab left state: `meshnode lab down` removes it)" if _control.read_state(directory) else ""
        raise LabCommandError(f"no lab is up in {directory}{hint}; start one with `meshnode lab up`")
    doc = _control.request(directory, "status")
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    state = doc["state"]
    print(f"lab {state['lab_id']} up {doc['uptime_s']:.0f} s, supervisor pid {state['pid']}, "
          f"export period {state['export_period']:g} s\n")
    alive = doc["nodes_alive"]
    for h in state["hosts"]:
        node = "node up" if alive.get(h["host"]) else "NODE DOWN"
        what = ", ".join(h["services"] + [f"client {c}" for c in h["clients"]])
        print(f"  {h['site']:<6} {h['host']:<7} {h['ip']:<15} {node:<9} {what}")
    print("\nfaults in force: " + (", ".join(f["name"] for f in state["faults"]) or "none"))
    for f in state["faults"]:
        exp = f["expected"]
        print(f"  {f['name']}: {f['description']}" + (f" -> blame: {exp['kind']} {exp['name']}" if exp else ""))
    print("\nrequests so far (ok / failed):")
    for client, targets in sorted(doc["traffic"].items()):
        cells = "  ".join(f"{key} {n['ok']}/{n['failed']}" for key, n in targets.items())
        print(f"  {client:<18} {cells}")
    return 0


def cmd_fault(args: argparse.Namespace, directory: Path) -> int:
    known = lab.SCENARIOS
    if args.name not in known:
        raise LabCommandError(f"unknown fault {args.name!r}; known: {', '.join(known)}", 2)
    doc = _control.request(directory, "fault", name=args.name)
    if args.json:
        print(json.dumps(doc))
        return 0
    exp = doc["expected"]
    print(f"fault {doc['name']} in force: {doc['description']}")
    print(f"blame should name: {exp['kind']} {exp['name']}" if exp else "blame should name: nothing")
    print("watch: meshctl top (or `meshnode lab meshctl blame`); remove: meshnode lab heal")
    return 0


def cmd_heal(args: argparse.Namespace, directory: Path) -> int:
    doc = _control.request(directory, "heal", **({"name": args.name} if args.name else {}))
    print("removed: " + (", ".join(doc["removed"]) or "nothing (no fault was in force)"))
    return 0


def cmd_meshctl(args: argparse.Namespace, directory: Path) -> int:
    state = _control.read_state(directory)
    if state is None or not _control.is_up(directory) or "hosts" not in state:
        raise LabCommandError(f"no lab is up in {directory}; start one with `meshnode lab up`")
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    return subprocess.run(_meshctl_argv(state, args.host, rest), check=False).returncode


def cmd_down(args: argparse.Namespace, directory: Path) -> int:
    state = _control.read_state(directory)
    if _control.is_up(directory):
        pid = int(state["pid"]) if state else None
        try:
            _control.request(directory, "down", timeout=10)
        except LabCommandError as exc:
            print(f"{PROG} down: {exc}; stopping the supervisor with SIGTERM", file=sys.stderr)
            if pid is not None:
                _stop_supervisor(pid, directory)
        deadline = time.monotonic() + 60
        while _control.is_up(directory) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _control.is_up(directory):
            raise LabCommandError(f"the supervisor (pid {pid}) did not finish tearing down within 60 s")
        removed = _cleanup_crashed(directory, state)  # whatever the supervisor could not remove
        print(f"lab {state.get('lab_id') if state else ''} removed" + (f" (also: {', '.join(removed)})" if removed
                                                                       else ""))
        return 0
    if state is None:
        _kill_tmux(directory)
        print(f"no lab is up in {directory}; nothing to remove")
        return 0
    removed = _cleanup_crashed(directory, state)
    print(f"removed what a crashed lab left: {', '.join(removed) or 'nothing'}")
    return 0


def _stop_supervisor(pid: int, directory: Path) -> None:
    """SIGTERM the supervisor (it tears the lab down) and wait for its lock to go; SIGKILL after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _control.is_up(directory) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _control.is_up(directory):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _kill_tmux(directory: Path) -> bool:
    if shutil.which("tmux") is None:
        return False
    sock = _control.tmux_socket(directory)
    r = subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True, check=False)
    # the server leaves its socket file behind when its last session ends with the lab's processes
    path = Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}" / sock
    with contextlib.suppress(OSError):
        path.unlink()
    return r.returncode == 0


def _cleanup_crashed(directory: Path, state: dict[str, Any] | None = None) -> list[str]:
    """Remove what a dead supervisor left: lab objects by its name prefix, data, tmux, state. Idempotent."""
    state = state if state is not None else _control.read_state(directory)
    removed: list[str] = []
    if state and state.get("pid"):
        report = lab.sweep(f"mnlab-{int(state['pid'])}-", include_live=True)
        removed += [f"lab {lab}" for lab in report.labs]
        removed += [f"could not remove: {err}" for err in report.errors]
    data = state.get("data_dir") if state else None
    if data and Path(data).exists():
        shutil.rmtree(data, ignore_errors=True)
        removed.append(f"data {data}")
    if _kill_tmux(directory):
        removed.append("tmux session")
    for name in (_control.STATE, _control.SOCKET):
        path = directory / name
        if path.exists():
            path.unlink()
            removed.append(str(path))
    return removed


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run(args: argparse.Namespace) -> int:
    """Entry point of ``meshnode lab``."""
    fn = getattr(args, "lab_fn", None)
    if fn is None:
        return _usage_from(args)
    return _run(fn, args)


def _usage_from(args: argparse.Namespace) -> int:
    print(f"usage: {PROG} {{up,status,fault,heal,meshctl,down}} ... (see {PROG} --help)", file=sys.stderr)
    return 2
