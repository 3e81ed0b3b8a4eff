"""Who may read and write the node's secrets and history, checked as ssh checks its keys.

A private key (the node key, a TLS key, ``ca.key``) or a file holding a secret (a config with the privacy
secret) is refused when group or others may read or write it; a file that decides who is trusted (the
operator keys file) is refused when group or others may write it. Refused, not fixed: someone may already
have read the secret or changed the list, and the owner should know. The error names the file, its mode and
the ``chmod`` that fixes it.

The node's own directory and history are another matter: the node made them, so it makes them private
(``private_dir``: 0700, ``private_file``: 0600), whether or not systemd's ``StateDirectoryMode`` did.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import TYPE_CHECKING

from meshnode._exceptions import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)

_SECRET = stat.S_IRWXG | stat.S_IRWXO
_TRUSTED = stat.S_IWGRP | stat.S_IWOTH


def _who(bits: int) -> str:
    who = [name for name, mask in (("group", stat.S_IRWXG), ("others", stat.S_IRWXO)) if bits & mask]
    can = [verb for verb, mask in (("read", stat.S_IRGRP | stat.S_IROTH), ("write", _TRUSTED),
                                   ("execute", stat.S_IXGRP | stat.S_IXOTH)) if bits & mask]
    return f"{' and '.join(who)} can {' and '.join(can)} it"


def check_secret(path: Path, what: str, hint: str = "", error: type[ConfigError] = ConfigError) -> None:
    """Refuse a private key or secret that group or others may read or write.

    Raises:
        ConfigError: (or ``error``) naming the file, its mode and ``chmod 600``; ``hint`` is appended.
    """
    _check(path, what, _SECRET, "600", hint, error)


def check_trusted(path: Path, what: str, hint: str = "") -> None:
    """Refuse a file that decides whom the node trusts when group or others may write it.

    Raises:
        ConfigError: naming the file, its mode and ``chmod go-w``; ``hint`` is appended.
    """
    _check(path, what, _TRUSTED, "go-w", hint, ConfigError)


def _check(path: Path, what: str, forbidden: int, fix: str, hint: str, error: type[ConfigError]) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if mode & forbidden:
        raise error(f"{what} {path} is open to others (mode {mode:04o}: {_who(mode & forbidden)}); "
                          f"fix it with: chmod {fix} {path}" + (f"; {hint}" if hint else ""))


def private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) a directory only its owner may enter: created 0700, an existing one
    of ours tightened to 0700 (logged).

    Raises:
        PermissionError: ``path`` is a directory anyone may write in (``/tmp``, ``/var/tmp``): tightening it
            would lock every other user out of it, so the node needs a directory of its own inside it.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = path.stat().st_mode
    if mode & stat.S_IWOTH:
        raise PermissionError(f"{path} is a shared directory (mode {stat.S_IMODE(mode):04o}: anyone may write in it); "
                              f"give the node a directory of its own, e.g. {path / 'meshnode'}")
    _tighten(path, 0o700)


def private_file(path: Path) -> None:
    """Make ``path`` a file only its owner may read: created empty with 0600 (never readable by others, even
    briefly), an existing one tightened to 0600 (logged)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        _tighten(path, 0o600)


def _tighten(path: Path, mode: int) -> None:
    now = stat.S_IMODE(path.stat().st_mode)
    if now & ~mode & 0o777:
        path.chmod(now & mode)
        log.warning("%s was mode %04o; made it %04o (only its owner may read the node's history)", path, now,
                    now & mode)
