"""The node daemon: configuration, the node loop (sensor → periods → store) and ``meshnode run``."""

from meshnode.daemon._addresses import AddressWatcher, local_addresses
from meshnode.daemon._config import NodeConfig, default_data_dir, load_config, parse_duration, parse_size
from meshnode.daemon._node import Node, Service

__all__ = [
    "AddressWatcher",
    "Node",
    "NodeConfig",
    "Service",
    "default_data_dir",
    "load_config",
    "local_addresses",
    "parse_duration",
    "parse_size",
]
