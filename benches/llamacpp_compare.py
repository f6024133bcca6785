"""Decode and prefill of ferrolm (INT8, INT4) and llama.cpp (through llama-cpp-python) on the same
GGUF file, side by side, with the PERF method: batch 1, greedy, a 128-token prompt of fixed ids,
128 new tokens (EOS ignored), one warm-up then the median of the timed runs; each configuration
in a fresh process (peak RSS = its VmHWM).

    pip install llama-cpp-python          # optional; builds llama.cpp from source
    python benches/llamacpp_compare.py [GGUF] [--threads 1,2] [--runs 3] [--json OUT]

GGUF defaults to the default model (SmolLM2-135M-Instruct.Q4_1.gguf).
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


def one(engine: str, path: str, threads: int, runs: int, new: int) -> dict:
    stamps = []
    if engine == "llama.cpp":
        from llama_cpp import Llama

        llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=512, n_batch=512, verbose=False)

        def generate():
            llm.reset()
            t0 = time.perf_counter()
            out = []
            for tok in llm.generate(PROMPT, temp=0.0, top_k=1, reset=True):
                out.append(time.perf_counter())
                if len(out) == new:
                    break
            return t0, out
    else:
        import ferrolm

        precision = engine.split()[-1]
        model = ferrolm.load(path, precision, threads=threads, context_length=512, progress=False)

        def generate():
            t0 = time.perf_counter()
            out = []
            for _ in model.generate(PROMPT, max_new_tokens=new, ignore_eos=True, stream=True):
                out.append(time.perf_counter())
            return t0, out

    generate()  # warm-up
    for _ in range(runs):
        t0, ts = generate()
        stamps.append((len(PROMPT) / (ts[0] - t0), (len(ts) - 1) / (ts[-1] - ts[0]), len(ts)))
    return dict(engine=engine, threads=threads, prefill=statistics.median(s[0] for s in stamps),
                decode=statistics.median(s[1] for s in stamps), decode_runs=[round(s[1], 1) for s in stamps],
                tokens=stamps[0][2], peak_rss_mib=vmhwm_mib())


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("gguf", nargs="?")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--engines", default="ferrolm int8,ferrolm int4,llama.cpp")
    p.add_argument("--json")
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.gguf is None:
        from ferrolm.loading import default_model_path

        args.gguf = str(default_model_path())
    if args.one:
        print(json.dumps(one(args.one[0], args.gguf, int(args.one[1]), args.runs, args.new_tokens)))
        return 0
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        for engine in args.engines.split(","):
            out = subprocess.run([sys.executable, __file__, args.gguf, "--runs", str(args.runs), "--new-tokens",
                                  str(args.new_tokens), "--one", engine, str(threads)],
                                 capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                return 1
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{r['engine']:<14} threads={threads} prefill {r['prefill']:7.1f} tok/s  decode {r['decode']:6.1f} tok/s "
                  f"{r['decode_runs']}  peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(file=args.gguf, loadavg=os.getloadavg(), rows=rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
