"""Our error messages also carry the phrases users of the original Panther match on."""

from __future__ import annotations

import pytest
from torch import nn

from panther.nn import RandMultiHeadAttention, SKLinear
from panther.tuner import (
    Categorical,
    Float,
    Int,
    LayerConfig,
    LayerNameResolver,
    OptunaSearch,
    SKAutoTuner,
    TuningConfigs,
)

MODEL = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))

CASES = {
    "range of four": (ValueError, "must contain 2 or 3 elements",
                      lambda: LayerNameResolver(MODEL).resolve({"pattern": ".*", "range": [0, 1, 1, 1]})),
    "indices and range": (ValueError, "Cannot use both",
                          lambda: LayerNameResolver(MODEL).resolve({"pattern": ".*", "indices": [0], "range": [0, 1]})),
    "selector of a number": (TypeError, "unsupported type", lambda: LayerNameResolver(MODEL).resolve(3)),
    "selector index": (IndexError, "out of bounds",
                       lambda: LayerNameResolver(MODEL).resolve({"pattern": ".*", "indices": [7]})),
    "config index": (IndexError, "out of bounds",
                     lambda: TuningConfigs([LayerConfig("0", {"low_rank": [2]})]).remove(3)),
    "choices as a string": (TypeError, "must be a list", lambda: Categorical("abc")),
    "empty layer list": (ValueError, "no layer names", lambda: LayerConfig([], {"low_rank": [2]})),
    "selector matching nothing": (ValueError, "no layer names",
                                  lambda: SKAutoTuner(MODEL, LayerConfig("nope", {"low_rank": [2]}), lambda m: 1.0)),
    "empty params": (ValueError, "must not be empty", lambda: LayerConfig("0", {})),
    "Int log from 0": (ValueError, "log=True requires low > 0", lambda: Int(0, 8, log=True)),
    "Float log from 0": (ValueError, "log=True requires low > 0", lambda: Float(0.0, 1.0, log=True)),
    "unknown kernel": (ValueError, "not supported", lambda: RandMultiHeadAttention(8, 2, kernel_fn="cosine",
                                                                                   batch_first=True)),
    "unknown init": (ValueError, "not valid", lambda: SKLinear(8, 8, 1, 1, init="qr")),
    "search used before its study": (RuntimeError, "not initialized",
                                     lambda: OptunaSearch(n_trials=1).get_next_params()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_error_carries_the_original_phrase(case):
    error, phrase, call = CASES[case]
    with pytest.raises(error, match=phrase):
        call()
