"""The generated meshnode.v1 package matches protos/: editing a .proto without `make protos` fails here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(root / "scripts" / "gen_protos.py"), "--check"],
                          capture_output=True, text=True, cwd=root)


def test_generated_code_is_current() -> None:
    res = _check(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


def test_check_fails_when_a_proto_changes(tmp_path: Path) -> None:
    """The staleness check itself can fail: a copy of the tree with one field added to flow.proto."""
    for part in ("scripts", "protos", "meshnode/v1"):
        shutil.copytree(ROOT / part, tmp_path / part)
    proto = tmp_path / "protos" / "meshnode" / "v1" / "flow.proto"
    text = proto.read_text()
    proto.write_text(text.replace("message Completeness {", "message Completeness {\n  uint64 added_field = 99;", 1))
    res = _check(tmp_path)
    assert res.returncode == 1
    assert "stale" in res.stdout and "flow_pb2" in res.stdout
