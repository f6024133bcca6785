"""End-to-end prefill and decode per precision, shape and thread count (pytest-benchmark).

    pytest benches/test_speed.py --benchmark-columns=median,rounds

prefill: one 128-token prompt of fixed ids through a fresh session (the time to the first
token's logits); decode: 32 tokens one at a time after that prompt. extra_info has tok/s and,
for decode, the bandwidth ceiling and its percentage (read bandwidth measured once per thread
count). `ferrolm bench` measures the same per the PERF method, with peak RSS and quality.
"""

from __future__ import annotations

import pytest

from ferrolm import _core
from conftest import PRECISIONS, SHAPES, THREADS, model_for

PROMPT = 128
DECODE = 32
_bandwidth = {}


def _prompt(model):
    return [(i * 7919 + 13) % model.vocab_size for i in range(PROMPT)]


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_prefill(benchmark, shape, precision, threads):
    model = model_for(shape, precision, threads)
    session, prompt = model.new_session(), _prompt(model)
    benchmark.pedantic(lambda: session.forward(prompt), setup=session.reset, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(precision=precision, threads=threads, prompt_tokens=PROMPT,
                                tok_s=round(PROMPT / benchmark.stats.stats.median, 1))


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_decode(benchmark, shape, precision, threads):
    model = model_for(shape, precision, threads)
    session, prompt = model.new_session(), _prompt(model)
    tokens = [(i * 31 + 7) % model.vocab_size for i in range(DECODE)]

    def prefill():
        session.reset()
        session.forward(prompt)

    def decode():
        for t in tokens:
            session.forward([t])

    benchmark.pedantic(decode, setup=prefill, rounds=5, warmup_rounds=1)
    if threads not in _bandwidth:
        _bandwidth[threads] = _core.read_bandwidth(1 << 30, threads, 5)
    tok_s = DECODE / benchmark.stats.stats.median
    ceiling = _bandwidth[threads] / model.matmul_bytes_per_token
    benchmark.extra_info.update(precision=precision, threads=threads, tok_s=round(tok_s, 1),
                                weight_mib=round(model._core.weight_bytes / 2**20, 1),
                                read_bandwidth_gb_s=round(_bandwidth[threads] / 1e9, 1),
                                decode_ceiling_tok_s=round(ceiling, 1), pct_of_ceiling=round(100 * tok_s / ceiling, 1))
