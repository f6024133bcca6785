"""Quality measurements.

* Perplexity over a text with a sliding window (each token scored once, with up to `window`
  tokens of context, as in transformers' perplexity guide).
* A candidate model (e.g. BF16 or INT8) against a reference (FP32) of the same checkpoint, over
  the same windows: perplexity of both, top-1 agreement and KL(reference || candidate) of the
  next-token distributions, and agreement of greedy continuations of chat prompts.

    python -m ferrolm.quality [MODEL] --precisions bf16,int8 [--json]
    python -m ferrolm.quality [MODEL] --reference int8 --precisions int8 --kv-cache bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from ._numpy import np

from .errors import FerrolmError, InvalidArgumentError

if TYPE_CHECKING:
    from .model import Model

#: The fixed evaluation text (the Apache License 2.0), shipped with the package.
EVAL_TEXT = Path(__file__).parent / "data" / "apache-2.0.txt"
"""The fixed evaluation text (the Apache License 2.0), relative to the repository root."""

CHAT_PROMPTS: Tuple[str, ...] = (
    "What is the capital of France?",
    "What is 2+2?",
    "Name three colors.",
    "Write a short poem about the sea.",
    "How many days are there in a week?",
    "Give me one tip for staying healthy.",
)
"""User messages whose greedy replies are compared (one single-turn conversation each)."""

Messages = Sequence[Mapping[str, Any]]
Prompt = Union[str, Messages]

_ROWS = 256  # positions converted to float64 log-probabilities at a time


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    mean_nll: float
    """Mean negative log-likelihood per scored token (nats)."""
    scored_tokens: int
    window: int
    stride: int


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-softmax over the last axis."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _window_args(context_length: int, n_ids: int, window: Optional[int], stride: Optional[int]) -> Tuple[int, int]:
    if n_ids < 2:
        raise InvalidArgumentError("perplexity needs at least 2 tokens")
    window = window or min(context_length, 1024)
    stride = stride or max(1, window // 2)
    if not 2 <= window <= context_length:
        raise InvalidArgumentError(f"window must be in [2, {context_length}], got {window}")
    if not 1 <= stride <= window:
        raise InvalidArgumentError(f"stride must be in [1, window={window}], got {stride}")
    return window, stride


def _windows(n_ids: int, window: int, stride: int) -> Iterator[Tuple[int, int, int]]:
    """(begin, end, first) of each window ids[begin:end]: it scores ids[first:end], the ids no
    earlier window scored (id 0 is never predicted)."""
    first, begin = 1, 0
    while first < n_ids:
        end = min(begin + window, n_ids)
        yield begin, end, first
        if end == n_ids:
            break
        first = end
        begin += stride


def scored_log_probs(models: Sequence["Model"], ids: Sequence[int], window: int,
                     stride: int) -> Iterator[Tuple[int, np.ndarray, List[np.ndarray]]]:
    """Walks the sliding windows over `ids` and yields (first, targets, logps): logps[m][i] is
    model m's float64 log-probability row that predicts targets[i] = ids[first + i]. Every id but
    the first is yielded exactly once; each window's logits are computed once per model and the
    rows come in blocks, so memory stays at one window of logits per model."""
    ids = list(ids)
    for begin, end, first in _windows(len(ids), window, stride):
        logits = [m.logits(ids[begin:end]) for m in models]
        for a in range(first, end, _ROWS):
            b = min(a + _ROWS, end)
            rows = slice(a - 1 - begin, b - 1 - begin)  # row r predicts ids[begin + r + 1]
            yield a, np.asarray(ids[a:b]), [log_softmax(x[rows]) for x in logits]


def token_nll(model: "Model", ids: Sequence[int], window: Optional[int] = None, stride: Optional[int] = None):
    """Negative log-likelihood of ids[1:], each scored once. Returns (nll [len(ids) - 1], window, stride)."""
    ids = list(ids)
    window, stride = _window_args(model.context_length, len(ids), window, stride)
    nll = np.full(len(ids) - 1, np.nan)
    for first, targets, (logp,) in scored_log_probs((model,), ids, window, stride):
        nll[first - 1 : first - 1 + len(targets)] = -logp[np.arange(len(targets)), targets]
    return nll, window, stride


def perplexity(model: "Model", text: Union[str, Sequence[int]], window: Optional[int] = None,
               stride: Optional[int] = None) -> Perplexity:
    """Perplexity of `model` on `text` (a string, tokenized without special tokens, or token ids)."""
    ids = model.tokenize(text, add_special_tokens=False) if isinstance(text, str) else list(text)
    nll, window, stride = token_nll(model, ids, window, stride)
    mean = float(nll.mean())
    return Perplexity(math.exp(mean), mean, len(nll), window, stride)


# -- a candidate against a reference --------------------------------------------------------------

def default_text_path() -> Path:
    """The fixed evaluation text, shipped inside the package."""
    return EVAL_TEXT


@dataclass(frozen=True)
class GreedyComparison:
    """Greedy continuations of one prompt by the reference and the candidate."""

    prompt: str
    reference_tokens: Tuple[int, ...]
    candidate_tokens: Tuple[int, ...]
    reference_text: str
    candidate_text: str

    @property
    def common_prefix(self) -> int:
        """Tokens before the first divergence."""
        n = 0
        for a, b in zip(self.reference_tokens, self.candidate_tokens):
            if a != b:
                break
            n += 1
        return n

    @property
    def identical(self) -> bool:
        return self.reference_tokens == self.candidate_tokens

    @property
    def match_fraction(self) -> float:
        """common_prefix / the longer continuation's length: 1.0 exactly when identical."""
        longest = max(len(self.reference_tokens), len(self.candidate_tokens))
        return 1.0 if longest == 0 else self.common_prefix / longest


