"""meshctl starts fast: --help and usage errors load neither gRPC, protobuf nor rich.

Asserting a wall-clock budget would be flaky on shared CI machines; the test measures and prints
``meshctl --help`` (run with -s to see it) and asserts only what is deterministic: which modules load.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("grpc", "rich", "google.protobuf", "meshnode.v1", "tenacity")


def _loaded_after(code: str) -> list[str]:
    probe = (
        "import sys\n"
        f"{code}\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_importing_cli_main_loads_no_heavy_module() -> None:
    assert _loaded_after("import cli.main") == []


def test_help_and_usage_errors_load_no_heavy_module() -> None:
    code = (
        "import contextlib, io\n"
        "from cli.main import main\n"
        "for argv in (['--help'], ['flows', '--help'], ['top', '--help'], ['flows', '--since', 'x']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
    )
    assert _loaded_after(code) == []


def test_help_exits_0_and_its_time_is_measured() -> None:
    meshctl = Path(sys.executable).with_name("meshctl")
    cmd = [str(meshctl)] if meshctl.exists() else [sys.executable, "-m", "cli"]
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        out = subprocess.run([*cmd, "--help"], cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        assert out.returncode == 0 and "exit codes:" in out.stdout
    print(f"\nmeshctl --help: best {min(times) * 1000:.0f} ms, median {sorted(times)[2] * 1000:.0f} ms")


def test_a_usage_error_is_one_line_without_traceback() -> None:
    out = subprocess.run([sys.executable, "-m", "cli", "flows", "--since", "yesterday"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("meshctl flows: argument --since: 'yesterday' is not a duration")
