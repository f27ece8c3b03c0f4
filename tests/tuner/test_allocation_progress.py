"""What a long allocation reports while it works: each layer built and profiled, how many left, time so far."""

from __future__ import annotations

import logging

import torch
from torch import nn

from panther.tuner import LayerConfig, SKAutoTuner, TuningConfigs


def test_allocation_reports_each_layer_while_building_and_profiling(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    x = torch.randn(64, 16)
    reference = model(x).detach()

    def cosine(m: nn.Module) -> float:
        with torch.no_grad():
            return float(nn.functional.cosine_similarity(m(x), reference, dim=-1).mean())

    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig(["0", "2"], "auto", separate=True)]), cosine,
                        accuracy_threshold=0.9, calibration_data=[x[:32], x[32:]], max_total_trials=4)
    with caplog.at_level(logging.INFO, logger="panther.tuner"):
        tuner.tune()
    messages = [r.getMessage() for r in caplog.records]
    building = [m for m in messages if "building the options of" in m]
    profiling = [m for m in messages if m.startswith("allocation: profiling ") and "left" in m]
    assert [m.split(" (")[0].rsplit(" ", 1)[-1] for m in building] == ["0", "2"]
    assert "(2/2, 0 left, " in building[-1] and "s so far)" in building[-1]
    assert len(profiling) == 2 and "(1/2, 1 left, " in profiling[0]
