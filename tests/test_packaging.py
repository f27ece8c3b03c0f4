"""Packaging metadata: the licence is a PEP 639 SPDX expression, which needs setuptools >= 77."""

from importlib.metadata import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())


def test_license_is_an_spdx_expression_and_the_backend_supports_it():
    assert PYPROJECT["project"]["license"] == "MIT"
    (setuptools,) = [Requirement(r) for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    lowest = min(Version(spec.version) for spec in setuptools.specifier if spec.operator == ">=")
    assert lowest >= Version("77")


def test_installed_metadata_carries_the_license_expression():
    assert metadata("panther-sketch")["License-Expression"] == "MIT"
