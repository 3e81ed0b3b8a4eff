"""The command line: one argparse parser for every command, built without importing gRPC or rich.

Values are checked here (durations, addresses, ports, enum names) so that a typo fails in one line with
exit 2 before any call to the node.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import NoReturn

from meshnode.cli._exceptions import EXIT_USAGE
from meshnode.cli._units import parse_duration

DEFAULT_NODE = "127.0.0.1:7400"

OUTCOMES = ("established", "refused", "timeout", "reset", "udp_answered", "udp_unanswered", "in_progress")
PROTOS = ("tcp", "udp")
MEASURE_KINDS = ("connect", "rtt", "path")
DIRECTIONS = ("outbound", "inbound")
EVENT_TYPES = (
    "retransmit_burst", "zero_window", "rtt_shift", "reset_sent", "reset_received", "drop",
    "connect_failed", "anomaly", "icmp_unreachable", "frag_needed", "ttl_exceeded", "dns_failed",
)

RCODE_NAMES = ("noerror", "formerr", "servfail", "nxdomain", "notimp", "refused")
"""DNS answer codes by name (``rcode<n>`` names any other)."""

EXIT_CODES_HELP = """\
exit codes:
  0    ok
  1    the node answered with an error (e.g. a filter it rejects)
  2    usage error, or the node does not offer this command yet
  3    node unreachable
  4    deadline exceeded (the node did not answer in time)
  5    permission denied
  130  interrupted (Ctrl-C)"""

MAIN_EPILOG = f"""\
examples:
  meshctl status                              what the node's sensor sees and what it lost
  meshctl flows --proc curl --outcome refused,timeout --since 10m
  meshctl --node 10.0.0.5:7400 top            live dashboard of another host

Every command takes --json (one JSON document, JSON Lines for streams), --wide, --timeout DURATION
and --node HOST:PORT, before or after the command name. The node defaults to $MESHCTL_NODE, else
{DEFAULT_NODE}. Nodes with mutual TLS want --tls-dir DIR ($MESHCTL_TLS_DIR): ca.crt and a client
certificate, from meshnode ca issue NAME --client --operator --out DIR; its NAME.sign.key (or --sign-key
FILE, $MESHCTL_SIGN_KEY) signs fleet queries.
Durations: 90s, 5m, 1h30m; times: a duration ago or RFC3339 (2026-11-23T17:30:00Z).
Times shown are UTC; sizes are binary (1.2 MiB = 1.2 x 1024^2 bytes).

{EXIT_CODES_HELP}"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see '{self.prog} --help')\n")
        sys.exit(EXIT_USAGE)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number (example: 0.2)") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except Exception as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _time(text: str) -> str:
    """Validate now (duration, RFC3339 or ``all``); the command converts it against its own clock."""
    from meshnode.cli._units import parse_time_ns

    if text.strip().lower() == "all":
        return "all"
    try:
        parse_time_ns(text, 0)
    except Exception as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _address(text: str) -> str:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not an IP address or CIDR (examples: 10.0.0.2, 10.0.0.0/8, fd00::/64)"
        ) from None
    return text


