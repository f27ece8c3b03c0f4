"""The spec's import path for the parameter specs, defined in :mod:`panther.space`."""

from panther.space import Categorical, Float, Int, ParamSpec, Space, as_spec, enumerate_space

__all__ = ["Categorical", "Float", "Int", "ParamSpec", "Space", "as_spec", "enumerate_space"]
