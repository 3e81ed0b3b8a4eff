"""Single keys from the terminal, read on a thread in cbreak mode; the terminal is restored on exit.

cbreak (not raw) keeps Ctrl-C a signal, so an interrupt still reaches the main thread as
KeyboardInterrupt and the ``with`` block restores the terminal on the way out.
"""

from __future__ import annotations

import os
import queue
import select
import sys
import threading
from types import TracebackType
from typing import Any


class KeyReader:
    """``with KeyReader() as keys: keys.get(timeout)`` yields one key (str) at a time, or None.

    Escape sequences (arrow keys) arrive as one string starting with ESC; a lone ESC is ``"\\x1b"``.
    Keys come from stdin when it is a terminal, else from the controlling terminal (``/dev/tty``);
    without either it reads nothing and ``get`` only waits.
    """

    def __init__(self, fd: int | None = None) -> None:
        self._own_fd = False
        if fd is None:
            fd = sys.stdin.fileno()
            if not os.isatty(fd):
                try:
                    fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
                    self._own_fd = True
                except OSError:
                    pass
        self._fd = fd
        self._queue: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._saved: list[Any] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> KeyReader:
        if not os.isatty(self._fd):
            return self
        import termios
        import tty

        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)
        self._thread = threading.Thread(target=self._run, name="meshctl-keys", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        if self._saved is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None
        if self._own_fd:
            os.close(self._fd)
            self._own_fd = False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(self._fd, 64)
            except (OSError, ValueError):
                return
            if not data:
                return
            text = data.decode("utf-8", "replace")
            i = 0
            while i < len(text):
                if text[i] == "\x1b" and i + 1 < len(text) and text[i + 1] in "[O":
                    j = i + 2
                    while j < len(text) and not text[j].isalpha() and text[j] != "~":
                        j += 1
                    self._queue.put(text[i : j + 1])
                    i = j + 1
                else:
                    self._queue.put(text[i])
                    i += 1

    def get(self, timeout: float) -> str | None:
        """The next key, waiting at most ``timeout`` seconds."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
