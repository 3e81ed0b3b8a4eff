"""``meshnode capture``: the sensor alone, printing each flow as it ends (like tcplife, exact and richer).

Human output is one aligned line per flow in 80 columns, then the name of the thread that used the socket
in brackets where it is not the process's (``dig`` ... ``[isc-net-0000]``); ``--json`` prints one JSON
object per ended flow (DESIGN field names), flushes active flows as interim records at exit, then one final
``{"completeness": {...}}`` object. Ctrl-C (or ``--duration``) ends it cleanly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from meshnode._model import FlowRecord
    from meshnode.sensor import Completeness, DnsRecord, JsonBatch, Sensor

EPILOG = """examples:
  meshnode capture                           every flow on this host until Ctrl-C
  meshnode capture --duration 30 --json      30 s of flows as JSON Lines, then completeness
  meshnode capture --cgroup /system.slice/nginx.service --sensor ebpf
"""

HEADER = f"{'PID':>7} {'COMM':<10} {'P':1} {'LOCAL':<17} {'REMOTE':<21} {'OUTCOME':<7} {'TX':>5} {'RX':>5}"


def configure(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``capture`` subcommand."""
    p = sub.add_parser(
        "capture", help="run the sensor alone and print flows as they end",
        description="Run the sensor alone and print each flow as it ends (exact bytes, outcome, RTT).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=0.0, metavar="S",
                   help="stop after S seconds (default: until Ctrl-C)")
    p.add_argument("--cgroup", default="/", metavar="PATH", help="watch only this cgroup v2 subtree (default: /)")
    p.add_argument("--sensor", choices=("auto", "ebpf", "diag"), default="auto",
                   help="auto: eBPF when possible, else sock_diag (default: auto)")
    p.add_argument("--idle-timeout", type=float, default=90.0, metavar="S",
                   help="end connectionless flows after S seconds idle (default: 90)")
    p.add_argument("--json", action="store_true", help="JSON Lines: one object per flow, then completeness")
    p.add_argument("--interval", type=float, default=0.2, metavar="S", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def human_size(n: int) -> str:
    """Bytes in at most 5 characters: 999, 1.2K, 34M, 5.1G."""
    for unit, div in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= div:
            v = n / div
            return f"{v:.1f}{unit}" if v < 10 else f"{v:.0f}{unit}"
    return str(n)


def endpoint(addr: str, port: int, width: int = 21) -> str:
    """addr:port cut to fit ``width`` (the address is shortened from the left, the port is kept)."""
    text = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    return text if len(text) <= width else "…" + text[-(width - 1):]


def human_line(f: FlowRecord) -> str:
    """One flow in 80 columns, and `` [thread]`` past them when a thread other than the main one used it."""
    line = (f"{f.pid:>7} {f.comm[:10]:<10} {'T' if f.proto == 'tcp' else 'U'} {endpoint(f.src, f.sport, 17):<17} "
            f"{endpoint(f.dst, f.dport):<21} {_short_outcome(f.outcome):<7} {human_size(f.bytes_tx):>5} "
            f"{human_size(f.bytes_rx):>5}")
    line = f"{line} [{f.thread}]" if f.thread else line
    return f"{line} ({f.remote_name})" if f.remote_name else line


def dns_line(d: DnsRecord) -> str:
    """One DNS transaction record: the question, the answer code, the resolver and the latency."""
    latency = f"{d.latency_us / 1000:.1f}ms" if d.timed else "-"
    who = f"{d.comm}/{d.pid}" if d.pid else "-"
    return (f"{'DNS':>7} {d.query or '?'} {d.qtype} {d.rcode}{' (failed)' if d.failed else ''} from "
            f"{endpoint(d.server, 53)}{'/tcp' if d.tcp else ''} x{d.answers} {latency} {who}")


def _short_outcome(outcome: str) -> str:
    return {"established": "ok", "udp_answered": "udp-ok", "udp_unanswered": "no-ans",
            "in_progress": "open"}.get(outcome, outcome)[:7]


def run(args: argparse.Namespace) -> int:
    """Run the capture; exit 0 on a clean end, 1 when the sensor cannot start."""
    from meshnode._exceptions import MeshnodeError
    from meshnode.sensor import create_sensor

    out: TextIO = sys.stdout
    try:
        sensor = create_sensor(args.sensor, args.cgroup, args.idle_timeout)
    except MeshnodeError as exc:
        print(f"meshnode capture: {exc}", file=sys.stderr)
        return 1
    print(f"meshnode capture: sensor {sensor.mode} ({sensor.fidelity}), scope {sensor.scope}: {sensor.reason}",
          file=sys.stderr)
    stop = False

    def _stop(_sig: int, _frm: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    from meshnode.sensor import Completeness

    total = Completeness()
    deadline = time.monotonic() + args.duration if args.duration > 0 else float("inf")
    if not args.json:
        print(HEADER, file=out)
    poll = _json_poller(sensor) if args.json else None
    try:
        while not stop and time.monotonic() < deadline:
            _poll_and_emit(sensor, poll, total, args.json, out)
            out.flush()
            time.sleep(args.interval)
        _poll_and_emit(sensor, poll, total, args.json, out)
        if args.json:
            for flow in sensor.active():
                _emit(flow, True, out)
            out.write(json.dumps({"completeness": dataclasses.asdict(total)}) + "\n")
        else:
            print(f"-- {total.flows_recorded} flows; lost {total.lost_events}, evicted {total.map_evictions}, "
                  f"ring-buffer overruns {total.ringbuf_overruns}", file=sys.stderr)
        out.flush()
    except BrokenPipeError:
        pass
    finally:
        sensor.close()
    return 0


def _json_poller(sensor: Sensor) -> Callable[[], JsonBatch] | None:
    """The sensor's own JSON Lines poll where it has one (the eBPF sensor's fast path), else None."""
    poll: Callable[[], JsonBatch] | None = getattr(sensor, "poll_json", None)
    return poll


def _poll_and_emit(sensor: Sensor, poll_json: Callable[[], JsonBatch] | None, total: Completeness,
                   as_json: bool, out: TextIO) -> None:
    """One poll: its flows written in one write, its counters added to ``total``."""
    if poll_json is not None:
        jb = poll_json()
        total.add(jb.completeness)
        if jb.text:
            out.write(jb.text)
        _emit_dns(jb.dns, True, out)
        return
    batch = sensor.poll()
    total.add(batch.completeness)
    _emit_all(batch.ended, as_json, out)
    _emit_dns(batch.dns, as_json, out)


def _emit_dns(records: Iterable[DnsRecord], as_json: bool, out: TextIO) -> None:
    """A poll's DNS transactions: ``{"dns": {...}}`` lines, or ``dns_line``s."""
    for d in records:
        out.write(json.dumps({"dns": d.to_json()}) + "\n" if as_json else dns_line(d) + "\n")


def json_line(flow: FlowRecord) -> str:
    """One flow as a JSON Lines line: the text of ``json.dumps(flow.to_json())`` and a newline."""
    return flow.to_json_text() + "\n"


def _emit_all(flows: Iterable[FlowRecord], as_json: bool, out: TextIO) -> None:
    """A poll's flows as one write (one pipe write per poll rather than one per buffer-full)."""
    if flows:
        out.write("".join(map(json_line, flows)) if as_json else "".join(human_line(f) + "\n" for f in flows))


def _emit(flow: FlowRecord, as_json: bool, out: TextIO) -> None:
    out.write(json_line(flow) if as_json else human_line(flow) + "\n")
