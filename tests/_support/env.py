"""Environment checks for tests that need the kernel.

A test that needs root, eBPF, cgroups or network namespaces calls ``require_kernel()``: on a developer laptop
without them it skips; under ``CI=true`` it fails, because the sensor is the product.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.probes import CGROUP_ROOT, import_bcc


def in_ci() -> bool:
    """True when running under CI (``CI=true``)."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing_kernel_features() -> list[str]:
    """What this machine lacks for kernel tests, as human phrases (empty when all is there)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        missing.append("BTF (/sys/kernel/btf/vmlinux)")
    if not (CGROUP_ROOT / "cgroup.procs").exists():
        missing.append(f"cgroup v2 at {CGROUP_ROOT}")
    for tool in ("ip", "nft", "tc"):
        if shutil.which(tool) is None:
            missing.append(f"the '{tool}' command")
    try:
        import_bcc()
    except ImportError:
        missing.append("bcc (apt-get install python3-bpfcc)")
    return missing


def require_tool(name: str, package: str) -> str:
    """The path of program ``name`` (sbin included: dnsmasq lives there); skip (or, under CI, fail) naming the
    Debian ``package`` that make setup installs it from when it is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        msg = f"needs {name} (make setup installs it from Debian's {package} package)"
        if in_ci():
            pytest.fail("CI=true: " + msg, pytrace=False)
        pytest.skip(msg)
    return path


def require_kernel() -> None:
    """Skip (or, under CI, fail) unless root, eBPF, cgroup v2 and the network tools are all here."""
    missing = missing_kernel_features()
    if not missing:
        return
    msg = "needs " + ", ".join(missing) + " (run as root after 'make setup')"
    if in_ci():
        pytest.fail("CI=true: " + msg, pytrace=False)
    pytest.skip(msg)


@contextlib.contextmanager
def scoped_cgroup(tag: str) -> Iterator[Path]:
    """A fresh cgroup directory under the cgroup v2 root for one test's processes (``mn-test-<tag>-<pid>``),
    removed afterwards (retried while its last processes are still being reaped)."""
    cg = CGROUP_ROOT / f"mn-test-{tag}-{os.getpid()}"
    cg.mkdir()
    try:
        yield cg
    finally:
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)
