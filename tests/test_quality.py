"""Perplexity over a text, against transformers' logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ferrolm
from ferrolm.quality import log_softmax, perplexity, token_nll
from conftest import load_fixture, reference


def test_perplexity_matches_reference_logits(model_name):
    ref, _ = reference(model_name)
    ids = ref["prefix_ids"].tolist()
    logp = log_softmax(ref["prefix_logits"])
    want = -np.mean([logp[i - 1, ids[i]] for i in range(1, len(ids))])
    got = perplexity(load_fixture(model_name), ids)
    assert got.scored_tokens == len(ids) - 1
    assert got.mean_nll == pytest.approx(want, abs=1e-4)
    assert got.perplexity == pytest.approx(math.exp(want), rel=1e-4)


def test_sliding_window_scores_each_token_once_with_its_window():
    model = load_fixture("tiny-qwen2")
    ids = [(i * 37 + 11) % 384 for i in range(100)]
    nll, window, stride = token_nll(model, ids, window=32, stride=16)
    assert (window, stride) == (32, 16) and not np.isnan(nll).any()
    # token 40 is scored in the window starting at 16 (the one whose new part covers it)
    logp = log_softmax(model.logits(ids[16:48]))
    assert nll[39] == pytest.approx(-logp[40 - 1 - 16, ids[40]], abs=1e-6)
    # a window covering everything equals the single pass
    full, _, _ = token_nll(model, ids, window=100)
    assert np.allclose(full[:31], nll[:31], atol=1e-6)


def test_perplexity_of_text_and_bad_arguments():
    model = load_fixture("tiny-llama")
    p = perplexity(model, "The river ran past the old mill and the old mill ran past the river.")
    assert p.perplexity > 1 and p.scored_tokens > 5
    with pytest.raises(ferrolm.InvalidArgumentError):
        perplexity(model, [1])
    with pytest.raises(ferrolm.InvalidArgumentError, match="window"):
        perplexity(model, [1, 2, 3], window=1000)
    with pytest.raises(ferrolm.InvalidArgumentError, match="stride"):
        perplexity(model, [1, 2, 3], window=3, stride=5)
