"""Prefix reuse: a prompt starting with tokens an idle session holds computes only the rest,
with the logits of a cold run; bounded by configure_prefix_cache. Explicit sessions continue a
conversation."""

from __future__ import annotations

import numpy as np
import pytest

import ferrolm
from conftest import MODELS, load_fixture, random_llama
from ferrolm.quality import log_softmax

PRECISIONS = ["fp32", "bf16", "int8"]
LONG = "The river ran past the old mill and under the stone bridge"
SYSTEM = "You are a helpful assistant who answers briefly and exactly. "


def _lp(r):
    return [(t.token, t.logprob, [(a.token, a.logprob) for a in t.top]) for t in r.logprobs]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_reused_prefix_gives_the_cold_logits(model_name, precision):
    model = ferrolm.load(MODELS / model_name, precision=precision, threads=2)
    opts = dict(max_new_tokens=8, ignore_eos=True, logprobs=True, top_logprobs=5)
    prompts = [SYSTEM + "Q: what is the river?", SYSTEM + "Q: what is the mill?", SYSTEM + "Q: what is the river? A: water"]
    cold = []
    for p in prompts:
        model.clear_prefix_cache()
        cold.append(model.generate(p, **opts))
    model.clear_prefix_cache()
    warm = [model.generate(p, **opts) for p in prompts]
    assert warm[0].timings.cached_prompt_tokens == 0
    assert all(w.timings.cached_prompt_tokens > 0 for w in warm[1:])
    for c, w in zip(cold, warm):
        # bit-identical log-probabilities: identical logits at every generated position
        assert (w.tokens, _lp(w)) == (c.tokens, _lp(c))
    # the same prompt again reuses all but its last token
    again = model.generate(prompts[0], **opts)
    assert again.timings.cached_prompt_tokens == again.timings.prompt_tokens - 1
    assert _lp(again) == _lp(cold[0])


def test_reuse_across_prefill_chunks_is_exact(tmp_path):
    model = ferrolm.load(random_llama(tmp_path / "m", ctx=1100, vocab=300), precision="int8", threads=2)
    rng = np.random.default_rng(1)
    shared = rng.integers(0, 300, 600).tolist()
    opts = dict(max_new_tokens=5, ignore_eos=True, logprobs=True, top_logprobs=3)
    for tail in ([1, 2, 3], rng.integers(0, 300, 300).tolist(), []):
        prompt = shared + tail
        model.clear_prefix_cache()
        cold = model.generate(prompt, **opts)
        model.clear_prefix_cache()
        model.generate(shared, max_new_tokens=3)
        warm = model.generate(prompt, **opts)
        assert warm.timings.cached_prompt_tokens > 0
        assert _lp(warm) == _lp(cold)


def test_a_chat_reuses_its_earlier_turns():
    model = ferrolm.load(MODELS / "tiny-llama", threads=2)
    model.clear_prefix_cache()
    first = SYSTEM + "User: hello. Assistant:"
    r1 = model.generate(first, max_new_tokens=6, ignore_eos=True)
    second = first + r1.text + " User: and then? Assistant:"
    r2 = model.generate(second, max_new_tokens=6, ignore_eos=True)
    n_first = len(model.tokenize(first))
    assert r2.timings.cached_prompt_tokens >= n_first - 1
    assert r2.timings.prefilled_tokens == r2.timings.prompt_tokens - r2.timings.cached_prompt_tokens


def test_the_cache_is_bounded_and_configurable():
    model = ferrolm.load(MODELS / "tiny-llama", threads=2)
    info = model.prefix_cache_info()
    assert (info.sessions, info.max_sessions, info.max_bytes) == (0, 4, 1 << 30)
    for p in ("rivers run", "mountains stand tall", "one two", "zebra stripes", "quiet night", "xylophone"):
        model.generate(p, max_new_tokens=2)
    info = model.prefix_cache_info()
    assert info.sessions == 4 and info.tokens > 0 and info.bytes > 0
    per_position = model._core.kv_cache_bytes(1)
    model.configure_prefix_cache(max_sessions=8, max_bytes=3 * 20 * per_position)
    assert model.prefix_cache_info().bytes <= 3 * 20 * per_position
    model.configure_prefix_cache(max_sessions=1)
    assert model.prefix_cache_info().sessions <= 1
    model.configure_prefix_cache(max_sessions=0)
    model.generate("same prompt here", max_new_tokens=2)
    assert model.generate("same prompt here", max_new_tokens=2).timings.cached_prompt_tokens == 0
    assert model.prefix_cache_info().sessions == 0
    for bad in (dict(max_sessions=-1), dict(max_sessions=1.5), dict(max_sessions=2, max_bytes=-3), dict(max_sessions=True)):
        with pytest.raises(ferrolm.InvalidArgumentError):
            model.configure_prefix_cache(**bad)
    model.configure_prefix_cache(reuse=False)  # sessions kept, prompts computed in full
    model.generate(LONG, max_new_tokens=2)
    assert model.generate(LONG, max_new_tokens=2).timings.cached_prompt_tokens == 0
    assert model.prefix_cache_info().sessions == 1
    with pytest.raises(ferrolm.InvalidArgumentError):
        model.configure_prefix_cache(reuse=1)
    model.configure_prefix_cache()
    model.generate("x y z", max_new_tokens=2)
    model.clear_prefix_cache()
    assert model.prefix_cache_info().sessions == 0


