"""Adapter switch time per precision (pytest-benchmark): set_adapter to a merged LoRA adapter
(the touched matrices rebuilt from the original weights and converted) and back to the base (a
pointer swap). Random rank-16 LoRA on every projection of the shape (ferrolm.bench_adapters).

    pytest benches/test_adapters.py --benchmark-columns=median,rounds
"""

from __future__ import annotations

import pytest

from ferrolm.bench import random_checkpoint
from ferrolm.bench_adapters import random_lora
from conftest import PRECISIONS, SHAPES, model_for

RANK = 16
LLAMA_SHAPES = [s for s in SHAPES if not s.startswith("gpt2")]


def _with_adapter(shape, precision):
    """The benchmark model of `shape` with a random rank-RANK adapter "bench" loaded (merged)."""
    model = model_for(shape, precision, 2, context=64)
    if "bench" not in model.adapters:
        model.load_lora(random_lora(model, random_checkpoint(shape).parent / f"{shape}-lora-r{RANK}", RANK), name="bench")
    return model


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("shape", LLAMA_SHAPES)
def test_switch_to_merged(benchmark, shape, precision):
    model = _with_adapter(shape, precision)
    benchmark.pedantic(lambda: model.set_adapter("bench"), setup=lambda: model.set_adapter(None), rounds=3,
                       warmup_rounds=1)
    benchmark.extra_info.update(precision=precision, rank=RANK)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("shape", LLAMA_SHAPES)
def test_switch_to_base(benchmark, shape, precision):
    model = _with_adapter(shape, precision)
    benchmark.pedantic(lambda: model.set_adapter(None), setup=lambda: model.set_adapter("bench"), rounds=3)
    benchmark.extra_info.update(precision=precision, rank=RANK)
