"""The generation loop: prefill -> [sample -> decode step]* with incremental detokenization,
stop strings, token limits and timings. Logits never leave the Rust core."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generator, Iterator, List, Optional, Sequence

from . import _core
from .config import GenerationConfig
from .tokenizer import IncrementalDecoder

if TYPE_CHECKING:
    from .tokenizer import Tokenizer


@dataclass(frozen=True)
class Timings:
    """Per PERF method: prefill tok/s = prompt tokens / time to first token;
    decode tok/s = (new tokens - 1) / (time of last token - time of first token)."""

    prompt_tokens: int
    new_tokens: int
    time_to_first_token: float
    decode_seconds: float
    total_seconds: float

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.time_to_first_token if self.time_to_first_token > 0 else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        if self.new_tokens < 2 or self.decode_seconds <= 0:
            return float("nan")
        return (self.new_tokens - 1) / self.decode_seconds


@dataclass(frozen=True)
class GenerationResult:
    text: str
    """The generated text (without the prompt; cut before a stop string)."""
    tokens: List[int]
    """Generated token ids, including an EOS or the token that completed a stop string."""
    finish_reason: str
    """"eos", "stop" (a stop string) or "length" (max_new_tokens or the context is full)."""
    prompt_tokens: List[int]
    timings: Timings


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


def run(
    session: "_core.Session",
    prompt_ids: Sequence[int],
    config: GenerationConfig,
    tokenizer: Optional["Tokenizer"],
    eos_ids: Sequence[int],
    seed: int,
    prefix_embeds: Optional[bytes] = None,
) -> Generator[str, None, GenerationResult]:
    """Yields text deltas; returns the GenerationResult. `prefix_embeds`: float32 [n, hidden]
    fed before the prompt (a soft prompt)."""
    eos = set() if config.ignore_eos else set(eos_ids)
    suppress = sorted(eos)
    params = _core.SamplingParams(
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
    decoder = IncrementalDecoder(tokenizer) if tokenizer is not None else None
    stops = _StopMatcher(config.stop) if decoder is not None else _StopMatcher(())
    n_prompt = len(prompt_ids)
    generated: List[int] = []
    stamps: List[float] = []
    text = ""  # all decoded text so far
    emitted = 0  # how much of `text` has been yielded
    finish = "length"

    t0 = time.perf_counter()
    session.reset()
    session.seed(seed)
    if prefix_embeds is not None:
        session.forward_embeddings(prefix_embeds)
    session.forward(list(prompt_ids))
    while True:
        sup = suppress if len(generated) < config.min_new_tokens else []
        tok = session.sample(params, n_prompt, sup)
        stamps.append(time.perf_counter())
        generated.append(tok)
        if tok in eos:
            finish = "eos"
            break
        if decoder is not None:
            new_from = len(text)
            text += decoder.push(tok)
            if stops.stops:
                hit = stops.find(text, new_from)
                if hit is not None:
                    text = text[:hit]
                    finish = "stop"
                    break
                end = stops.safe_end(text)
            else:
                end = len(text)
            if end > emitted:
                yield text[emitted:end]
                emitted = end
        if len(generated) >= config.max_new_tokens or session.position >= session.context_length:
            break
        session.forward([tok])
    if decoder is not None and finish != "stop":
        text += decoder.flush()
    if len(text) > emitted:
        yield text[emitted:]
    t_end = time.perf_counter()
    timings = Timings(
        prompt_tokens=n_prompt,
        new_tokens=len(generated),
        time_to_first_token=stamps[0] - t0,
        decode_seconds=stamps[-1] - stamps[0],
        total_seconds=t_end - t0,
    )
    return GenerationResult(text, generated, finish, list(prompt_ids), timings)


class TextStream(Iterator[str]):
    """Iterates over text deltas as tokens are generated; `.result` holds the
    GenerationResult once the stream is exhausted."""

    def __init__(self, gen: Generator[str, None, GenerationResult], release) -> None:
        self._gen = gen
        self._release = release
        self.result: Optional[GenerationResult] = None

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
        """Stops generating early (the session is returned to the model)."""
        if self._gen is not None:
            self._gen.close()
            self._finish()

    def _finish(self) -> None:
        if self._gen is not None:
            self._gen = None
            self._release()

    def __del__(self) -> None:
        self.close()


def drain(gen: Generator[str, None, GenerationResult]) -> GenerationResult:
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
