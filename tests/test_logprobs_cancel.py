"""Log-probabilities (generation and score), asyncio front ends and cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

import ferrolm
from conftest import load_fixture, random_llama
from ferrolm import _core
from ferrolm.quality import log_softmax

PROMPT = "The river ran past the old mill"


# -- log-probabilities --------------------------------------------------------------------------
def test_logprobs_are_the_log_softmax_of_the_logits(model_name):
    model = load_fixture(model_name)
    r = model.generate(PROMPT, max_new_tokens=8, ignore_eos=True, logprobs=True, top_logprobs=4,
                       repetition_penalty=1.5, temperature=0.7, seed=1)
    ids = r.prompt_tokens + r.tokens
    ref = log_softmax(model.logits(ids[:-1]))[len(r.prompt_tokens) - 1 :]
    assert len(r.logprobs) == len(r.tokens) == len(ref)
    for row, lp in zip(ref, r.logprobs):
        # the model's distribution before the processors (penalty, temperature) — as OpenAI
        assert abs(lp.logprob - row[lp.token]) < 1e-4
        assert [a.token for a in lp.top] == list(np.argsort(-row, kind="stable")[:4])
        assert np.allclose([a.logprob for a in lp.top], row[[a.token for a in lp.top]], atol=1e-4)
        assert lp.text == model.tokenizer.decode([lp.token], skip_special_tokens=False)
        assert all(a.text is not None for a in lp.top)


def test_greedy_picks_the_top_logprob():
    model = load_fixture("tiny-llama")
    r = model.generate(PROMPT, max_new_tokens=6, ignore_eos=True, top_logprobs=1)
    assert r.logprobs is not None and [lp.top[0].token for lp in r.logprobs] == r.tokens
    assert model.generate(PROMPT, max_new_tokens=2).logprobs is None
    r = model.generate(PROMPT, max_new_tokens=3, logprobs=True)
    assert all(lp.top == [] for lp in r.logprobs)


def test_streams_carry_logprobs():
    model = load_fixture("tiny-gpt2")
    stream = model.generate(PROMPT, max_new_tokens=6, ignore_eos=True, logprobs=True, top_logprobs=2, stream=True)
    seen = []
    for _ in stream:
        seen.append(len(stream.logprobs))
    assert seen == sorted(seen) and stream.result.logprobs == stream.logprobs
    plain = model.generate(PROMPT, max_new_tokens=6, ignore_eos=True, logprobs=True, top_logprobs=2)
    assert [(t.token, t.logprob) for t in plain.logprobs] == [(t.token, t.logprob) for t in stream.result.logprobs]


def test_logprobs_of_raw_logits_match_the_session():
    model = load_fixture("tiny-llama")
    s = model._core.new_session(16)
    s.forward([1, 2, 3])
    assert _core.logprobs(s.logits(), 5, 3) == s.logprobs(5, 3)
    with pytest.raises(ferrolm.InvalidTokenError):
        s.logprobs(10**6)


def test_score_gives_each_tokens_logprob(model_name):
    model = load_fixture(model_name)
    sc = model.score(PROMPT)
    ids = model.tokenize(PROMPT)
    ref = log_softmax(model.logits(ids))
    assert sc.tokens == ids and len(sc.logprobs) == len(ids) - 1
    np.testing.assert_allclose(sc.logprobs, [ref[i, t] for i, t in enumerate(ids[1:])], atol=1e-6)
    assert sc.total == pytest.approx(sum(sc.logprobs)) and sc.perplexity > 1
    assert model.score(ids).logprobs == sc.logprobs
    with pytest.raises(ferrolm.InvalidArgumentError):
        model.score([5])
    with pytest.raises(ferrolm.ContextLengthError):
        model.score([1] * 200)


@pytest.mark.parametrize("bad", [dict(top_logprobs=-1), dict(top_logprobs=101), dict(top_logprobs=1.0),
                                 dict(logprobs="yes"), dict(logprobs=1)])
def test_bad_logprob_options_are_refused(bad):
    with pytest.raises(ferrolm.InvalidArgumentError):
        load_fixture("tiny-llama").generate(PROMPT, max_new_tokens=2, **bad)


# -- asyncio -------------------------------------------------------------------------------------
def test_async_equals_sync():
    model = load_fixture("tiny-llama")
    opts = [dict(max_new_tokens=10, ignore_eos=True), dict(max_new_tokens=10, temperature=0.9, seed=4)]

    async def main():
        single = [await model.agenerate(PROMPT, **o) for o in opts]
        batch = await model.agenerate([PROMPT, "Once"], **opts[1])
        chunks = []
        stream = model.agenerate(PROMPT, stream=True, **opts[0])
        async for d in stream:
            chunks.append(d)
        s = model.new_session()
        conv = [await s.agenerate("Hello", max_new_tokens=4), await s.agenerate(" again", max_new_tokens=4)]
        return single, batch, "".join(chunks), stream.result, conv

    single, batch, text, result, conv = asyncio.run(main())
    assert [r.tokens for r in single] == [model.generate(PROMPT, **o).tokens for o in opts]
    assert [r.tokens for r in batch] == [r.tokens for r in model.generate([PROMPT, "Once"], **opts[1])]
    assert text == result.text == model.generate(PROMPT, **opts[0]).text
    s = model.new_session()
    assert [r.tokens for r in conv] == [s.generate("Hello", max_new_tokens=4).tokens, s.generate(" again", max_new_tokens=4).tokens]


def test_many_tasks_give_the_serial_tokens_and_the_loop_stays_free():
    model = load_fixture("tiny-gpt2")
    jobs = [dict(max_new_tokens=8 + i % 4, temperature=0.8, seed=i, ignore_eos=True) for i in range(24)]
    serial = [model.generate(PROMPT, **j).tokens for j in jobs]
    ticks = 0

    async def ticker(stop):
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async def main():
        stop = asyncio.Event()
        t = asyncio.create_task(ticker(stop))
        out = await asyncio.gather(*(model.agenerate(PROMPT, **j) for j in jobs))
        stop.set()
        await t
        return out

    out = asyncio.run(main())
    assert [r.tokens for r in out] == serial
    assert ticks > 0


# -- cancellation --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    """A model with a long context, so that a generation runs long enough to be cancelled."""
    return ferrolm.load(random_llama(tmp_path_factory.mktemp("long") / "m", ctx=4096, vocab=300, hidden=256, ffn=512),
                        threads=2)


# When the tests below cancel a 4,000-token generation of `long_model`: it takes about 0.3 s on
# a 2-vCPU machine, so 0.05 s in it has generated some tokens and not all of them.
CANCEL_AFTER_S = 0.05


class CountingCancel:
    """is_set() turns True after `n` checks (the checks are made before each prefill chunk and
    each decode step)."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def is_set(self):
        self.calls += 1
        return self.calls > self.n