@dataclass(frozen=True)
class QualityReport:
    """A candidate model against a reference model of the same checkpoint (see `compare`)."""

    model: str
    reference_precision: str
    candidate_precision: str
    scored_tokens: int
    window: int
    stride: int
    reference_perplexity: float
    candidate_perplexity: float
    top1_agreement: float
    """Fraction of scored positions where both models' most likely next token is the same."""
    mean_kl: float
    """Mean KL(reference || candidate) of the next-token distributions, nats."""
    p99_kl: float
    max_kl: float
    new_tokens: int
    greedy: Tuple[GreedyComparison, ...]
    reference_kv_cache: str = "fp32"
    candidate_kv_cache: str = "fp32"

    @staticmethod
    def label(precision: str, kv_cache: str) -> str:
        """"int8", or "int8 + BF16 KV cache" for a cache other than FP32."""
        return precision if kv_cache == "fp32" else f"{precision} + {kv_cache.upper()} KV cache"

    @property
    def reference_label(self) -> str:
        return self.label(self.reference_precision, self.reference_kv_cache)

    @property
    def candidate_label(self) -> str:
        return self.label(self.candidate_precision, self.candidate_kv_cache)

    @property
    def perplexity_change_pct(self) -> float:
        """(candidate - reference) / reference perplexity, in percent."""
        return 100.0 * (self.candidate_perplexity / self.reference_perplexity - 1.0)

    @property
    def greedy_identical(self) -> float:
        """Fraction of prompts whose greedy continuations are identical (nan without prompts)."""
        return float(np.mean([g.identical for g in self.greedy])) if self.greedy else math.nan

    @property
    def greedy_match(self) -> float:
        """Mean GreedyComparison.match_fraction over the prompts (nan without prompts)."""
        return float(np.mean([g.match_fraction for g in self.greedy])) if self.greedy else math.nan

    def as_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["greedy"] = [
            dict(dataclasses.asdict(g), reference_tokens=list(g.reference_tokens),
                 candidate_tokens=list(g.candidate_tokens), common_prefix=g.common_prefix, identical=g.identical)
            for g in self.greedy
        ]
        d.update(perplexity_change_pct=self.perplexity_change_pct, greedy_identical=self.greedy_identical,
                 greedy_match=self.greedy_match)
        return d

    def format(self) -> str:
        """Human-readable lines."""
        lines = [
            f"{self.candidate_label} against {self.reference_label}: {self.model}",
            f"  perplexity         {self.reference_perplexity:.4f} -> {self.candidate_perplexity:.4f} "
            f"({self.perplexity_change_pct:+.3f}%), {self.scored_tokens} tokens, window {self.window}, "
            f"stride {self.stride}",
            f"  top-1 agreement    {self.top1_agreement:.4f}",
            f"  KL(ref || cand)    mean {self.mean_kl:.3e}, p99 {self.p99_kl:.3e}, max {self.max_kl:.3e} nats",
        ]
        if self.greedy:
            n = len(self.greedy)
            lines.append(f"  greedy, {self.new_tokens} tokens  {sum(g.identical for g in self.greedy)}/{n} identical, "
                         f"mean match {self.greedy_match:.3f}")
            for g in self.greedy:
                mark = "same" if g.identical else (f"diverges at token {g.common_prefix} "
                                                   f"(of {len(g.reference_tokens)}/{len(g.candidate_tokens)})")
                lines.append(f"    {g.prompt[:40]!r}: {mark}")
        return "\n".join(lines)

    MARKDOWN_HEADER = ("| precision | perplexity | vs reference | top-1 agreement | mean KL (nats) | p99 KL | max KL "
                       "| greedy identical | greedy match |\n|---|---|---|---|---|---|---|---|---|")

    def markdown_row(self) -> str:
        return (f"| {self.candidate_label} | {self.candidate_perplexity:.4f} | {self.perplexity_change_pct:+.3f}% "
                f"| {self.top1_agreement:.4f} | {self.mean_kl:.2e} | {self.p99_kl:.2e} | {self.max_kl:.2e} "
                f"| {sum(g.identical for g in self.greedy)}/{len(self.greedy)} | {self.greedy_match:.3f} |")


