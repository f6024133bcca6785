"""Decode and prefill of ferrolm and llama.cpp (through llama-cpp-python) side by side, with the
PERF method: batch 1, greedy, a 128-token prompt of fixed ids, 128 new tokens (EOS ignored), a
warm-up (the prompt and 16 new tokens) then the median of the timed runs; each configuration in a
fresh process (peak RSS = its VmHWM), with the read bandwidth measured in that process and the
decode ceiling = bandwidth / matmul bytes per token (PERF.md).

    pip install llama-cpp-python          # optional; builds llama.cpp from source
    python benches/llamacpp_compare.py [GGUF] [--threads 1,2] [--runs 3] [--rounds 1] [--json OUT]
    python benches/llamacpp_compare.py --shape gpt2-124m,llama-135m,llama-1.1b [--threads 1,2]

--rounds N runs every engine N times per shape and thread count, the engines taking turns (the
order turns by one each round), so that a slow spell of a shared machine falls on all of them
alike: a row is then the median of its rounds, and each round pairs the engines side by side
(`decode_rounds`, `prefill_rounds` in the JSON).

With a GGUF file (default: the default model, SmolLM2-135M-Instruct.Q4_1.gguf) both engines load
that file (engines "ferrolm int8", "ferrolm int4", "llama.cpp"). With --shape, ferrolm loads the
random-weight benchmark shape (ferrolm.bench.random_checkpoint) and llama.cpp GGUF files of the
same weights, quantized by llama.cpp itself (benches/shape_gguf.py); engines default to
"ferrolm fp32,ferrolm bf16,ferrolm int8,llama.cpp bf16,llama.cpp q8_0".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = [(i * 7919) % 30000 + 100 for i in range(128)]


def vmhwm_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_times() -> list | None:
    """The machine's CPU time counters (/proc/stat's first line), or None off Linux."""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None


def steal_pct(a: list | None, b: list | None) -> float | None:
    """% of the CPU time between two `cpu_times` that the hypervisor gave to other guests
    (steal, the 8th counter): a virtual machine's sign that its CPUs were not its own."""
    if not a or not b or len(a) < 8:
        return None
    total = sum(b[:8]) - sum(a[:8])
    return round(100 * (b[7] - a[7]) / total, 1) if total > 0 else None


def gguf_matmul_bytes(path: str) -> int:
    """Bytes of the matmul weights one token reads in a GGUF file: every 2-D tensor but the
    embeddings, plus the output matrix (the token embedding when tied)."""
    import gguf

    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(path).tensors if len(t.shape) == 2}
    layers = sum(n for name, n in tensors.items() if name not in ("token_embd.weight", "position_embd.weight", "output.weight"))
    return layers + tensors.get("output.weight", tensors["token_embd.weight"])


def resolve(engine: str, source: str) -> tuple:
    """(engine kind, precision, path) of an engine on a GGUF file or a named shape."""
    kind, _, precision = engine.partition(" ")
    if Path(source).is_file():
        return kind, precision or None, source
    if kind == "llama.cpp":
        sys.path.insert(0, str(Path(__file__).parent))
        from shape_gguf import shape_gguf

        return kind, precision, str(shape_gguf(source, precision or "q8_0"))
    from ferrolm.bench import random_checkpoint

    return kind, precision, str(random_checkpoint(source))


def one(engine: str, source: str, threads: int, runs: int, new: int, token_by_token: bool = False) -> dict:
    """One engine's runs in this process. token_by_token: llama.cpp evaluates the prompt one token
    per batch (its batched Q8_0 prompt crashes on some CPUs); its prefill is then not comparable."""
    stamps = []
    kind, precision, path = resolve(engine, source)
    if kind == "llama.cpp":
        from llama_cpp import Llama

        llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=512,
                    n_batch=1 if token_by_token else 512, verbose=False)
        matmul_bytes = gguf_matmul_bytes(path)
        kv_cache = "f16"  # llama.cpp's default cache type (type_k, type_v)

        def generate(new=new):
            llm.reset()
            t0 = time.perf_counter()
            out = []
            for tok in llm.generate(PROMPT, temp=0.0, top_k=1, reset=True):
                out.append(time.perf_counter())
                if len(out) == new:
                    break
            return len(PROMPT) / (out[0] - t0), (len(out) - 1) / (out[-1] - out[0]), len(out)
    else:
        import ferrolm

        model = ferrolm.load(path, precision, threads=threads, context_length=512, progress=False)
        model.configure_prefix_cache(reuse=False)  # every run computes the whole prompt
        matmul_bytes = model.matmul_bytes_per_token
        kv_cache = model.kv_cache

        def generate(new=new):
            t = model.generate(PROMPT, max_new_tokens=new, ignore_eos=True).timings
            return t.prefill_tokens_per_s, t.decode_tokens_per_s, new

    generate(min(new, 16))  # warm-up: the prompt and a few decode steps
    cpu0 = cpu_times()
    for _ in range(runs):
        stamps.append(generate())
    cpu1 = cpu_times()
    rss = vmhwm_mib()
    from ferrolm import _core

    bandwidth = max(_core.read_bandwidth(1 << 30, threads, 5) for _ in range(2))
    decode = statistics.median(s[1] for s in stamps)
    return dict(engine=engine, threads=threads, kv_cache=kv_cache, prompt_token_by_token=token_by_token,
                prefill=statistics.median(s[0] for s in stamps),
                decode=decode, decode_runs=[round(s[1], 1) for s in stamps],
                tokens=stamps[0][2], peak_rss_mib=rss, matmul_bytes_per_token=matmul_bytes,
                read_gb_s=bandwidth / 1e9, pct_of_ceiling=100 * decode * matmul_bytes / bandwidth,
                steal_pct=steal_pct(cpu0, cpu1))


