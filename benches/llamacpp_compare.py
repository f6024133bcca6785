"""Decode and prefill of ferrolm and llama.cpp (through llama-cpp-python) side by side, with the
PERF method: batch 1, greedy, a 128-token prompt of fixed ids, 128 new tokens (EOS ignored), one
warm-up then the median of the timed runs; each configuration in a fresh process (peak RSS = its
VmHWM), with the read bandwidth measured in that process and the decode ceiling = bandwidth /
matmul bytes per token (PERF.md).

    pip install llama-cpp-python          # optional; builds llama.cpp from source
    python benches/llamacpp_compare.py [GGUF] [--threads 1,2] [--runs 3] [--json OUT]
    python benches/llamacpp_compare.py --shape gpt2-124m,llama-135m,llama-1.1b [--threads 1,2]

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

        def generate():
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

        def generate():
            t = model.generate(PROMPT, max_new_tokens=new, ignore_eos=True).timings
            return t.prefill_tokens_per_s, t.decode_tokens_per_s, new

    generate()  # warm-up
    for _ in range(runs):
        stamps.append(generate())
    rss = vmhwm_mib()
    from ferrolm import _core

    bandwidth = max(_core.read_bandwidth(1 << 30, threads, 5) for _ in range(2))
    decode = statistics.median(s[1] for s in stamps)
    return dict(engine=engine, threads=threads, kv_cache=kv_cache, prompt_token_by_token=token_by_token,
                prefill=statistics.median(s[0] for s in stamps),
                decode=decode, decode_runs=[round(s[1], 1) for s in stamps],
                tokens=stamps[0][2], peak_rss_mib=rss, matmul_bytes_per_token=matmul_bytes,
                read_gb_s=bandwidth / 1e9, pct_of_ceiling=100 * decode * matmul_bytes / bandwidth)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("gguf", nargs="?")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--runs", type=int, default=3)
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
    for source in sources:
        for threads in [int(t) for t in args.threads.split(",")]:
            for engine in engines.split(","):
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
                    return 1
                rows.append(dict(json.loads(out.stdout.strip().splitlines()[-1]), source=Path(source).name))
                r = rows[-1]
                print(f"{r['source']:<16} {r['engine']:<15} threads={threads} prefill {r['prefill']:7.1f} tok/s  "
                      f"decode {r['decode']:6.1f} tok/s ({r['pct_of_ceiling']:.0f}% of {r['read_gb_s']:.1f} GB/s) "
                      f"{r['decode_runs']}  peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    if args.json:
        from ferrolm import _core
        from ferrolm.bench import machine_info

        Path(args.json).write_text(json.dumps(dict(sources=sources, loadavg=os.getloadavg(), machine=machine_info(),
                                                   bf16_prefill=_core.bf16_prefill(), rows=rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