@dataclass(frozen=True)
class PositionScores:
    """Per scored position of a text: both models' NLL of the next token, KL(reference ||
    candidate) of the next-token distributions and whether their top tokens agree."""

    nll_reference: np.ndarray
    nll_candidate: np.ndarray
    kl: np.ndarray
    top1: np.ndarray
    """bool per position."""

    @staticmethod
    def concat(parts: Sequence["PositionScores"]) -> "PositionScores":
        return PositionScores(*(np.concatenate([getattr(p, f.name) for p in parts])
                                for f in dataclasses.fields(PositionScores)))

    @property
    def reference_perplexity(self) -> float:
        return math.exp(float(self.nll_reference.mean()))

    @property
    def candidate_perplexity(self) -> float:
        return math.exp(float(self.nll_candidate.mean()))

    @property
    def top1_agreement(self) -> float:
        return float(self.top1.mean())

    @staticmethod
    def from_log_probs(targets: np.ndarray, lp_ref: np.ndarray, lp_cand: np.ndarray) -> "PositionScores":
        """From float64 log-probability rows [n, vocab] of both models and the n target ids."""
        at = np.arange(len(targets))
        return PositionScores(-lp_ref[at, targets], -lp_cand[at, targets],
                              (np.exp(lp_ref) * (lp_ref - lp_cand)).sum(axis=-1),
                              lp_ref.argmax(axis=-1) == lp_cand.argmax(axis=-1))


def position_scores(reference: "Model", candidates: Sequence["Model"], ids: Sequence[int], window: int,
                    stride: int) -> List[PositionScores]:
    """PositionScores of each candidate against `reference` over the sliding windows of `ids`
    (the reference's logits are computed once for all candidates)."""
    parts: List[List[PositionScores]] = [[] for _ in candidates]
    for _, targets, (lp_ref, *lp_cands) in scored_log_probs((reference, *candidates), ids, window, stride):
        for acc, lp_cand in zip(parts, lp_cands):
            acc.append(PositionScores.from_log_probs(targets, lp_ref, lp_cand))
    return [PositionScores.concat(p) for p in parts]


def _messages(prompt: Prompt) -> List[Dict[str, Any]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, Mapping) for m in prompt):
        return [dict(m) for m in prompt]
    raise InvalidArgumentError(f"a prompt must be a user message (str) or a list of messages, got {prompt!r}")


def _prompt_ids(model: "Model", messages: List[Dict[str, Any]]) -> Tuple[List[int], Tuple[int, ...]]:
    """The prompt through the chat template when the model has one (stopping at the end of the
    turn), else the messages' contents as plain text (stopping at EOS)."""
    if model.chat_template is not None:
        ids = model.tokenize(model.apply_chat_template(messages), add_special_tokens=False)
        return ids, model.end_of_turn_ids()
    return model.tokenize("\n".join(str(m.get("content", "")) for m in messages)), tuple(model.eos_token_ids)


