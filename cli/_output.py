"""Where output goes: a rich Console sized for the terminal, or plain 80-column text for pipes."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, RenderableType


def console(*, wide: bool = False) -> Console:
    """A Console for stdout: the terminal's size and colours on a tty; otherwise plain text, no colour,
    80 columns (200 with ``wide``).

    ``markup=False`` everywhere: cells carry data from the node, and rich would take ``[fd00::2]:443`` (an
    IPv6 endpoint) or a comm with brackets for a style tag and swallow it. Styles come from ``Text`` only.
    ``emoji=False`` likewise: rich would print ``[fd00:ab::1]`` as ``[fd00🆎:1]``.
    """
    from rich.console import Console

    if sys.stdout.isatty():
        return Console(highlight=False, soft_wrap=False, markup=False, emoji=False)
    return Console(highlight=False, soft_wrap=False, width=200 if wide else 80, no_color=True,
                   color_system=None, force_terminal=False, markup=False, emoji=False)


def is_plain(c: Console) -> bool:
    """True when the console is not a terminal: no box characters then."""
    return not c.is_terminal


def emit(c: Console, renderable: RenderableType) -> None:
    """Print ``renderable``; on plain output without the padding rich leaves at the ends of lines."""
    if c.is_terminal:
        c.print(renderable)
        return
    with c.capture() as cap:
        c.print(renderable)
    text = cap.get()
    sys.stdout.write("".join(line.rstrip() + "\n" for line in text.splitlines()))


def render_text(renderable: RenderableType, *, width: int = 80, plain: bool = True) -> str:
    """``renderable`` as text at ``width`` columns, no colour (what tests compare)."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, color_system=None, highlight=False, markup=False, emoji=False,
            force_terminal=not plain, legacy_windows=False).print(renderable)
    return "".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines())


def print_json(doc: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def print_json_line(doc: Any) -> None:
    """One JSON Lines record on stdout, flushed (streams)."""
    sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
    sys.stdout.flush()
