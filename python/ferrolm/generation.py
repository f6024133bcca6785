"""The generation loop: prefill -> [sample -> decode step]* with incremental detokenization,
stop strings, token limits, log-probabilities, cancellation and timings. Logits never leave the
Rust core. One sequence's state is a `_Sequence`; `run` drives one (a stream), `run_batch`
drives several through batched decode steps."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator, List, Optional, Protocol, Sequence

from . import _core
from .config import GenerationConfig
from .tokenizer import IncrementalDecoder

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

#: Prompt tokens fed per call while prefilling: the core's chunk, so a cancellation is seen
#: between chunks (the core runs each chunk as part of the whole prompt: same numbers).
PREFILL_CHUNK = 256


class CancelToken(Protocol):
    """What `cancel=` accepts: a threading.Event, or anything with is_set()."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class Timings:
    """Per PERF method: prefill tok/s = prompt tokens computed / time to first token;
    decode tok/s = (new tokens - 1) / (time of last token - time of first token).
    `cached_prompt_tokens` leading prompt tokens came from a kept session's KV cache (prefix
    reuse) and were not computed again."""

    prompt_tokens: int
    new_tokens: int
    time_to_first_token: float
    decode_seconds: float
    total_seconds: float
    cached_prompt_tokens: int = 0

    @property
    def prefilled_tokens(self) -> int:
        """Prompt tokens actually computed (the prompt minus the cached prefix)."""
        return self.prompt_tokens - self.cached_prompt_tokens

    @property
    def prefill_tokens_per_s(self) -> float:
        if self.time_to_first_token <= 0 or self.new_tokens == 0:
            return float("nan")
        return self.prefilled_tokens / self.time_to_first_token

    @property
    def decode_tokens_per_s(self) -> float:
        if self.new_tokens < 2 or self.decode_seconds <= 0:
            return float("nan")
        return (self.new_tokens - 1) / self.decode_seconds


