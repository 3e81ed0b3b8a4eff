"""``meshnode lab`` without a lab: the lock says whether a lab is up, misuse and "nothing up" fail clearly.

No root needed: nothing here builds a lab (tests/integration/test_lab_demo.py does).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshnode.cli_main import main
from meshnode.demo import _control


def test_the_lock_is_the_liveness(tmp_path: Path) -> None:
    assert not _control.is_up(tmp_path)
    fd = _control.try_lock(tmp_path)
    assert fd is not None
    try:
        assert _control.is_up(tmp_path)
        assert _control.try_lock(tmp_path) is None  # a second supervisor cannot take it
    finally:
        os.close(fd)
    assert not _control.is_up(tmp_path)  # closing (or dying) releases it


def test_state_dir_and_tmux_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_control.STATE_DIR_ENV, raising=False)
    assert _control.state_dir(None) == Path("/run/meshnode-lab")
    assert _control.tmux_socket(Path("/run/meshnode-lab")) == "meshnode-lab"
    monkeypatch.setenv(_control.STATE_DIR_ENV, str(tmp_path))
    assert _control.state_dir(None) == tmp_path.resolve()
    assert _control.state_dir("/x") == Path("/x")
    assert _control.tmux_socket(tmp_path) != _control.tmux_socket(tmp_path / "other")


def test_request_without_a_lab(tmp_path: Path) -> None:
    with pytest.raises(_control.LabCommandError, match="no lab is up"):
        _control.request(tmp_path, "status")


def test_commands_without_a_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(_control.STATE_DIR_ENV, str(tmp_path))
    assert main(["lab", "fault", "meteor-strike"]) == 2
    err = capsys.readouterr().err
    assert "unknown fault 'meteor-strike'; known: none, blackhole-server, site-loss, refuse-port, bad-client" in err
    assert main(["lab", "status"]) == 1
    assert "no lab is up" in capsys.readouterr().err
    assert main(["lab", "down"]) == 0
    assert "nothing to remove" in capsys.readouterr().out
    assert main(["lab"]) == 2
