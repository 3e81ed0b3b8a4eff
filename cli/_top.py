"""``meshctl top``: the live dashboard.

Four threads feed one ``TopState``: a poller (Status every interval; Rollups over the window and Health
when an export period closed, since the node's data only changes then; Mesh.Peers), a diagnoser
(Diagnosis.Blame over the last few periods and Trust.Validate's flagged peers, every few seconds, in a
thread of its own so that an analysis never delays the status line or a frame), an event tail (Events
with follow), and the key reader. The main thread draws ``cli._dashboard.dashboard`` with rich
Live on the alternate screen. Both network threads retry through ``cli._retry.retrying`` and show
"reconnecting (attempt N, next in Xs)" while the node is away; they recover by themselves.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from meshnode.cli._client import Node
from meshnode.cli._convert import message_dict
from meshnode.cli._dashboard import SORT_KEYS, blame_summary, dashboard, mesh_summary, reconnecting
from meshnode.cli._exceptions import EXIT_OK, MeshctlError, NodeError, NotAvailable, PermissionDenied
from meshnode.cli._retry import retrying
from meshnode.v1 import observer_pb2

ROLLUP_ROWS: Final = 200
"""Rows the node sends per section (the busiest): more than a screen shows, so that re-sorting by failures
or bytes still finds the rows that matter; the sections' titles count the rest."""
FRAME_S: Final = 0.25
DIAGNOSE_EVERY_S: Final = 3.0
"""How often the diagnoser asks Blame and Validate (each is one small answer; Blame is a few ms of the
node's CPU per thousand transactions)."""
BLAME_PERIODS: Final = 3
"""Blame covers the last this many export periods, ..."""
BLAME_MIN_S: Final = 6.0
"""... and at least this long: recent enough that a healed fault leaves the line within a few periods."""
_NS: Final = 1_000_000_000


class TopState:
    """What the dashboard shows; written by the network threads, read by the drawing thread."""

    def __init__(self, node: str, window_s: float) -> None:
        self.lock = threading.Lock()
        self.node = node
        self.window_s = window_s
        self.conn = "connecting"
        self.status: dict[str, Any] | None = None
        self.health: dict[str, Any] | None = None
        self.rollups: dict[str, Any] | None = None
        """The node's RollupsResponse over the window, as a dict; None until one came."""
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self.mesh: dict[str, Any] | None = None
        self.blame: dict[str, Any] | None = None
        """``cli._dashboard.blame_summary`` of the newest Blame answer; None until one came (or never,
        on a node without the Diagnosis service)."""
        self.flagged: list[str] = []
        """Short ids of the peers the node's trust service flags (Trust.Validate)."""
        self.error: str | None = None
        self.fatal: MeshctlError | None = None
        self.sort = SORT_KEYS[0]
        self.filter = ""
        self.input: str | None = None
        self.paused = False
        self._frozen: dict[str, Any] | None = None

    def view(self) -> dict[str, Any]:
        """The plain data of one frame (the input of ``dashboard``; ``top --json`` prints it): the node's
        answers as they came, and the screen's state."""
        with self.lock:
            if self.paused and self._frozen is not None:
                v = dict(self._frozen)
                v.update(sort=self.sort, filter=self.filter, input=self.input, paused=True)
                return v
            needle = self.filter.lower()
            events = [e for e in self.events
                      if not needle or needle in ((e.get("flow") or {}).get("comm", "")).lower()]
            mesh = None if self.mesh is None else {**self.mesh, "flagged": list(self.flagged)}
            v = {
                "node": self.node, "conn": self.conn, "status": self.status,
                "health": (self.health or {}).get("host"), "rollups": self.rollups, "events": events,
                "mesh": mesh, "blame": self.blame, "sort": self.sort, "filter": self.filter,
                "input": self.input, "paused": self.paused, "window_s": self.window_s,
                "error": self.error,
            }
            self._frozen = v
            return v

    def key(self, k: str) -> bool:
        """Apply one key; False means quit."""
        with self.lock:
            if self.input is not None:
                if k in ("\n", "\r"):
                    self.filter, self.input = self.input.strip(), None
                elif k == "\x1b":
                    self.filter, self.input = "", None
                elif k in ("\x7f", "\b"):
                    self.input = self.input[:-1]
                elif len(k) == 1 and k.isprintable():
                    self.input += k
                return True
            if k in ("q", "Q"):
                return False
            if k == "s":
                self.sort = SORT_KEYS[(SORT_KEYS.index(self.sort) + 1) % len(SORT_KEYS)]
            elif k == "/":
                self.input = ""
            elif k == "p":
                self.paused = not self.paused
            elif k == "\x1b":
                self.filter = ""
            return True


