"""Sketched FFN layers inside torch's own transformer blocks: the sketch runs, in every mode.

``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder`` have a fused inference fast path that
reads ``linear1.weight`` / ``linear2.weight`` directly. With sketched layers it must take its slow
path (where the sketches run) instead of crashing or computing with materialised dense weights.
The reference below is the encoder layer's published definition with the FFN computed from the
sketch's defining formula in float64, independent of ``SKLinear.forward`` and of torch's paths.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_linear import reference_output
from torch import nn

import panther.nn.linear as linear_module
from panther.nn import SKLinear

warnings.filterwarnings("ignore", message=".*nested tensors is in prototype stage.*")
D, HEADS, FF = 16, 4, 32


def sketched_encoder_layer(batch_first: bool, norm_first: bool, dropout: float = 0.0) -> nn.TransformerEncoderLayer:
    layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=dropout, batch_first=batch_first, norm_first=norm_first)
    # low rank, random sketch init: far from the dense layers, so a dense path could not pass as the sketch
    layer.linear1 = SKLinear.from_dense(layer.linear1, num_terms=2, low_rank=3, init="sketch")
    layer.linear2 = SKLinear.from_dense(layer.linear2, num_terms=1, low_rank=4, init="sketch")
    return layer


def reference_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, mask=None, padding=None) -> torch.Tensor:
    """Post-/pre-norm encoder layer (Vaswani et al.; torch's docs) with the formula's FFN."""
    def attend(h):
        return layer.self_attn(h, h, h, attn_mask=mask, key_padding_mask=padding, need_weights=False)[0]

    def feed_forward(h):
        hidden = torch.relu(reference_output(layer.linear1, h)).to(h.dtype)
        return reference_output(layer.linear2, hidden).to(h.dtype)

    if layer.norm_first:
        x = x + attend(layer.norm1(x))
        return x + feed_forward(layer.norm2(x))
    x = layer.norm1(x + attend(x))
    return layer.norm2(x + feed_forward(x))


@pytest.fixture
def sketch_calls():
    """Counts calls of the sketched-linear operator (a forward hook would itself disable the fast path)."""
    calls = []
    original = linear_module.sketched_linear

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    linear_module.sketched_linear = counted
    yield calls
    linear_module.sketched_linear = original


def batch(batch_first: bool, n: int = 3, length: int = 5) -> torch.Tensor:
    x = torch.randn(n, length, D)
    return x if batch_first else x.transpose(0, 1)


def padding_mask(n: int = 3, length: int = 5) -> torch.Tensor:
    mask = torch.zeros(n, length, dtype=torch.bool)
    mask[0, 3:] = True
    mask[2, 4:] = True
    return mask


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("masks", ["none", "padding", "causal"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_encoder_layer_output_is_the_sketch_formula(batch_first, norm_first, masks, mode, sketch_calls):
    layer = sketched_encoder_layer(batch_first, norm_first).train(mode == "train")
    x = batch(batch_first)
    kwargs = {}
    if masks == "padding":
        kwargs["src_key_padding_mask"] = padding_mask()
    elif masks == "causal":
        kwargs.update(src_mask=nn.Transformer.generate_square_subsequent_mask(5), is_causal=True)
    with torch.set_grad_enabled(mode == "train"):
        out = layer(x, **kwargs)
        expected = reference_layer(layer, x, kwargs.get("src_mask"), kwargs.get("src_key_padding_mask"))
    assert len(sketch_calls) == 2  # both sketches ran, once each
    keep = slice(None) if masks != "padding" else ~padding_mask()  # padded positions are undefined
    if not batch_first:
        out, expected = out.transpose(0, 1), expected.transpose(0, 1)
    torch.testing.assert_close(out[keep], expected[keep], atol=1e-5, rtol=1e-5)
    if mode == "train":
        out.sum().backward()
        assert layer.linear1.S1s.grad is not None and layer.linear2.S2s.grad is not None


def test_encoder_stack_with_padding_takes_the_slow_path_and_matches_layer_by_layer(sketch_calls):
    """The stack's nested-tensor fast path (eval, no grad, padding mask) used to crash reading ``.weight``."""
    encoder = nn.TransformerEncoder(sketched_encoder_layer(True, False), num_layers=2).eval()
    for layer in encoder.layers:  # deep-copied by the stack: give each its own sketches
        layer.linear1 = SKLinear.from_dense(nn.Linear(D, FF), num_terms=1, low_rank=3, init="sketch")
        layer.linear2 = SKLinear.from_dense(nn.Linear(FF, D), num_terms=1, low_rank=3, init="sketch")
    x, padding = batch(True), padding_mask()
    with torch.no_grad():
        out = encoder(x, src_key_padding_mask=padding)
        expected = x
        for layer in encoder.layers:
            expected = reference_layer(layer, expected, padding=padding)
    assert len(sketch_calls) == 4
    torch.testing.assert_close(out[~padding], expected[~padding], atol=1e-5, rtol=1e-5)


def test_nested_tensor_input_runs_the_sketches_per_sequence(sketch_calls):
    layer = sketched_encoder_layer(True, False).eval()
    sequences = [torch.randn(3, D), torch.randn(5, D)]
    with torch.no_grad():
        out = layer(torch.nested.nested_tensor(sequences))
        expected = [reference_layer(layer, s[None])[0] for s in sequences]
    assert out.is_nested and len(sketch_calls) == 4  # two layers, one call per sequence each
    for got, want in zip(out.unbind(), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_full_transformer_in_eval_with_all_masks_matches_its_slow_path():
    """``nn.Transformer`` (encoder fast path + decoder) equals the same model with torch's fast paths off."""
    model = nn.Transformer(D, HEADS, 2, 2, FF, dropout=0.0, batch_first=True).eval()
    for name, module in list(model.named_modules()):
        if name.endswith(("linear1", "linear2")):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, SKLinear.from_dense(module, low_rank=3, init="sketch"))
    src, tgt, padding = batch(True), torch.randn(3, 4, D), padding_mask()
    kwargs = dict(src_key_padding_mask=padding, memory_key_padding_mask=padding,
                  tgt_mask=nn.Transformer.generate_square_subsequent_mask(4), tgt_is_causal=True)
    with torch.no_grad():
        out = model(src, tgt, **kwargs)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            slow = model(src, tgt, **kwargs)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    torch.testing.assert_close(out, slow, atol=1e-5, rtol=1e-5)
