"""Where the cgroup v2 hierarchy is (``cgroup2_root``) and what ``--cgroup`` values mean (``cgroup_scope``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnode.probes import cgroup2_root, cgroup_scope, import_bcc

HYBRID = """sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
"""
PURE_V2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"


@pytest.mark.parametrize(("mounts", "root"), [
    (HYBRID, Path("/sys/fs/cgroup/unified")),
    (PURE_V2, Path("/sys/fs/cgroup")),
    ("proc /proc proc rw 0 0\n", None),  # ip netns exec remounted /sys: no cgroup2 in this mount namespace
    ("cgroup2 /mnt/my\\040cgroups cgroup2 rw 0 0\n", Path("/mnt/my cgroups")),
])
def test_cgroup2_root_reads_the_mount_table(tmp_path: Path, mounts: str, root: Path | None) -> None:
    f = tmp_path / "mounts"
    f.write_text(mounts)
    assert cgroup2_root(str(f)) == root


def test_cgroup2_root_of_a_missing_mount_table_is_none(tmp_path: Path) -> None:
    assert cgroup2_root(str(tmp_path / "absent")) is None


@pytest.mark.parametrize(("value", "root", "scope"), [
    ("/", "/sys/fs/cgroup/unified", "/"),
    ("/system.slice", "/sys/fs/cgroup/unified", "/system.slice"),
    ("/system.slice/", "/sys/fs/cgroup/unified", "/system.slice"),
    ("/sys/fs/cgroup/unified/system.slice/nginx.service", "/sys/fs/cgroup/unified", "/system.slice/nginx.service"),
    ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified", "/"),
    ("/sys/fs/cgroup/unified/", "/sys/fs/cgroup/unified", "/"),
    ("/sys/fs/cgroup/system.slice", "/sys/fs/cgroup", "/system.slice"),
    ("/sys/fs/cgroup", "/sys/fs/cgroup", "/"),
    ("/sys/fs/cgroupx/a", "/sys/fs/cgroup", "/sys/fs/cgroupx/a"),  # only whole components are the root
])
def test_cgroup_scope_takes_both_forms(value: str, root: str, scope: str) -> None:
    assert cgroup_scope(value, Path(root)) == scope


@pytest.mark.parametrize(("value", "message"), [
    ("system.slice", "not an absolute cgroup v2 path"),
    ("/sys/fs/cgroup/system.slice", "mounted at /sys/fs/cgroup/unified"),  # v1's tmpfs on a hybrid host
    ("/sys/fs/cgroup/cpu,cpuacct/x", "mounted at /sys/fs/cgroup/unified"),
    ("/../..", "out of the cgroup v2 hierarchy"),  # /sys/fs: the sensor would try to attach there
    ("/sys/fs/cgroup/unified/../../..", "out of the cgroup v2 hierarchy"),
    ("/a/./b", "no '.' or '..'"),
    ("/a\0b", "nor NUL"),
])
def test_cgroup_scope_refuses_what_is_not_under_the_v2_mount(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cgroup_scope(value, Path("/sys/fs/cgroup/unified"))


def test_import_bcc_loads_debians_bcc_alone_when_the_environment_has_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A virtual environment made by plain ``pip install .`` (no setup.sh .pth) still finds python3-bpfcc's bcc,
    and nothing else of dist-packages joins ``sys.path``."""
    import sys

    fake = tmp_path / "dist-packages"
    (fake / "bcc").mkdir(parents=True)
    (fake / "bcc" / "__init__.py").write_text("from bcc.table import X\nBPF = 'bpf'\nlib = 'lib'\n")
    (fake / "bcc" / "table.py").write_text("X = 1\n")
    (fake / "other.py").write_text("")
    before = {k: v for k, v in sys.modules.items() if k == "bcc" or k.startswith("bcc.")}
    try:
        for k in before:
            del sys.modules[k]
        sys.modules["bcc"] = None  # type: ignore[assignment]  # what "import bcc" of an environment without it does
        bcc = import_bcc(fake)
        from bcc import BPF  # type: ignore[attr-defined]

        assert (BPF, bcc.lib, sys.modules["bcc.table"].X) == ("bpf", "lib", 1)
        assert str(fake) not in sys.path and "other" not in sys.modules
        sys.modules["bcc"] = None  # type: ignore[assignment]
        with pytest.raises(ImportError, match="apt-get install python3-bpfcc"):
            import_bcc(tmp_path / "none")
    finally:
        for k in [k for k in sys.modules if k == "bcc" or k.startswith("bcc.")]:
            del sys.modules[k]
        sys.modules.update(before)