def test_a_cancel_event_stops_the_work(long_model):
    ev = threading.Event()
    threading.Timer(CANCEL_AFTER_S, ev.set).start()
    t0 = time.perf_counter()
    r = long_model.generate([1, 2, 3], max_new_tokens=4000, ignore_eos=True, cancel=ev)
    assert r.finish_reason == "cancelled" and 0 < len(r.tokens) < 4000
    assert time.perf_counter() - t0 < 30  # generous: the point is that it stops
    ev = threading.Event()
    ev.set()
    for out in (long_model.generate([1, 2], cancel=ev), *long_model.generate([[1, 2], [3]], cancel=ev)):
        assert (out.finish_reason, out.tokens, out.text) == ("cancelled", [], "")
        assert np.isnan(out.timings.prefill_tokens_per_s)


def test_cancellation_is_seen_between_prefill_chunks_and_decode_steps(long_model):
    # a 600-token prompt is fed in 3 chunks: cancelled after the first one, nothing generated
    c = CountingCancel(1)
    r = long_model.generate(list(range(1, 300)) * 2, max_new_tokens=5, cancel=c)
    assert (r.finish_reason, r.tokens, c.calls) == ("cancelled", [], 2)
    # a short prompt: one check before it, then one before each decode step
    c = CountingCancel(4)
    r = long_model.generate([1, 2, 3], max_new_tokens=50, ignore_eos=True, cancel=c)
    assert (r.finish_reason, len(r.tokens)) == ("cancelled", 4)
    c = CountingCancel(4)
    out = long_model.generate([[1, 2, 3], [4, 5]], max_new_tokens=50, ignore_eos=True, cancel=c)
    assert [(o.finish_reason, len(o.tokens)) for o in out] == [("cancelled", 3), ("cancelled", 3)]


def test_closing_or_leaving_a_stream_stops_it():
    model = load_fixture("tiny-llama")
    stream = model.generate(PROMPT, max_new_tokens=100, ignore_eos=True, stream=True)
    next(stream)
    stream.close()
    assert stream.result.finish_reason == "cancelled" and 0 < len(stream.result.tokens) < 100
    assert list(stream) == []
    n = 0
    stream = model.generate(PROMPT, max_new_tokens=60, ignore_eos=True, stream=True)
    for _ in stream:
        n += 1
        if n == 3:
            break
    before = model.prefix_cache_info().sessions
    del stream  # the session goes back to the model
    assert model.prefix_cache_info().sessions >= before


def test_cancelling_the_task_stops_the_work(long_model):
    text_model = load_fixture("tiny-llama")

    async def main():
        task = asyncio.create_task(long_model.agenerate([1, 2, 3], max_new_tokens=4000, ignore_eos=True))
        await asyncio.sleep(CANCEL_AFTER_S)
        t0 = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stopped = time.perf_counter() - t0
        stream = text_model.agenerate(PROMPT, max_new_tokens=100, ignore_eos=True, stream=True)
        n = 0
        async for _ in stream:
            n += 1
            if n == 5:
                break
        await stream.aclose()
        return stopped, stream.result

    stopped, result = asyncio.run(main())
    assert stopped < 30  # the worker was awaited: it stopped within one decode step
    assert result.finish_reason == "cancelled" and 5 <= len(result.tokens) <= 100


def test_a_user_cancel_event_reaches_async_calls(long_model):
    ev = threading.Event()

    async def main():
        asyncio.get_running_loop().call_later(CANCEL_AFTER_S, ev.set)
        return await long_model.agenerate([1, 2, 3], max_new_tokens=4000, ignore_eos=True, cancel=ev)

    assert asyncio.run(main()).finish_reason == "cancelled"


def test_a_bad_cancel_is_refused():
    model = load_fixture("tiny-llama")
    for bad in (True, "stop", 1):
        with pytest.raises(ferrolm.InvalidArgumentError, match="cancel"):
            model.generate(PROMPT, max_new_tokens=2, cancel=bad)
