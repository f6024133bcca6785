"""Adapter benchmarks: decode speed with a LoRA adapter merged (no extra work per token) and
unmerged (x·Aᵀ·Bᵀ per adapted layer), and the time to switch adapters, per precision.

    python -m ferrolm.bench_adapters --shape llama-135m --precisions fp32,int8 --rank 16 --threads 2

The adapter is random (PEFT layout, every attention and MLP projection of every layer), written
once next to the random-weight model of the shape.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional

from ._numpy import np

from .bench import random_checkpoint
from .config import GenerationConfig
from .model import load
from . import safetensors_io

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def random_lora(model, folder: Path, rank: int, seed: int = 0) -> Path:
    """A PEFT LoRA adapter on every LLaMA projection, with non-zero A and B."""
    if (folder / "adapter_model.safetensors").is_file():
        return folder
    rng = np.random.default_rng(seed)
    shapes = {}
    for i in range(model._core.num_layers):
        for t in TARGETS:
            part = "self_attn" if t in TARGETS[:4] else "mlp"
            weight = f"model.layers.{i}.{part}.{t}.weight"
            rows, k = model._core.adaptable_shape(weight)
            key = "base_model.model." + weight[: -len(".weight")]
            shapes[key + ".lora_A.weight"] = ((rank, k), "F32")
            shapes[key + ".lora_B.weight"] = ((rows, rank), "F32")
    folder.mkdir(parents=True, exist_ok=True)

    def make(name: str) -> np.ndarray:
        return (rng.standard_normal(shapes[name][0]) * 0.01).astype(np.float32)

    safetensors_io.write(folder / "adapter_model.safetensors", [(n, dt, s) for n, (s, dt) in shapes.items()], lambda n: make(n).tobytes())
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "bias": "none", "target_modules": list(TARGETS)}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def decode_tok_s(model, adapter, runs: int, new_tokens: int = 64) -> float:
    prompt = [(i * 7919 + 13) % model.vocab_size for i in range(32)]
    cfg = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    model.generate(prompt, cfg, adapter=adapter)  # warm-up
    return statistics.median(model.generate(prompt, cfg, adapter=adapter).timings.decode_tokens_per_s for _ in range(runs))


def run(shape: str, precision: str, threads: int, rank: int, runs: int) -> dict:
    folder = random_checkpoint(shape)
    model = load(folder, precision=precision, threads=threads, context_length=256, progress=False)
    adapter_dir = random_lora(model, folder.parent / f"{shape}-lora-r{rank}", rank)
    t0 = time.perf_counter()
    model.load_lora(adapter_dir, name="merged")
    t1 = time.perf_counter()
    model.load_lora(adapter_dir, name="unmerged", merged=False)
    t2 = time.perf_counter()
    base = decode_tok_s(model, None, runs)
    unmerged = decode_tok_s(model, "unmerged", runs)
    t3 = time.perf_counter()
    model.set_adapter("merged")
    t4 = time.perf_counter()
    merged = decode_tok_s(model, "merged", runs)
    t5 = time.perf_counter()
    model.set_adapter(None)
    t6 = time.perf_counter()
    return dict(shape=shape, precision=precision, threads=threads, rank=rank,
                decode_base_tok_s=base, decode_merged_tok_s=merged, decode_unmerged_tok_s=unmerged,
                read_adapter_s=t1 - t0, load_unmerged_s=t2 - t1, switch_to_merged_s=t4 - t3,
                switch_to_base_s=t6 - t5)


HEADER = ("| shape | precision | threads | rank | decode base tok/s | merged | unmerged | switch to merged s "
          "| switch back s | unmerged load s |\n|---|---|---|---|---|---|---|---|---|---|")


def format_row(r: dict) -> str:
    return (f"| {r['shape']} | {r['precision']} | {r['threads']} | {r['rank']} | {r['decode_base_tok_s']:.1f} "
            f"| {r['decode_merged_tok_s']:.1f} | {r['decode_unmerged_tok_s']:.1f} | {r['switch_to_merged_s']:.3f} "
            f"| {r['switch_to_base_s']:.4f} | {r['load_unmerged_s']:.3f} |")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ferrolm.bench_adapters", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="llama-135m")
    p.add_argument("--precisions", default="fp32,bf16,int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    rows = [run(args.shape, prec, args.threads, args.rank, args.runs) for prec in args.precisions.split(",")]
    print(HEADER)
    for r in rows:
        print(format_row(r))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
