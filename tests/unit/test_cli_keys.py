"""Keys from a terminal in cbreak mode, and the terminal restored afterwards (on a pty)."""

from __future__ import annotations

import os
import termios

import pytest

from meshnode.cli._keys import KeyReader


def test_keys_are_read_one_by_one_and_the_terminal_is_restored() -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        with KeyReader(slave) as keys:
            during = termios.tcgetattr(slave)
            assert not during[3] & termios.ICANON and not during[3] & termios.ECHO
            os.write(master, b"s/ab\r\x1b[Aq")
            got = []
            while (k := keys.get(2.0)) is not None:
                got.append(k)
                if k == "q":
                    break
        assert got == ["s", "/", "a", "b", "\n", "\x1b[A", "q"]  # cbreak keeps ICRNL: Enter reads as newline
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_terminal_restored_when_the_block_raises() -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        with pytest.raises(RuntimeError), KeyReader(slave):
            raise RuntimeError("boom")
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_without_a_terminal_nothing_is_read() -> None:
    r, w = os.pipe()
    try:
        with KeyReader(r) as keys:
            os.write(w, b"q")
            assert keys.get(0.05) is None
    finally:
        os.close(r)
        os.close(w)