def run_one(source: str, engine: str, threads: int, args) -> dict | None:
    """One engine's runs in a fresh process (see `one`); None when it failed."""
    cmd = [sys.executable, __file__, source, "--runs", str(args.runs), "--new-tokens",
           str(args.new_tokens), "--one", engine, str(threads)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode < 0 and engine.startswith("llama.cpp"):
        # killed by a signal: llama.cpp's batched prompt (Q8_0 on some CPUs); decode
        # does not batch, so its figure still stands with the prompt fed token by token
        print(f"{engine} died of signal {-out.returncode} on the batched prompt: again token by token",
              file=sys.stderr, flush=True)
        out = subprocess.run(cmd + ["--token-by-token"], capture_output=True, text=True, env=env)
    if out.returncode:
        print(out.stderr, file=sys.stderr)
        return None
    return dict(json.loads(out.stdout.strip().splitlines()[-1]), source=Path(source).name)


def merge_rounds(runs: list) -> dict:
    """One engine's rounds as one row: the median of each figure over the rounds (the highest
    peak RSS), with each round's decode and prefill kept (`decode_rounds`, `prefill_rounds`)."""
    row = dict(runs[0])
    for key in ("prefill", "decode", "read_gb_s", "pct_of_ceiling"):
        row[key] = statistics.median(r[key] for r in runs)
    row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    row["prompt_token_by_token"] = any(r["prompt_token_by_token"] for r in runs)
    row["decode_runs"] = [v for r in runs for v in r["decode_runs"]]
    steal = [r["steal_pct"] for r in runs if r.get("steal_pct") is not None]
    row["steal_pct"] = statistics.median(steal) if steal else None
    row["steal_rounds"] = [r.get("steal_pct") for r in runs]
    row["decode_rounds"] = [round(r["decode"], 2) for r in runs]
    row["prefill_rounds"] = [round(r["prefill"], 1) for r in runs]
    return row


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("gguf", nargs="?")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1, help="runs of every engine, taking turns (see above)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--shape", default=None, help="comma-separated benchmark shapes instead of a GGUF file")
    p.add_argument("--engines", default=None, help="comma-separated (default: ferrolm int8,ferrolm int4,llama.cpp "
                   "for a file; ferrolm fp32,llama.cpp f32,ferrolm bf16,llama.cpp bf16,ferrolm int8,llama.cpp q8_0 for shapes)")
    p.add_argument("--json")
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--token-by-token", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.gguf is None and args.shape is None:
        from ferrolm.loading import default_model_path

        args.gguf = str(default_model_path())
    if args.one:
        print(json.dumps(one(args.one[0], args.gguf, int(args.one[1]), args.runs, args.new_tokens, args.token_by_token)))
        return 0
    sources = args.shape.split(",") if args.shape else [args.gguf]
    engines = args.engines or ("ferrolm fp32,llama.cpp f32,ferrolm bf16,llama.cpp bf16,ferrolm int8,llama.cpp q8_0"
                               if args.shape
                               else "ferrolm int8,ferrolm int4,llama.cpp")
    rows = []
    names = engines.split(",")
    for source in sources:
        for threads in [int(t) for t in args.threads.split(",")]:
            got = {engine: [] for engine in names}
            for k in range(args.rounds):
                for engine in names[k % len(names):] + names[:k % len(names)]:
                    r = run_one(source, engine, threads, args)
                    if r is None:
                        return 1
                    got[engine].append(r)
                    print(f"{r['source']:<16} {r['engine']:<15} threads={threads} round {k + 1}/{args.rounds} prefill "
                          f"{r['prefill']:7.1f} tok/s  decode {r['decode']:6.1f} tok/s ({r['pct_of_ceiling']:.0f}% of "
                          f"{r['read_gb_s']:.1f} GB/s) {r['decode_runs']}  peak RSS {r['peak_rss_mib']:.0f} MiB  steal {r['steal_pct']}%", flush=True)
            rows += [merge_rounds(got[engine]) for engine in names]
            if args.rounds > 1:
                for r in rows[-len(names):]:
                    print(f"{r['source']:<16} {r['engine']:<15} threads={threads} median of {args.rounds} rounds: prefill "
                          f"{r['prefill']:7.1f} tok/s  decode {r['decode']:6.1f} tok/s ({r['pct_of_ceiling']:.0f}%) "
                          f"rounds {r['decode_rounds']}", flush=True)
    if args.json:
        from ferrolm import _core
        from ferrolm.bench import machine_info

        Path(args.json).write_text(json.dumps(dict(sources=sources, rounds=args.rounds, runs=args.runs,
                                                   loadavg=os.getloadavg(), machine=machine_info(),
                                                   bf16_prefill=_core.bf16_prefill(), rows=rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