@dataclass(frozen=True)
class TopLogprob:
    """One likely token at a position: its id, its text (None without a tokenizer) and its
    log-probability."""

    token: int
    text: Optional[str]
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token with its log-probability and the `top_logprobs` likeliest tokens at
    its position (most likely first), all under the model's distribution before the sampling
    processors (penalties, logit bias, temperature, top-k/p, min-p). A token's text is the
    token decoded alone; a token holding part of a multi-byte character shows U+FFFD."""

    token: int
    text: Optional[str]
    logprob: float
    top: List[TopLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class GenerationResult:
    text: str
    """The generated text (without the prompt; cut before a stop string)."""
    tokens: List[int]
    """Generated token ids, including an EOS or the token that completed a stop string."""
    finish_reason: str
    """"eos", "stop" (a stop string), "length" (max_new_tokens or the context is full) or
    "cancelled" (a cancel event, stream.close() or a cancelled asyncio task)."""
    prompt_tokens: List[int]
    timings: Timings
    logprobs: Optional[List[TokenLogprob]] = None
    """Per generated token, when asked for (logprobs=True or top_logprobs=k); else None."""


@dataclass(frozen=True)
class TokenScores:
    """`Model.score`: the log-probability of each token given the ones before it."""

    tokens: List[int]
    """The scored ids (the text's tokens, with the tokenizer's special tokens)."""
    logprobs: List[float]
    """logprobs[i] = log p(tokens[i + 1] | tokens[: i + 1]); the first token has none."""

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))

    @property
    def mean(self) -> float:
        return self.total / len(self.logprobs)

    @property
    def perplexity(self) -> float:
        import math

        return math.exp(-self.mean)


class _StopMatcher:
    """Finds stop strings in the growing text, across token boundaries, and holds back any tail
    that could still become a stop string so that streamed text never contains one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.longest = max((len(s) for s in self.stops), default=0)

    def find(self, text: str, new_from: int) -> Optional[int]:
        """Earliest start of a stop string that ends at or after `new_from`."""
        start = max(0, new_from - self.longest + 1)
        hits = [i for s in self.stops if (i := text.find(s, start)) >= 0]
        return min(hits) if hits else None

    def safe_end(self, text: str) -> int:
        """Length of the prefix of `text` that can be emitted: no suffix of it starts a stop."""
        for k in range(min(self.longest - 1, len(text)), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return len(text) - k
        return len(text)


def sampling_params(config: GenerationConfig) -> "_core.SamplingParams":
    return _core.SamplingParams(
        do_sample=config.sampling,
        temperature=config.effective_temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        min_p=config.min_p,
        repetition_penalty=config.repetition_penalty,
        frequency_penalty=config.frequency_penalty,
        presence_penalty=config.presence_penalty,
        logit_bias=sorted(config.logit_bias.items()),
    )


def _cancelled(cancel: Optional[CancelToken]) -> bool:
    return cancel is not None and cancel.is_set()


class _Sequence:
    """One sequence being generated in `session`: prefill, then sample/push one token per step.

    `prompt_ids[:cached]` are already in the session (a reused prefix, exactly as a cold run
    computes it); the rest is fed in chunks placed as one call with the whole prompt places
    them. `fresh=False` continues the session's conversation instead of resetting it, after
    feeding `feed` (its last generated token, never fed)."""

    def __init__(
        self,
        session: Any,
        prompt_ids: Sequence[int],
        config: GenerationConfig,
        tokenizer: Optional["Tokenizer"],
        eos_ids: Sequence[int],
        seed: int,
        prefix_embeds: Optional[bytes] = None,
        cached: int = 0,
        feed: Sequence[int] = (),
        fresh: bool = True,
    ) -> None:
        self.session = session
        self.prompt_ids = list(prompt_ids)
        self.config = config
        self.tokenizer = tokenizer
        self.eos = set() if config.ignore_eos else set(eos_ids)
        self.suppress = sorted(self.eos)
        self.seed = seed
        self.prefix_embeds = prefix_embeds
        self.cached = cached
        # tokens fed before the prompt, outside its chunking (a continued conversation's
        # last generated token)
        self.feed = list(feed)
        # start from an empty session (else continue it: the reused prefix or the conversation)
        self.fresh = fresh and cached == 0
        self.fed_feed = False
        self.params = sampling_params(config)
        self.decoder = IncrementalDecoder(tokenizer) if tokenizer is not None else None
        self.stops = _StopMatcher(config.stop) if self.decoder is not None else _StopMatcher(())
        self.generated: List[int] = []
        self.stamps: List[float] = []
        self.text = ""  # all decoded text so far
        self.emitted = 0  # how much of `text` has been handed out
        self.finish: Optional[str] = None
        self.logprobs: Optional[List[TokenLogprob]] = [] if config.wants_logprobs else None
        self.gen_start = 0
        self.t0 = time.perf_counter()
        self.t_end = self.t0

    @property
    def last(self) -> int:
        return self.generated[-1]

    def prefill(self, cancel: Optional[CancelToken]) -> bool:
        """Feeds what the session lacks of the prompt, a chunk per call; False (finish
        "cancelled") when cancelled before the prompt is in."""
        s = self.session
        self.t0 = time.perf_counter()
        if self.fresh:
            s.restart()  # a new conversation at once: the cache's pages are reused
        s.seed(self.seed)
        if self.prefix_embeds is not None:
            if _cancelled(cancel):
                return self._cancel()
            s.forward_embeddings(self.prefix_embeds)
        if self.feed:
            if _cancelled(cancel):
                return self._cancel()
            s.forward(self.feed)
            self.fed_feed = True
        ids, n = self.prompt_ids, len(self.prompt_ids)
        piecewise = hasattr(s, "forward_prompt")
        i = self.cached
        while i < n:
            if _cancelled(cancel):
                return self._cancel()
            end = min(n, (i // PREFILL_CHUNK + 1) * PREFILL_CHUNK)
            if piecewise:
                s.forward_prompt(ids[i:end], i, n)
            else:
                s.forward(ids[i:end])
            i = end
        self.gen_start = len(s.tokens())
        return True

    def _cancel(self) -> bool:
        self.finish = "cancelled"
        return False

    def step(self) -> str:
        """Samples the next token and takes it in; returns the text that became final."""
        s, cfg = self.session, self.config
        sup = self.suppress if len(self.generated) < cfg.min_new_tokens else []
        tok = s.sample(self.params, self.gen_start, sup)
        self.stamps.append(time.perf_counter())
        self.generated.append(tok)
        if self.logprobs is not None:
            self.logprobs.append(self._logprob(tok))
        if tok in self.eos:
            self.finish = "eos"
            return ""
        delta = ""
        if self.decoder is not None:
            new_from = len(self.text)
            self.text += self.decoder.push(tok)
            hit = self.stops.find(self.text, new_from) if self.stops.stops else None
            if hit is not None:
                self.text = self.text[:hit]
                self.finish = "stop"
                return ""
            end = self.stops.safe_end(self.text) if self.stops.stops else len(self.text)
            if end > self.emitted:
                delta = self.text[self.emitted : end]
                self.emitted = end
        if len(self.generated) >= cfg.max_new_tokens or s.position >= s.context_length:
            self.finish = "length"
        return delta

    def _logprob(self, tok: int) -> TokenLogprob:
        s, k = self.session, self.config.top_logprobs
        if hasattr(s, "logprobs"):
            lp, top = s.logprobs(tok, k)
        else:
            lp, top = _core.logprobs(s.logits(), tok, k)
        return TokenLogprob(tok, self._token_text(tok), lp, [TopLogprob(t, self._token_text(t), v) for t, v in top])

    def _token_text(self, tok: int) -> Optional[str]:
        if self.tokenizer is None:
            return None
        return self.tokenizer.decode([tok], skip_special_tokens=False)

    def close(self, cancelled: bool = False) -> str:
        """Ends the sequence ("cancelled" if it was still running); returns the text held back."""
        if self.finish is None:
            self.finish = "cancelled" if cancelled else "length"
        if self.decoder is not None and self.finish != "stop":
            self.text += self.decoder.flush()
        self.t_end = time.perf_counter()
        tail = self.text[self.emitted :]
        self.emitted = len(self.text)
        return tail

    def result(self) -> GenerationResult:
        stamps = self.stamps
        timings = Timings(
            prompt_tokens=len(self.prompt_ids),
            new_tokens=len(self.generated),
            time_to_first_token=(stamps[0] if stamps else self.t_end) - self.t0,
            decode_seconds=stamps[-1] - stamps[0] if stamps else 0.0,
            total_seconds=self.t_end - self.t0,
            cached_prompt_tokens=self.cached,
        )
        return GenerationResult(self.text, list(self.generated), self.finish or "length", list(self.prompt_ids), timings, self.logprobs)


def run(seq: _Sequence, cancel: Optional[CancelToken] = None) -> Generator[str, None, GenerationResult]:
    """Yields text deltas of one sequence; returns its GenerationResult. Cancellation is seen
    before every prefill chunk and every decode step."""
    if seq.prefill(cancel):
        while True:
            delta = seq.step()
            if delta:
                yield delta
            if seq.finish is not None:
                break
            if _cancelled(cancel):
                seq.finish = "cancelled"
                break
            seq.session.forward([seq.last])
    tail = seq.close()
    if tail:
        yield tail
    return seq.result()


def run_batch(
    seqs: Sequence[_Sequence],
    decode: Callable[[List[Any], List[int]], None],
    cancel: Optional[CancelToken] = None,
) -> List[GenerationResult]:
    """Generates several sequences together: each is prefilled alone, then every decode step
    feeds all live sequences' tokens through `decode(sessions, tokens)` (one pass over the
    weights); a sequence that finishes leaves the batch. Tokens equal those of `run` alone."""
    live: List[_Sequence] = []
    for seq in seqs:
        if seq.prefill(cancel):
            live.append(seq)
    while live:
        for seq in live:
            seq.step()
        live = [seq for seq in live if seq.finish is None]
        if not live:
            break
        if _cancelled(cancel):
            for seq in live:
                seq.finish = "cancelled"
            break
        decode([seq.session for seq in live], [seq.last for seq in live])
    out = []
    for seq in seqs:
        seq.close()
        out.append(seq.result())
    return out


class TextStream(Iterator[str]):
    """Iterates over text deltas as tokens are generated; `.result` holds the
    GenerationResult once the stream is exhausted or closed. `.logprobs` grows with each
    token when log-probabilities were asked for. Breaking out of the loop stops the work (it
    only runs inside `next()`); `close()` ends the generation at once with finish_reason
    "cancelled" and sets `.result`."""

    def __init__(self, gen: Generator[str, None, GenerationResult], release: Callable[[], None],
                 seq: Optional[_Sequence] = None, cancel: Any = None) -> None:
        self._gen: Optional[Generator[str, None, GenerationResult]] = gen
        self._release = release
        self._seq = seq
        self._cancel = cancel
        self.result: Optional[GenerationResult] = None

    @property
    def logprobs(self) -> Optional[List[TokenLogprob]]:
        """Log-probabilities of the tokens generated so far (None unless asked for)."""
        return None if self._seq is None or self._seq.logprobs is None else list(self._seq.logprobs)

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        if self._gen is None:
            raise StopIteration
        try:
            return next(self._gen)
        except StopIteration as stop:
            self.result = stop.value
            self._finish()
            raise
        except BaseException:
            self._finish()
            raise

    def close(self) -> None:
        """Stops generating (no further prefill chunk or decode step runs); `.result` then
        holds what was generated, with finish_reason "cancelled" unless it had finished."""
        if self._gen is None:
            return
        gen, self._gen = self._gen, None
        try:
            if self._seq is not None:
                if self._cancel is not None:
                    self._cancel.set()
                gen.close()
                self._seq.close(cancelled=True)
                self.result = self._seq.result()
            else:
                gen.close()
        finally:
            self._release()

    def _finish(self) -> None:
        if self._gen is not None:
            self._gen = None
            self._release()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def drain(gen: Generator[str, None, GenerationResult]) -> GenerationResult:
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
