"""`ferrolm bench`: speed, memory and quality of each precision of a model, side by side.

    ferrolm bench [MODEL ...] [--shape NAME,...] --precisions fp32,bf16,int8,int4 [--threads 1,2]
                  [--kv-cache auto|fp32|bf16] [--out DIR] [--format md|csv|json]

(`python -m ferrolm.bench` is the same command.) Speed follows the PERF method: batch 1, greedy,
a prompt of fixed token ids (128 by default: pp128) and 128 new tokens (tg128) with EOS ignored;
one warm-up, then the median and standard deviation of the timed runs (`--runs` of them, then as
many again after the first bandwidth probe). prefill tok/s = prompt tokens / time to first token;
decode tok/s = (new - 1) / (t_last - t_first). The decode ceiling is the measured read bandwidth
(threads summing a 1 GiB buffer) divided by the bytes of matmul weights read per token. Each
configuration runs in a fresh process so its peak RSS (VmHWM) is its own, and is compared with
`ferrolm.estimate_memory` for the same context. Quality (real checkpoints with a tokenizer):
each precision against FP32 with `ferrolm.quality.compare`, plus ROUGE and BLEU of the greedy
replies against FP32's (`ferrolm.metrics`), in one more fresh process. `--out DIR` writes
bench.json, report.md (and bench.csv) and the charts (PNG, with matplotlib: `ferrolm[plot]`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ._numpy import np

from . import _core
from . import safetensors_io
from .config import GenerationConfig
from .errors import FerrolmError, InvalidArgumentError, ModelNotFoundError
from .loading import KV_CACHE_CHOICES, check_kv_cache, resolve_kv_cache
from .model import Model, load

SHAPES: Dict[str, dict] = {
    "gpt2-124m": dict(model_type="gpt2", vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024),
    "llama-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                       num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                       max_position_embeddings=2048, rope_theta=100000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=True),
    "llama-1.1b": dict(model_type="llama", vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                       num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                       max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=False),
}


def _tensor_shapes(cfg: dict) -> Dict[str, tuple]:
    if cfg["model_type"] == "gpt2":
        d, v, f = cfg["n_embd"], cfg["vocab_size"], 4 * cfg["n_embd"]
        shapes = {"wte.weight": (v, d), "wpe.weight": (cfg["n_positions"], d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
        for i in range(cfg["n_layer"]):
            p = f"h.{i}"
            shapes.update({
                f"{p}.ln_1.weight": (d,), f"{p}.ln_1.bias": (d,), f"{p}.ln_2.weight": (d,), f"{p}.ln_2.bias": (d,),
                f"{p}.attn.c_attn.weight": (d, 3 * d), f"{p}.attn.c_attn.bias": (3 * d,),
                f"{p}.attn.c_proj.weight": (d, d), f"{p}.attn.c_proj.bias": (d,),
                f"{p}.mlp.c_fc.weight": (d, f), f"{p}.mlp.c_fc.bias": (f,),
                f"{p}.mlp.c_proj.weight": (f, d), f"{p}.mlp.c_proj.bias": (d,),
            })
        return shapes
    d, v, f = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    hd = d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not cfg.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (v, d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes.update({
            f"{p}.input_layernorm.weight": (d,), f"{p}.post_attention_layernorm.weight": (d,),
            f"{p}.self_attn.q_proj.weight": (q, d), f"{p}.self_attn.k_proj.weight": (kv, d),
            f"{p}.self_attn.v_proj.weight": (kv, d), f"{p}.self_attn.o_proj.weight": (d, q),
            f"{p}.mlp.gate_proj.weight": (f, d), f"{p}.mlp.up_proj.weight": (f, d),
            f"{p}.mlp.down_proj.weight": (d, f),
        })
    return shapes


def bench_dir() -> Path:
    return Path(os.environ.get("FERROLM_BENCH_DIR") or Path(tempfile.gettempdir()) / "ferrolm-bench")


def random_checkpoint(shape: str, folder: Optional[Path] = None, seed: int = 0) -> Path:
    """A Hugging Face folder (config.json + model.safetensors, FP32 random weights) of a named
    shape; written once, tensor by tensor, then reused."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    folder = Path(folder) if folder is not None else bench_dir() / shape
    cfg = SHAPES[shape]
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        if json.loads((folder / "config.json").read_text()) == cfg:
            return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shapes = _tensor_shapes(cfg)

    def make(name: str) -> np.ndarray:
        shp = shapes[name]
        if len(shp) == 1:
            return np.ones(shp, np.float32) if name.endswith("weight") else np.zeros(shp, np.float32)
        arr = rng.standard_normal(shp, dtype=np.float32)
        arr *= np.float32(0.02)
        return arr

    safetensors_io.write(folder / "model.safetensors", [(n, "F32", s) for n, s in shapes.items()], lambda n: make(n).tobytes())
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def peak_rss_bytes() -> int:
    """VmHWM of this process (0 where /proc is not available)."""
    return _proc_status("VmHWM")


