"""Labs alive in this process, and the safety nets that close them: atexit and termination signals.

A lab holds kernel objects that outlive the process (named namespaces, cgroup directories), so every way
out of the process must pass through teardown. ``with`` blocks and pytest fixtures cover exceptions and
Ctrl-C (SIGINT arrives as KeyboardInterrupt and unwinds through them); atexit covers a script that just ends;
the signal handlers cover SIGTERM/SIGHUP, which would otherwise kill the process without unwinding. What
is left (SIGKILL, a crash) is removed by the next lab's ``sweep``.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol


class _Closable(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def owner_pid(self) -> int: ...

    def close(self) -> None: ...


_LOCK = threading.RLock()
_LIVE: dict[str, _Closable] = {}
_installed = False
_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def add(lab: _Closable) -> None:
    """Remember a lab until it is closed, and make sure the safety nets are in place."""
    with _LOCK:
        _LIVE[lab.id] = lab
        _install()


def discard(lab: _Closable) -> None:
    """Forget a lab (it is being closed)."""
    with _LOCK:
        _LIVE.pop(lab.id, None)


def live_ids() -> set[str]:
    """Ids of the labs this process has open; ``sweep`` never touches them."""
    with _LOCK:
        return set(_LIVE)


def close_all(reason: str) -> None:
    """Close every lab this process owns; report failures on stderr rather than raise (we are exiting)."""
    with _LOCK:
        labs = [lab for lab in _LIVE.values() if lab.owner_pid == os.getpid()]
    for lab in reversed(labs):
        try:
            lab.close()
        except Exception as exc:  # exiting: report, go on with the next lab
            print(f"meshnode lab: teardown of {lab.id} on {reason} failed: {exc}", file=sys.stderr)


def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(close_all, "exit")
    os.register_at_fork(after_in_child=_forget_in_child)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; atexit still covers normal exits
    for signum in _SIGNALS:
        previous = signal.getsignal(signum)
        if signum == signal.SIGINT and previous is signal.default_int_handler:
            continue  # KeyboardInterrupt already unwinds through with-blocks, fixtures and atexit
        if previous in (signal.SIG_IGN, None):
            continue  # the process chose to ignore it (or a non-Python handler owns it): leave it alone
        signal.signal(signum, _make_handler(signum, previous))


_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _make_handler(signum: int, previous: _Handler) -> Callable[[int, FrameType | None], None]:
    def handler(received: int, frame: FrameType | None) -> None:
        close_all(signal.Signals(received).name)
        signal.signal(signum, previous)
        if callable(previous):
            previous(received, frame)
        else:
            os.kill(os.getpid(), received)  # SIG_DFL again: die of the signal, with the usual exit status

    return handler


def _forget_in_child() -> None:
    """A forked child must not tear down its parent's labs at its own exit."""
    with _LOCK:
        _LIVE.clear()
