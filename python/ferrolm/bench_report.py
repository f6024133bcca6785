"""The `ferrolm bench` report: markdown, CSV, JSON and charts (PNG, with matplotlib:
`pip install 'ferrolm[plot]'`) from the dict `ferrolm.bench.run_bench` returns."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

CHARTS = ("speed.png", "memory.png", "quality.png")
PLOT_HINT = "pip install 'ferrolm[plot]'"
EVAL_HINT = "pip install 'ferrolm[eval]'"


def _f(value: Optional[float], fmt: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt)


def plotting_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# -- tables ------------------------------------------------------------------------------------

def speed_rows(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One flat row per model × precision × threads, with the quality of the precision."""
    rows = []
    for m in report["models"]:
        quality = (m.get("quality") or {}).get("precisions", {})
        for r in m["rows"]:
            q = quality.get(r["precision"], {})
            g = q.get("greedy_scores") or {}
            rows.append({
                "model": m["name"], "precision": r["precision"], "threads": r["threads"],
                "params": r["params"], "load_s": r["load_seconds"], "weight_mib": r["weight_mib"],
                "prompt_tokens": r["prompt_tokens"], "new_tokens": r["new_tokens"],
                "prefill_tok_s": r["prefill_tok_s"], "prefill_std": r["prefill_std"],
                "decode_tok_s": r["decode_tok_s"], "decode_std": r["decode_std"],
                "decode_ceiling_tok_s": r["decode_ceiling_tok_s"], "decode_pct_of_ceiling": r["decode_pct_of_ceiling"],
                "read_bandwidth_gb_s": r["read_bandwidth_gb_s"], "peak_rss_mib": r["peak_rss_mib"],
                "estimate_mib": r["estimate_mib"], "estimate_error_pct": r["estimate_error_pct"],
                "perplexity": q.get("candidate_perplexity", (m.get("quality") or {}).get("reference_perplexity")
                                    if r["precision"] == "fp32" else None),
                "perplexity_change_pct": q.get("perplexity_change_pct", 0.0 if r["precision"] == "fp32" and m.get("quality") else None),
                "mean_kl": q.get("mean_kl"), "p99_kl": q.get("p99_kl"), "max_kl": q.get("max_kl"),
                "top1_agreement_pct": 100 * q["top1_agreement"] if "top1_agreement" in q else None,
                "rouge1": g.get("rouge1"), "rouge2": g.get("rouge2"), "rougeL": g.get("rougeL"), "bleu": g.get("bleu"),
            })
    return rows


def _kv_cache_sentence(kv: str) -> str:
    """The KV cache of a run's rows, in words."""
    if kv == "auto":
        return "KV cache: FP32 with FP32 weights, BF16 with the others (ferrolm.load's default)."
    return f"KV cache: {kv.upper()}."


