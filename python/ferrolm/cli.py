"""The `ferrolm` command line."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .errors import FerrolmError


def _parse_bias(items: List[str]) -> dict:
    bias = {}
    for item in items:
        tok, sep, val = item.partition("=")
        try:
            if not sep:
                raise ValueError
            bias[int(tok)] = float(val)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--logit-bias expects TOKEN_ID=BIAS, got {item!r}") from None
    return bias


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--min-new-tokens", type=int, default=0)
    g.add_argument("--temperature", type=float, default=None, help="0 or unset: greedy")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--logit-bias", action="append", default=[], metavar="ID=BIAS")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--ignore-eos", action="store_true")


def _cmd_generate(args: argparse.Namespace) -> int:
    from . import load

    model = load(args.model, precision=args.precision, threads=args.threads)
    prompt = [int(t) for t in args.prompt.split(",")] if args.ids else args.prompt
    stream = model.generate(
        prompt,
        stream=True,
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty,
        logit_bias=_parse_bias(args.logit_bias),
        stop=args.stop,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
    )
    if not args.quiet_prompt and isinstance(prompt, str):
        sys.stdout.write(prompt)
    for delta in stream:
        sys.stdout.write(delta)
        sys.stdout.flush()
    res = stream.result
    if model.tokenizer is None or args.ids:
        sys.stdout.write(("" if model.tokenizer is None else "\n") + " ".join(map(str, res.tokens)))
    sys.stdout.write("\n")
    if args.verbose:
        t = res.timings
        print(
            f"[{t.prompt_tokens} prompt tokens, {t.new_tokens} new, finish={res.finish_reason}; "
            f"prefill {t.prefill_tokens_per_s:.1f} tok/s, decode {t.decode_tokens_per_s:.1f} tok/s]",
            file=sys.stderr,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferrolm", description="Compact LLM inference.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate text from a prompt, streaming it")
    gen.add_argument("model", help="Hugging Face model folder")
    gen.add_argument("prompt", help="prompt text (or comma-separated token ids with --ids)")
    gen.add_argument("--ids", action="store_true", help="the prompt is comma-separated token ids")
    gen.add_argument("--precision", default="fp32", choices=["fp32"])
    gen.add_argument("--threads", type=int, default=None)
    gen.add_argument("--quiet-prompt", action="store_true", help="do not echo the prompt")
    gen.add_argument("-v", "--verbose", action="store_true", help="print timings to stderr")
    _add_generation_args(gen)
    gen.set_defaults(func=_cmd_generate)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    except FerrolmError as e:
        print(f"ferrolm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
