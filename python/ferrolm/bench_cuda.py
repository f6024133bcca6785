"""`ferrolm bench --device cuda`: batch-1 decode and prefill on the CUDA backend.

For each model (default: the three PERF shapes, random weights) and precision: decode tok/s and
the share of the device's memory bandwidth it reaches — matmul weight bytes per token × tok/s ÷
the measured device-to-device copy bandwidth (bytes read + written) — prefill tok/s of a
512-token prompt, kernel launches per decode step, decode with the captured step replayed and
with each kernel launched afresh (what launch overhead costs the small shapes), and the kernel
compile time on first use in the process (cupy keeps compiled kernels on disk: a later process
loads them).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Sequence

from .config import GenerationConfig
from .model import load

DEFAULT_SHAPES = ("gpt2-124m", "llama-135m", "llama-1.1b")


def _decode(model: Any, prompt: List[int], new_tokens: int, runs: int) -> Dict[str, float]:
    cfg = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    model.generate(prompt[:8], GenerationConfig(max_new_tokens=4, ignore_eos=True))  # warm-up (capture)
    decode = sorted(model.generate(prompt[:8], cfg).timings.decode_tokens_per_s for _ in range(runs))
    return {"decode_tok_s": decode[len(decode) // 2], "decode_runs": decode}


def run_cuda_one(source: str, precision: str, runs: int = 3, prompt_tokens: int = 512, new_tokens: int = 128) -> Dict[str, Any]:
    from .backends.cuda.runtime import GRAPHS_ENV, get_runtime
    from .bench import model_source

    t0 = time.perf_counter()
    rt = get_runtime()
    first_use_s = time.perf_counter() - t0
    folder = model_source(source)
    context = max(prompt_tokens, 8) + new_tokens
    t0 = time.perf_counter()
    model = load(folder, precision=precision, device="cuda", context_length=context, progress=False)
    load_s = time.perf_counter() - t0
    prompt = [(i * 7919 + 13) % model.vocab_size for i in range(prompt_tokens)]
    result: Dict[str, Any] = {"source": source, "precision": model.precision, "params": model.num_params,
                              "load_seconds": load_s, "runtime": rt.name, "device": rt.device_name(),
                              "kernel_compile_seconds": rt.compile_seconds, "runtime_first_use_seconds": first_use_s}
    result.update(_decode(model, prompt, new_tokens, runs))
    saved = os.environ.get(GRAPHS_ENV)
    os.environ[GRAPHS_ENV] = "0"
    try:
        model.clear_prefix_cache()  # fresh sessions: each decode step launched kernel by kernel
        eager = _decode(model, prompt, new_tokens, runs)
    finally:
        if saved is None:
            os.environ.pop(GRAPHS_ENV, None)
        else:
            os.environ[GRAPHS_ENV] = saved
        model.clear_prefix_cache()
    result["decode_tok_s_no_graph"] = eager["decode_tok_s"]
    with model._session() as s:
        s.reset()
        s.forward(prompt[:1])
        s.forward(prompt[1:2])
        result["launches_per_token"] = s.decode_launches
    prefill = []
    cfg = GenerationConfig(max_new_tokens=1, ignore_eos=True)
    for _ in range(runs):
        prefill.append(model.generate(prompt, cfg).timings.prefill_tokens_per_s)
    result["prefill_tok_s"] = sorted(prefill)[len(prefill) // 2]
    result["prompt_tokens"] = prompt_tokens
    bandwidth = rt.copy_bandwidth(256 << 20)
    per_token = model.matmul_bytes_per_token
    result.update(copy_bandwidth_gb_s=bandwidth / 1e9, matmul_bytes_per_token=per_token,
                  decode_pct_of_bandwidth=100 * result["decode_tok_s"] * per_token / bandwidth,
                  step_us=1e6 / result["decode_tok_s"], step_us_no_graph=1e6 / result["decode_tok_s_no_graph"])
    return result


def run_cuda_bench(sources: Sequence[str], precisions: Sequence[str], runs: int = 3, prompt_tokens: int = 512,
                   new_tokens: int = 128, command: Optional[str] = None) -> Dict[str, Any]:
    rows = [run_cuda_one(s, p, runs, prompt_tokens, new_tokens) for s in sources for p in precisions]
    return {"device": rows[0]["device"] if rows else "", "runtime": rows[0]["runtime"] if rows else "",
            "command": command, "rows": rows}


def render_cuda(report: Dict[str, Any]) -> str:
    lines = [f"# ferrolm on {report['device']} ({report['runtime']})", ""]
    if report.get("command"):
        lines += [f"`{report['command']}`", ""]
    lines += ["| model | precision | decode tok/s | % of copy bandwidth | decode tok/s, no graph | launches/token "
              "| µs/token (graph / none) | prefill tok/s | kernel compile s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(
            f"| {r['source']} | {r['precision']} | {r['decode_tok_s']:.1f} | {r['decode_pct_of_bandwidth']:.1f}% "
            f"| {r['decode_tok_s_no_graph']:.1f} | {r['launches_per_token']} | {r['step_us']:.0f} / {r['step_us_no_graph']:.0f} "
            f"| {r['prefill_tok_s']:.1f} | {r['kernel_compile_seconds']:.2f} |")
    if report["rows"]:
        bw = report["rows"][0]["copy_bandwidth_gb_s"]
        lines += ["", f"Device-to-device copy bandwidth (read + write): {bw:.0f} GB/s. Prefill: a "
                  f"{report['rows'][0]['prompt_tokens']}-token prompt."]
    return "\n".join(lines) + "\n"