def _list(text: str) -> list[str]:
    """``a,b`` as a list of non-empty texts."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"'{text}' names nothing")
    return items


def _servers(text: str) -> list[str]:
    items = _list(text)
    for item in items:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{item}' is not an IP address (examples: 10.0.0.53, fd00::53)") from None
    return items


def _rcodes(text: str) -> list[str]:
    items = [t.lower() for t in _list(text)]
    for item in items:
        if item not in RCODE_NAMES and not (item.startswith("rcode") and item[5:].isdigit()):
            raise argparse.ArgumentTypeError(
                f"'{item}' is not an answer code (one or more of: {', '.join(RCODE_NAMES)}, or rcode<n>)")
    return items


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port (1-65535)")
    return port


def _pid(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a process id")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"'{text}' is not a count (0 or more)")
    return int(text)


def _choices(names: tuple[str, ...], what: str) -> type:
    """An argparse type accepting ``a,b`` lists of ``names`` (case-insensitive), returning a list."""

    class _List(list[str]):
        def __init__(self, text: str) -> None:
            items = [t.strip().lower() for t in text.split(",") if t.strip()]
            bad = [t for t in items if t not in names]
            if bad or not items:
                raise argparse.ArgumentTypeError(
                    f"'{text}' is not a {what} (one or more of: {', '.join(names)})"
                )
            super().__init__(items)

    _List.__name__ = what
    return _List


def _node(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"'{text}' is not HOST:PORT (example: 127.0.0.1:7400)")
    return text


def _common(wide: bool = True) -> argparse.ArgumentParser:
    """Flags every command takes, also accepted after the command name."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--node", type=_node, default=argparse.SUPPRESS, metavar="HOST:PORT",
                   help=f"node to ask (default: $MESHCTL_NODE or {DEFAULT_NODE})")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine output: one JSON document (JSON Lines for streams), DESIGN field names")
    if wide:
        g.add_argument("--wide", action="store_true", default=argparse.SUPPRESS,
                       help="more columns (default fits 80 columns)")
    g.add_argument("--timeout", type=_duration, default=argparse.SUPPRESS, metavar="DURATION",
                   help="deadline of each call that does not follow (default: 10s)")
    g.add_argument("--tls-dir", default=argparse.SUPPRESS, metavar="DIR",
                   help="mutual TLS: ca.crt and a client NAME.crt/NAME.key (default: $MESHCTL_TLS_DIR; "
                        "none: plaintext, for --insecure nodes)")
    g.add_argument("--tls-name", default=argparse.SUPPRESS, metavar="NAME",
                   help="which certificate in --tls-dir (default: $MESHCTL_TLS_NAME, or the only one)")
    g.add_argument("--sign-key", default=argparse.SUPPRESS, metavar="FILE",
                   help="operator key signing fleet queries (default: $MESHCTL_SIGN_KEY, or NAME.sign.key "
                        "in --tls-dir)")
    g.add_argument("--sign-plaintext", action="store_true", default=argparse.SUPPRESS,
                   help="sign even without --tls-dir (the signature can be read and replayed on the way; "
                        "meshnode nodes refuse signatures that arrive in plaintext)")
    return p