def markdown(report: Dict[str, Any], charts: Optional[List[str]] = None, chart_note: Optional[str] = None,
             heading: str = "#") -> str:
    s = report["settings"]
    mach = report["machine"]
    pp, tg = f"pp{s['prompt_tokens']}", f"tg{s['new_tokens']}"
    load = mach.get("load_average")
    lines = [f"{heading} ferrolm bench — {report['date']}", ""]
    if report.get("command"):
        lines += ["```", report["command"], "```", ""]
    lines += [
        f"Machine: {mach['cpu']}, {mach['cpus']} CPUs, kernels `{mach['simd']}`"
        + (f" (BF16/INT8/INT4 prefill multiplies {mach['bf16_prefill']} activations"
           + (f", GEMM `{mach['prefill_gemm']}`" if mach.get("prefill_gemm") else "") + ")" if mach.get("bf16_prefill") else "")
        + f", Python {mach['python']}, ferrolm "
        f"{mach['ferrolm']}" + (f"; load average {load[0]:.2f} at the start, {mach['load_average_end'][0]:.2f} at the end"
                                if load and mach.get("load_average_end") else "") + ".",
        "",
        f"Method (PERF): batch 1, greedy, a {s['prompt_tokens']}-token prompt of fixed ids ({pp}) and "
        f"{s['new_tokens']} new tokens ({tg}), EOS ignored; one warm-up, then {s['runs']} timed runs, a bandwidth "
        f"probe and {s['runs']} more: median ± standard deviation of the {2 * s['runs']}. Each configuration runs in "
        "a fresh process: peak RSS is its VmHWM, the estimate is `ferrolm.estimate_memory` for the same context. "
        "Decode ceiling = read bandwidth (best of two probes) / matmul bytes per token."
        + " " + _kv_cache_sentence(s.get("kv_cache", "fp32")),
        "",
    ]
    for m in report["models"]:
        lines += [f"{heading}# {m['name']}", ""]
        kind = "random weights" if m["random_weights"] else m["format"]
        lines += [f"{m.get('params', 0):,} parameters ({kind}).", ""]
        lines += [f"| precision | threads | load s | weights MiB | {pp} tok/s | {tg} tok/s | decode ceiling tok/s "
                  "| % of ceiling | read GB/s | peak RSS MiB | estimate MiB | estimate vs peak |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in m["rows"]:
            lines.append(
                f"| {r['precision']} | {r['threads']} | {r['load_seconds']:.2f} | {r['weight_mib']:.1f} "
                f"| {r['prefill_tok_s']:.1f} ± {r['prefill_std']:.1f} | {r['decode_tok_s']:.1f} ± {r['decode_std']:.1f} "
                f"| {r['decode_ceiling_tok_s']:.1f} | {r['decode_pct_of_ceiling']:.0f}% | {r['read_bandwidth_gb_s']:.1f} "
                f"| {r['peak_rss_mib']:.0f} | {r['estimate_mib']:.0f} | {_f(r['estimate_error_pct'], '+.1f')}% |")
        lines.append("")
        q = m.get("quality")
        if q is None:
            lines += [f"Quality: {m.get('quality_note', 'not measured')}.", ""]
            continue
        kv = q.get("kv_cache", "fp32")
        against = ("FP32" if kv == "fp32" else
                   "FP32 weights with an FP32 KV cache (BF16, INT8 and INT4 with a BF16 cache, as loaded by default)"
                   if kv == "auto" else f"FP32 weights with an FP32 KV cache (each precision with a {kv.upper()} cache)")
        lines += [
            f"Quality against {against}: perplexity on `{q['text']}` ({q['scored_tokens']} tokens scored, window "
            f"{q['window']}, stride {q['stride']}); KL(FP32 ‖ precision) of the next-token distributions; "
            f"\"same top token\" = top-1 agreement; greedy replies ({q['new_tokens']} tokens) to {q['prompts']} chat "
            "prompts scored with ROUGE (F, stemmed) and BLEU against FP32's replies.", "",
            "| precision | weights MiB | perplexity | vs FP32 | mean KL | p99 KL | max KL | same top token | greedy identical "
            "| ROUGE-1 | ROUGE-2 | ROUGE-L | BLEU |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        weights = {r["precision"]: r["weight_mib"] for r in m["rows"]}
        # the reference row: FP32 weights with an FP32 cache, which is also FP32's default ("auto")
        if "fp32" in weights and kv in ("fp32", "auto"):
            lines.append(f"| fp32 | {weights['fp32']:.1f} | {q['reference_perplexity']:.4f} | — | 0 | 0 | 0 | 100% | — "
                         "| — | — | — | — |")
        for p, d in q["precisions"].items():
            g = d.get("greedy_scores") or {}
            ident = sum(1 for x in d["greedy"] if x["identical"])
            # the cache this precision ran with, as recorded ("auto" resolves per precision)
            label = p if kv == "fp32" else f"{p}, {d.get('candidate_kv_cache', kv).upper()} KV cache"
            lines.append(
                f"| {label} | {_f(weights.get(p))} | {d['candidate_perplexity']:.4f} | {d['perplexity_change_pct']:+.3f}% "
                f"| {d['mean_kl']:.2e} | {d['p99_kl']:.2e} | {d['max_kl']:.2e} | {100 * d['top1_agreement']:.1f}% "
                f"| {ident}/{len(d['greedy'])} | {_f(g.get('rouge1'), '.3f')} | {_f(g.get('rouge2'), '.3f')} "
                f"| {_f(g.get('rougeL'), '.3f')} | {_f(g.get('bleu'), '.1f')} |")
        if not q.get("metrics_available"):
            lines += ["", f"ROUGE and BLEU need rouge-score and sacrebleu: `{EVAL_HINT}`."]
        lines.append("")
    lines += _memory_section(report, heading)
    if charts:
        lines += [f"{heading}# Charts", ""] + [f"![{Path(c).stem}]({c})" for c in charts] + [""]
    elif chart_note:
        lines += [chart_note, ""]
    return "\n".join(lines)


def _memory_section(report: Dict[str, Any], heading: str) -> List[str]:
    lines = [f"{heading}# Memory: estimate by part against the measured peak", "",
             "Estimate = weights + runtime + max(loading, KV cache + buffers) (`ferrolm memory MODEL --precision P "
             "--context N`); one row per model and precision (the largest thread count). Runtime is this "
             "environment's: the benchmark process's resident memory after its imports, measured before loading, "
             "plus what running a model adds.", "",
             "| model | precision | weights | KV cache | buffers | runtime | loading | estimate | peak RSS | estimate vs peak |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in report["models"]:
        last: Dict[str, Dict[str, Any]] = {}
        for r in m["rows"]:
            last[r["precision"]] = r
        for p, r in last.items():
            e = r["estimate"]
            mib = lambda k: f"{e[k] / 2**20:.1f}"  # noqa: E731
            lines.append(f"| {m['name']} | {p} | {mib('weights_bytes')} | {mib('kv_cache_bytes')} | {mib('buffers_bytes')} "
                         f"| {mib('runtime_bytes')} | {mib('loading_bytes')} | {r['estimate_mib']:.1f} | {r['peak_rss_mib']:.1f} "
                         f"| {_f(r['estimate_error_pct'], '+.1f')}% |")
    return lines + [""]


def to_csv(report: Dict[str, Any]) -> str:
    rows = speed_rows(report)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def render(report: Dict[str, Any], fmt: str = "md") -> str:
    if fmt == "json":
        return json.dumps(report, indent=1)
    if fmt == "csv":
        return to_csv(report)
    charts = report.get("charts")
    note = report.get("chart_note")
    if charts is None:
        note = ("Charts: `--out DIR` writes them." if plotting_available() else
                f"Charts (with `--out DIR`) need matplotlib: `{PLOT_HINT}`.")
    return markdown(report, charts, note)


# -- charts -------------------------------------------------------------------------------------

def _short(name: str) -> str:
    return name.split(" (")[0][:44]


def make_charts(report: Dict[str, Any], out: Path) -> List[Path]:
    """speed.png (tok/s per precision and thread count, ± σ, with the decode ceiling), memory.png
    (measured peak RSS against the estimate by part) and quality.png (quality against weight
    size), one row of panels per model. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    written = []
    colors = {"fp32": "#4c72b0", "bf16": "#dd8452", "int8": "#55a868"}

    # speed
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 3.4 * len(models)), squeeze=False)
    s = report["settings"]
    for row, m in zip(axes, models):
        precisions = list(dict.fromkeys(r["precision"] for r in m["rows"]))
        threads = list(dict.fromkeys(r["threads"] for r in m["rows"]))
        width = 0.8 / max(1, len(threads))
        for ax, key, title in ((row[0], "prefill", f"prefill pp{s['prompt_tokens']}"), (row[1], "decode", f"decode tg{s['new_tokens']}")):
            for j, n in enumerate(threads):
                xs, ys, es, cs = [], [], [], []
                for i, p in enumerate(precisions):
                    r = next((r for r in m["rows"] if r["precision"] == p and r["threads"] == n), None)
                    if r is None:
                        continue
                    xs.append(i + (j - (len(threads) - 1) / 2) * width)
                    ys.append(r[f"{key}_tok_s"])
                    es.append(r[f"{key}_std"])
                    cs.append(r["decode_ceiling_tok_s"])
                ax.bar(xs, ys, width * 0.9, yerr=es, capsize=3, label=f"{n} thread{'s' if n > 1 else ''}",
                       color=f"C{j}", alpha=0.85)
                if key == "decode":
                    ax.scatter(xs, cs, marker="_", s=300, color="black", zorder=3,
                               label="bandwidth ceiling" if j == 0 else None)
            ax.set_xticks(range(len(precisions)), precisions)
            ax.set_ylabel("tok/s")
            ax.set_title(f"{_short(m['name'])}: {title}", fontsize=9)
            ax.legend(fontsize=7)
            ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    written.append(out / "speed.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # memory
    fig, axes = plt.subplots(1, len(models), figsize=(max(5.5, 4.2 * len(models)), 3.8), squeeze=False)
    parts = (("weights_bytes", "weights"), ("kv_cache_bytes", "KV cache + buffers"), ("runtime_bytes", "runtime"),
             ("loading_bytes", "loading (beyond KV + buffers)"))
    for ax, m in zip(axes[0], models):
        last: Dict[str, Dict[str, Any]] = {}
        for r in m["rows"]:
            last[r["precision"]] = r
        names = list(last)
        top = 1.0
        for i, p in enumerate(names):
            e = last[p]["estimate"]
            values = {"weights_bytes": e["weights_bytes"], "kv_cache_bytes": e["kv_cache_bytes"] + e["buffers_bytes"],
                      "runtime_bytes": e["runtime_bytes"],
                      "loading_bytes": max(0, e["loading_bytes"] - e["kv_cache_bytes"] - e["buffers_bytes"])}
            bottom = 0.0
            for k, (key, label) in enumerate(parts):
                v = values[key] / 2**20
                ax.bar(i - 0.2, v, 0.38, bottom=bottom, color=f"C{k}", label=label if i == 0 else None)
                bottom += v
            ax.bar(i + 0.2, last[p]["peak_rss_mib"], 0.38, color="0.35", label="measured peak RSS" if i == 0 else None)
            top = max(top, bottom, last[p]["peak_rss_mib"])
        ax.set_ylim(0, top * 1.45)  # room for the legend above the bars
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("MiB")
        ax.set_title(f"{_short(m['name'])}: estimate (left) vs measured", fontsize=9)
        ax.legend(fontsize=7, loc="upper right", ncol=2)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    written.append(out / "memory.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # quality against size
    with_q = [m for m in models if m.get("quality")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), squeeze=False)
    panels = (("perplexity_change_pct", "perplexity vs FP32 (%)"), ("top1_agreement_pct", "same top token (%)"),
              ("rougeL", "ROUGE-L of greedy replies vs FP32"))
    rows = [r for r in speed_rows(report) if r["model"] in {m["name"] for m in with_q}]
    for ax, (key, title) in zip(axes[0], panels):
        for k, m in enumerate(with_q):
            seen = {}
            for r in rows:
                if r["model"] != m["name"] or r["precision"] in seen:
                    continue
                value = r[key]
                if value is None and r["precision"] == "fp32":
                    value = {"top1_agreement_pct": 100.0, "rougeL": 1.0}.get(key)
                if value is None:
                    continue
                seen[r["precision"]] = (r["weight_mib"], value)
            if not seen:
                continue
            xs, ys = zip(*seen.values())
            ax.plot(xs, ys, "-", color=f"C{k}", alpha=0.5, label=_short(m["name"]))
            for p, (x, y) in seen.items():
                ax.scatter([x], [y], color=colors.get(p, "0.3"), zorder=3)
                ax.annotate(p, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("weights (MiB)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if with_q:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no quality measured\n(random-weight shapes)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9)
    fig.tight_layout()
    written.append(out / "quality.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def write_outputs(report: Dict[str, Any], out: Path, with_csv: bool = True) -> List[Path]:
    """bench.json, report.md, bench.csv and (with matplotlib) the charts, into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if plotting_available():
        written += make_charts(report, out)
        report["charts"] = [p.name for p in written]
        report["chart_note"] = None
    else:
        report["charts"] = []
        report["chart_note"] = f"Charts (speed, memory, quality against size) need matplotlib: `{PLOT_HINT}`."
    (out / "bench.json").write_text(json.dumps(report, indent=1))
    written.append(out / "bench.json")
    (out / "report.md").write_text(markdown(report, report["charts"], report["chart_note"]))
    written.append(out / "report.md")
    if with_csv:
        (out / "bench.csv").write_text(to_csv(report))
        written.append(out / "bench.csv")
    return written
