"""Configuration: flag > environment > file > default, and errors that name the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshnode._exceptions import ConfigError
from meshnode.daemon import NodeConfig, default_data_dir, load_config, parse_duration, parse_size


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "meshnode.toml"
    p.write_text(text)
    return p


def test_defaults_without_any_config(tmp_path: Path) -> None:
    cfg = load_config({}, {"HOME": str(tmp_path)})
    assert cfg.listen == "127.0.0.1:7400" and cfg.metrics == "127.0.0.1:7401"
    assert cfg.export_period == 10.0 and cfg.sensor == "auto" and cfg.cgroup == "/"
    assert cfg.retention_age == 7 * 86400 and cfg.retention_bytes == 1 << 30
    assert cfg.join == () and cfg.labels == {}
    assert cfg.data_dir == default_data_dir({"HOME": str(tmp_path)})


def test_default_data_dir() -> None:
    assert default_data_dir({"STATE_DIRECTORY": "/var/lib/meshnode"}) == Path("/var/lib/meshnode")
    if os.geteuid() == 0:
        assert default_data_dir({}) == Path("/var/lib/meshnode")
    else:
        assert default_data_dir({}) == Path.home() / ".local/share/meshnode"


@pytest.mark.parametrize(
    ("file", "env", "flag", "expected"),
    [
        (None, None, None, 10.0),
        ("20", None, None, 20.0),
        ("20", "30", None, 30.0),
        ("20", "30", "40", 40.0),
        (None, None, "5", 5.0),
        (None, "1m", None, 60.0),
        ('"2m"', None, None, 120.0),
    ],
)
def test_precedence_flag_env_file_default(tmp_path: Path, file, env, flag, expected) -> None:
    path = write(tmp_path, f"export_period = {file}\n" if file else "")
    environ = {"MESHNODE_EXPORT_PERIOD": env} if env else {}
    cfg = load_config({"export_period": flag, "config": str(path)}, environ)
    assert cfg.export_period == expected


def test_every_key_from_file_env_and_flag(tmp_path: Path) -> None:
    path = write(tmp_path, """
listen = "0.0.0.0:9000"
join = ["10.0.0.1:7400", "10.0.0.2:7400"]
export_period = 30
data_dir = "/tmp/x"
cgroup = "/system.slice"
sensor = "diag"
metrics = "off"
retention_age = "2d"
retention_bytes = "100MiB"
tick = 0.25
node_id = "n1"
watch_addresses = false

[labels]
region = "eu"
site = "ams1"
""")
    cfg = load_config({}, {"MESHNODE_CONFIG": str(path), "MESHNODE_LABELS": "site=fra1,rack=4",
                           "MESHNODE_LISTEN": "[::1]:7500"})
    assert cfg == NodeConfig(
        listen="[::1]:7500", join=("10.0.0.1:7400", "10.0.0.2:7400"), labels={"region": "eu", "site": "fra1",
                                                                              "rack": "4"},
        export_period=30.0, data_dir=Path("/tmp/x"), cgroup="/system.slice", sensor="diag", metrics="off",
        retention_age=2 * 86400.0, retention_bytes=100 * 1024 * 1024, tick=0.25, node_id="n1",
        watch_addresses=False,
    )
    assert not cfg.metrics_enabled
    flagged = load_config({"config": str(path), "labels": ["site=lon1"], "join": ["10.9.9.9:1"],
                           "data_dir": "/tmp/y", "sensor": "ebpf"}, {})
    assert flagged.labels == {"region": "eu", "site": "lon1"}
    assert flagged.join == ("10.9.9.9:1",) and flagged.data_dir == Path("/tmp/y") and flagged.sensor == "ebpf"


def test_join_repeated_and_comma_separated() -> None:
    cfg = load_config({"join": ["10.0.0.1:7400,10.0.0.2:7400", "[fd00::3]:7400"]}, {})
    assert cfg.join == ("10.0.0.1:7400", "10.0.0.2:7400", "[fd00::3]:7400")


def test_node_table_is_accepted(tmp_path: Path) -> None:
    cfg = load_config({}, {}, write(tmp_path, '[node]\nlisten = "127.0.0.1:1"\n'))
    assert cfg.listen == "127.0.0.1:1"


@pytest.mark.parametrize(
    ("source", "key", "value", "match"),
    [
        ("file", "export_period", "-1", r"^export_period: .*out of range.*config file"),
        ("file", "export_period", '"soon"', r"^export_period: 'soon' is not a duration"),
        ("env", "export_period", "0", r"^export_period: .*out of range.*environment MESHNODE_EXPORT_PERIOD"),
        ("flag", "export_period", "x", r"^export_period: .*flag --export-period"),
        ("flag", "listen", "localhost", r"^listen: 'localhost' is not HOST:PORT"),
        ("flag", "listen", "::1:80", r"^listen: .*brackets"),
        ("env", "join", "a:1,b", r"^join: 'b' is not HOST:PORT"),
        ("flag", "labels", ["novalue"], r"^labels: 'novalue' is not KEY=VALUE"),
        ("flag", "sensor", "magic", r"^sensor: 'magic' is not one of auto, ebpf, diag"),
        ("file", "cgroup", '"system.slice"', r"^cgroup: .*absolute"),
        ("file", "retention_bytes", '"lots"', r"^retention_bytes: 'lots' is not a size"),
        ("file", "metrics", '"9100"', r"^metrics: '9100' is not HOST:PORT"),
        ("env", "watch_addresses", "maybe", r"^watch_addresses: 'maybe' is not a boolean"),
        ("file", "colour", '"blue"', r"^colour: unknown key"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, source, key, value, match) -> None:
    flags: dict[str, object] = {}
    env: dict[str, str] = {}
    if source == "file":
        flags["config"] = str(write(tmp_path, f"{key} = {value}\n"))
    elif source == "env":
        env["MESHNODE_" + key.upper()] = value
    else:
        flags[key] = value
    with pytest.raises(ConfigError, match=match):
        load_config(flags, env)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config: cannot read"):
        load_config({"config": str(tmp_path / "missing.toml")}, {})
    with pytest.raises(ConfigError, match=r"^config: .* is not valid TOML"):
        load_config({"config": str(write(tmp_path, "listen = \n"))}, {})


@pytest.mark.parametrize(
    ("text", "seconds"), [(10, 10.0), ("90s", 90.0), ("250ms", 0.25), ("5m", 300.0), ("1h", 3600.0),
                          ("7d", 604800.0)],
)
def test_parse_duration(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [(1024, 1024), ("1GiB", 1 << 30), ("500MB", 500_000_000), ("64k", 64_000),
                       ("2KiB", 2048)],
)
def test_parse_size(text, size) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("file", "env", "expected"), [(None, None, 10_000), ("500", None, 500), ("500", "64", 64)])
def test_mesh_member_table_bound_from_file_and_env(tmp_path: Path, file, env, expected) -> None:
    path = write(tmp_path, f"mesh_max_members = {file}\n" if file else "")
    environ = {"MESHNODE_MESH_MAX_MEMBERS": env} if env else {}
    assert load_config({"config": str(path)}, environ).mesh_max_members == expected


@pytest.mark.parametrize("value", ["1", "0", "-5", "2.5", "lots", "1000001"])
def test_mesh_member_table_bound_must_be_a_sane_count(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="mesh_max_members"):
        load_config({}, {"MESHNODE_MESH_MAX_MEMBERS": value})
