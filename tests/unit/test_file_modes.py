"""Secrets and history on disk: private keys and a config holding the privacy secret refused when group or
others may read or write them, the operator keys file when they may write it (as ssh does, with the file, its
mode and the chmod in the error); the store's directory 0700 and database 0600 whoever started the node."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from meshnode._exceptions import ConfigError, StoreError
from meshnode.cli._exceptions import UsageError
from meshnode.cli._security import ClientSecurity, Signer
from meshnode.daemon import load_config
from meshnode.daemon._security import read_key_file
from meshnode.mesh import NodeKey
from meshnode.store import Store
from meshnode.trust import init_ca, issue, load_ca

ROOT = Path(__file__).resolve().parents[2]
OPEN_TO_READ = [0o640, 0o604, 0o644]
OPEN_TO_WRITE = [0o620, 0o602, 0o660]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _refused(exc: pytest.ExceptionInfo[Exception], path: Path, mode: int, fix: str) -> None:
    msg = str(exc.value)
    assert str(path) in msg and f"mode {mode:04o}" in msg and f"chmod {fix} {path}" in msg, msg
    assert _mode(path) == mode  # refused, not silently changed: the owner decides


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    init_ca(d)
    return d


@pytest.mark.parametrize("mode", OPEN_TO_READ + OPEN_TO_WRITE)
def test_ca_key_open_to_others_is_refused(ca: Path, mode: int) -> None:
    (ca / "ca.key").chmod(mode)
    with pytest.raises(ConfigError) as exc:
        load_ca(ca)
    _refused(exc, ca / "ca.key", mode, "600")
    with pytest.raises(ConfigError, match="chmod 600"):
        issue(ca, "web-1")


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_ca_key_loads(ca: Path, mode: int) -> None:
    (ca / "ca.key").chmod(mode)
    load_ca(ca)


@pytest.fixture
def meshctl_dir(ca: Path, tmp_path: Path) -> Path:
    out = tmp_path / "meshctl"
    issue(ca, "alice", client_only=True, operator=True, out_dir=out)
    return out


@pytest.mark.parametrize("mode", OPEN_TO_READ + OPEN_TO_WRITE)
def test_meshctl_tls_key_open_to_others_is_refused(meshctl_dir: Path, mode: int) -> None:
    key = meshctl_dir / "alice.key"
    key.chmod(mode)
    with pytest.raises(UsageError) as exc:
        ClientSecurity(meshctl_dir).channel_credentials()
    _refused(exc, key, mode, "600")
    key.chmod(0o600)
    assert ClientSecurity(meshctl_dir).channel_credentials() is not None


@pytest.mark.parametrize("mode", OPEN_TO_READ + OPEN_TO_WRITE)
def test_meshctl_signing_key_open_to_others_is_refused(meshctl_dir: Path, mode: int) -> None:
    key = meshctl_dir / "alice.sign.key"
    key.chmod(mode)
    with pytest.raises(UsageError) as exc:
        Signer(key)
    _refused(exc, key, mode, "600")
    key.chmod(0o400)
    assert len(Signer(key).public_raw) == 32


@pytest.mark.parametrize("mode", [*OPEN_TO_WRITE, 0o666])
def test_operator_keys_file_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    f = tmp_path / "operators"
    f.write_text(base64.b64encode(NodeKey.from_seed(b"alice").public_raw).decode() + "\n")
    f.chmod(mode)
    with pytest.raises(ConfigError) as exc:
        read_key_file(f)
    _refused(exc, f, mode, "go-w")
    f.chmod(0o644)  # public keys: others may read them
    assert len(read_key_file(f)) == 1


SECRET_CONFIG = 'export_period = 10\n[privacy]\noutside = "hash"\nsecret = "0123456789abcdef-fleet"\n'


@pytest.mark.parametrize("mode", OPEN_TO_READ + OPEN_TO_WRITE)
def test_a_config_holding_the_privacy_secret_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    cfg = tmp_path / "meshnode.toml"
    cfg.write_text(SECRET_CONFIG)
    cfg.chmod(mode)
    with pytest.raises(ConfigError) as exc:
        load_config(environ={}, config_file=cfg)
    _refused(exc, cfg, mode, "600")
    assert "privacy secret" in str(exc.value)
    cfg.chmod(0o600)
    assert load_config(environ={}, config_file=cfg).privacy is not None


def test_a_config_without_a_secret_may_be_read_by_others(tmp_path: Path) -> None:
    cfg = tmp_path / "meshnode.toml"
    cfg.write_text('export_period = 10\n[privacy]\ndrop_comm_cgroups = ["/x"]\n')
    cfg.chmod(0o644)
    assert load_config(environ={}, config_file=cfg).export_period == 10


def test_meshnode_run_refuses_a_readable_secret_config_before_it_starts(tmp_path: Path) -> None:
    cfg = tmp_path / "meshnode.toml"
    cfg.write_text(SECRET_CONFIG)
    cfg.chmod(0o644)
    env = {**os.environ, "MESHNODE_ALLOW_FAKE_SENSOR": "1", "PYTHONPATH": str(ROOT)}
    for k in ("MESHNODE_CONFIG", "MESHNODE_TLS_DIR", "MESHNODE_INSECURE"):
        env.pop(k, None)
    proc = subprocess.run(
        [sys.executable, "-m", "meshnode.cli_main", "run", "--config", str(cfg), "--sensor", "fake", "--insecure",
         "--listen", "127.0.0.1:0", "--metrics", "off", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and f"chmod 600 {cfg}" in proc.stderr and "mode 0644" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_the_store_makes_its_directory_0700_and_its_database_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)  # as a shell started it, not systemd (StateDirectoryMode)
    try:
        store = Store.in_dir(tmp_path / "a" / "data")
        store.close()
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a" / "data") == 0o700
    assert _mode(tmp_path / "a" / "data" / "meshnode.db") == 0o600


def test_a_shared_directory_is_refused_not_locked_down(tmp_path: Path) -> None:
    """--data-dir /tmp (or a store file put straight in /var/tmp) made /tmp 0700: every other user lost it."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(StoreError, match=r"shared directory \(mode 1777: anyone may write in it\); give the node "
                                         r"a directory of its own, e\.g\. .*/tmp/meshnode$"):
        Store.in_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777 and not list(shared.iterdir())
    Store.in_dir(shared / "meshnode").close()  # a directory of its own inside it is fine
    assert _mode(shared / "meshnode") == 0o700


def test_the_store_tightens_what_an_older_node_left_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Store.in_dir(data).close()
    db = data / "meshnode.db"
    wal = data / "meshnode.db-wal"
    wal.write_bytes(b"")
    for path, mode in ((data, 0o755), (db, 0o644), (wal, 0o664)):
        path.chmod(mode)
    store = Store.in_dir(data)
    try:
        assert (_mode(data), _mode(db)) == (0o700, 0o600)
        sides = [p for p in data.iterdir() if p.name.startswith("meshnode.db-")]
        assert sides and all(_mode(p) == 0o600 for p in sides)  # SQLite's -wal and -shm follow the database
    finally:
        store.close()
