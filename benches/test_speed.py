"""Speed of generation per PERF method (pytest-benchmark; not part of the test run).

    pytest benches/ --benchmark-columns=median,rounds

Each case reports prefill and decode tok/s (median over rounds), the decode ceiling from the
measured read bandwidth and the percentage reached, in the benchmark's extra_info (shown with
--benchmark-verbose or saved with --benchmark-json). `python -m ferrolm.bench` prints the same
figures as a table, one fresh process per configuration (with peak RSS).
"""

from __future__ import annotations

import statistics

import pytest

import ferrolm
from ferrolm import _core
from ferrolm.bench import random_checkpoint

SHAPES = ["gpt2-124m", "llama-135m"]
PROMPT_LEN = NEW_TOKENS = 128
_models = {}
_bandwidth = {}


def model_for(shape: str, threads: int, precision: str) -> ferrolm.Model:
    key = (shape, threads, precision)
    if key not in _models:
        _models.clear()  # keep one model in memory at a time
        _models[key] = ferrolm.load(random_checkpoint(shape), precision=precision, threads=threads, context_length=512)
    return _models[key]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("shape", SHAPES)
def test_generate(benchmark, shape, precision, threads):
    model = model_for(shape, threads, precision)
    prompt = [(i * 7919 + 13) % model.vocab_size for i in range(PROMPT_LEN)]
    cfg = ferrolm.GenerationConfig(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    timings = []

    def run():
        res = model.generate(prompt, cfg)
        timings.append(res.timings)
        return res

    res = benchmark.pedantic(run, rounds=3, warmup_rounds=1, iterations=1)
    assert len(res.tokens) == NEW_TOKENS
    timings = timings[1:]  # drop the warm-up
    if threads not in _bandwidth:
        _bandwidth[threads] = _core.read_bandwidth(1 << 30, threads, 5)
    decode = statistics.median(t.decode_tokens_per_s for t in timings)
    ceiling = _bandwidth[threads] / model.matmul_bytes_per_token
    benchmark.extra_info.update(
        precision=precision,
        weight_mib=round(model._core.weight_bytes / 2**20, 1),
        prefill_tok_s=round(statistics.median(t.prefill_tokens_per_s for t in timings), 1),
        decode_tok_s=round(decode, 1),
        read_bandwidth_gb_s=round(_bandwidth[threads] / 1e9, 1),
        decode_ceiling_tok_s=round(ceiling, 1),
        decode_pct_of_ceiling=round(100 * decode / ceiling, 1),
    )