def current_rss_bytes() -> int:
    """VmRSS of this process (0 where /proc is not available)."""
    return _proc_status("VmRSS")


def _proc_status(key: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _stdev(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def measure(model: Model, prompt_len: int = 128, new_tokens: int = 128, runs: int = 3) -> dict:
    """Warm-up, then the median prefill and decode tok/s of `runs` generations."""
    prompt = [(i * 7919 + 13) % model.vocab_size for i in range(prompt_len)]
    cfg = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    model.configure_prefix_cache(reuse=False)  # every run computes the whole prompt
    model.generate(prompt, cfg)  # warm-up
    prefill, decode = [], []
    for _ in range(runs):
        t = model.generate(prompt, cfg).timings
        prefill.append(t.prefill_tokens_per_s)
        decode.append(t.decode_tokens_per_s)
    return {"prefill_tok_s": statistics.median(prefill), "decode_tok_s": statistics.median(decode),
            "prefill_runs": prefill, "decode_runs": decode}


BUDGET_SLACK = 64 << 20
"""PERF's memory target: peak RSS <= weight bytes + KV cache + 64 MiB."""


def run_one(shape: str, threads: int, runs: int = 3, prompt_len: int = 128, new_tokens: int = 128,
            precision: Optional[str] = None, bandwidth_bytes: int = 1 << 30, kv_cache: str = "auto") -> dict:
    """One configuration, measured in this process (call it in a fresh one: peak RSS is the
    process's). The context holds exactly the prompt and the new tokens."""
    folder = model_source(shape)
    context = prompt_len + new_tokens
    # every load imports the tokenizers library; its resident size varies with the environment
    # (as Python's own does), so it is part of the measured baseline
    import tokenizers  # noqa: F401

    baseline = current_rss_bytes()
    t0 = time.perf_counter()
    model = load(folder, precision=precision, threads=threads, context_length=context, kv_cache=kv_cache, progress=False)
    load_s = time.perf_counter() - t0
    result = measure(model, prompt_len, new_tokens, runs)
    rss = peak_rss_bytes()  # before the bandwidth buffer is allocated
    # the machine is shared and its bandwidth drifts: take the best of two probes (a higher
    # ceiling, so a conservative percentage), one after the decode runs and one after a re-run
    bw_probes = [_core.read_bandwidth(bandwidth_bytes, threads, 5)]
    rerun = measure(model, prompt_len, new_tokens, runs)
    bw_probes.append(_core.read_bandwidth(bandwidth_bytes, threads, 5))
    result["decode_runs"] += rerun["decode_runs"]
    result["prefill_runs"] += rerun["prefill_runs"]
    result["decode_tok_s"] = statistics.median(result["decode_runs"])
    result["prefill_tok_s"] = statistics.median(result["prefill_runs"])
    result["decode_std"] = _stdev(result["decode_runs"])
    result["prefill_std"] = _stdev(result["prefill_runs"])
    bandwidth = max(bw_probes)
    bytes_per_token = model.matmul_bytes_per_token
    ceiling = bandwidth / bytes_per_token
    weights = model._core.weight_bytes
    from .memory import Architecture

    kv = Architecture.from_config(model.config).kv_cache_bytes(context, kv_cache=model.kv_cache)
    result.update(
        bandwidth_probes_gb_s=[b / 1e9 for b in bw_probes],
        shape=shape, threads=threads, precision=model.precision, kv_cache=model.kv_cache, params=model.num_params,
        prompt_tokens=prompt_len, new_tokens=new_tokens, context=context,
        matmul_bytes_per_token=bytes_per_token, read_bandwidth_gb_s=bandwidth / 1e9,
        decode_ceiling_tok_s=ceiling, decode_pct_of_ceiling=100 * result["decode_tok_s"] / ceiling,
        load_seconds=load_s, simd=_core.simd_level(), peak_rss_mib=rss / 2**20,
        baseline_rss_mib=baseline / 2**20, weight_bytes=weights, weight_mib=weights / 2**20,
        kv_cache_mib=kv / 2**20, rss_budget_mib=(weights + kv + BUDGET_SLACK) / 2**20,
    )
    return result


REAL_MODELS = {"smollm2-135m-q4_1": "the default model (SmolLM2-135M-Instruct, Q4_1 GGUF)"}


def model_source(shape: str) -> Path:
    """A named random shape (written once), or a real model: "smollm2-135m-q4_1" (the default
    model) or a path to a model folder / GGUF file."""
    if shape in SHAPES:
        return random_checkpoint(shape)
    if shape in REAL_MODELS:
        from .loading import default_model_path

        return default_model_path()
    if Path(shape).exists():
        return Path(shape)
    raise ModelNotFoundError(f"no model {shape!r}: give a model folder or GGUF file, or a shape: "
                             f"{', '.join([*SHAPES, *REAL_MODELS])}")


def _child(args: List[str], what: str) -> dict:
    """Runs `python -m ferrolm.bench ARGS` in a fresh process; its last stdout line is JSON."""
    cmd = [sys.executable, "-m", "ferrolm.bench", *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-8:])
        raise FerrolmError(f"{what} failed (exit {out.returncode}):\n{tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def quality_one(source: str, precisions: Sequence[str], threads: Optional[int], text_tokens: Optional[int],
                window: Optional[int], stride: Optional[int], new_tokens: int, kv_cache: str = "auto") -> dict:
    """Quality of `precisions` (with a `kv_cache` KV cache, "auto" as ferrolm.load) against FP32 weights and an FP32
    cache (in this process): perplexity, KL, top-1 agreement and greedy replies
    (ferrolm.quality.compare), with ROUGE/BLEU of the replies when ferrolm.metrics can run."""
    from . import metrics
    from .quality import default_text_path, greedy_text_scores, perplexity, quality_report

    path = model_source(source)
    text = default_text_path().read_text(encoding="utf-8")
    candidates = [p for p in precisions if p != "fp32" or resolve_kv_cache(kv_cache, p) != "fp32"]
    out: Dict[str, Any] = {"text": default_text_path().name, "metrics_available": metrics.available(),
                           "kv_cache": kv_cache}
    if candidates:
        reports = quality_report(path, candidates, threads=threads, text=text, window=window, stride=stride,
                                 new_tokens=new_tokens, text_tokens=text_tokens, kv_cache=kv_cache)
        r0 = reports[0]
        out.update(reference_perplexity=r0.reference_perplexity, scored_tokens=r0.scored_tokens, window=r0.window,
                   stride=r0.stride, new_tokens=new_tokens, prompts=len(r0.greedy), precisions={})
        for r in reports:
            d = r.as_dict()
            d["greedy_scores"] = greedy_text_scores(r) if out["metrics_available"] else None
            out["precisions"][r.candidate_precision] = d
    else:
        model = load(path, "fp32", threads=threads, progress=False)
        ids = model.tokenize(text, add_special_tokens=False)[: text_tokens or None]
        ppl = perplexity(model, ids, window, stride)
        out.update(reference_perplexity=ppl.perplexity, scored_tokens=ppl.scored_tokens, window=ppl.window,
                   stride=ppl.stride, new_tokens=new_tokens, prompts=0, precisions={})
    return out


def last_level_cache_mib(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> Optional[float]:
    """The size of CPU 0's last-level data cache in MiB, from Linux's sysfs (None where it says nothing)."""
    best = None
    try:
        for index in root.glob("index*"):
            if (index / "type").read_text().strip() == "Instruction":
                continue
            level, size = int((index / "level").read_text()), (index / "size").read_text().strip()
            units = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}
            mib = float(size[:-1]) * units[size[-1]] if size[-1:] in units else float(size) / 2**20
            if best is None or level > best[0]:
                best = (level, mib)
    except (OSError, ValueError):
        return None
    return best[1] if best else None


def machine_info() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "simd": _core.simd_level(), "bf16_prefill": _core.bf16_prefill(),
            "prefill_gemm": _core.prefill_gemm(), "int8_layout": _core.int8_layout(),
            "last_level_cache_mib": last_level_cache_mib(),
            "machine": platform.machine(),
            "python": platform.python_version(), "ferrolm": _core.__version__,
            "memory_gib": _core.memory_limit() / 2**30 if _core.memory_limit() < 2**62 else None,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _split(text: Optional[str]) -> List[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def check_precisions(text: str) -> List[str]:
    from .memory import check_precision

    precisions = _split(text)
    if not precisions:
        raise InvalidArgumentError("--precisions is empty")
    for p in precisions:
        check_precision(p)
    return list(dict.fromkeys(precisions))


def check_threads(text: str) -> List[int]:
    out = []
    for t in _split(text):
        try:
            n = int(t)
        except ValueError:
            n = 0
        if not 1 <= n <= 1024:
            raise InvalidArgumentError(f"--threads takes positive integers, got {t!r}")
        out.append(n)
    if not out:
        raise InvalidArgumentError("--threads is empty")
    return list(dict.fromkeys(out))


def check_device(device: str) -> str:
    if device not in ("cpu", "cuda"):
        raise InvalidArgumentError(f"--device must be cpu or cuda, got {device!r}")
    return device


def check_out_dir(out: Optional[str]) -> Optional[Path]:
    """Creates --out (with parents) and checks a file can be written in it, before any work."""
    if out is None:
        return None
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".ferrolm-write-check-"):
            pass
    except OSError as e:
        raise InvalidArgumentError(f"cannot write to --out {out}: {e.strerror or e}") from None
    return path


def _display_name(source: str) -> str:
    if source in SHAPES:
        return source
    if source in REAL_MODELS:
        return f"{model_source(source).name} (the default model)"
    from .loading import default_model_path

    path = Path(source)
    try:
        if path.resolve() == default_model_path().resolve():
            return f"{path.name} (the default model)"
    except FerrolmError:
        pass
    return path.name or str(path)


def run_bench(sources: Sequence[str], precisions: Sequence[str], threads: Sequence[int], *, runs: int = 3,
              prompt_tokens: int = 128, new_tokens: int = 128, quality: bool = True, quality_tokens: Optional[int] = None,
              window: Optional[int] = None, stride: Optional[int] = None, quality_new_tokens: int = 32,
              bandwidth_mib: int = 1024, progress: Optional[bool] = None, command: Optional[str] = None,
              kv_cache: str = "auto") -> Dict[str, Any]:
    """Every configuration of every model in a fresh process, then quality against FP32; the
    report as a dict (see `bench_report` for its markdown, CSV and charts)."""
    from tqdm.auto import tqdm

    from .memory import RUN_BYTES, Architecture, estimate_memory, model_facts

    facts = {}
    for s in sources:  # every model is checked before any measurement
        path = model_source(s)
        facts[s] = model_facts(s if s in SHAPES else path)
        positions = Architecture.from_config(facts[s].config).max_position_embeddings
        if prompt_tokens + new_tokens > positions:
            raise InvalidArgumentError(f"{s}: --prompt-tokens {prompt_tokens} + --new-tokens {new_tokens} exceed the "
                                       f"model's {positions} positions")
        saved = facts[s].saved_precision
        if saved is not None and any(p != saved for p in precisions):
            raise InvalidArgumentError(f"{s} is a ferrolm {saved.upper()} checkpoint: it loads only as {saved} "
                                       f"(benchmark the original checkpoint to compare precisions)")
    with_quality = {s: quality and s not in SHAPES and facts[s].has_tokenizer for s in sources}
    steps = len(sources) * len(precisions) * len(threads) + sum(with_quality.values())
    bar = tqdm(total=steps, desc="ferrolm bench", unit="run", file=sys.stderr,
               disable=not (sys.stderr.isatty() if progress is None else progress))
    report: Dict[str, Any] = {
        "command": command, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "settings": dict(precisions=list(precisions), threads=list(threads), runs=runs, prompt_tokens=prompt_tokens,
                         new_tokens=new_tokens, quality_tokens=quality_tokens, window=window, stride=stride,
                         quality_new_tokens=quality_new_tokens, bandwidth_mib=bandwidth_mib, kv_cache=kv_cache),
        "models": [],
    }
    t_start = time.perf_counter()
    for s in sources:
        entry: Dict[str, Any] = {"source": s, "name": _display_name(s), "path": str(model_source(s)),
                                 "random_weights": s in SHAPES, "format": facts[s].format, "rows": []}
        for p in precisions:
            for n in threads:
                bar.set_postfix_str(f"{s[:24]} {p} ×{n}")
                row = _child(["--one", s, str(n), "--precisions", p, "--runs", str(runs), "--prompt-tokens",
                              str(prompt_tokens), "--new-tokens", str(new_tokens), "--bandwidth-mib", str(bandwidth_mib),
                              "--kv-cache", kv_cache],
                             f"measuring {s} {p} with {n} threads")
                # runtime: this environment's measured import baseline + what running adds
                runtime = int(row["baseline_rss_mib"] * 2**20) + RUN_BYTES
                est = estimate_memory(facts[s], p, context=prompt_tokens + new_tokens, threads=n,
                                      prefill_tokens=prompt_tokens, runtime_bytes=runtime, kv_cache=kv_cache)
                row["estimate"] = est.as_dict()
                row["estimate_mib"] = est.total_bytes / 2**20
                row["estimate_error_pct"] = 100 * (row["estimate_mib"] / row["peak_rss_mib"] - 1) if row["peak_rss_mib"] else None
                entry["rows"].append(row)
                entry["params"] = row["params"]
                bar.update(1)
        if with_quality[s]:
            bar.set_postfix_str(f"{s[:24]} quality")
            args = ["--quality-one", s, "--precisions", ",".join(precisions), "--quality-new-tokens", str(quality_new_tokens),
                    "--kv-cache", kv_cache]
            for flag, value in (("--quality-tokens", quality_tokens), ("--window", window), ("--stride", stride),
                                ("--quality-threads", max(threads))):
                if value is not None:
                    args += [flag, str(value)]
            entry["quality"] = _child(args, f"quality of {s}")
            bar.update(1)
        else:
            entry["quality"] = None
            entry["quality_note"] = ("random weights (a named shape): quality is not measured" if s in SHAPES else
                                     "no tokenizer: quality is not measured" if quality else "quality not asked for")
        report["models"].append(entry)
    bar.close()
    report["seconds"] = time.perf_counter() - t_start
    report["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return report


def build_parser(prog: str = "ferrolm bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Speed, memory and quality of each precision of a model, side by side: load time, "
        "weight bytes, peak RSS against the estimate, prefill/decode tok/s ± σ and % of the bandwidth ceiling, "
        "then perplexity, KL, top-1 agreement, ROUGE and BLEU against FP32. Each configuration runs in a fresh process.")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="model folders or GGUF files (default: the default model, unless --shape is given)")
    p.add_argument("--shape", "--shapes", dest="shapes", default=None, metavar="NAME[,NAME]",
                   help=f"random-weight models of named shapes ({', '.join(SHAPES)}); quality is skipped for them")
    p.add_argument("--precisions", default="fp32,bf16,int8,int4", help="comma-separated (default: fp32,bf16,int8,int4)")
    p.add_argument("--threads", default=None, help="comma-separated thread counts (default: every CPU)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: the CUDA backend (a GPU through cupy, or the "
                   "emulator with FERROLM_CUDA_EMULATE=1), measured on the PERF shapes by default")
    p.add_argument("--kv-cache", default="auto", choices=list(KV_CACHE_CHOICES),
                   help="how the KV cache stores keys and values: auto (default, as ferrolm.load: fp32 for fp32 "
                   "weights, bf16 otherwise), fp32 or bf16; quality is measured against FP32 weights with an FP32 cache")
    p.add_argument("--runs", type=int, default=3, help="timed runs, done twice (default: 3, so 6 in all)")
    p.add_argument("--prompt-tokens", type=int, default=None, help="prompt length, fixed ids (default: 128; 512 with --device cuda)")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens generated per run (default: 128)")
    p.add_argument("--no-quality", dest="quality", action="store_false", help="skip the quality measurements")
    p.add_argument("--quality-tokens", type=int, default=None, help="score only this many tokens of the evaluation text")
    p.add_argument("--window", type=int, default=None, help="perplexity window (default: min(context, 1024))")
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--quality-new-tokens", type=int, default=32, help="greedy tokens per chat prompt (default: 32)")
    p.add_argument("--bandwidth-mib", type=int, default=1024, help="buffer of the bandwidth probe (default: 1024)")
    p.add_argument("--out", default=None, metavar="DIR", help="write bench.json, report.md, bench.csv and charts here")
    p.add_argument("--format", default="md", choices=["md", "csv", "json"], help="what to print (default: md)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None)
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--one", nargs=2, metavar=("SOURCE", "THREADS"), help=argparse.SUPPRESS)
    p.add_argument("--quality-one", metavar="SOURCE", help=argparse.SUPPRESS)
    p.add_argument("--quality-threads", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _positive_args(args: argparse.Namespace) -> None:
    for name in ("runs", "prompt_tokens", "new_tokens", "quality_new_tokens", "bandwidth_mib"):
        if getattr(args, name) < 1:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.new_tokens < 2:
        raise InvalidArgumentError("--new-tokens must be at least 2 (decode speed needs two tokens)")
    for name in ("quality_tokens", "window", "stride"):
        v = getattr(args, name)
        if v is not None and v < (2 if name != "stride" else 1):
            raise InvalidArgumentError(f"--{name.replace('_', '-')} is too small: {v}")


def _main_cuda(args: argparse.Namespace, argv: Optional[List[str]]) -> int:
    """--device cuda: decode/prefill on the CUDA backend (see ferrolm.bench_cuda)."""
    from .bench_cuda import DEFAULT_SHAPES, render_cuda, run_cuda_bench

    precisions = check_precisions(args.precisions)
    _positive_args(args)
    out = check_out_dir(args.out)
    sources = list(args.models) + _split(args.shapes) or list(DEFAULT_SHAPES)
    for s in sources:
        model_source(s)
    command = " ".join(["ferrolm bench", *(argv if argv is not None else sys.argv[1:])])
    report = run_cuda_bench(sources, precisions, args.runs, args.prompt_tokens, args.new_tokens, command)
    text = render_cuda(report)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_cuda.json").write_text(json.dumps(report, indent=1))
        (out / "report_cuda.md").write_text(text)
        print(f"wrote {out / 'bench_cuda.json'} and {out / 'report_cuda.md'}", file=sys.stderr)
    print(json.dumps(report, indent=1) if args.format == "json" else text)
    return 0


def main(argv: Optional[List[str]] = None, prog: str = "python -m ferrolm.bench") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        if args.prompt_tokens is None:
            args.prompt_tokens = 128
        if args.one:
            precision = check_precisions(args.precisions)[0]
            print(json.dumps(run_one(args.one[0], check_threads(args.one[1])[0], args.runs, args.prompt_tokens,
                                     args.new_tokens, precision, args.bandwidth_mib << 20, args.kv_cache)))
            return 0
        if args.quality_one:
            print(json.dumps(quality_one(args.quality_one, check_precisions(args.precisions), args.quality_threads,
                                         args.quality_tokens, args.window, args.stride, args.quality_new_tokens,
                                         args.kv_cache)))
            return 0
        device = check_device(args.device)
        check_kv_cache(args.kv_cache, device)
        if args.prompt_tokens is None:
            args.prompt_tokens = 512 if device == "cuda" else 128
        if device == "cuda":
            return _main_cuda(args, argv)
        precisions = check_precisions(args.precisions)
        threads = check_threads(args.threads) if args.threads else [_core.default_threads()]
        _positive_args(args)
        out = check_out_dir(args.out)
        sources = list(args.models) + _split(args.shapes)
        if not sources:
            sources = ["smollm2-135m-q4_1"]
        for s in sources:
            model_source(s)  # ModelNotFoundError before any work
        command = " ".join(["ferrolm bench", *(argv if argv is not None else sys.argv[1:])])
        report = run_bench(sources, precisions, threads, runs=args.runs, prompt_tokens=args.prompt_tokens,
                           new_tokens=args.new_tokens, quality=args.quality, quality_tokens=args.quality_tokens,
                           window=args.window, stride=args.stride, quality_new_tokens=args.quality_new_tokens,
                           bandwidth_mib=args.bandwidth_mib, progress=args.progress, command=command,
                           kv_cache=args.kv_cache)
    except FerrolmError as e:
        print(f"ferrolm: error: {e}", file=sys.stderr)
        return 2
    from .bench_report import render, write_outputs

    if out is not None:
        for path in write_outputs(report, out):
            print(f"wrote {path}", file=sys.stderr)
    print(render(report, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
