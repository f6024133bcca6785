"""Perplexity change of FP32 checkpoints quantized at load (INT8, INT4) against their FP32 load.

    python benches/quantized_quality.py [--tokens 512] [--json OUT]

For the reference fixtures of tests/fixtures/models (tiny random-weight models with their own
tokenizers: the evaluation text through each model's tokenizer) and the random-weight
`llama-135m` benchmark shape (SmolLM2-135M's shape; the evaluation text through the default
model's tokenizer, whose vocabulary it shares). Random weights predict nothing, so the
perplexities themselves are large; what the table shows is how far each quantization moves
them, with KL and top-1 agreement beside. docs/quality.md quotes the output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ferrolm
from ferrolm.bench import random_checkpoint
from ferrolm.loading import default_model_path
from ferrolm.quality import EVAL_TEXT, compare

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ["tiny-llama", "tiny-gpt2", "tiny-qwen2"]


def rows(tokens: int):
    text = EVAL_TEXT.read_text(encoding="utf-8")
    sources = [(name, ROOT / "tests" / "fixtures" / "models" / name, None) for name in FIXTURES]
    tok = ferrolm.load(default_model_path(), "int4", context_length=64).tokenizer
    sources.append(("llama-135m (random)", random_checkpoint("llama-135m"), tok.encode(text, add_special_tokens=False)))
    for name, path, ids in sources:
        fp32 = ferrolm.load(path, "fp32", threads=2)
        seq = ids if ids is not None else fp32.tokenize(text, add_special_tokens=False)
        seq = seq[:tokens]
        window = min(512, fp32.context_length)
        for precision in ("int8", "int4"):
            r = compare(fp32, ferrolm.load(path, precision, threads=2), seq, prompts=[], window=window, stride=window // 2)
            yield dict(model=name, precision=precision, tokens=r.scored_tokens, fp32_perplexity=r.reference_perplexity,
                       perplexity=r.candidate_perplexity, change_pct=r.perplexity_change_pct, mean_kl=r.mean_kl,
                       top1=r.top1_agreement)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    out = list(rows(args.tokens))
    print("| model | precision | tokens scored | FP32 perplexity | perplexity | vs FP32 | mean KL | top-1 agreement |")
    print("|---|---|---|---|---|---|---|---|")
    for r in out:
        print(f"| {r['model']} | {r['precision']} | {r['tokens']} | {r['fp32_perplexity']:.2f} | {r['perplexity']:.2f} | "
              f"{r['change_pct']:+.2f}% | {r['mean_kl']:.2e} | {r['top1']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
