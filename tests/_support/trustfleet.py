"""A fleet of ``meshnode run`` nodes with the eBPF sensor on lab hosts, 2 s export periods, the same privacy
policy everywhere (lab IPv4 kept, every other address hashed), test-only lies where asked: the trust labs'
(tests/integration/test_trust_lab.py, test_trust_liars_lab.py, bench/soak_trust.py) one way of starting it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests._support.env import require_kernel
from tests._support.labnode import MESHCTL, MESHNODE, stop_nodes

PORT = 7400
PERIOD = 2.0
HOSTS = ["a", "b", "c", "d", "e"]
LIE_PORT = 31000
CHALLENGE_PORT = 31001
SECRET = "lab-fleet-secret-0123456789"

DIGESTS = r"""
import base64, json, sys, grpc
from meshnode.v1 import mesh_pb2, mesh_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as ch:
    resp = mesh_pb2_grpc.MeshStub(ch).Digests(mesh_pb2.DigestsRequest(), timeout=10)
print(json.dumps([base64.b64encode(d.payload).decode() for d in resp.digests]))
"""


class Fleet:
    def __init__(self, lab: Any, data: Path, lies: dict[str, str] | None = None) -> None:
        self.lab = lab
        self.data = data
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.ids: dict[str, str] = {}
        self.lies = lies if lies is not None else {
            "e": f"double_tx:{lab['a'].ip}:{LIE_PORT},hide:{lab['c'].ip}:{CHALLENGE_PORT}"}

    def addr(self, name: str) -> str:
        return f"{self.lab[name].ip}:{PORT}"

    def start(self, name: str, config: Path) -> None:
        host = self.lab[name]
        argv = [MESHNODE, "run", "--config", str(config), "--insecure", "--listen", self.addr(name),
                "--data-dir", str(self.data / name), "--export-period", str(PERIOD), "--metrics", "off",
                "--sensor", "ebpf", "--cgroup", host.cgroup_rel, "--label", "region=eu", "--label", f"host={name}"]
        if name != "a":
            argv += ["--join", self.addr("a")]
        env = dict(os.environ)
        if name in self.lies:
            env.update(MESHNODE_ALLOW_FAKE_SENSOR="1", MESHNODE_TEST_LIE=self.lies[name])
        log = (self.data / f"{name}.log").open("w")
        self.procs[name] = host.popen(argv, stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)

    def meshctl(self, on: str, *args: str) -> Any:
        out = self.lab[on].run([MESHCTL, "--node", self.addr(on), "--timeout", "30", *args, "--json"], timeout=90,
                               check=False)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else None

    def wait(self, cond: Any, timeout: float, what: str) -> float:
        t0 = time.monotonic()
        last: Any = None
        while time.monotonic() - t0 < timeout:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise AssertionError(f"node {name} exited {p.returncode}: "
                                         f"{(self.data / f'{name}.log').read_text()[-2000:]}")
            ok, last = cond()
            if ok:
                return time.monotonic() - t0
            time.sleep(0.25)
        raise AssertionError(f"{what} not within {timeout} s; last: {last}")

    def validate(self, on: str) -> dict[str, Any]:
        doc = self.meshctl(on, "validate", "--max-evidence", "1000")
        assert doc is not None, f"meshctl validate on {on} failed"
        return doc  # type: ignore[no-any-return]

    def flagged(self, on: str) -> set[str]:
        return {s["node_id"] for s in self.validate(on)["scores"] if s["flagged"]}


@contextlib.contextmanager
def running_fleet(data: Path, hosts: list[str], lies: Callable[[Any], dict[str, str]] | None = None
                  ) -> Iterator[Fleet]:
    """A lab of ``hosts``, each running an eBPF node with the lab's privacy policy (``lies(lab)``: test-only lies
    by host; Fleet's default when None), once every node sees every other alive; everything stopped afterwards."""
    require_kernel()
    from meshnode.lab import IPV4_SPACE, Lab

    config = data / "meshnode.toml"
    config.write_text(f'[privacy]\nkeep = ["{IPV4_SPACE}"]\noutside = "hash"\nsecret = "{SECRET}"\n')
    config.chmod(0o600)  # it holds the privacy secret: a node refuses it open to others
    with Lab(hosts) as lab:
        f = Fleet(lab, data, lies(lab) if lies is not None else None)
        try:
            for name in hosts:
                f.start(name, config)

            def formed() -> tuple[bool, Any]:
                views = {}
                for name in hosts:
                    doc = f.meshctl(name, "peers")
                    views[name] = {p["labels"].get("host"): (p["state"], p["node_id"])
                                   for p in doc["peers"]} if doc else {}
                ok = all(len(v) == len(hosts) and all(s == "alive" for s, _ in v.values()) for v in views.values())
                if ok:
                    f.ids = {h: nid for h, (_, nid) in views[hosts[0]].items()}
                return ok, views

            took = f.wait(formed, 150, f"{len(hosts)} eBPF nodes forming one mesh")
            print(f"\nfleet of {len(hosts)} eBPF nodes formed {took:.1f} s after start")
            yield f
        finally:
            stop_nodes(f.procs.values())
