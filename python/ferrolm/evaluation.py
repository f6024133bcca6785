"""Task evaluation with zero-, one- and few-shot prompting (in-context learning): `ferrolm eval`.

The task shipped with ferrolm is **dialogsum**: short two-speaker dialogues with a one-sentence
reference summary (`ferrolm/data/dialogsum.jsonl`, written for ferrolm, Apache-2.0: see
`dialogsum.LICENSE` beside it). Its 4 "train" examples are the in-context examples of k-shot
prompts, its 20 "test" examples are scored: each model summarizes each test dialogue greedily and
the summaries are scored against the references with ROUGE-1/2/L/Lsum and BLEU
(`ferrolm.metrics`, `pip install 'ferrolm[eval]'`).

Prompts: with a chat template, each in-context example is a user turn ("Summarize the following
conversation." + the dialogue) answered by an assistant turn (its summary), and the test dialogue
is the last user turn; without one, the examples are written one after another as
"Summarize the following conversation.\\n\\n{dialogue}\\n\\nSummary: {summary}" separated by blank
lines, and the reply ends at the first blank line.

    ferrolm eval [MODEL] --task dialogsum --shots 0,1,3 --precisions fp32,int8 [--lora DIR] [--soft-prompt DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from .errors import ContextLengthError, FerrolmError, InvalidArgumentError

if TYPE_CHECKING:
    from .model import Model

DATA = Path(__file__).parent / "data"
TASKS = {"dialogsum": DATA / "dialogsum.jsonl"}
INSTRUCTION = "Summarize the following conversation."


@dataclass(frozen=True)
class Example:
    id: str
    dialogue: str
    summary: str
    topic: str = ""


def load_task(task: str = "dialogsum") -> Tuple[List[Example], List[Example]]:
    """(in-context examples, test examples) of a task shipped with ferrolm."""
    if task not in TASKS:
        raise InvalidArgumentError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    shots, test = [], []
    for line in TASKS[task].read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            ex = Example(row["id"], row["dialogue"], row["summary"], row.get("topic", ""))
            (shots if row["split"] == "train" else test).append(ex)
    return shots, test


def _user(dialogue: str) -> str:
    return f"{INSTRUCTION}\n\n{dialogue}"


def prompt_ids(model: "Model", example: Example, shots: Sequence[Example]) -> Tuple[List[int], Tuple[int, ...], List[str]]:
    """(prompt ids, end-of-reply token ids, stop strings) of `example` after the `shots`
    in-context examples (see the module's documentation for the layout)."""
    if model.chat_template is not None:
        messages: List[Dict[str, str]] = []
        for s in shots:
            messages += [{"role": "user", "content": _user(s.dialogue)}, {"role": "assistant", "content": s.summary}]
        messages.append({"role": "user", "content": _user(example.dialogue)})
        ids = model.tokenize(model.apply_chat_template(messages), add_special_tokens=False)
        return ids, model.end_of_turn_ids(), []
    parts = [f"{_user(s.dialogue)}\n\nSummary: {s.summary}" for s in shots]
    parts.append(f"{_user(example.dialogue)}\n\nSummary:")
    return model.tokenize("\n\n\n".join(parts)), tuple(model.eos_token_ids), ["\n\n"]


@dataclass
class EvalResult:
    """One (precision, adapter or soft prompt, shots) run of a task."""

    task: str
    model: str
    precision: str
    shots: int
    variant: str
    """"base", "lora:NAME" or "soft-prompt:NAME"."""
    examples: int
    rouge1: float
    rouge2: float
    rougeL: float
    rougeLsum: float
    bleu: float
    mean_prompt_tokens: float
    mean_new_tokens: float
    seconds: float
    predictions: List[Dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def evaluate(model: "Model", task: str = "dialogsum", shots: int = 0, *, adapter: Any = None,
             soft_prompt: Optional[str] = None, limit: Optional[int] = None, max_new_tokens: int = 48,
             variant: Optional[str] = None) -> EvalResult:
    """Greedy summaries of the task's test examples with `shots` in-context examples, scored
    with ROUGE and BLEU. `adapter`: an unmerged adapter's name (default: the model's active
    adapter, see Model.set_adapter, or none); `soft_prompt` as in Model.generate. Every prompt is
    checked against the context first."""
    from .metrics import bleu, rouge, _require

    _require("rouge_score.rouge_scorer", "rouge-score")
    _require("sacrebleu", "sacrebleu")
    examples, test = load_task(task)
    if not isinstance(shots, int) or isinstance(shots, bool) or not 0 <= shots <= len(examples):
        raise InvalidArgumentError(f"shots must be an integer in [0, {len(examples)}] for {task}, got {shots!r}")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidArgumentError(f"limit must be a positive integer, got {limit!r}")
        test = test[:limit]
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise InvalidArgumentError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    n_virtual = model.soft_prompts.get(soft_prompt, 0) if soft_prompt is not None else 0
    prompts = []
    for ex in test:
        ids, eos, stop = prompt_ids(model, ex, examples[:shots])
        need = n_virtual + len(ids) + max_new_tokens
        if need > model.context_length:
            raise ContextLengthError(
                f"the {shots}-shot prompt of {ex.id} needs {need} positions ({len(ids)} prompt tokens"
                f"{f', {n_virtual} virtual tokens' if n_virtual else ''} and {max_new_tokens} new tokens), more than the "
                f"context of {model.context_length}; use fewer shots or fewer new tokens")
        prompts.append((ex, ids, eos, stop))
    t0 = time.perf_counter()
    predictions = []
    for ex, ids, eos, stop in prompts:
        res = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos or None, stop=stop,
                             soft_prompt=soft_prompt, **({} if adapter is None else {"adapter": adapter}))
        predictions.append({"id": ex.id, "prediction": res.text.strip(), "reference": ex.summary,
                            "prompt_tokens": len(ids), "new_tokens": len(res.tokens)})
    seconds = time.perf_counter() - t0
    preds = [p["prediction"] for p in predictions]
    refs = [p["reference"] for p in predictions]
    r = rouge(preds, refs)
    return EvalResult(
        task=task, model=str(model.path), precision=model.precision, shots=shots,
        variant=variant or (f"lora:{adapter}" if adapter is not None else f"soft-prompt:{soft_prompt}"
                            if soft_prompt is not None else f"lora:{model.active_adapter}" if model.active_adapter else "base"),
        examples=len(predictions), rouge1=r["rouge1"], rouge2=r["rouge2"], rougeL=r["rougeL"], rougeLsum=r["rougeLsum"],
        bleu=bleu(preds, refs), mean_prompt_tokens=sum(p["prompt_tokens"] for p in predictions) / len(predictions),
        mean_new_tokens=sum(p["new_tokens"] for p in predictions) / len(predictions), seconds=seconds,
        predictions=predictions)


def run_eval(path, precisions: Sequence[str] = ("fp32",), shots: Sequence[int] = (0, 1, 3), *, task: str = "dialogsum",
             lora: Optional[str] = None, soft_prompt: Optional[str] = None, threads: Optional[int] = None,
             limit: Optional[int] = None, max_new_tokens: int = 48, context_length: Optional[int] = None,
             progress: Optional[bool] = None) -> List[EvalResult]:
    """`evaluate` for every precision (one model loaded at a time) and shot count, for the base
    weights and, when given, with the LoRA adapter (merged) and with the soft prompt."""
    from tqdm.auto import tqdm

    from .memory import check_precision
    from .metrics import _require
    from .model import load

    _require("rouge_score.rouge_scorer", "rouge-score")  # before any loading
    _require("sacrebleu", "sacrebleu")
    load_task(task)
    for p in precisions:
        check_precision(p)
    if not precisions or not shots:
        raise InvalidArgumentError("give at least one precision and one shot count")
    for folder, what in ((lora, "--lora"), (soft_prompt, "--soft-prompt")):
        if folder is not None and not Path(folder).is_dir():
            from .errors import ModelNotFoundError

            raise ModelNotFoundError(f"{what} {folder} is not a folder")
    variants = 1 + (lora is not None) + (soft_prompt is not None)
    bar = tqdm(total=len(precisions) * len(shots) * variants, desc=f"ferrolm eval {task}", unit="run", file=sys.stderr,
               disable=not (sys.stderr.isatty() if progress is None else progress))
    results = []
    for precision in precisions:
        model = load(path, precision, threads=threads, context_length=context_length, progress=False)
        runs: List[Tuple[str, Dict[str, Any]]] = [("base", {})]
        if lora is not None:
            runs.append((f"lora:{Path(lora).name}", {"lora": model.load_lora(lora, name="lora")}))
        if soft_prompt is not None:
            runs.append((f"soft-prompt:{Path(soft_prompt).name}",
                         {"soft_prompt": model.load_soft_prompt(soft_prompt, name="soft-prompt")}))
        for variant, opts in runs:
            model.set_adapter(opts.get("lora"))
            for k in shots:
                bar.set_postfix_str(f"{precision} {variant} {k}-shot")
                results.append(evaluate(model, task, k, soft_prompt=opts.get("soft_prompt"), limit=limit,
                                        max_new_tokens=max_new_tokens, variant=variant))
                bar.update(1)
        model.set_adapter(None)
        del model
        gc.collect()
    bar.close()
    return results


def markdown(results: Sequence[EvalResult], heading: str = "#") -> str:
    """A table of the runs; "vs fp32" compares ROUGE-L with the FP32 base run of the same shots."""
    if not results:
        return ""
    base = {r.shots: r for r in results if r.precision == "fp32" and r.variant == "base"}
    r0 = results[0]
    lines = [f"{heading} ferrolm eval: {r0.task}, {r0.examples} test examples, greedy", "",
             f"Model: `{Path(r0.model).name}`. ROUGE: mean F-measure over the examples (stemmed); BLEU: corpus BLEU (0–100).", "",
             "| precision | variant | shots | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum | BLEU | ROUGE-L vs fp32 "
             "| prompt tokens | new tokens | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        b = base.get(r.shots)
        delta = "—" if b is None or b is r else f"{r.rougeL - b.rougeL:+.3f}"
        lines.append(f"| {r.precision} | {r.variant} | {r.shots} | {r.rouge1:.3f} | {r.rouge2:.3f} | {r.rougeL:.3f} "
                     f"| {r.rougeLsum:.3f} | {r.bleu:.1f} | {delta} | {r.mean_prompt_tokens:.0f} | {r.mean_new_tokens:.1f} "
                     f"| {r.seconds:.1f} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ferrolm eval",
        description="Scores zero-, one- and few-shot prompting on a task (ROUGE-1/2/L/Lsum and BLEU of greedy outputs "
        "against references) per precision, with and without a LoRA adapter or soft prompt. Needs ferrolm[eval].")
    p.add_argument("model", nargs="?", help="model path (default: the default model)")
    p.add_argument("--task", default="dialogsum", choices=list(TASKS))
    p.add_argument("--shots", default="0,1,3", help="comma-separated in-context example counts (default: 0,1,3)")
    p.add_argument("--precisions", default="fp32,int8", help="comma-separated (default: fp32,int8)")
    p.add_argument("--lora", default=None, metavar="DIR", help="also score with this PEFT LoRA adapter (merged)")
    p.add_argument("--soft-prompt", default=None, metavar="DIR", help="also score with this PEFT prompt-tuning adapter")
    p.add_argument("--limit", type=int, default=None, help="score only the first N test examples")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--out", default=None, metavar="DIR", help="write eval.json and eval.md (and eval.png) here")
    p.add_argument("--format", default="md", choices=["md", "json"])
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None)
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _shots(text: str) -> List[int]:
    out = []
    for t in text.split(","):
        t = t.strip()
        if not t.isdigit():
            raise InvalidArgumentError(f"--shots takes non-negative integers, got {t!r}")
        out.append(int(t))
    return out


def write_outputs(results: Sequence[EvalResult], out: Path) -> List[Path]:
    """eval.json, eval.md and, with matplotlib, eval.png (ROUGE-L and BLEU per shots)."""
    from .bench_report import PLOT_HINT, plotting_available

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "eval.json", out / "eval.md"]
    written[0].write_text(json.dumps([r.as_dict() for r in results], indent=1))
    md = markdown(results)
    if plotting_available():
        written.append(_chart(results, out / "eval.png"))
        md += "\n![eval](eval.png)\n"
    else:
        md += f"\nThe chart needs matplotlib: `{PLOT_HINT}`.\n"
    written[1].write_text(md)
    return written


