"""``meshnode run``: settle the configuration, create the sensor, run the node until SIGTERM/SIGINT.

Exit codes: 0 after a clean shutdown (the final period flushed), 1 when the sensor or the store cannot
start (the message says what is missing and how to fix it), 2 for bad configuration (the message names the
key), including neither ``--tls-dir`` nor ``--insecure`` (the message says how to make certificates). No
traceback for any of these.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from meshnode._exceptions import ConfigError, MeshnodeError
from meshnode.daemon._config import FAKE_SENSOR_ENV, SENSOR_MODES, NodeConfig, load_config
from meshnode.daemon._security import NodeSecurity
from meshnode.sensor import Sensor

log = logging.getLogger("meshnode")


def configure(subparsers: Any) -> None:
    """Add the ``run`` parser to the ``meshnode`` dispatcher."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run a node: sensor, store, gRPC API and mesh",
        description="Run a meshnode node. Settings come from flags, then MESHNODE_* environment variables, "
        "then the TOML config file, then defaults.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file (env MESHNODE_CONFIG)")
    p.add_argument("--listen", metavar="HOST:PORT", help="gRPC API address (default 127.0.0.1:7400)")
    p.add_argument("--join", metavar="HOST:PORT,...", action="append",
                   help="peers to join (comma-separated, or repeat the flag)")
    p.add_argument("--label", dest="labels", metavar="KEY=VALUE", action="append",
                   help="node label, repeatable (e.g. --label region=eu --label site=ams1)")
    p.add_argument("--export-period", metavar="SECONDS", help="seconds per export period (default 10)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="store directory (default /var/lib/meshnode as root, else ~/.local/share/meshnode)")
    p.add_argument("--cgroup", metavar="PATH",
                   help="cgroup v2 path to watch: relative to the cgroup2 mount (/system.slice) or the absolute path "
                        "under it (/sys/fs/cgroup/system.slice); default /, the whole host")
    modes = SENSOR_MODES + (("fake",) if os.environ.get(FAKE_SENSOR_ENV) == "1" else ())
    p.add_argument("--sensor", choices=modes, help="sensor: auto (default), ebpf or diag")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help='Prometheus /metrics address (default 127.0.0.1:7401; "off" disables)')
    p.add_argument("--otlp", metavar="URL",
                   help="export flow metrics and ended flows (log records) over OTLP/gRPC to URL, "
                   "e.g. http://127.0.0.1:4317 (env MESHNODE_OTLP)")
    p.add_argument("--metrics-services", metavar="K",
                   help="services per flow direction with metric series of their own, the rest as other "
                   "(default 30)")
    p.add_argument("--metrics-processes", metavar="K",
                   help="process names with metric series of their own, the rest as other (default 20)")
    p.add_argument("--site-aggregators", metavar="K",
                   help="site aggregates: K aggregators per site (labels region, site); 0 (default): flat mesh")
    p.add_argument("--tls-dir", metavar="DIR",
                   help="mutual TLS: ca.crt and this node's NAME.crt/NAME.key (meshnode ca issue NAME --out DIR)")
    p.add_argument("--insecure", action="store_const", const=True,
                   help="serve the API and the mesh without TLS (labs and tests only; logged loudly)")
    p.add_argument("--operator-key", dest="operator_keys", metavar="PUBKEY", action="append",
                   help="an operator's Ed25519 public key (base64) allowed to sign fleet queries, repeatable")
    p.add_argument("--operator-keys-file", metavar="FILE", help="a file of operator public keys, one per line")
    p.add_argument("--deny", metavar="ID", action="append",
                   help="refuse signed requests from this node id or public key, repeatable")
    p.add_argument("--clickhouse", metavar="URL",
                   help="export ended flows to ClickHouse, clickhouse://HOST:PORT/DATABASE (table DATABASE.flows, "
                   "created if missing; env MESHNODE_CLICKHOUSE)")
    p.add_argument("--node-id", metavar="ID", help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="log level (default info)")
    p.set_defaults(func=run)


NO_TLS_MESSAGE = """\
meshnode run: refusing to run without TLS: set --tls-dir DIR (tls_dir in the config file, MESHNODE_TLS_DIR)
or pass --insecure. A node serves its API and its mesh over mutual TLS with a fleet CA; to create one:
    meshnode ca init --dir CA_DIR                                     # once per fleet: ca.key, ca.crt
    meshnode ca issue NAME --dir CA_DIR --ip ADDR --out TLS_DIR       # per node: ca.crt, NAME.crt, NAME.key
    meshnode ca issue alice --dir CA_DIR --client --out CLIENT_DIR    # for meshctl --tls-dir CLIENT_DIR
    meshnode run --tls-dir TLS_DIR ...
For a lab or a test on one machine, pass --insecure (plaintext; logged loudly and shown by meshctl status)."""


def create_sensor(config: NodeConfig) -> Sensor:
    """The configured sensor, started; ``fake`` only with MESHNODE_ALLOW_FAKE_SENSOR=1 (tests and demos).

    Real sensors come from ``meshnode.sensor.create_sensor`` (imported here, lazily, so that ``meshnode
    --help`` and the tests never load the probes), which returns them started.
    """
    if config.sensor == "fake":
        from meshnode.sensor._fake import FakeSensor

        fake = FakeSensor(config.cgroup, per_poll=int(os.environ.get("MESHNODE_FAKE_FLOWS_PER_POLL", "1")))
        fake.start()
        return fake
    from meshnode.sensor import create_sensor as factory

    return factory(config.sensor, config.cgroup, config.idle_timeout)


async def serve(config: NodeConfig, sensor: Sensor, security: NodeSecurity | None = None) -> int:
    """Run a node until SIGTERM or SIGINT; the final period is flushed before returning.

    ``security`` (``NodeSecurity.from_config(config)`` by default) secures the API port and the mesh.
    """
    from meshnode.daemon._node import Node
    from meshnode.daemon._security import SIGNED_METHODS
    from meshnode.daemon._services import MeshRunner, extra_services
    from meshnode.trust._service import RequestSigner

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node: Node | None = None
    try:
        node = Node(config, sensor, sensor_started=True, freeze_heap=True)
        security = security or NodeSecurity.from_config(config)
        services = extra_services(node)
        mesh = next((s for s in services if isinstance(s, MeshRunner)), None)
        security.apply(node, mesh.mesh if mesh else None)
        if mesh is not None:
            mesh.channel_credentials = security.channel
            if security.channel is not None:  # signatures travel only over TLS
                mesh.channel_interceptors.append(RequestSigner(mesh.mesh.key, SIGNED_METHODS))  # type: ignore[arg-type]
        for service in services:
            node.add_service(service)
    except BaseException:
        if node is not None:
            node.store.close()
        sensor.close()
        raise
    await node.run(stop)
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``meshnode run``."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
    )
    flags = {k: v for k, v in vars(args).items() if k not in {"func", "command", "log_level"}}
    try:
        config = load_config(flags)
    except ConfigError as exc:
        print(f"meshnode run: {exc}", file=sys.stderr)
        return 2
    if config.tls_dir is None and not config.insecure:
        print(NO_TLS_MESSAGE, file=sys.stderr)
        return 2
    try:
        security = NodeSecurity.from_config(config)  # before the sensor: bad TLS material fails fast
        sensor = create_sensor(config)
        return asyncio.run(serve(config, sensor, security))
    except ConfigError as exc:
        print(f"meshnode run: {exc}", file=sys.stderr)
        return 2
    except MeshnodeError as exc:
        print(f"meshnode run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
