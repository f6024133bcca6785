"""Quality measurements: perplexity over a text with a sliding window (each token scored once,
with up to `window` tokens of context, as in transformers' perplexity guide)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from .model import Model


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


def token_nll(model: "Model", ids: Sequence[int], window: Optional[int] = None, stride: Optional[int] = None):
    """Negative log-likelihood of ids[1:], each scored once. Returns (nll [len(ids) - 1], window, stride)."""
    ids = list(ids)
    if len(ids) < 2:
        raise InvalidArgumentError("perplexity needs at least 2 tokens")
    window = window or min(model.context_length, 1024)
    stride = stride or max(1, window // 2)
    if not 2 <= window <= model.context_length:
        raise InvalidArgumentError(f"window must be in [2, {model.context_length}], got {window}")
    if not 1 <= stride <= window:
        raise InvalidArgumentError(f"stride must be in [1, window={window}], got {stride}")
    nll = np.full(len(ids) - 1, np.nan)
    scored_to = 1  # ids[:scored_to] need no (more) scoring: position 0 is never predicted
    begin = 0
    while scored_to < len(ids):
        end = min(begin + window, len(ids))
        logp = log_softmax(model.logits(ids[begin:end]))  # [end - begin, vocab]
        for pos in range(scored_to, end):  # predict ids[pos] from row pos - 1 - begin
            nll[pos - 1] = -logp[pos - 1 - begin, ids[pos]]
        scored_to = end
        begin += stride
        if end == len(ids):
            break
    return nll, window, stride


def perplexity(model: "Model", text: Union[str, Sequence[int]], window: Optional[int] = None,
               stride: Optional[int] = None) -> Perplexity:
    """Perplexity of `model` on `text` (a string, tokenized without special tokens, or token ids)."""
    ids = model.tokenize(text, add_special_tokens=False) if isinstance(text, str) else list(text)
    nll, window, stride = token_nll(model, ids, window, stride)
    mean = float(nll.mean())
    return Perplexity(math.exp(mean), mean, len(nll), window, stride)
