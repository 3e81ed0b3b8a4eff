"""Fixtures shared by test modules (helpers that are not fixtures live in tests/_support)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._support.tmux import Tmux


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    t = Tmux()
    try:
        yield t
    finally:
        t.kill()
