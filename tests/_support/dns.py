"""A dnsmasq on a loopback address of a test's own, and dig against it: the DNS tests' resolver."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Mapping

from tests._support.env import require_tool


def dig(resolver: str, name: str, *opts: str) -> str:
    """``dig +short`` of ``name`` at ``resolver`` (one try, 2 s): the answer's lines, "" for none."""
    exe = require_tool("dig", "bind9-dnsutils")
    out = subprocess.run([exe, "+short", "+time=2", "+tries=1", f"@{resolver}", name, *opts],
                         capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


@contextlib.contextmanager
def dnsmasq(resolver: str, names: Mapping[str, str], ready: tuple[str, str]) -> Iterator[None]:
    """dnsmasq on ``resolver``:53 answering ``names`` (name -> address; "" makes the name NXDOMAIN) and
    REFUSING the rest (no upstream); up once ``dig`` of ``ready[0]`` answers ``ready[1]``."""
    proc = subprocess.Popen(
        [require_tool("dnsmasq", "dnsmasq-base"), "--keep-in-foreground", "--conf-file=/dev/null",
         f"--listen-address={resolver}", "--bind-interfaces", "--port=53", "--no-resolv", "--no-hosts",
         "--user=root", *(f"--address=/{name}/{addr}" for name, addr in names.items())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 5
        while dig(resolver, ready[0]) != ready[1]:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(5)
