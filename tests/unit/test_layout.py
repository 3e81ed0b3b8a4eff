"""Who imports whom: products never import tests, test modules never import each other, the node never meshctl,
meshctl nothing of the node but the generated protobuf modules, probes nothing of the node.

cli/ and probes/ import as ``meshnode.cli`` and ``meshnode.probes`` (``meshnode/cli`` and ``meshnode/probes`` are
symlinks to them; ``rglob`` does not follow them, so ``_sources("meshnode")`` is the node alone)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every module ``path`` imports (absolute names; relative imports resolved against its package)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            yield node.lineno, base
            for alias in node.names:  # ``from tests.unit import test_x`` names a module too
                yield node.lineno, f"{base}.{alias.name}"


def _is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "tests" and any(p.startswith("test_") for p in parts)


def _sources(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py") if "v1" not in p.relative_to(ROOT).parts[:2])


def test_products_never_import_tests() -> None:
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in _sources("meshnode", "cli", "probes")
           for line, name in _imports(p) if name == "tests" or name.startswith("tests.")]
    assert bad == []


def _under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_meshnode_never_imports_cli() -> None:
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in _sources("meshnode")
           for line, name in _imports(p) if _under(name, "cli", "meshnode.cli")]
    assert bad == []


def test_cli_imports_nothing_of_the_node_but_the_protobuf_modules_and_probes_nothing_of_the_node() -> None:
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in _sources("cli")
           for line, name in _imports(p)
           if _under(name, "meshnode", "cli", "probes") and not _under(name, "meshnode.cli", "meshnode.v1")]
    bad += [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in _sources("probes")
            for line, name in _imports(p) if _under(name, "meshnode", "cli", "probes")
            and not _under(name, "meshnode.probes")]
    assert bad == []


def test_the_repository_folders_are_the_installed_packages() -> None:
    assert (ROOT / "meshnode" / "cli").resolve() == ROOT / "cli"
    assert (ROOT / "meshnode" / "probes").resolve() == ROOT / "probes"


def test_test_modules_and_benchmarks_never_import_a_test_module() -> None:
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in _sources("tests", "bench")
           for line, name in _imports(p) if _is_test_module(name)]
    assert bad == []


def test_the_check_sees_a_test_module_import() -> None:
    assert _is_test_module("tests.unit.test_x") and _is_test_module("tests.integration.test_y.helper")
    assert not _is_test_module("tests._support.sensor") and not _is_test_module("meshnode.lab")