def _filters(*, events: bool = False) -> argparse.ArgumentParser:
    """The FlowFilter flags: values of one flag are ORed (repeat it or use commas), flags are ANDed."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("filters (values of one flag are ORed, different flags ANDed)")
    g.add_argument("--proc", action="append", metavar="COMM", help="process name (exact)")
    g.add_argument("--pid", action="append", type=_pid, help="process id")
    g.add_argument("--dst", action="append", type=_address, metavar="ADDR|CIDR",
                   help="remote address or CIDR")
    g.add_argument("--port", action="append", type=_port, help="local or remote port")
    g.add_argument("--dport", action="append", type=_port, metavar="PORT", help="remote port")
    g.add_argument("--outcome", action="append", type=_choices(OUTCOMES, "outcome"),
                   metavar="OUTCOME[,..]", help="|".join(OUTCOMES))
    g.add_argument("--proto", action="append", type=_choices(PROTOS, "protocol"), metavar="tcp|udp")
    g.add_argument("--direction", action="append", type=_choices(DIRECTIONS, "direction"),
                   metavar="outbound|inbound")
    g.add_argument("--cgroup", action="append", metavar="PATH", help="cgroup path prefix")
    if events:
        g.add_argument("--type", action="append", type=_choices(EVENT_TYPES, "event type"),
                       metavar="TYPE[,..]", help="|".join(EVENT_TYPES))
    return p


def _fleet(*, query: bool = False) -> argparse.ArgumentParser:
    """The flags of a fleet history query (``flows --fleet``, ``query --fleet``)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("fleet history (--fleet)")
    g.add_argument("--fleet", action="store_true",
                   help="records from every member's own store, merged in time order, each with its host")
    if not query:  # query has its own --where and --deadline
        g.add_argument("--where", action="append", metavar="LABEL=VALUE", default=[],
                       help="with --fleet: only members with this label (repeat to AND)")
        g.add_argument("--deadline", type=_duration, metavar="DURATION", default=2.0,
                       help="with --fleet: fan-out deadline (default: 2s); members that miss it are listed")
    g.add_argument("--per-site", action="store_true",
                   help="with --fleet: ask one member per site, which asks the rest of its site")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (cheap: argparse only)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="meshctl",
        description="meshctl: ask a meshnode what its host's network is doing.",
        epilog=MAIN_EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument("--node", type=_node, default=None, metavar="HOST:PORT",
                        help=f"node to ask (default: $MESHCTL_NODE or {DEFAULT_NODE})")
    parser.add_argument("--json", action="store_true", default=False, help=argparse.SUPPRESS)
    parser.add_argument("--wide", action="store_true", default=False, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=_duration, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--tls-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tls-name", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sign-key", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sign-plaintext", action="store_true", default=False, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    common = _common()

    def add(
        name: str, help_text: str, epilog: str, parents: list[argparse.ArgumentParser]
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, help=help_text, description=f"meshctl {name}: {help_text}.", epilog=epilog,
            formatter_class=fmt, parents=[*parents, common],  # type: ignore[list-item]
        )
        return p

    add("status", "the node: sensor mode and fidelity, export period, store, lost and evicted counters",
        """examples:
  meshctl status
  meshctl status --json | jq .completeness
  meshctl --node 10.0.0.5:7400 status""", [])

    p = add("flows", "flow records, newest last (like hubble observe)",
            """examples:
  meshctl flows --since 5m --outcome refused,timeout
  meshctl flows --proc curl --dst 10.0.0.0/8 --port 443 --follow
  meshctl flows --since 1h --limit 100000 --json > flows.jsonl
  meshctl flows --fleet --dst 10.1.2.3 --dport 5432 --since 1h    who talked to it, from every member
  meshctl flows --fleet --where site=ams1 --outcome refused,timeout --json""", [_filters(), _fleet()])
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming as export periods close")
    p.add_argument("--since", type=_time, metavar="WHEN",
                   help="from this long ago (5m, 1h30m) or an RFC3339 time (default: 15m; 'all': the whole "
                   "history). The node answers oldest first")
    p.add_argument("--until", type=_time, metavar="WHEN", help="up to this long ago or an RFC3339 time")
    p.add_argument("-n", "--limit", type=_count, default=0, metavar="N",
                   help="at most N records (default: the node's, 1,000); with --follow, N past records "
                   "first (default: none), then new ones")
    p.add_argument("--interim", action="store_true", help="include interim records of active flows")

    p = add("health", "useful-flow fractions per host, process and destination, retry and scan patterns",
            """examples:
  meshctl health
  meshctl health --since 1h --proc nginx
  meshctl health --json | jq '.by_destination[] | select(.useful_fraction < 0.9)'""", [_filters()])
    p.add_argument("--since", type=_time, metavar="WHEN", help="start of the range (default: 15m)")
    p.add_argument("--until", type=_time, metavar="WHEN", help="end of the range (default: now)")

    p = add("dns", "the host's DNS transactions: question, resolver, answer code, latency, asking process",
            """examples:
  meshctl dns                                 the last 15 minutes' newest 100
  meshctl dns --failed --since 1h             SERVFAIL, NXDOMAIN and REFUSED answers of the last hour
  meshctl dns --name '*.example.com' --rcode nxdomain,servfail
  meshctl dns --server 10.0.0.53 --limit 1000 --json | jq '.transactions[] | select(.latency_us > 100000)'

One row is one question (name and type) answered by one resolver with one answer code between two
sensor polls (usually one answer). SERVFAIL, NXDOMAIN and REFUSED are failures of the resolver they
came from: meshctl health counts them per resolver and meshctl blame names a failing one. The node
keeps them with its flows (same retention) and shows the newest that match, oldest first.""", [])
    p.add_argument("--since", type=_time, metavar="WHEN",
                   help="from this long ago (5m, 1h30m) or an RFC3339 time (default: 15m; 'all': the whole history)")
    p.add_argument("--until", type=_time, metavar="WHEN", help="up to this long ago or an RFC3339 time")
    p.add_argument("--name", action="append", type=_list, metavar="NAME[,..]",
                   help="question name, exact or '*.example.com' for a domain's names")
    p.add_argument("--rcode", action="append", type=_rcodes, metavar="RCODE[,..]",
                   help="|".join(RCODE_NAMES) + "|rcode<n>")
    p.add_argument("--server", action="append", type=_servers, metavar="ADDR[,..]", help="resolver address")
    p.add_argument("--failed", action="store_true", help="only SERVFAIL, NXDOMAIN and REFUSED answers")
    p.add_argument("-n", "--limit", type=_count, default=0, metavar="N",
                   help="at most N, the newest (default: the node's, 100; at most 10,000)")

    p = add("events", "low-level events: retransmit bursts, zero windows, RTT shifts, resets, drops",
            """examples:
  meshctl events --follow
  meshctl events --type retransmit_burst,rtt_shift --proc nginx -f
  meshctl events --last 500 --json
  meshctl events --since 10m --type connect_failed        refusals and timeouts, from before a restart too""",
            [_filters(events=True)])
    p.add_argument("-f", "--follow", action="store_true", help="keep the stream open")
    p.add_argument("--last", type=_count, default=None, metavar="N",
                   help="past events to show first, the newest that match (default: 20; with --since, every "
                   "one since then)")
    p.add_argument("--since", type=_time, metavar="WHEN",
                   help="earliest event time (5m or RFC3339); events come from the node's store, so they "
                   "outlive a restart, and a --since before what it holds says so")

    add("peers", "mesh members as this node sees them: state, digest age, RTT",
        """examples:
  meshctl peers
  meshctl peers --json | jq '.peers[] | select(.state != "alive")'
  meshctl --node 10.0.0.5:7400 peers""", [])

    p = add("query", "fleet-wide health of destinations, aggregated along labels",
            """examples:
  meshctl query --group-by region
  meshctl query --destination 10.0.0.2:443 --where site=ams1
  meshctl query --json
  meshctl query --fleet --dport 5432 --since 1h      flow records from every member (as flows --fleet)""",
            [_filters(), _fleet(query=True)])
    p.add_argument("--since", type=_time, metavar="WHEN", help="with --fleet: from this long ago (default: 15m)")
    p.add_argument("--until", type=_time, metavar="WHEN", help="with --fleet: up to this long ago")
    p.add_argument("-n", "--limit", type=_count, default=0, metavar="N",
                   help="with --fleet: at most N records (default: one page of the node's 1,000)")
    p.add_argument("--interim", action="store_true", help="with --fleet: include interim records")
    p.add_argument("--destination", metavar="DST:PORT", default="", help="one destination (default: all)")
    p.add_argument("--where", action="append", metavar="LABEL=VALUE", default=[],
                   help="only members with this label (repeat to AND)")
    p.add_argument("--group-by", metavar="LABEL", default="",
                   help="label to group hosts by (region, site, host)")
    p.add_argument("--deadline", type=_duration, metavar="DURATION", default=2.0,
                   help="fan-out deadline (default: 2s)")

    p = add("blame", "who is to blame: ranked suspects (process, service, host, site, path) with evidence",
            """examples:
  meshctl blame                          the fleet's problems now: the periods since the latest change
  meshctl blame --whole --since 1h       every period of the last hour alike
  meshctl blame --since 2m 10.0.0.2:443  only suspects that explain problems to that destination
  meshctl blame --json | jq '.suspects[0]'
  meshctl blame --compare --since 10m    this host against its site's peers, per destination""", [])
    p.add_argument("target", nargs="?", metavar="DST[:PORT]", help="destination (or address) to diagnose")
    p.add_argument("--since", type=_time, metavar="WHEN", help="start of the range (default: 15m)")
    p.add_argument("--until", type=_time, metavar="WHEN", help="end of the range (default: now)")
    p.add_argument("--threshold", type=_fraction, metavar="FRACTION",
                   help="problem fraction that flags an entity, in (0, 1] (default: 0.2)")
    p.add_argument("--max", type=_count, default=0, metavar="N", help="at most N suspects (default: 10)")
    p.add_argument("--whole", action="store_true",
                   help="weigh the whole range alike (default: only the periods since the latest change)")
    p.add_argument("--compare", action="store_true",
                   help="compare this host with its peers (same labels) per destination instead")
    p.add_argument("--group-by", action="append", default=[], metavar="LABEL",
                   help="with --compare: labels peers share with this host (default: site; repeat)")

    p = add("validate", "peers' trust scores, flagged peers and the evidence: both ends of shared flows compared",
            """examples:
  meshctl validate
  meshctl validate --peer 3f2a9c0d1e2b4a5f
  meshctl validate --json | jq '.evidence[] | select(.blamed != "")'
  meshctl validate --challenge 3f2a9c0d1e2b4a5f     a third member connects to it; its digests must say so
  meshctl validate --json""", [])
    p.add_argument("--peer", metavar="NODE_ID", help="one peer (default: all)")
    p.add_argument("--max-evidence", type=_count, default=0, metavar="N",
                   help="at most N pieces of evidence, newest first (default: the node's, 100)")
    p.add_argument("--challenge", metavar="NODE_ID",
                   help="challenge this member: a third member connects to it, and its next digests must report "
                        "the connections (pass raises its score, failure flags it)")
    p.add_argument("--prober", metavar="NODE_ID", default="",
                   help="with --challenge: the member that connects (default: the most trusted third member)")
    p.add_argument("--count", type=_count, default=0, metavar="N",
                   help="with --challenge: connects to make, 1..100 (default: 10)")
    p.add_argument("--port", type=_count, default=0, metavar="PORT",
                   help="with --challenge: the suspect's port to connect to (default: its mesh port)")

    p = add("measure", "run an active task on a member: TCP connects, handshake RTTs, or the path (seed 003)",
            """examples:
  meshctl measure --to 10.0.0.2:443                      from the node asked (--node), 5 connects
  meshctl measure --from web-2 --to 10.0.0.2:443 --kind rtt --count 20
  meshctl measure --from 3f2a9c0d1e2b4a5f --to db-1 --port 5432 --kind path
  meshctl measure --from web-2 --list --since 1h         the results web-2 stored
  meshctl measure --to 10.0.0.2:443 --json

--from names a member by node id (or its first digits) or host label, or is HOST:PORT of a node;
the task runs there and is stored in its store. Path probes are off unless that node's config
says active_tasks_path = true.""", [])
    p.add_argument("--from", dest="source", metavar="NODE", default="",
                   help="the member that measures (default: the node asked)")
    p.add_argument("--to", dest="target", metavar="TARGET", default="",
                   help="HOST:PORT, or a member's node id or host label (then --port, default its mesh port)")
    p.add_argument("--kind", choices=MEASURE_KINDS, default="connect",
                   help="what to measure (default: connect)")
    p.add_argument("--count", type=_count, default=0, metavar="N",
                   help="connects for connect and rtt, 1..100 (default: 5)")
    p.add_argument("--port", type=_port, default=0, metavar="PORT", help="the port of a member named by --to")
    p.add_argument("--max-hops", type=_count, default=0, metavar="N", help="path: highest TTL, 1..30 (default: 16)")
    p.add_argument("--wait", type=_duration, default=0.0, metavar="DURATION",
                   help="bound on each connect or hop (default: the node's, 2s; 1s a hop)")
    p.add_argument("--list", action="store_true", help="show the results the member stored instead")
    p.add_argument("--since", type=_time, metavar="WHEN", help="with --list: from this long ago (default: all)")
    p.add_argument("-n", "--limit", type=_count, default=20, metavar="N", help="with --list: at most N (default: 20)")

    p = add("top", "live dashboard: processes, destinations and services (the node's rollups), events, mesh",
            """examples:
  meshctl top
  meshctl top --window 15m --wide
  meshctl top --json        one snapshot of the dashboard's data, then exit

keys: q quit · s cycle sort · / filter by process (type, Enter; Esc clears) · p pause""", [])
    p.add_argument("--window", type=_duration, default=300.0, metavar="DURATION",
                   help="the window the node rolls up, back from now (default: 5m)")
    p.add_argument("--interval", type=_duration, default=1.0, metavar="DURATION",
                   help="status poll interval (default: 1s)")
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; fills ``node`` from ``$MESHCTL_NODE`` when not given."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        sys.exit(EXIT_USAGE)
    if args.node is None:
        env = os.environ.get("MESHCTL_NODE", "").strip()
        if env:
            try:
                _node(env)
            except argparse.ArgumentTypeError as exc:
                parser.error(f"MESHCTL_NODE: {exc}")
        args.node = env or DEFAULT_NODE
    from meshnode.cli._security import ClientSecurity, configure

    configure(ClientSecurity.from_args(args.tls_dir, args.tls_name, args.sign_key, args.sign_plaintext))
    return args
