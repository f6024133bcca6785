"""GenerationConfig: every knob of `Model.generate`, validated when it is made."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

from .errors import ConfigError, InvalidArgumentError

_INT = (int,)

#: The most alternatives `top_logprobs` may ask for per token.
MAX_TOP_LOGPROBS = 100


def _is_int(v: Any) -> bool:
    return isinstance(v, _INT) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate. Sampling order: repetition penalty -> frequency/presence penalties ->
    logit bias -> temperature -> top-k -> top-p -> min-p -> draw.

    ``logprobs=True`` gives each generated token's log-probability (``result.logprobs``) and
    ``top_logprobs=k`` the k likeliest alternatives as well (it implies ``logprobs``); both come
    from the model's own distribution, the log-softmax of the raw logits, before repetition
    penalties, logit bias, temperature or any truncation (as OpenAI's API reports them).

    ``temperature == 0`` or ``do_sample=False`` means greedy decoding (the processors before
    temperature still apply, as in transformers). With ``do_sample=None`` (the default) tokens are
    sampled iff a temperature > 0 is given; ``do_sample=True`` alone samples at temperature 1.
    """

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    do_sample: Optional[bool] = None
    temperature: Optional[float] = None
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    stop: Sequence[str] = ()
    seed: Optional[int] = None
    ignore_eos: bool = False
    eos_token_id: Union[int, Sequence[int], None] = None
    logprobs: bool = False
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise InvalidArgumentError(msg)

        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            bad(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not _is_int(self.min_new_tokens) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            bad(f"min_new_tokens must be an integer in [0, max_new_tokens={self.max_new_tokens}], got {self.min_new_tokens!r}")
        if self.do_sample is not None and not isinstance(self.do_sample, bool):
            bad(f"do_sample must be True, False or None, got {self.do_sample!r}")
        if self.temperature is not None and (not _is_number(self.temperature) or self.temperature < 0):
            bad(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not _is_int(self.top_k) or not 0 <= self.top_k < 2**32:
            bad(f"top_k must be an integer in [0, 2**32) (0 disables it), got {self.top_k!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            bad(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not _is_number(self.min_p) or not 0 <= self.min_p <= 1:
            bad(f"min_p must be in [0, 1], got {self.min_p!r}")
        if not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not _is_number(getattr(self, name)):
                bad(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if not isinstance(self.logit_bias, Mapping):
            bad(f"logit_bias must be a mapping of token id to bias, got {type(self.logit_bias).__name__}")
        for tok, bias in self.logit_bias.items():
            if not _is_int(tok) or tok < 0:
                bad(f"logit_bias keys must be token ids (integers >= 0), got {tok!r}")
            if not isinstance(bias, (int, float)) or isinstance(bias, bool) or not (-math.inf <= bias < 1e30):
                bad(f"logit_bias[{tok}] must be a finite number or -inf (to ban the token), got {bias!r}")
        stop = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            bad(f"stop must be a string or a list of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(stop))
        object.__setattr__(self, "logit_bias", dict(self.logit_bias))
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**64):
            bad(f"seed must be an integer in [0, 2**64) or None, got {self.seed!r}")
        if not isinstance(self.ignore_eos, bool):
            bad(f"ignore_eos must be True or False, got {self.ignore_eos!r}")
        if not isinstance(self.logprobs, bool):
            bad(f"logprobs must be True or False, got {self.logprobs!r}")
        if not _is_int(self.top_logprobs) or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            bad(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs!r}")
        eos = self.eos_token_id
        if eos is not None:
            ids = (eos,) if _is_int(eos) else eos
            if not isinstance(ids, (list, tuple)) or not all(_is_int(i) and i >= 0 for i in ids):
                bad(f"eos_token_id must be a token id or a list of them, got {eos!r}")
            object.__setattr__(self, "eos_token_id", tuple(ids))

    @property
    def wants_logprobs(self) -> bool:
        """True when results carry log-probabilities (`logprobs`, or `top_logprobs` > 0)."""
        return self.logprobs or self.top_logprobs > 0

    @property
    def sampling(self) -> bool:
        """True when tokens are drawn at random, False for greedy decoding."""
        if self.temperature == 0 or self.do_sample is False:
            return False
        return self.do_sample is True or self.temperature is not None

    @property
    def effective_temperature(self) -> float:
        """The divisor applied to the logits when sampling."""
        return 1.0 if not self.temperature else float(self.temperature)

    def replace(self, **changes: Any) -> "GenerationConfig":
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise InvalidArgumentError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, data: Mapping[str, Any]) -> "GenerationConfig":
        """Defaults from a Hugging Face generation_config.json: only the keys it sets."""
        keys = ("do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_new_tokens")
        kwargs = {k: data[k] for k in keys if data.get(k) is not None}
        if not kwargs.get("do_sample"):
            # transformers ignores the sampling knobs unless do_sample is set
            kwargs = {k: v for k, v in kwargs.items() if k in ("repetition_penalty", "max_new_tokens")}
        try:
            return cls(**kwargs)
        except InvalidArgumentError as e:
            raise ConfigError(f"generation_config.json: {e}") from None
