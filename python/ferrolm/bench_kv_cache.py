"""Decode speed at long context with an FP32 and a BF16 KV cache, side by side.

    python -m ferrolm.bench_kv_cache [MODEL] --precisions int8,bf16 --threads 1,2 --prompt-tokens 2000 \\
        --new-tokens 64 --runs 7 --json out.json

For each precision and thread count the model is loaded once per KV cache (context 2304 by
default). Each load first generates after the prompt (fixed token ids) from a cold cache: that
run's prefill tok/s is reported (one run). Then `--runs` rounds: in each, every load generates
`--new-tokens` tokens (greedy, EOS ignored) after the same prompt, which its prefix cache holds
(exact reuse: only the prompt's last token is computed again), so each run times the decode of
`--new-tokens` tokens after `--prompt-tokens` positions: decode tok/s = (new − 1) / decode span.
The loads alternate within each round so that load from other jobs hits them alike; the median
and the range of the runs are reported, with the bytes a decode step reads: the matmul weights and
the KV cache up to the mean decode position (2 · layers · kv_dim · positions · bytes per value).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any, Dict, List, Optional

from . import _core
from .config import GenerationConfig
from .loading import KV_CACHE_DTYPES
from .model import load


def measure(path: Any, precision: str, threads: int, prompt_tokens: int, new_tokens: int, runs: int,
            context: int, kv_caches=KV_CACHE_DTYPES) -> List[Dict[str, Any]]:
    """One row per KV cache for `precision` at `threads` (see the module's documentation)."""
    models = {kv: load(path, precision, threads=threads, context_length=context, kv_cache=kv, progress=False)
              for kv in kv_caches}
    any_model = next(iter(models.values()))
    prompt = [(i * 7919 + 13) % any_model.vocab_size for i in range(prompt_tokens)]
    cfg = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    prefill = {kv: m.generate(prompt, cfg).timings.prefill_tokens_per_s for kv, m in models.items()}
    decode: Dict[str, List[float]] = {kv: [] for kv in models}
    for _ in range(runs):
        for kv, m in models.items():
            t = m.generate(prompt, cfg).timings
            assert t.cached_prompt_tokens == prompt_tokens - 1, "the prompt should come from the prefix cache"
            decode[kv].append(t.decode_tokens_per_s)
    core = any_model._core
    position = prompt_tokens + new_tokens // 2
    rows = []
    for kv, m in models.items():
        rows.append(dict(
            precision=precision, threads=threads, kv_cache=kv, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
            context=context, runs=runs, prefill_tok_s=prefill[kv], decode_tok_s=statistics.median(decode[kv]),
            decode_runs=decode[kv], weight_mib_per_token=m.matmul_bytes_per_token / 2**20,
            kv_mib_per_token=core.kv_cache_bytes(position, kv) / 2**20))
    for r in rows:
        r["vs_fp32"] = r["decode_tok_s"] / rows[0]["decode_tok_s"]
    return rows


def run(path: Any, precisions: List[str], threads: List[int], prompt_tokens: int, new_tokens: int, runs: int,
        context: int) -> Dict[str, Any]:
    rows = [r for p in precisions for t in threads
            for r in measure(path, p, t, prompt_tokens, new_tokens, runs, context)]
    return dict(model=os.path.basename(str(path)), simd=_core.simd_level(), rows=rows,
                loadavg=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)


def format_report(report: Dict[str, Any]) -> str:
    r0 = report["rows"][0]
    lines = [f"`{report['model']}`, kernels `{report['simd']}`: a {r0['prompt_tokens']}-token prompt, then "
             f"{r0['new_tokens']} new tokens (greedy), context {r0['context']}; decode tok/s is the median of "
             f"{r0['runs']} runs (their range in brackets), prefill one cold run"
             + (f"; load average at the end {', '.join(f'{x:.2f}' for x in report['loadavg'])}" if report.get("loadavg")
                else "") + ".", "",
             "| weights | threads | KV cache | prefill tok/s | decode tok/s | vs FP32 cache | MiB read per token: "
             "weights + KV cache |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lo, hi = min(r["decode_runs"]), max(r["decode_runs"])
        lines.append(f"| {r['precision']} | {r['threads']} | {r['kv_cache']} | {r['prefill_tok_s']:.0f} "
                     f"| {r['decode_tok_s']:.1f} ({lo:.1f}–{hi:.1f}) | {r['vs_fp32']:.2f}× "
                     f"| {r['weight_mib_per_token']:.0f} + {r['kv_mib_per_token']:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", help="model path (default: the default model)")
    p.add_argument("--precisions", default="int8,bf16")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--prompt-tokens", type=int, default=2000)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--context", type=int, default=2304)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--json", help="also write the results as JSON to this path")
    a = p.parse_args(argv)
    if a.model is None:
        from .loading import default_model_path

        a.model = default_model_path()
    report = run(a.model, [x for x in a.precisions.split(",") if x], [int(t) for t in a.threads.split(",") if t],
                 a.prompt_tokens, a.new_tokens, a.runs, a.context)
    print(format_report(report))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