def test_unrelated_calls_keep_each_others_prefixes():
    model = ferrolm.load(MODELS / "tiny-llama", threads=2)
    a, b = SYSTEM + "Q: one?", "Completely different words here"
    model.generate(a, max_new_tokens=2)
    model.generate(b, max_new_tokens=2)
    assert model.generate(a, max_new_tokens=2).timings.cached_prompt_tokens == len(model.tokenize(a)) - 1
    assert model.generate(b, max_new_tokens=2).timings.cached_prompt_tokens == len(model.tokenize(b)) - 1


def test_a_soft_prompt_call_does_not_reuse_and_stays_correct():
    model = ferrolm.load(MODELS / "tiny-llama", threads=2)
    from conftest import FIXTURES

    name = model.load_soft_prompt(FIXTURES / "adapters" / "tiny-llama-prompt-tuning")
    cold = model.generate(LONG, soft_prompt=name, max_new_tokens=6, ignore_eos=True)
    model.generate(LONG, max_new_tokens=6, ignore_eos=True)
    warm = model.generate(LONG, soft_prompt=name, max_new_tokens=6, ignore_eos=True)
    assert warm.timings.cached_prompt_tokens == 0 and warm.tokens == cold.tokens
    plain = model.generate(LONG, max_new_tokens=6, ignore_eos=True)
    assert plain.timings.cached_prompt_tokens > 0


def test_a_session_continues_its_conversation():
    model = ferrolm.load(MODELS / "tiny-llama", precision="fp32", threads=2)
    s = model.new_session()
    assert isinstance(s, ferrolm.Session) and s.position == 0
    r1 = s.generate("The river ran", max_new_tokens=5, ignore_eos=True)
    r2 = s.generate(" and then", max_new_tokens=5, ignore_eos=True, logprobs=True)
    assert r2.timings.prompt_tokens == len(model.tokenize(" and then", add_special_tokens=False))
    history = s.history()
    first = model.tokenize("The river ran")
    assert history[: len(first)] == first and history[len(first) : len(first) + 5] == r1.tokens
    assert history[-5:] == r2.tokens and len(history) == s.position + 1
    # the continuation is what a cold run of the whole history predicts (up to float rounding)
    ref = log_softmax(model.logits(history[:-1]))[-5:]
    got = np.array([t.logprob for t in r2.logprobs])
    want = np.array([ref[i, t] for i, t in enumerate(r2.tokens)])
    np.testing.assert_allclose(got, want, atol=1e-4)
    # raw step-by-step use still works on it
    s.reset()
    assert s.position == 0 and s.history() == []
    s.forward([1, 2, 3])
    assert s.tokens() == [1, 2, 3] and len(s.logits()) == 4 * model.vocab_size
    with pytest.raises(ferrolm.ContextLengthError):
        s.generate([1] * 200, max_new_tokens=2)


def test_one_call_at_a_time_per_session():
    model = load_fixture("tiny-llama")
    s = model.new_session()
    stream = s.generate("Hello", max_new_tokens=20, stream=True, ignore_eos=True)
    next(stream)
    with pytest.raises(ferrolm.InvalidArgumentError, match="already generating"):
        s.generate("again", max_new_tokens=2)
    stream.close()
    assert s.generate("again", max_new_tokens=2).tokens


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_reused_session_commits_only_its_new_conversation(precision):
    # generate() restarts the reused session: the pages its new prompt writes are kept, the rest
    # go back, and the output is a fresh session's
    model = ferrolm.load(MODELS / "tiny-llama", precision=precision, threads=2)
    model.configure_prefix_cache(reuse=False)
    long_ids = [(7 * i + 3) % model.vocab_size for i in range(60)]
    short_ids = [(11 * i + 5) % model.vocab_size for i in range(9)]
    opts = dict(max_new_tokens=4, ignore_eos=True, logprobs=True, top_logprobs=3)
    model.generate(long_ids, **opts)
    info = model.prefix_cache_info()
    assert (info.sessions, info.tokens) == (1, 60 + 4 - 1)
    per_position = info.bytes // info.tokens  # the cache's bytes per position (its dtype's)
    assert per_position > 0 and info.bytes == 63 * per_position
    warm = model.generate(short_ids, **opts)
    info = model.prefix_cache_info()
    assert (info.sessions, info.tokens, info.bytes) == (1, 9 + 4 - 1, (9 + 4 - 1) * per_position)
    model.clear_prefix_cache()
    cold = model.generate(short_ids, **opts)
    assert (warm.tokens, _lp(warm)) == (cold.tokens, _lp(cold))
    # logits() restarts it as well
    np.testing.assert_array_equal(model.logits(short_ids), model.logits(short_ids))
    assert model.prefix_cache_info().bytes == 9 * per_position
