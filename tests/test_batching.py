"""Batched generation: model.generate([...]) computes the sequences together (one pass over the
weights per decode step) and gives each exactly what it gets alone; concurrent calls from
threads give what serial calls give."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import ferrolm
from conftest import load_fixture, random_llama
from ferrolm import _core
from ferrolm.backends.cpu import CpuBackend

PROMPTS = [
    "The river ran past the old mill",
    "Once",
    "A long time ago, in a small village by the sea, there lived a fisherman and his wife",
    "Numbers: 1, 2, 3,",
    "Why?",
]
PRECISIONS = ["fp32", "bf16", "int8"]


def _key(r):
    return (r.text, r.tokens, r.finish_reason, r.prompt_tokens)


def _alone(model, prompts, **kw):
    model.clear_prefix_cache()  # each alone call as cold as the batch's
    return [model.generate(p, **kw) for p in prompts]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(
    "options",
    [
        dict(max_new_tokens=20, ignore_eos=True),
        dict(max_new_tokens=20, temperature=0.9, top_k=40, top_p=0.95, seed=7, ignore_eos=True),
        dict(max_new_tokens=16, temperature=1.3, min_p=0.05, repetition_penalty=1.2, seed=123),
    ],
    ids=["greedy", "seeded", "penalties"],
)
def test_a_batch_gives_each_prompt_its_tokens_alone(model_name, precision, options):
    model = load_fixture(model_name, precision=precision)
    alone = _alone(model, PROMPTS, **options)
    model.clear_prefix_cache()
    batch = model.generate(PROMPTS, **options)
    assert isinstance(batch, list) and len(batch) == len(PROMPTS)
    assert [_key(r) for r in batch] == [_key(r) for r in alone]


def test_sequences_leave_the_batch_on_their_own(monkeypatch):
    """Stop strings, EOS and max tokens end each sequence at its own step; the decode steps
    shrink as they leave; token-id prompts of different lengths mix."""
    model = load_fixture("tiny-llama")
    base = _alone(model, PROMPTS, max_new_tokens=24, ignore_eos=True)
    # a stop string that one sequence produces midway, an EOS id that another produces
    stop = base[0].text[5:8]
    eos = base[2].tokens[10]
    assert stop and base[0].text.find(stop) > 0
    opts = dict(max_new_tokens=24, stop=[stop], eos_token_id=[eos])
    prompts = [model.tokenize(p) for p in PROMPTS[:3]] + PROMPTS[3:]
    sizes = []
    real = CpuBackend.decode_batch

    def spy(self, sessions, tokens):
        sizes.append(len(sessions))
        real(self, sessions, tokens)

    monkeypatch.setattr(CpuBackend, "decode_batch", spy)
    alone = _alone(model, prompts, **opts)
    model.clear_prefix_cache()
    batch = model.generate(prompts, **opts)
    assert [_key(r) for r in batch] == [_key(r) for r in alone]
    assert batch[0].finish_reason == "stop" and stop not in batch[0].text
    assert any(r.finish_reason == "eos" for r in batch)
    assert any(r.finish_reason == "length" for r in batch)
    assert sizes[0] == len(prompts) and sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]


def test_a_batch_of_chats_gives_each_its_reply_alone():
    from conftest import MODELS
    from ferrolm.chat import ChatTemplate

    model = ferrolm.load(MODELS / "tiny-qwen2", threads=2)
    model.chat_template = ChatTemplate("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:")
    convs = [[{"role": "user", "content": c}] for c in ("Hi", "Name three colors.", "What is 2+2? Explain.")]
    alone = [model.chat(c, max_new_tokens=12) for c in convs]
    model.clear_prefix_cache()
    batch = model.chat(convs, max_new_tokens=12)
    assert [_key(r) for r in batch] == [_key(r) for r in alone]


def test_without_a_seed_each_prompt_draws_its_own():
    model = load_fixture("tiny-llama")
    out = model.generate(["Once"] * 4, max_new_tokens=12, temperature=1.5, ignore_eos=True)
    assert len({tuple(r.tokens) for r in out}) > 1


def test_bad_batches_are_refused():
    model = load_fixture("tiny-llama")
    with pytest.raises(ferrolm.InvalidArgumentError, match="stream"):
        model.generate(["a", "b"], stream=True)
    with pytest.raises(ferrolm.InvalidArgumentError):
        model.generate([], max_new_tokens=2)
    with pytest.raises(ferrolm.InvalidArgumentError):
        model.generate(["a", ""], max_new_tokens=2)
    with pytest.raises(ferrolm.InvalidTokenError):
        model.generate([[1, 2], [1, 10**6]], max_new_tokens=2)
    with pytest.raises(ferrolm.ContextLengthError):
        model.generate(["a", [1] * 500], max_new_tokens=2)
    # nothing was kept half-done: the model still generates
    assert model.generate(["a", "b"], max_new_tokens=2)[1].tokens


def test_decode_batch_checks_its_sessions():
    model = load_fixture("tiny-llama")
    core = model._core
    a, b = core.new_session(8), core.new_session(8)
    a.forward([1, 2])
    b.forward([3])
    with pytest.raises(ferrolm.InvalidArgumentError, match="twice"):
        _core.decode_batch([a, a], [1, 2])
    with pytest.raises(ferrolm.InvalidArgumentError):
        _core.decode_batch([a, b], [1])
    other = load_fixture("tiny-llama", threads=1)._core.new_session(8)
    other.forward([1])
    with pytest.raises(ferrolm.InvalidArgumentError, match="same model"):
        _core.decode_batch([a, other], [1, 2])
    with pytest.raises(ferrolm.InvalidTokenError):
        _core.decode_batch([a, b], [1, 10**6])
    assert (a.position, b.position) == (2, 1)
    _core.decode_batch([a, b], [4, 5])
    assert (a.tokens(), b.tokens()) == ([1, 2, 4], [3, 5])
    # equal to feeding each alone
    c = core.new_session(8)
    c.forward([1, 2])
    c.forward([4])
    assert a.logits() == c.logits()


def test_a_batch_on_a_long_context_model(tmp_path):
    """Prompts across several prefill chunks (256 tokens), on the GEMM and GEMV paths."""
    model = ferrolm.load(random_llama(tmp_path / "m", ctx=700, vocab=300), precision="int8", threads=2)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 300, n).tolist() for n in (300, 5, 520, 9)]
    opts = dict(max_new_tokens=10, temperature=0.8, seed=3, ignore_eos=True)
    alone = _alone(model, prompts, **opts)
    model.clear_prefix_cache()
    assert [_key(r) for r in model.generate(prompts, **opts)] == [_key(r) for r in alone]


def test_concurrent_calls_give_the_serial_tokens():
    """8 threads x 50 calls on one model (greedy and seeded, batches among them, the prefix
    cache in use) give exactly what the same calls give one after the other."""
    model = load_fixture("tiny-llama")
    calls = []
    for i in range(50):
        p = PROMPTS[i % len(PROMPTS)] + " " * (i % 3)
        opts = dict(max_new_tokens=6 + i % 5, ignore_eos=True)
        if i % 2:
            opts.update(temperature=0.8, seed=i)
        calls.append((p if i % 7 else [p, PROMPTS[(i + 1) % 5]], opts))

    def run(call):
        out = model.generate(call[0], **call[1])
        return [_key(r) for r in out] if isinstance(out, list) else _key(out)

    serial = [run(c) for c in calls]
    results = [[None] * len(calls) for _ in range(8)]
    errors = []

    def worker(t):
        try:
            for j in range(len(calls)):
                i = (j + t * 7) % len(calls)
                results[t][i] = run(calls[i])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for t in range(8):
        assert results[t] == serial
