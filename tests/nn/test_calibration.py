"""Calibration statistics against direct computation, and data-aware init end to end."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from panther.nn import SKLinear
from panther.nn.calibration import collect_input_covariances, layer_input_rows


def test_linear_second_moment_streams_over_batches():
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    batches = [torch.randn(7, 6) for _ in range(4)]
    covs = collect_input_covariances(model, ["0", "2"], batches)
    x = torch.cat(batches).double()
    torch.testing.assert_close(covs["0"], x.T @ x / len(x))
    hidden = torch.tanh(model[0](torch.cat(batches))).double()
    torch.testing.assert_close(covs["2"], hidden.T @ hidden / len(hidden), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "conv",
    [nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(2, 3, (2, 3), stride=2, dilation=(1, 2)),
     nn.Conv2d(2, 3, 4, padding="same"), nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect")],
)
def test_conv_patch_rows_reproduce_the_convolution(conv):
    x = torch.randn(2, 2, 9, 8)
    rows = layer_input_rows(conv, x)  # (N * L, C * kh * kw)
    out = conv(x)
    via_rows = rows @ conv.weight.flatten(1).T + conv.bias
    torch.testing.assert_close(via_rows, out.permute(0, 2, 3, 1).reshape(-1, conv.out_channels), rtol=1e-5, atol=1e-5)


def test_hooks_removed_and_mode_restored_even_on_failure():
    model = nn.Sequential(nn.Linear(4, 4)).train()
    with pytest.raises(RuntimeError):
        collect_input_covariances(model, ["0"], [torch.randn(2, 4), torch.randn(2, 5)])
    assert model.training and not model[0]._forward_pre_hooks


def test_data_svd_from_calibration_beats_plain_svd_on_those_inputs():
    torch.manual_seed(3)
    scales = torch.logspace(0, -2, 32)
    data = [torch.randn(64, 32) * scales for _ in range(5)]
    model = nn.Sequential(nn.Linear(32, 24))
    cov = collect_input_covariances(model, ["0"], data)["0"]
    x = torch.cat(data)
    errors = {}
    for init in ("svd", "data_svd"):
        layer = SKLinear.from_dense(model[0], 1, 3, init=init, input_cov=cov if init == "data_svd" else None)
        errors[init] = F.mse_loss(layer(x), model(x)).item()
    assert errors["data_svd"] < 0.5 * errors["svd"]


def test_grouped_conv_covariance_feeds_data_aware_sketch():
    from panther.nn import SKConv2d

    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    images = [torch.randn(2, 4, 6, 6) * torch.tensor([1.0, 0.1, 1.0, 0.01]).view(1, 4, 1, 1) for _ in range(3)]
    cov = collect_input_covariances(nn.Sequential(conv), ["0"], images)["0"]
    assert cov.shape == (36, 36)
    aware = SKConv2d.from_dense(conv, 1, 2, init="data_svd", input_cov=cov)
    plain = SKConv2d.from_dense(conv, 1, 2, init="svd")
    x = torch.cat(images)
    assert F.mse_loss(aware(x), conv(x)) < F.mse_loss(plain(x), conv(x))


def test_each_submodules_mode_is_restored():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    model[1].eval()  # deliberately frozen statistics
    collect_input_covariances(model, ["0"], [torch.randn(3, 4)])
    assert model.training and model[0].training and not model[1].training


def test_layers_fed_one_tensor_share_its_products_and_rows_are_multiplied_in_chunks(monkeypatch):
    from panther.nn import calibration

    class Attention(nn.Module):  # query, key and value read the same tensor
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.q(x) + self.k(x) * self.v(x)

    model = Attention()
    batches = [torch.randn(5, 3, 8) for _ in range(5)]  # 15 rows each
    products = []
    real = calibration.SecondMoment.add_product
    monkeypatch.setattr(calibration.SecondMoment, "add_product",
                        lambda self, product, rows: products.append(product) or real(self, product, rows))
    monkeypatch.setattr(calibration, "ROWS_PER_PRODUCT", 40)  # a product every 3 batches, then the rest
    covs = collect_input_covariances(model, ["q", "k", "v"], batches)
    assert len(products) == 2 * 3  # two chunks (45 rows, then 30), each added to the three layers
    assert len({id(product) for product in products}) == 2  # one product per chunk, shared
    x = torch.cat(batches).reshape(-1, 8).double()
    for name in "qkv":
        torch.testing.assert_close(covs[name], x.T @ x / len(x))
    monkeypatch.setattr(calibration, "FLOAT32_PRODUCTS_ABOVE", 4)
    wide = collect_input_covariances(model, ["q"], batches)["q"]
    assert wide.dtype == torch.float64
    torch.testing.assert_close(wide, x.T @ x / len(x), rtol=1e-6, atol=1e-6)


def test_default_forward_passes_mapping_batches_as_keywords():
    """Hugging Face-style batches (``{"input_ids": ...}``) reach the model as keyword arguments."""
    from panther.nn.calibration import default_forward

    class Keyworded(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return input_ids * scale

    x = torch.randn(3, 4)
    assert torch.equal(default_forward(Keyworded(), {"input_ids": x, "scale": 2.0}), x * 2.0)
    assert torch.equal(default_forward(Keyworded(), (x, "label")), x)


def test_tall_layers_project_their_moment_through_the_weight_and_factorise_as_with_the_full_one():
    """A 3072 → 768-like layer (here 48 → 12) keeps W·C·Wᵀ and diag(C); data-aware sketches,
    their spectra and smoothing built from it equal those built from C itself."""
    from panther.nn import factorize
    from panther.nn.moments import ProjectedMoment
    from panther.nn.quantized import SmoothInt8Linear

    gen = torch.Generator().manual_seed(9)
    model = nn.Sequential(nn.Linear(10, 48), nn.GELU(), nn.Linear(48, 12))
    scales = torch.logspace(0, -1.5, 10)
    batches = [torch.randn(40, 10, generator=gen) * scales for _ in range(4)]
    full = collect_input_covariances(model, ["0", "2"], batches)
    projected = collect_input_covariances(model, ["0", "2"], batches, project_tall=True)
    assert isinstance(projected["2"], ProjectedMoment) and torch.is_tensor(projected["0"])  # 10 → 48 is wide
    weight = model[2].weight.detach().double()
    torch.testing.assert_close(projected["2"].output, weight @ full["2"] @ weight.T, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(projected["2"].diagonal, full["2"].diagonal(), rtol=1e-6, atol=1e-9)
    factorize._decompositions.clear()
    torch.testing.assert_close(factorize.singular_values(model[2].weight.T, projected["2"]),
                               factorize.singular_values(model[2].weight.T, full["2"]), rtol=1e-3, atol=1e-5)
    x = torch.cat(batches)
    for rank in (2, 4):
        by_full = SKLinear.from_dense(model[2], 1, rank, init="data_svd", input_cov=full["2"])
        by_projection = SKLinear.from_dense(model[2], 1, rank, init="data_svd", input_cov=projected["2"])
        hidden = model[1](model[0](x))
        torch.testing.assert_close(by_projection(hidden), by_full(hidden), rtol=1e-3, atol=1e-4)
    smoothed = [SmoothInt8Linear.from_dense(model[2], cov).input_scale for cov in (full["2"], projected["2"])]
    torch.testing.assert_close(smoothed[0], smoothed[1])
    with torch.no_grad():
        model[2].weight[0, 0] += 1.0  # the layer changed after calibration: the projection is refused
    with pytest.raises(ValueError, match="another weight"):
        SKLinear.from_dense(model[2], 1, 2, init="data_svd", input_cov=projected["2"])