def _greedy(model: "Model", ids: List[int], eos: Tuple[int, ...], new_tokens: int) -> List[int]:
    from .config import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos or None)
    return list(model.generate(ids, cfg).tokens)


def compare(reference: "Model", candidate: "Model", text: Union[None, str, Sequence[int]] = None,
            prompts: Optional[Sequence[Prompt]] = None, window: Optional[int] = None, stride: Optional[int] = None,
            new_tokens: int = 32) -> QualityReport:
    """`candidate` against `reference` (two loads of one checkpoint, e.g. INT8 and FP32).

    Over the sliding windows of `perplexity` on `text` (default: the fixed evaluation text; a
    string is tokenized without special tokens, or pass token ids): each model's perplexity, the
    fraction of positions where their argmax tokens agree, and KL(reference || candidate) of the
    next-token distributions (float64, mean / 99th percentile / max over positions, nats).
    Then, for each of `prompts` (default CHAT_PROMPTS; a user message or a list of messages,
    rendered with the chat template when there is one), both models' greedy continuations of up
    to `new_tokens` tokens (stopping at the end of the turn) are compared token by token.
    """
    if reference.vocab_size != candidate.vocab_size:
        raise InvalidArgumentError(
            f"the models' vocabularies differ: {reference.vocab_size} and {candidate.vocab_size}")
    if not isinstance(new_tokens, int) or isinstance(new_tokens, bool) or new_tokens < 1:
        raise InvalidArgumentError(f"new_tokens must be an integer >= 1, got {new_tokens!r}")
    conversations = []  # (messages, prompt ids, end ids), rendered before any slow work
    for prompt in CHAT_PROMPTS if prompts is None else prompts:
        messages = _messages(prompt)
        ids_ref, eos_ref = _prompt_ids(reference, messages)
        if _prompt_ids(candidate, messages) != (ids_ref, eos_ref):
            raise InvalidArgumentError("the models' tokenizers or chat templates differ: they render the prompts "
                                       "to different ids")
        conversations.append((messages, ids_ref, eos_ref))
    if text is None:
        text = default_text_path().read_text(encoding="utf-8")
    if isinstance(text, str):
        ids = reference.tokenize(text, add_special_tokens=False)
        if candidate.tokenize(text, add_special_tokens=False) != ids:
            raise InvalidArgumentError("the models' tokenizers differ: they encode the text to different ids")
    else:
        ids = list(text)
    ctx = min(reference.context_length, candidate.context_length)
    window, stride = _window_args(ctx, len(ids), window, stride)

    (scores,) = position_scores(reference, [candidate], ids, window, stride)

    greedy = []
    for messages, prompt_ids, eos in conversations:
        out_ref = _greedy(reference, prompt_ids, eos, new_tokens)
        out_cand = _greedy(candidate, prompt_ids, eos, new_tokens)
        greedy.append(GreedyComparison(
            prompt=messages[-1].get("content", "") if len(messages) == 1 else json.dumps(messages),
            reference_tokens=tuple(out_ref), candidate_tokens=tuple(out_cand),
            reference_text=reference.detokenize(out_ref) if reference.tokenizer is not None else "",
            candidate_text=candidate.detokenize(out_cand) if candidate.tokenizer is not None else "",
        ))

    return QualityReport(
        model=str(reference.path),
        reference_precision=reference.precision,
        candidate_precision=candidate.precision,
        scored_tokens=len(scores.kl),
        window=window,
        stride=stride,
        reference_perplexity=scores.reference_perplexity,
        candidate_perplexity=scores.candidate_perplexity,
        top1_agreement=scores.top1_agreement,
        mean_kl=float(scores.kl.mean()),
        p99_kl=float(np.quantile(scores.kl, 0.99)),
        max_kl=float(scores.kl.max()),
        new_tokens=new_tokens,
        greedy=tuple(greedy),
        reference_kv_cache=reference.kv_cache,
        candidate_kv_cache=candidate.kv_cache,
    )


def _check_precisions(precisions: Union[str, Sequence[str]]) -> List[str]:
    from .loading import PRECISIONS

    if isinstance(precisions, str):
        precisions = [p.strip() for p in precisions.split(",") if p.strip()]
    if not precisions:
        raise InvalidArgumentError("no precision to compare")
    for precision in precisions:
        if precision not in PRECISIONS:
            raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return list(precisions)


