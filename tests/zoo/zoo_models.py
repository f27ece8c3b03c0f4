"""Tiny configs of real architectures nobody here wrote, built offline with random weights.

Each :class:`ZooModel` builds a fresh model (eval mode, seeded) and a batch of inputs, and says
which output to compare. ``transformers`` models are built from their config classes only (no
download); torch's own ``nn.Transformer`` / ``nn.TransformerEncoder`` need nothing else.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

VOCAB, SEQ, BATCH = 96, 8, 3


@dataclass(frozen=True)
class ZooModel:
    name: str
    build_model: Callable[[], nn.Module]
    make_inputs: Callable[[], dict[str, Any]]
    output: Callable[[Any], torch.Tensor]  # the tensor to compare from the model's return value
    vision: bool = False  # convolutional: its "auto" config also selects Conv2d

    def build(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        model = self.build_model()
        if self.vision:
            _settle_batch_norms(model, self.make_inputs)
        return model.eval()

    def inputs(self) -> dict[str, Any]:
        torch.manual_seed(1234)
        return self.make_inputs()

    def run(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        return self.output(model(**inputs))

    @property
    def layer_types(self) -> list[str]:
        """The dense types its "auto" config selects (the callback's default, plus convolutions)."""
        return ["Linear", "Conv1D", "Conv2d"] if self.vision else ["Linear", "Conv1D"]


@torch.no_grad()
def _settle_batch_norms(model: nn.Module, make_inputs: Callable[[], dict[str, Any]]) -> None:
    """Give batch norms the running statistics of real inputs, as a trained model has.

    At random init their statistics are (0, 1) while the activations shrink layer by layer, so a
    deep net such as MobileNetV2 would output ~1e-25: nothing to compare.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the passes below
    model.train()
    for _ in range(3):
        model(**make_inputs())
    for norm in norms:
        norm.momentum = 0.1


def _token_inputs() -> dict[str, Any]:
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[0, SEQ - 3:] = 0  # one padded sequence: masks are exercised
    return {"input_ids": ids, "attention_mask": mask}


def _images(size: int) -> Callable[[], dict[str, Any]]:
    return lambda: {"pixel_values": torch.randn(BATCH, 3, size, size)}


def _bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(num_labels=4, vocab_size=VOCAB, hidden_size=32,
                                                    num_hidden_layers=2, num_attention_heads=4,
                                                    intermediate_size=64, max_position_embeddings=32))


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                      bos_token_id=0, eos_token_id=0))


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
                                        pad_token_id=0))


def _t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                               num_heads=4, decoder_start_token_id=0, pad_token_id=0,
                                               eos_token_id=1))


def _t5_inputs() -> dict[str, Any]:
    return {**_token_inputs(), "decoder_input_ids": torch.randint(0, VOCAB, (BATCH, SEQ - 2))}


def _vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                                               num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                               num_labels=10))


def _resnet() -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    return ResNetForImageClassification(ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32],
                                                     depths=[1, 1], layer_type="basic", num_labels=10))


def _mobilenet_v2() -> nn.Module:
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    return MobileNetV2ForImageClassification(MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.35,
                                                               num_labels=10))


class TorchTransformer(nn.Module):
    """A token model around ``nn.Transformer`` (encoder-decoder, key-padding and causal masks)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.transformer = nn.Transformer(32, 4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=64,
                                          dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, VOCAB)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_key_padding_mask: torch.Tensor) -> torch.Tensor:
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        hidden = self.transformer(self.embed(src), self.embed(tgt), tgt_mask=causal, tgt_is_causal=True,
                                  src_key_padding_mask=src_key_padding_mask,
                                  memory_key_padding_mask=src_key_padding_mask)
        return self.head(hidden)


class TorchEncoder(nn.Module):
    """``nn.TransformerEncoder`` (post-norm, batch-first) over embeddings, with a padding mask."""

    def __init__(self, norm_first: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=not norm_first)
        self.head = nn.Linear(32, 10)

    def forward(self, src: torch.Tensor, src_key_padding_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(self.embed(src), src_key_padding_mask=src_key_padding_mask)
        # mean over real tokens: padded positions are undefined (the fused path zeroes them, the slow one not)
        keep = (~src_key_padding_mask).unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * keep).sum(dim=1) / keep.sum(dim=1))


def _padded_tokens(target: bool) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        src = torch.randint(0, VOCAB, (BATCH, SEQ))
        padding = torch.zeros(BATCH, SEQ, dtype=torch.bool)
        padding[0, SEQ - 3:] = True  # left-aligned padding: what the encoder's nested fast path takes
        inputs = {"src": src, "src_key_padding_mask": padding}
        if target:
            inputs["tgt"] = torch.randint(0, VOCAB, (BATCH, SEQ - 1))
        return inputs

    return make


def _logits(out: Any) -> torch.Tensor:
    return out.logits


def _itself(out: Any) -> torch.Tensor:
    return out


ZOO: dict[str, ZooModel] = {m.name: m for m in (
    ZooModel("bert", _bert, _token_inputs, _logits),
    ZooModel("gpt2", _gpt2, _token_inputs, _logits),
    ZooModel("llama", _llama, _token_inputs, _logits),
    ZooModel("t5", _t5, _t5_inputs, _logits),
    ZooModel("vit", _vit, _images(16), _logits, vision=True),
    ZooModel("resnet", _resnet, _images(32), _logits, vision=True),
    ZooModel("mobilenet_v2", _mobilenet_v2, _images(32), _logits, vision=True),
    ZooModel("torch_transformer", TorchTransformer, _padded_tokens(target=True), _itself),
    ZooModel("torch_encoder", TorchEncoder, _padded_tokens(target=False), _itself),
    ZooModel("torch_encoder_norm_first", lambda: TorchEncoder(norm_first=True), _padded_tokens(target=False),
             _itself),
)}

TORCH_ONLY = {"torch_transformer", "torch_encoder", "torch_encoder_norm_first"}
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def zoo_params() -> list[Any]:
    """One ``pytest.param`` per zoo model; ``transformers`` models are skipped cleanly without it."""
    needs = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="needs transformers (pip install -e '.[test]')")
    return [pytest.param(name, id=name, marks=() if name in TORCH_ONLY else needs) for name in ZOO]
