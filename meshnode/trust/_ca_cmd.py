"""``meshnode ca``: create a fleet CA and issue node and client certificates for mutual TLS.

``meshnode ca init`` makes ``ca.key`` (mode 0600) and ``ca.crt``; ``meshnode ca issue NAME`` makes
``NAME.key`` (mode 0600) and ``NAME.crt`` (and, with ``--out``, a copy of ``ca.crt``: the directory is then
what ``meshnode run --tls-dir`` and ``meshctl --tls-dir`` take); ``--operator`` adds the Ed25519 signing key
``NAME.sign.key`` and its public half ``NAME.sign.pub`` for signed fleet queries. Nothing is overwritten
without ``--force``. A node certificate binds the node's Ed25519 key (``--node-key``, or a new
``NAME.node.key`` written beside it). Each command prints the paths it wrote, one per line, so that
scripts can pick them up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """examples:
  meshnode ca init --dir /etc/meshnode/ca --name prod
  meshnode ca issue web-1 --dir /etc/meshnode/ca --ip 10.0.0.5 --dns web-1.prod.internal
  meshnode ca issue web-2 --dir /etc/meshnode/ca --ip 10.0.0.6 --node-key 3f2a9c0d5e6b7a81
  meshnode ca issue alice --dir /etc/meshnode/ca --client --operator --out ~/.meshctl
then copy ca.crt, NAME.crt and NAME.key (and NAME.node.key, the node's identity key, when --node-key was not
given) to the node (keep the keys mode 0600), or issue with --out DIR and copy DIR; list operators'
NAME.sign.pub in the nodes' operator_keys_file.
"""


def configure(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``ca`` subcommand with ``init`` and ``issue``."""
    p = sub.add_parser(
        "ca", help="create a fleet CA and issue node/client certificates",
        description="Create a fleet certificate authority (ECDSA P-256) and issue certificates for mutual TLS.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=_usage(p))
    actions = p.add_subparsers(dest="ca_command", metavar="ACTION")
    i = actions.add_parser("init", help="create the fleet CA (ca.key, ca.crt)")
    i.add_argument("--dir", type=Path, default=Path("."), metavar="DIR", help="where the CA lives (default: .)")
    i.add_argument("--name", default="meshnode fleet", metavar="FLEET", help="the fleet's name in the CA subject")
    i.add_argument("--days", type=int, default=3650, help="validity in days (default: 3650)")
    i.add_argument("--force", action="store_true", help="replace an existing CA (invalidates its certificates)")
    i.set_defaults(func=run_init)
    s = actions.add_parser("issue", help="issue NAME.key and NAME.crt signed by the fleet CA")
    s.add_argument("name", metavar="NAME", help="the node or client name (also the file name and the CN)")
    s.add_argument("--dir", type=Path, default=Path("."), metavar="DIR", help="the CA directory (default: .)")
    s.add_argument("--out", type=Path, default=None, metavar="DIR", help="write the files here (default: --dir)")
    s.add_argument("--ip", action="append", default=[], metavar="ADDR", help="an IP address SAN (repeatable)")
    s.add_argument("--dns", action="append", default=[], metavar="NAME",
                   help="a DNS name SAN (repeatable; default: NAME)")
    s.add_argument("--client", action="store_true", help="client authentication only (operators, meshctl)")
    s.add_argument("--operator", action="store_true",
                   help="also write NAME.sign.key/NAME.sign.pub, the key meshctl signs fleet queries with")
    s.add_argument("--node-key", default=None, metavar="KEY",
                   help="bind this node key: the node id (meshctl status), its base64 public key, or its key file "
                        "DATA_DIR/node.key (default: make NAME.node.key)")
    s.add_argument("--days", type=int, default=825, help="validity in days (default: 825)")
    s.add_argument("--force", action="store_true", help="overwrite existing NAME.key and NAME.crt")
    s.set_defaults(func=run_issue)


def _usage(p: argparse.ArgumentParser) -> object:
    def run(_args: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return 2

    return run


def run_init(args: argparse.Namespace) -> int:
    """``meshnode ca init``; 0 on success, 1 with the reason on stderr."""
    from meshnode._exceptions import MeshnodeError
    from meshnode.trust._ca import init_ca

    try:
        issued = init_ca(args.dir, args.name, days=args.days, force=args.force)
    except MeshnodeError as exc:
        print(f"meshnode ca init: {exc}", file=sys.stderr)
        return 1
    print(issued.key)
    print(issued.cert)
    return 0


def run_issue(args: argparse.Namespace) -> int:
    """``meshnode ca issue``; 0 on success, 1 with the reason on stderr."""
    from meshnode._exceptions import MeshnodeError
    from meshnode.trust._ca import issue

    try:
        issued = issue(args.dir, args.name, ips=args.ip, dns=args.dns, client_only=args.client, days=args.days,
                       out_dir=args.out, force=args.force, operator=args.operator, node_key=args.node_key)
    except MeshnodeError as exc:
        print(f"meshnode ca issue: {exc}", file=sys.stderr)
        return 1
    for path in (issued.key, issued.cert, issued.ca, issued.sign_key, issued.sign_pub, issued.node_key):
        if path is not None:
            print(path)
    return 0
