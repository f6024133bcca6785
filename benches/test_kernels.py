"""Matmul kernels per precision and shape (pytest-benchmark).

Each call multiplies by the next of several copies of a random weight that together exceed
384 MiB (`ferrolm._core.MatmulProbe`), so every weight comes from memory as in decode. GEMV
(1 token, decode) reports GB/s of weights read, GEMM (128 tokens, prefill) GFLOP/s, in
extra_info (--benchmark-verbose, or saved with --benchmark-autosave / --benchmark-json).

    pytest benches/test_kernels.py --benchmark-columns=median,rounds
"""

from __future__ import annotations

import pytest

from ferrolm import _core
from conftest import PRECISIONS, THREADS

#: (rows, cols): llama-135m's MLP up/down and lm_head, llama-1.1b's attention and MLP up
GEMV = [(1536, 576), (576, 1536), (49152, 576), (2048, 2048), (5632, 2048)]
GEMM = [(1536, 576), (2048, 2048)]


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("shape", GEMV, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_gemv(benchmark, precision, shape, threads):
    probe = _core.MatmulProbe(precision, shape[0], shape[1], tokens=1, threads=threads)
    for _ in range(probe.copies):
        probe.run()  # every copy touched once
    benchmark.pedantic(probe.run, rounds=max(100, 2 * probe.copies), iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(precision=precision, rows=shape[0], cols=shape[1], threads=threads,
                                weight_bytes=probe.weight_bytes, copies=probe.copies,
                                gb_s=round(probe.weight_bytes / median / 1e9, 2))


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("shape", GEMM, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_gemm(benchmark, precision, shape, threads):
    tokens = 128
    probe = _core.MatmulProbe(precision, shape[0], shape[1], tokens=tokens, threads=threads)
    probe.run()
    benchmark.pedantic(probe.run, rounds=20, iterations=1, warmup_rounds=2)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(precision=precision, rows=shape[0], cols=shape[1], tokens=tokens, threads=threads,
                                gflop_s=round(2 * tokens * shape[0] * shape[1] / median / 1e9, 1))