def quality_report(path=None, precisions: Sequence[str] = ("bf16", "int8", "int4"), *, threads: Optional[int] = None,
                   text: Union[None, str, Sequence[int]] = None, prompts: Optional[Sequence[Prompt]] = None,
                   window: Optional[int] = None, stride: Optional[int] = None, new_tokens: int = 32,
                   context_length: Optional[int] = None, progress: bool = False,
                   text_tokens: Optional[int] = None, kv_cache: str = "fp32",
                   reference: str = "fp32") -> List[QualityReport]:
    """Each of `precisions` against FP32 for the checkpoint at `path` (default: the default model).
    The reference is loaded once; the candidates one at a time, each released before the next loads.
    context_length: KV-cache positions of each load (default: the model's maximum).
    text_tokens: score only the first this many tokens of the text.
    kv_cache: the candidates' KV cache ("fp32", the default: the weights' loss alone; "bf16"; or
    "auto": as ferrolm.load's default, BF16 for BF16, INT8 and INT4 weights); the reference's is
    always FP32.
    reference: the reference's precision (default "fp32"; e.g. "int8" with kv_cache="bf16"
    measures what the BF16 cache alone costs INT8 weights)."""
    from .loading import check_kv_cache, default_model_path
    from .model import load

    precisions = _check_precisions(precisions)
    _check_precisions([reference])
    check_kv_cache(kv_cache)
    path = default_model_path() if path is None else path
    if text is None:
        text = default_text_path().read_text(encoding="utf-8")
    if text_tokens is not None and (not isinstance(text_tokens, int) or isinstance(text_tokens, bool) or text_tokens < 2):
        raise InvalidArgumentError(f"text_tokens must be an integer >= 2, got {text_tokens!r}")
    ref_model = load(path, reference, threads=threads, context_length=context_length, kv_cache="fp32", progress=progress)
    if text_tokens is not None:
        text = (ref_model.tokenize(text, add_special_tokens=False) if isinstance(text, str) else list(text))[:text_tokens]
    reports = []
    for precision in precisions:
        candidate = load(path, precision, threads=threads, context_length=context_length, kv_cache=kv_cache,
                         progress=progress)
        reports.append(compare(ref_model, candidate, text, prompts, window, stride, new_tokens))
        del candidate
    return reports


# -- the quality set: several kinds of text, per text and pooled ----------------------------------

QUALITY_TEXT_KINDS: Tuple[str, ...] = ("prose", "dialogue", "facts", "instructions", "code", "legal")
"""The kinds of text of the quality set, in report order."""


def quality_text_paths() -> Dict[str, Path]:
    """The quality set's texts shipped with the package: kind -> file (legal: the Apache License 2.0)."""
    folder = Path(__file__).parent / "data" / "quality"
    return {kind: EVAL_TEXT if kind == "legal" else folder / f"{kind}.txt" for kind in QUALITY_TEXT_KINDS}


@dataclass(frozen=True)
class TextQuality:
    """A candidate against the reference on one text (or pooled over all of them)."""

    text: str
    tokens: int
    reference_perplexity: float
    candidate_perplexity: float
    mean_kl: float
    p99_kl: float
    max_kl: float
    top1_agreement: float

    @property
    def perplexity_change_pct(self) -> float:
        return 100.0 * (self.candidate_perplexity / self.reference_perplexity - 1.0)

    @staticmethod
    def of(text: str, scores: PositionScores) -> "TextQuality":
        return TextQuality(text, len(scores.kl), scores.reference_perplexity, scores.candidate_perplexity,
                           float(scores.kl.mean()), float(np.quantile(scores.kl, 0.99)), float(scores.kl.max()),
                           scores.top1_agreement)

    def as_dict(self) -> Dict[str, Any]:
        return dict(dataclasses.asdict(self), perplexity_change_pct=self.perplexity_change_pct)

    def markdown_row(self, label: str) -> str:
        return (f"| {label} | {self.text} | {self.tokens} | {self.reference_perplexity:.3f} | "
                f"{self.candidate_perplexity:.3f} | {self.perplexity_change_pct:+.3f}% | {self.mean_kl:.2e} | "
                f"{self.p99_kl:.2e} | {self.max_kl:.2e} | {self.top1_agreement:.4f} |")