def _chart(results: Sequence[EvalResult], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    series: Dict[str, List[EvalResult]] = {}
    for r in results:
        series.setdefault(f"{r.precision} {r.variant}", []).append(r)
    for ax, key, title in ((axes[0], "rougeL", "ROUGE-L"), (axes[1], "bleu", "BLEU")):
        for name, rs in series.items():
            ax.plot([r.shots for r in rs], [getattr(r, key) for r in rs], "o-", label=name)
        ax.set_xlabel("in-context examples (shots)")
        ax.set_title(f"{results[0].task}: {title}", fontsize=9)
        ax.set_xticks(sorted({r.shots for r in results}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .bench import check_out_dir, check_precisions
        from .loading import default_model_path

        precisions = check_precisions(args.precisions)
        shots = _shots(args.shots)
        out = check_out_dir(args.out)
        path = args.model if args.model else default_model_path()
        if not Path(path).exists():
            from .errors import ModelNotFoundError

            raise ModelNotFoundError(f"model path {path} does not exist")
        results = run_eval(path, precisions, shots, task=args.task, lora=args.lora, soft_prompt=args.soft_prompt,
                           threads=args.threads, limit=args.limit, max_new_tokens=args.max_new_tokens,
                           context_length=args.context_length, progress=args.progress)
    except (FerrolmError, OSError) as e:
        print(f"ferrolm: error: {e}", file=sys.stderr)
        return 2
    if out is not None:
        for p in write_outputs(results, out):
            print(f"wrote {p}", file=sys.stderr)
    print(json.dumps([r.as_dict() for r in results], indent=1) if args.format == "json" else markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
