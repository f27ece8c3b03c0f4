"""Parameter specs: enumeration, membership, Optuna distributions, dict round trips, validation."""

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from panther.tuner import Categorical, Float, Int
from panther.tuner.params import ParamSpec, as_spec, enumerate_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample(spec: ParamSpec, n: int, seed: int = 0) -> list:
    """Values Optuna draws from ``spec.to_optuna()``, mapped back through ``decode``."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask({"x": spec.to_optuna()})
        out.append(spec.decode(trial.params["x"]))
        study.tell(trial, 0.0)
    return out


# -- Categorical ---------------------------------------------------------------------------------
def test_categorical_enumerates_in_order_and_defaults_to_first():
    spec = Categorical(["relu", "gelu", "silu"])
    assert spec.values() == ["relu", "gelu", "silu"]
    assert spec.default() == "relu"
    assert spec.contains("gelu") and not spec.contains("tanh")
    assert repr(spec) == "Categorical(['relu', 'gelu', 'silu'])"


def test_categorical_native_choices_go_to_optuna_unchanged():
    dist = Categorical([1, 2.5, "a", False, None]).to_optuna()
    assert isinstance(dist, CategoricalDistribution)
    assert dist.choices == (1, 2.5, "a", False, None)


def test_categorical_non_native_choices_are_sampled_by_index_and_decoded():
    choices = [(1, 2), (3, 4), frozenset({5})]
    spec = Categorical(choices)
    assert spec.to_optuna().choices == (0, 1, 2)
    drawn = sample(spec, 30)
    assert set(map(repr, drawn)) == set(map(repr, choices))
    assert [spec.decode(spec.encode(c)) for c in choices] == choices


def test_categorical_values_equal_across_types_are_kept_apart():
    spec = Categorical([0, False])
    assert spec.to_optuna().choices == (0, 1)
    assert spec.encode(False) == 1 and spec.encode(0) == 0
    assert spec.decode(1) is False


def test_categorical_bools_allowed():
    drawn = sample(Categorical([True, False]), 20)
    assert set(drawn) == {True, False} and all(type(v) is bool for v in drawn)


@pytest.mark.parametrize(
    "choices, error, match",
    [
        ([], ValueError, "at least one"),
        ("abc", TypeError, "string"),
        ({1, 2}, TypeError, "list or tuple"),
        ([1, 2, 1], ValueError, "duplicate"),
    ],
)
def test_categorical_validation(choices, error, match):
    with pytest.raises(error, match=match):
        Categorical(choices)


# -- Int -----------------------------------------------------------------------------------------
def test_int_enumerates_the_stepped_range():
    spec = Int(8, 64, step=8)
    assert spec.values() == [8, 16, 24, 32, 40, 48, 56, 64]
    assert spec.default() == 8
    assert spec.contains(24) and not spec.contains(20) and not spec.contains(72) and not spec.contains(24.0)
    assert repr(spec) == "Int(8, 64, step=8)"


def test_int_maps_to_optuna_int_distribution():
    dist = Int(16, 128, step=16).to_optuna()
    assert isinstance(dist, IntDistribution)
    assert (dist.low, dist.high, dist.step, dist.log) == (16, 128, 16, False)
    assert Int(1, 1000, log=True).to_optuna().log is True
    assert set(sample(Int(16, 128, step=16), 40)) <= set(range(16, 129, 16))


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((5, 1), {}, ValueError, "low"),
        ((1, 9), {"step": 0}, ValueError, "step"),
        ((0, 9), {"log": True}, ValueError, "log"),
        ((1, 9), {"step": 2, "log": True}, ValueError, "step=1"),
        ((1.5, 9), {}, TypeError, "integer"),
        ((True, 9), {}, TypeError, "integer"),
        ((1, 9), {"log": "yes"}, TypeError, "log"),
    ],
)
def test_int_validation(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        Int(*args, **kwargs)


def test_int_unreachable_high_names_the_nearest_valid_highs():
    with pytest.raises(ValueError, match=r"high=96 or high=104"):
        Int(8, 100, step=8)


# -- Float ---------------------------------------------------------------------------------------
def test_float_continuous_has_no_enumeration():
    spec = Float(1e-5, 1e-1, log=True)
    assert spec.values() is None
    assert spec.default() == 1e-5
    assert spec.contains(1e-3) and not spec.contains(0.2) and not spec.contains(math.nan)
    dist = spec.to_optuna()
    assert isinstance(dist, FloatDistribution) and dist.log and dist.step is None
    assert all(1e-5 <= v <= 1e-1 for v in sample(spec, 20))


def test_float_stepped_enumerates_the_grid():
    spec = Float(0.1, 1.0, step=0.1)
    expected = [k / 10 for k in range(1, 11)]
    assert spec.values() == pytest.approx(expected, abs=1e-12)
    assert len(spec.values()) == 10
    assert spec.contains(0.3) and not spec.contains(0.35)
    assert spec.to_optuna().step == pytest.approx(0.1)
    assert all(any(abs(v - e) < 1e-9 for e in expected) for v in sample(spec, 20))


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((1.0, 0.0), {}, ValueError, "low"),
        ((0.0, 1.0), {"step": 0.0}, ValueError, "step"),
        ((0.0, 1.0), {"log": True}, ValueError, "log"),
        ((0.1, 1.0), {"step": 0.1, "log": True}, ValueError, "cannot be combined"),
        ((0.0, math.inf), {}, ValueError, "finite"),
        (("0", 1.0), {}, TypeError, "real number"),
        ((0.0, 1.0), {"step": 0.3}, ValueError, "high=0.9 or high=1.2"),
    ],
)
def test_float_validation(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        Float(*args, **kwargs)


# -- common ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec",
    [Categorical([1, "a", None, True]), Int(1, 9), Int(8, 64, step=8), Int(1, 100, log=True),
     Float(0.0, 1.0), Float(0.5, 2.0, step=0.5), Float(1e-4, 1.0, log=True)],
)
def test_dict_round_trip_and_equality(spec):
    rebuilt = ParamSpec.from_dict(spec.to_dict())
    assert rebuilt == spec and hash(rebuilt) == hash(spec)
    assert rebuilt != Categorical(["other"])


def test_to_dict_format():
    assert Int(8, 64, step=8).to_dict() == {"type": "int", "low": 8, "high": 64, "step": 8}
    assert Categorical([1, 2]).to_dict() == {"type": "categorical", "choices": [1, 2]}


@pytest.mark.parametrize(
    "data, error",
    [({"type": "int", "low": 1, "high": 4, "stride": 2}, ValueError), ({"type": "bogus"}, ValueError),
     ({"low": 1}, ValueError), ([1, 2], TypeError), ({"type": "int", "low": 4, "high": 1}, ValueError)],
)
def test_from_dict_rejects_bad_dicts(data, error):
    with pytest.raises(error):
        ParamSpec.from_dict(data)


def test_as_spec_accepts_specs_and_legacy_lists_only():
    spec = Int(1, 4)
    assert as_spec(spec) is spec
    assert as_spec([1, 2, 3]) == Categorical([1, 2, 3])
    assert as_spec((4, 5)) == Categorical([4, 5])
    for bad in ("abc", 3, {"type": "int"}):
        with pytest.raises(TypeError, match="list of choices"):
            as_spec(bad)


def test_enumerate_space_lists_finite_values_and_rejects_continuous():
    assert enumerate_space({"a": Int(1, 3), "b": [5, 6]}) == {"a": [1, 2, 3], "b": [5, 6]}
    with pytest.raises(ValueError, match="'lr'.*continuous"):
        enumerate_space({"lr": Float(0.0, 1.0)})
