"""pytest helpers around ``meshnode.lab.Lab``: a lab factory fixture and a fixture maker, both calling
``require_kernel`` first, so a test skips (fails under ``CI=true``) on a machine without root, eBPF or cgroup v2.

Import them into a test module instead of relying on a conftest: the lab stays opt-in per file, and nothing
here runs for the unit tests that need no root::

    from tests._support.lab import lab_fixture, make_lab  # noqa: F401 (fixtures are used by name)

    trio = lab_fixture(3, scope="module")

    def test_something(trio): ...
    def test_other(make_lab):  # noqa: F811 (the parameter is the imported fixture)
        lab = make_lab(sites={"east": 2, "west": 2})
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import pytest

from meshnode.lab import Lab
from tests._support.env import require_kernel

Scope = Literal["session", "package", "module", "class", "function"]
LabFactory = Callable[..., Lab]


@pytest.fixture
def make_lab() -> Iterator[LabFactory]:
    """Fixture: a factory ``make_lab(hosts=0, *, sites=None) -> Lab``; every lab it made is closed afterwards.

    Skips (or fails under ``CI=true``) before building anything when the machine cannot host a lab.
    """
    require_kernel()
    labs: list[Lab] = []

    def factory(hosts: int | Sequence[str] = 0, **kwargs: Any) -> Lab:
        lab = Lab(hosts, **kwargs)
        labs.append(lab)
        return lab

    try:
        yield factory
    finally:
        errors = []
        for lab in reversed(labs):
            try:
                lab.close()
            except Exception as exc:  # close every lab, then report
                errors.append(exc)
        if errors:
            raise errors[0]


def lab_fixture(
    hosts: int | Sequence[str] = 0,
    *,
    sites: Mapping[str, int | Sequence[str]] | None = None,
    scope: Scope = "function",
) -> Any:
    """Make a fixture that yields one ``Lab`` of this shape; bind it to a module-level name::

        lab3 = lab_fixture(3, scope="module")

        def test_ping(lab3): ...

    The fixture takes the name it is bound to. A wider ``scope`` shares one lab between tests (faster),
    at the price of tests having to remove their faults and processes (``lab.clear_faults()``).
    """

    @pytest.fixture(scope=scope)
    def _lab() -> Iterator[Lab]:
        require_kernel()
        with Lab(hosts, sites=sites) as lab:
            yield lab

    return _lab
