"""Where the cgroup v2 hierarchy is (``cgroup2_root``) and what ``--cgroup`` values mean (``cgroup_scope``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from probes import cgroup2_root, cgroup_scope

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
])
def test_cgroup_scope_refuses_what_is_not_under_the_v2_mount(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cgroup_scope(value, Path("/sys/fs/cgroup/unified"))