class Poller:
    """Fetches status, rollups, health and peers; the one place top talks to the node besides events."""

    def __init__(self, node: Node, state: TopState, interval_s: float, stop: threading.Event) -> None:
        self.node = node
        self.state = state
        self.interval_s = interval_s
        self.stop = stop
        self._last_periods = -1
        self._last_fetch = 0.0
        self._mesh_absent = False

    def _on_retry(self, attempt: int, wait_s: float, exc: NodeError) -> None:
        with self.state.lock:
            self.state.conn = reconnecting(attempt, wait_s)
        self._last_periods = -1  # refetch everything once back
        self._mesh_absent = False

    def poll_once(self) -> None:
        """One round: Status always; Rollups and Health when a period closed (or every 10 s); Peers."""
        status = message_dict(self.node.status())
        now = time.monotonic()
        period = max(1.0, float(status.get("export_period_s") or 1.0))
        fresh = status["periods"] != self._last_periods or now - self._last_fetch >= max(10.0, period)
        rollups: dict[str, Any] | None = None
        health: dict[str, Any] | None = None
        if fresh:
            now_ns = time.time_ns()
            since = now_ns - int(self.state.window_s * _NS)
            rollups = message_dict(self.node.rollups(
                observer_pb2.RollupsRequest(since_ns=since, until_ns=now_ns, number=ROLLUP_ROWS)))
            health = message_dict(self.node.health(observer_pb2.HealthRequest(since_ns=since)))
        mesh: dict[str, Any] | None = None
        if not self._mesh_absent:
            try:
                mesh = mesh_summary(message_dict(self.node.peers()))
            except NotAvailable:
                self._mesh_absent = True
        with self.state.lock:
            self.state.status = status
            self.state.conn = f"connected · updated {time.strftime('%H:%M:%S', time.gmtime())} UTC"
            self.state.error = None
            if rollups is not None:
                self.state.rollups = rollups
                self.state.health = health
            self.state.mesh = mesh
        if fresh:
            self._last_periods = status["periods"]
            self._last_fetch = now

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for attempt in retrying(self.stop, self._on_retry):
                    with attempt:
                        self.poll_once()
            except (PermissionDenied, NotAvailable) as exc:
                with self.state.lock:
                    self.state.fatal = exc
                return
            except NodeError as exc:
                if self.stop.is_set():
                    return
                with self.state.lock:
                    self.state.error = f"node error: {exc.message}"
            except Exception as exc:  # a bug: end the dashboard with one line, not a thread traceback
                with self.state.lock:
                    self.state.fatal = MeshctlError(f"internal error in the poller: {exc!r}; please report it")
                return
            self.stop.wait(self.interval_s)


class Diagnoser:
    """Asks Diagnosis.Blame (over the last ``BLAME_PERIODS`` export periods) and Trust.Validate every
    ``every_s``. A node without one of the services (UNIMPLEMENTED) is not asked for it again; any other
    error leaves the last answer on screen (the poller reports the connection) and is retried next round.
    """

    def __init__(self, node: Node, state: TopState, stop: threading.Event,
                 every_s: float = DIAGNOSE_EVERY_S) -> None:
        from meshnode.cli._blame import call_diagnosis

        self.node = node
        self.blame: Callable[[Any], Any] = lambda req: call_diagnosis(node, "Blame", req)
        """Diagnosis.Blame on the node (a seam for tests)."""
        self.state = state
        self.stop = stop
        self.every_s = every_s
        self.has_blame = True
        self.has_trust = True

    def window_s(self) -> float:
        """The range blame covers: ``BLAME_PERIODS`` export periods, at least ``BLAME_MIN_S``."""
        with self.state.lock:
            period = float((self.state.status or {}).get("export_period_s") or 0.0)
        return max(BLAME_MIN_S, BLAME_PERIODS * period)

    def poll_once(self) -> None:
        """One round: Blame, then Validate, each only while the node serves it."""
        from meshnode.v1 import diagnosis_pb2, trust_pb2

        if self.has_blame:
            window = self.window_s()
            since = time.time_ns() - int(window * _NS)
            try:
                resp = self.blame(diagnosis_pb2.BlameRequest(since_ns=since, max_suspects=1))
            except NotAvailable:
                self.has_blame = False
            except NodeError:
                pass
            else:
                summary = blame_summary(message_dict(resp), window)
                with self.state.lock:
                    self.state.blame = summary
        if self.has_trust:
            try:
                doc = message_dict(self.node.validate(trust_pb2.ValidateRequest()))
            except NotAvailable:
                self.has_trust = False
            except NodeError:
                pass
            else:
                flagged = [str(s["node_id"])[:8] for s in doc.get("scores", []) if s.get("flagged")]
                with self.state.lock:
                    self.state.flagged = flagged

    def run(self) -> None:
        while not self.stop.is_set() and (self.has_blame or self.has_trust):
            try:
                self.poll_once()
            except MeshctlError:
                pass  # e.g. permission denied: the poller ends the dashboard with its own message
            except Exception as exc:  # a bug: end the dashboard with one line, not a thread traceback
                with self.state.lock:
                    self.state.fatal = MeshctlError(f"internal error in the diagnoser: {exc!r}; please report it")
                return
            self.stop.wait(self.every_s)


