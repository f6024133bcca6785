"""Shared settings of the pytest-benchmark suites (not part of the test run).

    pytest benches/ --benchmark-autosave                   # run and save under .benchmarks/
    pytest benches/ --benchmark-compare --benchmark-compare-fail=median:10%   # against the last save

FERROLM_BENCH_SHAPES (default "llama-135m,gpt2-124m") picks the random-weight shapes of the
end-to-end and adapter suites; FERROLM_BENCH_THREADS (default "1,2") the thread counts.
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

import pytest

import ferrolm
from ferrolm.bench import random_checkpoint

PRECISIONS = ["fp32", "bf16", "int8", "int4"]
SHAPES: List[str] = [s for s in os.environ.get("FERROLM_BENCH_SHAPES", "llama-135m,gpt2-124m").split(",") if s]
THREADS: List[int] = [int(t) for t in os.environ.get("FERROLM_BENCH_THREADS", "1,2").split(",") if t]

_models: Dict[Tuple[str, str, int], ferrolm.Model] = {}


def model_for(shape: str, precision: str, threads: int, context: int = 512) -> ferrolm.Model:
    """One loaded model at a time (the previous one is dropped first)."""
    key = (shape, precision, threads)
    if key not in _models:
        _models.clear()
        _models[key] = ferrolm.load(random_checkpoint(shape), precision=precision, threads=threads,
                                    context_length=context, progress=False)
    return _models[key]


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["ferrolm_simd"] = ferrolm._core.simd_level()
    machine_info["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
