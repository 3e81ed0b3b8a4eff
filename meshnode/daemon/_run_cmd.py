"""``meshnode run``: settle the configuration, create the sensor, run the node until SIGTERM/SIGINT.

Exit codes: 0 after a clean shutdown (the final period flushed), 1 when the sensor or the store cannot
start (the message says what is missing and how to fix it), 2 for bad configuration (the message names the
key). No traceback for any of these.
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
    p.add_argument("--cgroup", metavar="PATH", help="cgroup v2 path to watch (default /, the whole host)")
    modes = SENSOR_MODES + (("fake",) if os.environ.get(FAKE_SENSOR_ENV) == "1" else ())
    p.add_argument("--sensor", choices=modes, help="sensor: auto (default), ebpf or diag")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help='Prometheus /metrics address (default 127.0.0.1:7401; "off" disables)')
    p.add_argument("--insecure", action="store_const", const=True,
                   help="serve the API and the mesh without TLS (labs and tests only; logged loudly)")
    p.add_argument("--node-id", metavar="ID", help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="log level (default info)")
    p.set_defaults(func=run)


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


async def serve(config: NodeConfig, sensor: Sensor) -> int:
    """Run a node until SIGTERM or SIGINT; the final period is flushed before returning."""
    from meshnode.daemon._node import Node
    from meshnode.daemon._services import extra_services

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node: Node | None = None
    try:
        node = Node(config, sensor, sensor_started=True)
        for service in extra_services(node):
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
    try:
        sensor = create_sensor(config)
        return asyncio.run(serve(config, sensor))
    except ConfigError as exc:
        print(f"meshnode run: {exc}", file=sys.stderr)
        return 2
    except MeshnodeError as exc:
        print(f"meshnode run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
