"""The profile's bounded row sample: errors of a few hundred rows that stand for all of them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from panther.nn.quantized import Int8Linear, Int8SKLinear
from panther.tuner._allocation import profile as profile_module
from panther.tuner._allocation.profile import SAMPLE_ROWS, profile_layers


def _batches_with_an_outlier_each(count: int, rows: int, dim: int, outlier: float) -> list[torch.Tensor]:
    """Gaussian rows; one element per batch ``outlier`` large, which sets the batch's int8 scale."""
    gen = torch.Generator().manual_seed(0)
    batches = []
    for index in range(count):
        x = torch.randn(rows, dim, generator=gen)
        x[index % rows, index % dim] = outlier
        batches.append(x)
    return batches


def _full_error(module: nn.Module, dense: nn.Linear, batches: list[torch.Tensor]) -> float:
    """The relative output error over every row, each batch quantized on its own as in the model."""
    with torch.no_grad():
        error = sum(float((module(b) - dense(b)).square().sum()) for b in batches)
        signal = sum(float((b @ dense.weight.T).square().sum()) for b in batches)
    return (error / signal) ** 0.5


@pytest.mark.parametrize("outlier", [1.0, 40.0])
def test_sampled_int8_errors_match_every_row_and_keep_each_batch_scale(outlier):
    torch.manual_seed(1)
    dense = nn.Linear(64, 48).eval()
    batches = _batches_with_an_outlier_each(8, 300, 64, outlier)  # 2400 rows, SAMPLE_ROWS kept
    assert sum(len(b) for b in batches) > 4 * SAMPLE_ROWS
    candidates = {"int8": Int8Linear.from_dense(dense).eval()}
    from panther.nn.linear import SKLinear

    candidates["int8 rank 16"] = Int8SKLinear.from_sketch(SKLinear.from_dense(dense, 1, 8, "svd")).eval()
    model = nn.Sequential(dense)
    profiles = profile_layers(model, {"0": candidates}, {}, batches, lambda m, b: m(b))
    for key, module in candidates.items():
        # 3 standard errors of the ratio estimate for row-to-row variation CV ≲ 1 (module docstring);
        # without each batch's extremes the outlier batches' coarser scale would be missed (~10x lower)
        assert profiles["0"].error[key] == pytest.approx(_full_error(module, dense, batches), rel=0.15)


def test_the_sample_holds_at_most_sample_rows(monkeypatch):
    monkeypatch.setattr(profile_module, "SAMPLE_ROWS", 50)
    dense = nn.Linear(8, 4)
    sample = profile_module._RowSample(dense, torch.Generator().manual_seed(0))
    for _ in range(7):
        x = torch.randn(3, 11, 8)  # 33 rows a batch
        sample.add(x, dense(x).detach())
    sample.add(torch.zeros(0, 8), torch.zeros(0, 4))  # an empty batch adds nothing
    kept = sum(b["x"].shape[0] for b in sample.batches)
    assert kept == 50
    assert all(b["x"].shape[1] == 8 and b["y"].shape[0] == b["x"].shape[0] for b in sample.batches)


def test_progress_names_each_layer_how_many_are_left_and_the_time_so_far():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    candidates = {name: {"int8": Int8Linear.from_dense(model.get_submodule(name))} for name in ("0", "2")}
    lines: list[str] = []
    profile_layers(model, candidates, {}, [torch.randn(16, 8)], lambda m, b: m(b), progress=lines.append)
    per_layer = [line for line in lines if line.startswith("profiling ") and "left" in line]
    assert len(per_layer) == 2
    assert "profiling 0 (1/2, 1 left," in per_layer[0] and "s so far)" in per_layer[0]
    assert "profiling 2 (2/2, 0 left," in per_layer[1]


def test_layers_run_under_autocast_are_measured_and_timed_in_it():
    """bf16-mixed records bf16 inputs for float32 layers: the candidates run in that same autocast."""
    from panther.nn.linear import SKLinear

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16)).eval()
    batches = [torch.randn(40, 32) for _ in range(3)]  # 120 rows: all kept, so the sample is every row

    def forward(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m(batch)

    sketch = SKLinear.from_dense(model[2], 1, 4, "svd").eval()
    profiles = profile_layers(model, {"2": {"rank 8": sketch}}, {}, batches, forward, time_candidates=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        inputs = [torch.relu(model[0](b)) for b in batches]
        error = sum(float((sketch(x).float() - model[2](x).float()).square().sum()) for x in inputs)
        signal = sum(float((model[2](x).float() - model[2].bias).square().sum()) for x in inputs)
    assert profiles["2"].error["rank 8"] == pytest.approx((error / signal) ** 0.5, rel=1e-3)
    assert profiles["2"].dense_seconds > 0 and profiles["2"].seconds["rank 8"] > 0


def test_options_timed_in_turn_keep_their_price_ratio_when_the_load_changes(monkeypatch):
    """A machine twice as loaded after the first calls: timed one after the other, the second
    option would look twice its real cost; called in turn with the fastest call kept, each keeps
    its true price (``cost`` units, load 1 in every round's best call)."""
    cheap, costly = nn.Identity(), nn.Identity()
    cost = {id(cheap): 1.0, id(costly): 2.0}
    calls = []

    def loaded_call(module: nn.Module, x: torch.Tensor) -> float:
        calls.append(module)
        load = 1.0 if len(calls) <= 4 else 2.0  # the load doubles after the warm-ups and one round
        return cost[id(module)] * load

    monkeypatch.setattr(profile_module, "_call_seconds", loaded_call)
    seconds = profile_module._fastest_seconds({"cheap": cheap, "costly": costly}, torch.zeros(1))
    assert seconds == {"cheap": 1.0, "costly": 2.0}
    assert calls[2:6] == [cheap, costly, cheap, costly]  # in turn, round after round
