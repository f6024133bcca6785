"""Batches, log-probabilities, sessions, asyncio and cancellation on the CUDA backend (on the
CPU emulator of the CUDA execution model; on a real GPU with the `gpu` marker). The backend
steps a batch's sessions one after the other and does not reuse cached prefixes."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

import ferrolm
from conftest import MODELS
from ferrolm.quality import log_softmax

PROMPTS = ["The river ran past the old mill", "Once", "Numbers: 1, 2, 3,"]


@pytest.fixture(scope="module")
def model(cuda_mode):
    return ferrolm.load(MODELS / "tiny-llama", device="cuda", context_length=64)


def _key(r):
    return (r.text, r.tokens, r.finish_reason)


def test_a_batch_equals_one_by_one(model):
    opts = dict(max_new_tokens=5, temperature=0.8, seed=2, ignore_eos=True)
    alone = [model.generate(p, **opts) for p in PROMPTS]
    assert [_key(r) for r in model.generate(PROMPTS, **opts)] == [_key(r) for r in alone]
    # and the CPU's tokens
    cpu = ferrolm.load(MODELS / "tiny-llama", context_length=64)
    assert [r.tokens for r in cpu.generate(PROMPTS, max_new_tokens=5, ignore_eos=True)] == \
        [r.tokens for r in model.generate(PROMPTS, max_new_tokens=5, ignore_eos=True)]


def test_logprobs_and_score(model):
    r = model.generate(PROMPTS[0], max_new_tokens=4, ignore_eos=True, logprobs=True, top_logprobs=3)
    ids = r.prompt_tokens + r.tokens
    ref = log_softmax(model.logits(ids[:-1]))[len(r.prompt_tokens) - 1 :]
    np.testing.assert_allclose([t.logprob for t in r.logprobs], [ref[i, t] for i, t in enumerate(r.tokens)], atol=1e-4)
    sc = model.score(PROMPTS[0])
    assert len(sc.logprobs) == len(model.tokenize(PROMPTS[0])) - 1


def test_no_prefix_reuse_but_the_same_tokens(model):
    model.clear_prefix_cache()
    a = model.generate(PROMPTS[0], max_new_tokens=4, ignore_eos=True)
    b = model.generate(PROMPTS[0], max_new_tokens=4, ignore_eos=True)
    assert b.timings.cached_prompt_tokens == 0 and a.tokens == b.tokens
    # the idle device session (its decode step captured) is used again, not a new one
    assert model.prefix_cache_info().sessions == 1


def test_session_async_and_cancel(model):
    s = model.new_session()
    r1 = s.generate("Hello", max_new_tokens=3, ignore_eos=True)
    r2 = s.generate(" again", max_new_tokens=3, ignore_eos=True)
    assert len(s.history()) == len(model.tokenize("Hello")) + 3 + len(model.tokenize(" again", add_special_tokens=False)) + 3
    assert r1.tokens and r2.tokens

    async def main():
        return await model.agenerate(PROMPTS[1], max_new_tokens=3, ignore_eos=True)

    assert asyncio.run(main()).tokens == model.generate(PROMPTS[1], max_new_tokens=3, ignore_eos=True).tokens
    ev = threading.Event()
    ev.set()
    assert model.generate(PROMPTS[0], cancel=ev).finish_reason == "cancelled"
