"""Node configuration: flags > ``MESHNODE_*`` environment > TOML file > defaults.

Every setting has one name, used as the TOML key, as the environment variable (upper case with a
``MESHNODE_`` prefix) and, with dashes, as the flag:

==================  ==============================  =====================================================
key                 default                         meaning
==================  ==============================  =====================================================
listen              127.0.0.1:7400                  gRPC API address (HOST:PORT)
join                []                              peers to join (HOST:PORT list; env: comma-separated)
labels              {}                              node labels (TOML table; env ``k=v,k=v``; flag repeated)
export_period       10                              seconds per export period (number or "10s", "5m")
data_dir            /var/lib/meshnode (root) or     where the store lives ($STATE_DIRECTORY under systemd)
                    ~/.local/share/meshnode
cgroup              /                               cgroup v2 path the sensor watches, relative to the
                                                    cgroup2 mount or absolute (/sys/fs/cgroup/...)
sensor              auto                            auto | ebpf | diag
metrics             127.0.0.1:7401                  Prometheus address, or "off"
metrics_services    30                              services per flow direction with series of their own;
                                                    the rest are summed as ``other`` (0..10000)
metrics_processes   20                              process names with series of their own; the rest
                                                    are summed as ``other`` (0..10000)
retention_age       7d                              keep history this long
retention_bytes     1GiB                            keep the store under this size ("500MiB", bytes)
tick                0.5                             seconds between sensor polls
idle_timeout        90                              seconds before an idle UDP flow ends (seed 002)
node_id             the host name                   the node's id until the mesh gives it a key
watch_addresses     true                            record local address changes (seed 004)
active_tasks        true                            run connect measurements other nodes ask for (seed 003)
task_deny           []                              requester addresses, CIDRs or node ids to refuse
active_tasks_path   false                           also run path probes (TCP SYNs with rising TTL)
task_quota          600                             active tasks per requester per hour (0: unlimited)
query_quota         3600                            fleet queries per requester per hour (0: unlimited)
peer_quotas         []                              per-requester quotas: ``PEER=TASKS/QUERIES`` (node id
                                                    or address; per hour, 0 unlimited)
mesh_max_members    10000                           the most mesh members listed (this node included);
                                                    gossip about more is refused and counted
site_aggregators    0                               site aggregates: K aggregators elected per site
                                                    (2 or 3); membership and digests stay within the
                                                    site (labels region, site); 0: one flat mesh
privacy             none                            privacy filters on what leaves the node in digests
                                                    (TOML table ``[privacy]``: ``keep``, ``coarsen``
                                                    CIDR lists, ``outside`` keep|coarsen|hash,
                                                    ``secret``, ``drop_comm_cgroups``; see
                                                    ``meshnode.trust.PrivacyPolicy``; file only)
insecure            false                           serve and gossip without TLS (lab and tests only)
tls_dir             none                            mTLS material: ca.crt, NAME.crt, NAME.key (made by
                                                    ``meshnode ca issue NAME --out DIR``)
operator_keys       []                              Ed25519 public keys (base64, ``NAME.sign.pub``)
                                                    allowed to sign fleet queries and active tasks
operator_keys_file  none                            a file of such keys, one per line (``#`` comments)
deny                []                              node ids or public keys whose signed requests are
                                                    refused even when trusted (the node's denylist)
api_stream_age      10m                             a Flows stream ends (ABORTED, with a resume token)
                                                    after this long; meshctl resumes it
api_snapshot_age    30s                             a Flows stream gives back its store snapshot after
                                                    this long, read or not, and ends the same way
clickhouse          none                            export ended flows to ClickHouse:
                                                    ``clickhouse://[USER[:PASSWORD]@]HOST:PORT/DATABASE``
clickhouse_spool    256MiB                          disk the ClickHouse export may fill while the server
                                                    is unreachable (oldest batches dropped beyond it)
otlp                none                            OTLP/gRPC receiver for flow metrics and ended flows
                                                    as log records (``http://HOST:4317``; https: TLS)
otlp_timeout        10s                             how long one OTLP request may take, the SDK's
                                                    retries included (at most 60 s); a receiver that is
                                                    down costs this per period, and stopping up to twice it
==================  ==============================  =====================================================

Labels merge across sources (a flag label overrides the same key from the environment or file); every other
setting is taken whole from the highest source that sets it. The file is ``--config FILE`` or
``MESHNODE_CONFIG``. Any bad value raises ``ConfigError`` naming the key and where it came from.

``meshnode run`` needs ``tls_dir`` or ``insecure``; with both, TLS wins. Fleet queries and active tasks are
accepted when signed by an operator key or by a current mesh member's key (a node's fan-out); unsigned
ones only when the node is insecure *and* has no operator keys (a lab), which it logs at startup.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from meshnode._exceptions import ConfigError
from meshnode._files import check_secret
from meshnode.probes import cgroup_scope

if TYPE_CHECKING:
    from meshnode.trust import PrivacyPolicy

ENV_PREFIX: Final = "MESHNODE_"
SENSOR_MODES: Final = ("auto", "ebpf", "diag")
FAKE_SENSOR_ENV: Final = "MESHNODE_ALLOW_FAKE_SENSOR"
"""Set to 1 to allow ``--sensor fake`` (tests and demos only)."""


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$STATE_DIRECTORY`` under systemd, /var/lib/meshnode as root, else ~/.local/share/meshnode."""
    env = os.environ if environ is None else environ
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/meshnode")
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "meshnode"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """The settled configuration of one node."""

    listen: str = "127.0.0.1:7400"
    join: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    export_period: float = 10.0
    data_dir: Path = field(default_factory=default_data_dir)
    cgroup: str = "/"
    sensor: str = "auto"
    metrics: str = "127.0.0.1:7401"
    metrics_services: int = 30
    metrics_processes: int = 20
    retention_age: float = 7 * 24 * 3600.0
    retention_bytes: int = 1 << 30
    tick: float = 0.5
    idle_timeout: float = 90.0
    node_id: str = field(default_factory=socket.gethostname)
    watch_addresses: bool = True
    active_tasks: bool = True
    task_deny: tuple[str, ...] = ()
    active_tasks_path: bool = False
    task_quota: int = 600
    query_quota: int = 3600
    peer_quotas: tuple[str, ...] = ()
    mesh_max_members: int = 10_000
    site_aggregators: int = 0
    privacy: PrivacyPolicy | None = None
    insecure: bool = False
    tls_dir: Path | None = None
    operator_keys: tuple[str, ...] = ()
    operator_keys_file: Path | None = None
    deny: tuple[str, ...] = ()
    api_stream_age: float = 600.0
    api_snapshot_age: float = 30.0
    clickhouse: str | None = None
    clickhouse_spool: int = 256 << 20
    otlp: str = ""
    otlp_timeout: float = 10.0

    @property
    def metrics_enabled(self) -> bool:
        """False when metrics are ``off``."""
        return self.metrics != "off"


