"""Generates the ``meshnode.v1`` protobuf package into the wheel, so that ``pip install .`` works on its own.

The package is not tracked (see scripts/gen_protos.py); ``make setup`` generates it in the tree for editable
installs, and a wheel built from a clean clone gets it here, from the same codegen step.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithProtos(build_py):
    def run(self) -> None:
        super().run()
        sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
        from gen_protos import generate

        generate(Path(self.build_lib))


setup(cmdclass={"build_py": BuildWithProtos})