TEXT_QUALITY_HEADER = ("| precision | text | tokens | reference perplexity | perplexity | vs reference | mean KL | p99 KL "
                       "| max KL | top-1 agreement |\n|---|---|---|---|---|---|---|---|---|---|")


@dataclass(frozen=True)
class QualitySetReport:
    """One candidate against the reference on every text of a set: per text and pooled (every
    scored position of every text together: perplexity from the mean NLL, KL statistics and
    top-1 agreement over all positions)."""

    candidate: str
    reference: str
    window: int
    stride: int
    texts: Tuple[TextQuality, ...]
    pooled: TextQuality

    def as_dict(self) -> Dict[str, Any]:
        return dict(candidate=self.candidate, reference=self.reference, window=self.window, stride=self.stride,
                    texts=[t.as_dict() for t in self.texts], pooled=self.pooled.as_dict())

    def markdown_rows(self) -> str:
        return "\n".join(t.markdown_row(self.candidate) for t in (*self.texts, self.pooled))


def compare_on_texts(reference: "Model", candidates: Mapping[str, "Model"], texts: Mapping[str, Union[str, Sequence[int]]],
                     window: Optional[int] = None, stride: Optional[int] = None) -> List[QualitySetReport]:
    """Each candidate (label -> model of the same checkpoint) against `reference` on each text
    (name -> string, tokenized without special tokens, or token ids), over the sliding windows
    of `perplexity`; the reference's logits are computed once per window for all candidates."""
    if not candidates:
        raise InvalidArgumentError("no candidate model to compare")
    if not texts:
        raise InvalidArgumentError("no text to compare on")
    for label, model in candidates.items():
        if model.vocab_size != reference.vocab_size:
            raise InvalidArgumentError(f"the vocabularies of the reference and {label!r} differ: "
                                       f"{reference.vocab_size} and {model.vocab_size}")
    ctx = min(m.context_length for m in (reference, *candidates.values()))
    per_text: Dict[str, List[PositionScores]] = {}
    spans = None
    for name, text in texts.items():
        if isinstance(text, str):
            ids = reference.tokenize(text, add_special_tokens=False)
            for label, model in candidates.items():
                if model.tokenize(text, add_special_tokens=False) != ids:
                    raise InvalidArgumentError(f"the tokenizers of the reference and {label!r} encode {name!r} differently")
        else:
            ids = list(text)
        w, s = _window_args(ctx, len(ids), window, stride)
        spans = spans or (w, s)
        per_text[name] = position_scores(reference, list(candidates.values()), ids, w, s)
    reports = []
    for i, label in enumerate(candidates):
        scores = {name: per_text[name][i] for name in texts}
        reports.append(QualitySetReport(
            candidate=label, reference=reference.precision, window=spans[0], stride=spans[1],
            texts=tuple(TextQuality.of(name, sc) for name, sc in scores.items()),
            pooled=TextQuality.of("pooled", PositionScores.concat(list(scores.values())))))
    return reports


def quality_set(path=None, precisions: Sequence[str] = ("bf16", "int8", "int4"), *, threads: Optional[int] = None,
                texts: Optional[Mapping[str, Union[str, Sequence[int]]]] = None, window: int = 1024,
                stride: Optional[int] = None, context_length: Optional[int] = None,
                progress: bool = False, kv_cache: str = "fp32", reference: str = "fp32") -> List[QualitySetReport]:
    """Each of `precisions` against `reference` (FP32) for the checkpoint at `path` (default: the
    default model) on the quality set (`quality_text_paths()`: prose, dialogue, facts,
    instructions, code and the Apache License text) or on `texts` (name -> text), per text and
    pooled. kv_cache: the candidates' KV cache ("fp32", the default; "bf16"; or "auto" as
    ferrolm.load's default); the reference's is FP32."""
    from .loading import check_kv_cache, default_model_path
    from .model import load

    precisions = _check_precisions(precisions)
    _check_precisions([reference])
    check_kv_cache(kv_cache)
    path = default_model_path() if path is None else path
    if texts is None:
        texts = {kind: p.read_text(encoding="utf-8") for kind, p in quality_text_paths().items()}
    ref_model = load(path, reference, threads=threads, context_length=context_length, kv_cache="fp32", progress=progress)
    loaded = [load(path, p, threads=threads, context_length=context_length, kv_cache=kv_cache, progress=progress)
              for p in precisions]
    candidates = {QualityReport.label(m.precision, m.kv_cache): m for m in loaded}
    return compare_on_texts(ref_model, candidates, texts, window, stride)


