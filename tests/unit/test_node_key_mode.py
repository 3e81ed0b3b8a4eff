"""The node key file: a key others may read is refused with the fix, not used and not silently changed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from meshnode._exceptions import ConfigError
from meshnode.mesh import NodeKey


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_an_existing_key_open_to_others_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    NodeKey.load_or_create(path)
    path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        NodeKey.load_or_create(path)
    msg = str(info.value)
    assert f"mode {mode:04o}" in msg and f"chmod 600 {path}" in msg
    assert stat.S_IMODE(path.stat().st_mode) == mode  # left as it was: the operator decides


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_key_loads(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    key = NodeKey.load_or_create(path)
    path.chmod(mode)
    assert NodeKey.load_or_create(path).node_id == key.node_id
