"""Text-generation metrics, computed by the reference libraries (install them with
`pip install 'ferrolm[eval]'`):

* `rouge(predictions, references)`: ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F-measures from
  Google's `rouge-score` (Porter stemming on), averaged over the pairs — what the `evaluate`
  library's "rouge" metric returns with `use_stemmer=True, use_aggregator=False`, averaged.
* `bleu(predictions, references)`: corpus BLEU (0–100) from `sacrebleu.corpus_bleu` with its
  defaults (13a tokenization, exponential smoothing, case-sensitive).

Each prediction is scored against its reference (a string) or references (a list of strings;
ROUGE takes the best-scoring one, BLEU uses them all, and every prediction must have the same
number of them).

    >>> from ferrolm.metrics import rouge, bleu
    >>> rouge(["the cat sat on the mat"], ["the cat is on the mat"])["rouge1"]
    0.833...
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Union

from .errors import InvalidArgumentError, MissingDependencyError

Reference = Union[str, Sequence[str]]

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _check(predictions: Sequence[str], references: Sequence[Reference]) -> List[List[str]]:
    """The references as a list of lists of strings, after checking both arguments."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise InvalidArgumentError("predictions and references must be lists of strings, not a single string")
    predictions, references = list(predictions), list(references)
    if not predictions:
        raise InvalidArgumentError("no predictions to score")
    if len(predictions) != len(references):
        raise InvalidArgumentError(f"{len(predictions)} predictions but {len(references)} references")
    refs: List[List[str]] = []
    for i, (p, r) in enumerate(zip(predictions, references)):
        if not isinstance(p, str):
            raise InvalidArgumentError(f"prediction {i} is not a string: {p!r}")
        r = [r] if isinstance(r, str) else list(r)
        if not r or not all(isinstance(x, str) for x in r):
            raise InvalidArgumentError(f"reference {i} must be a string or a non-empty list of strings, got {references[i]!r}")
        refs.append(r)
    return refs


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"this metric needs the {package} package: pip install 'ferrolm[eval]' (or pip install {package})"
        ) from None


def rouge(predictions: Sequence[str], references: Sequence[Reference], *, use_stemmer: bool = True) -> Dict[str, float]:
    """Mean ROUGE F-measures (0–1) over the (prediction, reference) pairs:
    {"rouge1", "rouge2", "rougeL", "rougeLsum"}. rougeLsum splits texts into sentences at
    newlines (rouge-score's rule), so it equals rougeL for single-line texts."""
    refs = _check(predictions, references)
    rouge_scorer = _require("rouge_score.rouge_scorer", "rouge-score")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=use_stemmer)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for prediction, targets in zip(predictions, refs):
        scores = scorer.score(targets[0], prediction) if len(targets) == 1 else scorer.score_multi(targets, prediction)
        for key in ROUGE_KEYS:
            totals[key] += scores[key].fmeasure
    return {key: total / len(refs) for key, total in totals.items()}


def bleu(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Corpus BLEU (0–100) of the predictions against their references (sacrebleu's defaults)."""
    refs = _check(predictions, references)
    counts = {len(r) for r in refs}
    if len(counts) != 1:
        raise InvalidArgumentError(f"every prediction needs the same number of references for BLEU, got {sorted(counts)}")
    sacrebleu = _require("sacrebleu", "sacrebleu")
    streams = [list(s) for s in zip(*refs)]  # sacrebleu wants one stream per reference position
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


def available() -> bool:
    """Whether rouge-score and sacrebleu are installed."""
    try:
        _require("rouge_score.rouge_scorer", "rouge-score")
        _require("sacrebleu", "sacrebleu")
    except MissingDependencyError:
        return False
    return True


__all__ = ["rouge", "bleu", "available", "ROUGE_KEYS"]
