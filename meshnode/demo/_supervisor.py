"""The process that owns the demo lab: ``python -m meshnode.demo._supervisor STATE_DIR CONFIG READY_FD``.

``meshnode lab up`` starts it in a session of its own (so closing the terminal does not end the lab) and
waits on READY_FD for one JSON line: ``{"ok": true}`` once the fleet is up, or ``{"ok": false, "error": ...}``.
A lab belongs to the process that built it (the lab's teardown runs at that process's exit and on
SIGTERM), so this process builds it, serves the control socket until asked to go down, and tears the lab
down on the way out, whatever the way out is.

Requests (one JSON line each, see ``_control.request``): ``status``, ``fault`` (``name``), ``heal``
(optional ``name``), ``down``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from meshnode.demo import _control
from meshnode.lab import Fleet


class Supervisor:
    """The fleet and the control socket; one request at a time (each is quick: an nft or ip command)."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        self.directory = directory
        self.config = config
        self.fleet: Any = None
        self.stop = False
        self.started = time.time()

    def state(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"pid": os.getpid(), "started": self.started, "config": self.config,
                               "tmux_socket": _control.tmux_socket(self.directory)}
        if self.fleet is not None:
            fleet = self.fleet
            doc.update(fleet.describe())
            doc["data_dir"] = str(fleet.data_dir)
            for host in doc["hosts"]:
                host["netns"] = fleet.host(host["host"]).netns
        return doc

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        fleet = self.fleet
        if op == "status":
            alive = fleet.nodes_alive()
            traffic = {client: {key: {"ok": n["ok"], "failed": sum(v for k, v in n.items() if k != "ok")}
                                for key, n in targets.items()}
                       for client, targets in fleet.traffic().items()}  # fmt: skip
            return {"ok": True, "state": self.state(), "nodes_alive": alive, "traffic": traffic,
                    "uptime_s": time.time() - self.started}
        if op == "fault":
            name = str(req.get("name", ""))
            try:
                handle = fleet.fault(name)
            except ValueError as exc:  # LabUsageError: unknown, or already in force
                return {"ok": False, "error": str(exc), "code": 2}
            self.save()
            expected = handle.expected
            return {"ok": True, "name": handle.name, "description": handle.description,
                    "expected": None if expected is None else {"kind": expected.kind, "name": expected.name}}
        if op == "heal":
            only = req.get("name")
            active = [h for h in fleet.handles if h.active and (only is None or h.name == only)]
            if only is not None and not active:
                return {"ok": False, "error": f"fault {only!r} is not in force", "code": 2}
            for h in active:
                h.remove()
            self.save()
            return {"ok": True, "removed": [h.name for h in active]}
        if op == "down":
            self.stop = True
            return {"ok": True}
        return {"ok": False, "error": f"unknown request {op!r}", "code": 2}

    def save(self) -> None:
        _control.write_state(self.directory, self.state())

    def serve(self) -> None:
        path = self.directory / _control.SOCKET
        path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        os.chmod(path, 0o600)
        server.listen(8)
        server.settimeout(0.5)
        try:
            while not self.stop:
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(10)
                    try:
                        line = conn.makefile("rb").readline()
                        answer = self.handle(json.loads(line))
                    except Exception as exc:  # a bad request or a failed command: answer, keep serving
                        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                    with contextlib.suppress(OSError):
                        conn.sendall(json.dumps(answer).encode() + b"\n")
        finally:
            server.close()
            path.unlink(missing_ok=True)


def _report(fd: int, doc: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps(doc).encode() + b"\n")
        os.close(fd)


def main(argv: list[str]) -> int:
    directory, config, ready = Path(argv[0]), json.loads(argv[1]), int(argv[2])
    lock = _control.try_lock(directory)
    if lock is None:
        _report(ready, {"ok": False, "error": f"a lab is already up (lock {directory / _control.LOCK} is held)"})
        return 1
    sup = Supervisor(directory, config)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        sup.stop = True  # the lab's own handler (installed later, chained to this one) has torn it down

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    sup.save()
    try:
        print(f"building the fleet: {config}", flush=True)
        sup.fleet = Fleet.up(nodes=config["nodes"], export_period=config["export_period"],
                          sensor=config["sensor"])
        sup.save()
        print(f"fleet up: lab {sup.fleet.lab.id}", flush=True)
    except BaseException as exc:
        traceback.print_exc()
        _report(ready, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        (directory / _control.STATE).unlink(missing_ok=True)
        return 1
    _report(ready, {"ok": True})
    try:
        sup.serve()
    finally:
        print("tearing down", flush=True)
        try:
            sup.fleet.down()
        finally:
            (directory / _control.STATE).unlink(missing_ok=True)
            print("down", flush=True)
    os.close(lock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
