"""Import paths: ``panther.tuner`` offers everything the original Panther's paths do, as the same objects."""

import importlib

import pytest

import panther
import panther.tuner


@pytest.mark.parametrize("path", ["panther.tuner.SkAutoTuner.Configs", "panther.tuner.SkAutoTuner"])
def test_panther_tuner_exports_every_name_of_the_original_paths(path):
    module = importlib.import_module(path)
    for name in module.__all__:
        assert name in panther.tuner.__all__, name
        assert getattr(module, name) is getattr(panther.tuner, name), name


def test_package_exports_resolve_lazily_and_nothing_else_leaks():
    assert set(panther.__all__) == {"__version__", "nn", "ops", "tuner"}
    assert not hasattr(panther, "lazy_exports")
    for name in panther.tuner.__all__:
        assert getattr(panther.tuner, name).__name__ == name
