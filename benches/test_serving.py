"""Batched decode and prefix reuse (pytest-benchmark).

    pytest benches/test_serving.py --benchmark-columns=median,rounds

batch_decode: 16 batched decode steps of B sessions (`_core.decode_batch`, one pass over the
weights per step for all B; each session's tokens exactly as alone), extra_info: aggregate
tok/s. prefix_reuse: the time to the first token of a 512-token prompt, cold and with the
prompt's prefix in the cache. `python -m ferrolm.bench_serving` measures the same end to end
through `model.generate` (the figures in docs/benchmarks.md).
"""

from __future__ import annotations

import pytest

import ferrolm
from ferrolm import _core
from ferrolm.bench import random_checkpoint
from conftest import SHAPES

STEPS = 16
_models = {}


def _model(shape: str, precision: str = "int8", threads: int = 2) -> ferrolm.Model:
    key = (shape, precision, threads)
    if key not in _models:
        _models.clear()
        model = ferrolm.load(random_checkpoint(shape), precision=precision, threads=threads,
                             context_length=1024, progress=False)
        model.generate([1, 2, 3], max_new_tokens=4)  # every weight page read once
        _models[key] = model
    return _models[key]


@pytest.mark.parametrize("batch", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", [s for s in SHAPES if s.startswith("llama")] or ["llama-135m"])
def test_batch_decode(benchmark, shape, batch):
    model = _model(shape)
    sessions = [model._core.new_session(256) for _ in range(batch)]

    def prefill():
        for i, s in enumerate(sessions):
            s.reset()
            s.forward([(i * 7919 + j * 31 + 1) % model.vocab_size for j in range(32 + 4 * i)])

    def decode():
        for step in range(STEPS):
            _core.decode_batch(sessions, [(step * 13 + i) % model.vocab_size for i in range(batch)])

    benchmark.pedantic(decode, setup=prefill, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(batch=batch, threads=2, precision="int8",
                                aggregate_tok_s=round(batch * STEPS / benchmark.stats.stats.median, 1))


@pytest.mark.parametrize("cached", [False, True], ids=["cold", "reused"])
def test_prefix_reuse(benchmark, cached):
    model = _model("llama-135m")
    prompt = [(j * 7919 + 17) % model.vocab_size for j in range(512)]

    def setup():
        model.clear_prefix_cache()
        if cached:
            model.generate(prompt, max_new_tokens=1)

    benchmark.pedantic(lambda: model.generate(prompt, max_new_tokens=1), setup=setup, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(prompt_tokens=512, cached=cached)