def greedy_text_scores(report: QualityReport) -> Dict[str, float]:
    """ROUGE-1/2/L/Lsum (0–1) and corpus BLEU (0–100) of the candidate's greedy replies against
    the reference's (ferrolm.metrics; needs `pip install 'ferrolm[eval]'`)."""
    from .metrics import bleu, rouge

    if not report.greedy:
        raise InvalidArgumentError("the report has no greedy replies to score")
    predictions = [g.candidate_text for g in report.greedy]
    references = [g.reference_text for g in report.greedy]
    return dict(rouge(predictions, references), bleu=bleu(predictions, references))


def build_parser() -> argparse.ArgumentParser:
    from .loading import KV_CACHE_CHOICES

    p = argparse.ArgumentParser(
        prog="ferrolm quality",
        description="Lower precisions (of the weights, and of the KV cache with --kv-cache) against FP32: perplexity "
        "on a fixed text, top-1 agreement and KL divergence of the next-token distributions over it, and agreement "
        "of greedy replies to chat prompts.")
    p.add_argument("model", nargs="?", help="model path (default: the default model)")
    p.add_argument("--precisions", default="bf16,int8,int4", help="comma-separated candidates (default: bf16,int8,int4)")
    p.add_argument("--kv-cache", default="fp32", choices=list(KV_CACHE_CHOICES),
                   help="the candidates' KV cache (default: fp32, the weights' loss alone; auto: as ferrolm.load's "
                        "default, bf16 for bf16/int8/int4 weights; the reference's is always fp32)")
    p.add_argument("--reference", default="fp32", help="the reference's precision (default: fp32)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--text", default=None, metavar="FILE", help="evaluation text (default: the Apache License 2.0 text shipped with ferrolm); with --set, comma-separated files")
    p.add_argument("--window", type=int, default=None, help="tokens of context per window (default: 1024)")
    p.add_argument("--stride", type=int, default=None, help="window step (default: window / 2)")
    p.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per chat prompt (default: 32)")
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.add_argument("--set", action="store_true",
                   help="the quality set instead of one text: prose, dialogue, facts, instructions, code and the "
                   "Apache License text shipped with ferrolm (or --text FILE...), per text and pooled; no chat replies")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        reports = _set_reports(args) if args.set else _text_reports(args)
    except (FerrolmError, OSError) as e:
        print(f"ferrolm: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
    elif args.set:
        print(f"against {reports[0].reference}, window {reports[0].window}, stride {reports[0].stride}\n")
        print(TEXT_QUALITY_HEADER)
        print("\n".join(r.markdown_rows() for r in reports))
    else:
        r0 = reports[0]
        print(f"{r0.reference_label} reference perplexity {r0.reference_perplexity:.4f}\n")
        print("\n\n".join(r.format() for r in reports))
        print()
        print(QualityReport.MARKDOWN_HEADER)
        print("\n".join(r.markdown_row() for r in reports))
    return 0


def _text_reports(args: argparse.Namespace) -> List[QualityReport]:
    text = Path(args.text).read_text(encoding="utf-8") if args.text else None
    return quality_report(args.model, args.precisions, threads=args.threads, text=text, window=args.window,
                          stride=args.stride, new_tokens=args.new_tokens, context_length=args.context_length,
                          kv_cache=args.kv_cache, reference=args.reference)


def _set_reports(args: argparse.Namespace) -> List[QualitySetReport]:
    texts = None
    if args.text:
        texts = {Path(f).stem: Path(f).read_text(encoding="utf-8") for f in args.text.split(",")}
    return quality_set(args.model, args.precisions, threads=args.threads, texts=texts, window=args.window or 1024,
                       stride=args.stride, context_length=args.context_length, kv_cache=args.kv_cache,
                       reference=args.reference)


if __name__ == "__main__":
    sys.exit(main())