class EventTail:
    """Keeps an Events stream with follow open, reopening it through the retry policy."""

    def __init__(self, node: Node, state: TopState, stop: threading.Event) -> None:
        self.node = node
        self.state = state
        self.stop = stop
        self._last_ns = 0

    def _follow(self) -> None:
        # After a reconnect, ask only for what came after the last event shown, so none shows twice.
        since = self._last_ns + 1 if self._last_ns else 0
        for ev in self.node.events(observer_pb2.EventsRequest(number=50, follow=True, since_ns=since)):
            if ev.time_ns and ev.time_ns <= self._last_ns:
                continue
            d = message_dict(ev)
            self._last_ns = max(self._last_ns, ev.time_ns)
            with self.state.lock:
                self.state.events.append(d)
            if self.stop.is_set():
                return

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for attempt in retrying(self.stop, lambda *_: None):
                    with attempt:
                        self._follow()
            except MeshctlError:
                pass  # not implemented, cancelled at exit, or a node error: the tail stays, try later
            except Exception as exc:  # a bug: end the dashboard with one line, not a thread traceback
                with self.state.lock:
                    self.state.fatal = MeshctlError(f"internal error in the event tail: {exc!r}; please report it")
                return
            self.stop.wait(2.0)


def _snapshot(node: Node, args: argparse.Namespace) -> TopState:
    state = TopState(args.node, args.window)
    Poller(node, state, args.interval, threading.Event()).poll_once()
    with contextlib.suppress(MeshctlError):
        Diagnoser(node, state, threading.Event()).poll_once()
    with contextlib.suppress(NodeError):
        state.events.extend(message_dict(e) for e in node.events(observer_pb2.EventsRequest(number=20)))
    state.conn = "connected"
    return state


def run(args: argparse.Namespace) -> int:
    """Run the dashboard until q or Ctrl-C; on a pipe or with --json, print one frame and exit."""
    from rich.console import Console
    from rich.live import Live

    from meshnode.cli._keys import KeyReader
    from meshnode.cli._output import console, emit, print_json

    node = Node(args.node, timeout=min(args.timeout, 5.0), fast_reconnect=True)
    try:
        if args.json or not sys.stdout.isatty():
            view = _snapshot(node, args).view()
            if args.json:
                print_json(view)
            else:
                c = console(wide=args.wide)
                emit(c, dashboard(view, height=40, wide=args.wide, plain=True))
            return EXIT_OK
        stop = threading.Event()
        state = TopState(args.node, args.window)
        threads = [
            threading.Thread(target=Poller(node, state, args.interval, stop).run, name="meshctl-poll",
                             daemon=True),
            threading.Thread(target=EventTail(node, state, stop).run, name="meshctl-events", daemon=True),
            threading.Thread(target=Diagnoser(node, state, stop).run, name="meshctl-diagnose", daemon=True),
        ]
        for t in threads:
            t.start()
        c = Console(highlight=False, markup=False, emoji=False)  # data is never markup (see _output.console)
        try:
            with KeyReader() as keys, Live(console=c, screen=True, auto_refresh=False,
                                           redirect_stdout=False, redirect_stderr=False) as live:
                while True:
                    live.update(dashboard(state.view(), height=c.size.height, wide=args.wide), refresh=True)
                    k = keys.get(FRAME_S)
                    while k is not None:
                        if not state.key(k):
                            return EXIT_OK
                        k = keys.get(0)
                    if state.fatal is not None:
                        raise state.fatal
        finally:
            stop.set()
    finally:
        node.close()
