"""llama.cpp's Q8_0 and BF16 against its own FP32, beside ferrolm's INT8 and BF16 against ferrolm's
FP32, on the quality set (ferrolm.quality: prose, dialogue, facts, instructions, code and the
Apache License text) and the same sliding windows: per text and pooled perplexity change, mean /
p99 / max KL and top-1 agreement.

    pip install llama-cpp-python          # optional; builds llama.cpp from source
    python benches/llamacpp_quality.py [GGUF] [--threads 2] [--window 1024] [--json OUT] [--token-by-token]

GGUF defaults to the default model (SmolLM2-135M-Instruct.Q4_1.gguf). Its tensors are dequantized
into an F32 GGUF file (a temporary folder), which llama.cpp's own quantizer turns into Q8_0 and
BF16 files, exactly as a llama.cpp user makes a Q8_0 file from a full-precision one. Both engines
score the same token ids (ferrolm's tokenizer; the two tokenizers agree on this model). On some
CPUs llama.cpp's batched prompt processing with Q8_0 crashes: --token-by-token feeds one token at
a time there (slower, same numbers up to float rounding).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import ferrolm
from ferrolm.loading import default_model_path
from ferrolm.quality import TEXT_QUALITY_HEADER, compare_on_texts, quality_text_paths

SKIP_FIELDS = ("GGUF.", "general.file_type")


def write_f32_gguf(src: Path, dst: Path) -> None:
    """Every tensor of `src` dequantized to F32, with the same metadata."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    for name, field in reader.fields.items():
        if name.startswith(SKIP_FIELDS) or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(d) for d in reversed(t.shape)]
        writer.add_tensor(t.name, data.reshape(shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize(src: Path, dst: Path, ftype: int, threads: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to {dst}")


class LlamaCppModel:
    """The part of ferrolm.Model that ferrolm.quality's comparisons use, on llama.cpp."""

    def __init__(self, path: Path, precision: str, threads: int, window: int, token_by_token: bool):
        from llama_cpp import Llama

        self.precision = precision
        self.context_length = window
        self.token_by_token = token_by_token
        self.llm = Llama(model_path=str(path), n_ctx=window, n_batch=1 if token_by_token else window,
                         n_threads=threads, n_threads_batch=threads, logits_all=True, verbose=False)
        self.vocab_size = self.llm.n_vocab()

    def logits(self, ids):
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf", nargs="?", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--json", default=None)
    ap.add_argument("--token-by-token", action="store_true")
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed: pip install llama-cpp-python", file=sys.stderr)
        return 2
    path = Path(args.gguf) if args.gguf else default_model_path()
    fp32 = ferrolm.load(path, "fp32", threads=args.threads)
    texts = {k: fp32.tokenize(p.read_text(encoding="utf-8"), add_special_tokens=False)
             for k, p in quality_text_paths().items()}
    ours = compare_on_texts(fp32, {p: ferrolm.load(path, p, threads=args.threads) for p in ("bf16", "int8")},
                            texts, window=args.window)
    del fp32
    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "model-f32.gguf"
        write_f32_gguf(path, f32)
        files = {"llama.cpp q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "llama.cpp bf16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16}
        for label, ftype in files.items():
            quantize(f32, Path(tmp) / f"{label.split()[-1]}.gguf", ftype, args.threads)
        mk = lambda f, p: LlamaCppModel(f, p, args.threads, args.window, args.token_by_token)  # noqa: E731
        ref = mk(f32, "llama.cpp fp32")
        theirs = compare_on_texts(ref, {label: mk(Path(tmp) / f"{label.split()[-1]}.gguf", label) for label in files},
                                  texts, window=args.window)
    reports = ours + theirs
    print(f"{path.name}, window {args.window}, stride {args.window // 2}; each engine against its own FP32\n")
    print(TEXT_QUALITY_HEADER)
    for r in reports:
        label = r.candidate if r.candidate.startswith("llama.cpp") else f"ferrolm {r.candidate}"
        print("\n".join(t.markdown_row(label) for t in (*r.texts, r.pooled)))
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in reports], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