# -- value parsers: (value, where) -> parsed; raise ValueError with a human reason ------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS: Final = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
                      "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``"90s"``, ``"5m"``, ``"7d"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration")
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration (e.g. 10, \"10s\", \"5m\", \"7d\")")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(value: Any) -> int:
    """Bytes from a number or a string such as ``"1GiB"``, ``"500MB"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, int):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size (e.g. 1073741824, \"1GiB\", \"500MB\")")
    unit = (m.group(2) or "").lower().rstrip("b")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_hostport(value: Any) -> str:
    """``HOST:PORT`` (IPv6 in brackets) with a port 0..65535."""
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host.strip("[]"))
        except ValueError:
            raise ValueError(f"{text!r} has a bad IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{text!r}: put an IPv6 address in brackets, e.g. [::1]:7400")
    return text


def _positive(parse: Callable[[Any], float], upper: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        v = parse(value)
        if not 0 < v <= upper:
            raise ValueError(f"{value!r} is out of range (0, {upper:g}]")
        return v
    return check


def _nonneg_size(value: Any) -> int:
    v = parse_size(value)
    if v < 0:
        raise ValueError(f"{value!r} is negative")
    return v


def _nonneg_duration(value: Any) -> float:
    v = parse_duration(value)
    if v < 0:
        raise ValueError(f"{value!r} is negative")
    return v


def _count(lower: int, upper: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
            raise ValueError(f"{value!r} is not a whole number")
        v = int(value)
        if not lower <= v <= upper:
            raise ValueError(f"{value!r} is out of range [{lower}, {upper}]")
        return v
    return check


def _join(value: Any) -> tuple[str, ...]:
    parts = [value] if isinstance(value, str) else list(value)
    items = [item.strip() for part in parts for item in str(part).split(",")]
    return tuple(parse_hostport(v) for v in items if v)


def _words(value: Any) -> tuple[str, ...]:
    """A list, or one comma-separated string (the environment's form)."""
    parts = [value] if isinstance(value, str) else list(value)
    return tuple(item.strip() for part in parts for item in str(part).split(",") if item.strip())


def _peer_quotas(value: Any) -> tuple[str, ...]:
    """``PEER=TASKS/QUERIES`` entries, checked now so that a typo fails at start."""
    from meshnode.mesh._accounts import parse_quotas

    entries = _words(value)
    parse_quotas(entries)
    return entries


def _labels(value: Any) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    items = [v for v in value.split(",")] if isinstance(value, str) else list(value)
    out = {}
    for item in items:
        if not str(item).strip():
            continue
        k, sep, v = str(item).partition("=")
        if not sep or not k.strip():
            raise ValueError(f"{item!r} is not KEY=VALUE")
        out[k.strip()] = v.strip()
    return out


def _sensor(value: Any) -> str:
    v = str(value).strip().lower()
    if v == "fake" and os.environ.get(FAKE_SENSOR_ENV) == "1":
        return v
    if v not in SENSOR_MODES:
        raise ValueError(f"{value!r} is not one of {', '.join(SENSOR_MODES)}")
    return v


def _metrics(value: Any) -> str:
    v = str(value).strip()
    return "off" if v.lower() in {"off", "none", "false", ""} else parse_hostport(v)


def _cgroup(value: Any) -> str:
    return cgroup_scope(str(value))


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{value!r} is not a boolean")


def _privacy(value: Any) -> PrivacyPolicy:
    if not isinstance(value, Mapping):
        raise ValueError("must be a TOML table ([privacy] in the config file: keep, coarsen, outside, secret, "
                         "drop_comm_cgroups)")
    from meshnode.trust import PrivacyPolicy

    return PrivacyPolicy.from_config(dict(value))


def _clickhouse(value: Any) -> str:
    from meshnode.export import parse_clickhouse_url

    parse_clickhouse_url(str(value))
    return str(value).strip()


def _positive_size(value: Any) -> int:
    v = parse_size(value)
    if v <= 0:
        raise ValueError(f"{value!r} must be more than 0 bytes")
    return v


def _otlp(value: Any) -> str:
    if str(value).strip().lower() in {"", "off", "none"}:
        return ""
    from meshnode.export import parse_otlp_url  # the OpenTelemetry SDK loads only when OTLP is asked for

    return parse_otlp_url(value)


def _str(value: Any) -> str:
    v = str(value).strip()
    if not v:
        raise ValueError("must not be empty")
    return v


def _path(value: Any) -> Path:
    v = str(value).strip()
    if not v:
        raise ValueError("must not be empty")
    return Path(v).expanduser()


PARSERS: Final[dict[str, Callable[[Any], Any]]] = {
    "listen": parse_hostport,
    "join": _join,
    "labels": _labels,
    "export_period": _positive(parse_duration, 86400.0),
    "data_dir": lambda v: Path(str(v)).expanduser(),
    "cgroup": _cgroup,
    "sensor": _sensor,
    "metrics": _metrics,
    "metrics_services": _count(0, 10_000),
    "metrics_processes": _count(0, 10_000),
    "retention_age": _nonneg_duration,
    "retention_bytes": _nonneg_size,
    "tick": _positive(parse_duration, 60.0),
    "idle_timeout": _positive(parse_duration, 86400.0),
    "node_id": _str,
    "watch_addresses": _bool,
    "active_tasks": _bool,
    "task_deny": _words,
    "active_tasks_path": _bool,
    "task_quota": _count(0, 1_000_000),
    "query_quota": _count(0, 1_000_000),
    "peer_quotas": _peer_quotas,
    "mesh_max_members": _count(2, 1_000_000),
    "site_aggregators": _count(0, 5),
    "privacy": _privacy,
    "insecure": _bool,
    "tls_dir": _path,
    "operator_keys": _words,
    "operator_keys_file": _path,
    "deny": _words,
    "api_stream_age": _positive(parse_duration, 7 * 86400.0),
    "api_snapshot_age": _positive(parse_duration, 86400.0),
    "clickhouse": _clickhouse,
    "clickhouse_spool": _positive_size,
    "otlp": _otlp,
    "otlp_timeout": _positive(parse_duration, 60.0),
}
assert set(PARSERS) == {f.name for f in fields(NodeConfig)}


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML file as a dict; unreadable or malformed files raise ``ConfigError``."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from exc
    node = data.pop("node", None)
    if isinstance(node, dict):  # accept a [node] table as well as top-level keys
        data = {**node, **data}
    return data


def _apply(key: str, raw: Any, where: str) -> Any:
    try:
        return PARSERS[key](raw)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{key}: {exc} (from {where})") from None


def load_config(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | str | None = None,
) -> NodeConfig:
    """Settle the configuration from flags (None = not given), environment and file."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = dict(os.environ if environ is None else environ)
    path = config_file or flags.get("config") or env.get(ENV_PREFIX + "CONFIG")
    settled: dict[str, Any] = {}
    labels: dict[str, str] = {}
    if path:
        data = read_config_file(Path(path))
        privacy = data.get("privacy")
        if isinstance(privacy, Mapping) and privacy.get("secret"):
            check_secret(Path(path), "the config file", "it holds the privacy secret, and whoever reads that "
                         "can tell which addresses the fleet's hashes stand for")
        for key, raw in data.items():
            if key not in PARSERS:
                raise ConfigError(f"{key}: unknown key in {path} (known: {', '.join(sorted(PARSERS))})")
            settled[key] = _apply(key, raw, f"config file {path}")
        labels.update(settled.pop("labels", {}))
    for key in PARSERS:
        name = ENV_PREFIX + key.upper()
        if name in env:
            settled[key] = _apply(key, env[name], f"environment {name}")
    labels.update(settled.pop("labels", {}))
    for key in PARSERS:
        if key in flags:
            settled[key] = _apply(key, flags[key], f"flag --{key.replace('_', '-')}")
    labels.update(settled.pop("labels", {}))
    if "data_dir" not in settled:
        settled["data_dir"] = default_data_dir(env)
    return NodeConfig(labels=labels, **settled)
