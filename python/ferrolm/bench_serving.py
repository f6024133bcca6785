"""Serving benchmarks: aggregate decode tok/s of batched generation against one sequence, and
the prefill time of a prompt whose prefix a kept session already holds.

    python -m ferrolm.bench_serving --shape llama-135m --precision int8 --threads 2 --json out.json

Batches: `model.generate([p1, ..., pB], ignore_eos=True)` with B prompts of 32-60 tokens and
`--new-tokens` each; aggregate decode tok/s = B·(new − 1) / (time of the last token − time of the
first), the batch's decode span. Prefix reuse: a `--prompt-tokens` prompt prefilled cold (fresh
cache) and again (all but its last token reused), the time to the first token of each; and a
chat-like call whose prompt extends the first one by 32 tokens. Medians of `--runs` runs, after a
warm-up; batch sizes alternate within each run so that load from other jobs hits them alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Dict, List, Optional

from .bench import random_checkpoint
from .model import load


def _prompts(vocab: int, batch: int) -> List[List[int]]:
    return [[(i * 7919 + j * 104729 + 13) % vocab for j in range(32 + 4 * i)] for i in range(batch)]


def batch_rates(model, sizes: List[int], new_tokens: int, runs: int) -> Dict[int, float]:
    """Median aggregate decode tok/s per batch size."""
    rates: Dict[int, List[float]] = {b: [] for b in sizes}
    for run in range(runs + 1):
        for b in sizes:
            model.clear_prefix_cache()
            out = model.generate(_prompts(model.vocab_size, b), max_new_tokens=new_tokens, ignore_eos=True)
            span = max(r.timings.decode_seconds for r in out)
            if run > 0:  # the first round warms up
                rates[b].append(b * (new_tokens - 1) / span)
    return {b: statistics.median(v) for b, v in rates.items()}


def prefix_reuse(model, prompt_tokens: int, runs: int) -> Dict[str, float]:
    """Median time to first token: cold, the same prompt again, and the prompt plus 32 tokens."""
    vocab = model.vocab_size
    prompt = [(j * 7919 + 17) % vocab for j in range(prompt_tokens)]
    longer = prompt + [(j * 31 + 5) % vocab for j in range(32)]
    cold, same, extended, cached = [], [], [], 0
    for run in range(runs + 1):
        model.clear_prefix_cache()
        a = model.generate(prompt, max_new_tokens=1)
        b = model.generate(prompt, max_new_tokens=1)
        c = model.generate(longer, max_new_tokens=1)
        cached = b.timings.cached_prompt_tokens
        if run > 0:
            cold.append(a.timings.time_to_first_token)
            same.append(b.timings.time_to_first_token)
            extended.append(c.timings.time_to_first_token)
    med = statistics.median
    return dict(prompt_tokens=prompt_tokens, cached_prompt_tokens=cached, cold_s=med(cold), same_s=med(same),
                extended_s=med(extended), same_ratio=med(same) / med(cold), extended_ratio=med(extended) / med(cold))


def run(shape: str, precision: str, threads: int, sizes: List[int], new_tokens: int, prompt_tokens: int,
        runs: int) -> dict:
    model = load(random_checkpoint(shape), precision=precision, threads=threads,
                 context_length=max(1024, prompt_tokens + 64), progress=False)
    rates = batch_rates(model, sizes, new_tokens, runs)
    base = rates[sizes[0]]
    return dict(shape=shape, precision=precision, threads=threads, new_tokens=new_tokens, runs=runs,
                batches=[dict(batch=b, tok_s=round(r, 1), vs_batch1=round(r / base, 2)) for b, r in rates.items()],
                prefix=prefix_reuse(model, prompt_tokens, runs))


def format_report(r: dict) -> str:
    lines = [f"{r['shape']} {r['precision']}, {r['threads']} threads, {r['new_tokens']} new tokens per sequence, "
             f"median of {r['runs']} runs", "", "| batch | aggregate decode tok/s | vs batch 1 |", "|---|---|---|"]
    lines += [f"| {b['batch']} | {b['tok_s']} | {b['vs_batch1']}× |" for b in r["batches"]]
    p = r["prefix"]
    lines += ["", "| prefill of a {}-token prompt | time to first token | vs cold |".format(p["prompt_tokens"]),
              "|---|---|---|",
              f"| cold (empty cache) | {1000 * p['cold_s']:.1f} ms | 100 % |",
              f"| the same prompt again ({p['cached_prompt_tokens']} tokens reused) | {1000 * p['same_s']:.1f} ms | "
              f"{100 * p['same_ratio']:.1f} % |",
              f"| the prompt + 32 new tokens | {1000 * p['extended_s']:.1f} ms | {100 * p['extended_ratio']:.1f} % |"]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="llama-135m")
    p.add_argument("--precision", default="int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,2,4,8")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", help="also write the results as JSON to this path")
    a = p.parse_args(argv)
    sizes = [int(b) for b in a.batches.split(",") if b]
    r = run(a.shape, a.precision, a.threads, sizes, a.new_tokens, a.prompt_tokens, a.runs)
    print(format_report(r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
