"""`ferrolm.load` and the Model users hold."""

from __future__ import annotations

import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ._numpy import integer_types, np, sequence_types

from . import _core
from .chat import END_OF_TURN_TOKENS, ChatTemplate
from .config import GenerationConfig
from .errors import ConfigError, ContextLengthError, InvalidArgumentError, InvalidTokenError, MemoryLimitError, TokenizerError
from .generation import GenerationResult, TextStream, TokenScores, _Sequence, drain, run, run_batch
from .prefix_cache import PrefixCacheInfo, SessionCache
from .adapters import Adapters
from .lora import check_name
from .soft_prompt import SoftPrompt, read_soft_prompt
from .loading import Checkpoint, build_core_model, check_load_args, eos_token_ids, read_checkpoint, resolve_kv_cache
from .progress import resolve as resolve_progress
from .tokenizer import Tokenizer
from .backends import Backend, backend_for
from .backends.cpu import CpuBackend

Prompt = Union[str, Sequence[int]]


def _is_batch(prompt: Any) -> bool:
    """A list of prompts (strings or id lists), as opposed to one prompt of token ids."""
    return isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(
        isinstance(p, (str, *sequence_types())) for p in prompt
    )


def _check_cancel(cancel: Any) -> None:
    if cancel is not None and not callable(getattr(cancel, "is_set", None)):
        raise InvalidArgumentError(f"cancel must be a threading.Event (or have is_set()), got {type(cancel).__name__}")


#: generate(adapter=...) default: whatever set_adapter made active.
_ACTIVE: Any = object()


def _random_seed() -> int:
    """63 bits from the operating system's random source (what `secrets.randbits(63)` gives,
    without importing hashlib and OpenSSL, about 3.5 MiB resident)."""
    return int.from_bytes(os.urandom(8), "little") >> 1


def _off_the_loop(call: Callable[[bool, Any], Any], stream: bool, cancel: Any) -> Any:
    """The asyncio form of `call(stream, cancel_event)` (a generate or chat call): an
    AsyncTextStream when streaming, else an awaitable of its result. asyncio is imported here,
    by the first async call, not with ferrolm."""
    from .aio import AsyncTextStream, run_async

    if stream:
        return AsyncTextStream(lambda c: call(True, c), cancel)
    return run_async(lambda c: call(False, c), cancel)


class Model:
    """A loaded model: immutable weights shared by every call. Safe to use from several Python
    threads; each generation runs in its own session (KV cache)."""

    def __init__(
        self,
        core: "_core.Model",
        *,
        path: Path,
        config: Dict[str, Any],
        tokenizer: Optional[Tokenizer],
        eos_token_ids: Tuple[int, ...],
        generation_config: GenerationConfig,
        precision: str,
        context_length: int,
        chat_template: Optional[ChatTemplate] = None,
        checkpoint: Optional[Checkpoint] = None,
        backend: Optional[Backend] = None,
        kv_cache: str = "auto",
    ) -> None:
        self._backend: Backend = backend or CpuBackend()
        self.device = self._backend.name
        self._base = core  # as loaded; never changed
        self._core = core  # the default for calls: the base or the active adapter's variant
        self._checkpoint = checkpoint
        self._adapters = Adapters(core, checkpoint, precision)
        self._soft_prompts: Dict[str, SoftPrompt] = {}
        self.path = path
        self.config = config
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.generation_config = generation_config
        self.precision = precision
        self.context_length = context_length
        self._kv_cache = resolve_kv_cache(kv_cache, precision, self.device)
        self.chat_template = chat_template
        self._lock = threading.Lock()
        self._sessions = SessionCache(
            lambda c: self._backend.new_session(c, self.context_length, self._kv_cache), core.kv_cache_bytes(1, self._kv_cache)
        )

    def __repr__(self) -> str:
        return (
            f"Model(path={str(self.path)!r}, arch={self.arch!r}, params={self.num_params:,}, "
            f"precision={self.precision!r}, device={self.device!r}, threads={self.threads}, context={self.context_length}, "
            f"kv_cache={self.kv_cache!r})"
        )

    # -- facts -------------------------------------------------------------------------------
    @property
    def kv_cache(self) -> str:
        """How every session of this model stores its KV cache: "fp32" or "bf16" (set at load)."""
        return self._kv_cache

    @property
    def arch(self) -> str:
        return self._core.arch

    @property
    def vocab_size(self) -> int:
        return self._core.vocab_size

    @property
    def num_params(self) -> int:
        return self._core.num_params

    @property
    def threads(self) -> int:
        return self._core.threads

    @property
    def matmul_bytes_per_token(self) -> int:
        """Bytes of matmul weights read per decoded token (for the decode bandwidth ceiling)."""
        return self._core.matmul_bytes_per_token

    def save(self, path: Union[str, os.PathLike], *, overwrite: bool = False,
             progress: Union[None, bool, Callable[[int, int, str], None]] = None) -> Path:
        """Writes this model, in its precision, as a folder that `ferrolm.load` reads back without
        converting anything (see `ferrolm.saving`). Never writes over an existing path unless
        `overwrite=True` (and then only over a model folder)."""
        from .saving import save_model

        return save_model(self, path, overwrite=overwrite, progress=resolve_progress(progress, "saving"))

    # -- sessions ------------------------------------------------------------------------------
    @contextmanager
    def _session(self, core: Optional["_core.Model"] = None) -> Iterator["_core.Session"]:
        core = core or self._core
        s, _ = self._sessions.take(core, None)
        try:
            yield s
        finally:
            self._give_back(core, s)

    def _give_back(self, core: "_core.Model", s: "_core.Session") -> None:
        self._sessions.give_back(core, s, self._adapters.is_live)

    def configure_prefix_cache(self, max_sessions: int = 4, max_bytes: Optional[int] = None, *,
                               reuse: bool = True) -> None:
        """Bounds the idle sessions kept for prefix reuse: at most `max_sessions` of them and
        `max_bytes` of KV cache (default 1 GiB; positions ever written x bytes per position),
        least recently used dropped first. max_sessions=0 keeps none. reuse=False keeps
        sessions (their memory) but computes every prompt in full (benchmarks of prefill)."""
        self._sessions.configure(max_sessions, max_bytes, reuse)

    def clear_prefix_cache(self) -> None:
        """Drops every idle session (and its KV cache)."""
        self._sessions.clear()

    def prefix_cache_info(self) -> PrefixCacheInfo:
        """Idle sessions kept for prefix reuse: how many, their tokens and KV bytes, the bounds."""
        return self._sessions.info()

    # -- adapters ------------------------------------------------------------------------------
    def load_lora(self, path: Union[str, os.PathLike], name: Optional[str] = None, *, merged: bool = True,
                  scale: float = 1.0) -> str:
        """Reads a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) and
        checks it against this model; returns its name (default: the folder's name). It does not
        become active: call `set_adapter(name)`, or (with merged=False) pass `adapter=name` to
        generate(). `scale` multiplies the adapter's own alpha/r. Nothing changes on error."""
        if not isinstance(merged, bool):
            raise InvalidArgumentError(f"merged must be True or False, got {merged!r}")
        return self._adapters.load_lora(path, name, merged, scale)

    def set_adapter(self, name: Optional[str]) -> None:
        """Makes adapter `name` the default for every call, or returns to the base weights with
        None (exactly: the base model is never modified). A merged adapter's touched matrices are
        rebuilt from the original weights; nothing else is reloaded."""
        core = self._adapters.set(name)
        with self._lock:
            self._core = core
        self._backend.keep_only(self._adapters.live_cores())

    def remove_adapter(self, name: str) -> None:
        """Unloads an adapter (returning to the base weights if it was active)."""
        was_active = self._adapters.active == name
        self._adapters.remove(name)
        if was_active:
            with self._lock:
                self._core = self._base
        self._backend.keep_only(self._adapters.live_cores())

    def load_soft_prompt(self, path: Union[str, os.PathLike], name: Optional[str] = None) -> str:
        """Reads a PEFT prompt-tuning adapter (prompt_embeddings [virtual tokens, hidden]); returns
        its name (default: the folder's name). Use it per call: generate(..., soft_prompt=name)."""
        sp = read_soft_prompt(path)
        name = check_name(Path(path).name if name is None else name, self._soft_prompts, "soft prompt")
        hidden = self._base.hidden_size
        if sp.embeddings.shape[1] != hidden:
            raise InvalidArgumentError(
                f"{path}: prompt embeddings have {sp.embeddings.shape[1]} values per token, the model's hidden size is {hidden}"
            )
        if sp.num_virtual_tokens >= self.context_length:
            raise InvalidArgumentError(f"{path}: {sp.num_virtual_tokens} virtual tokens leave no room in a context of {self.context_length}")
        self._soft_prompts[name] = sp
        return name

    @property
    def soft_prompts(self) -> Dict[str, int]:
        """{name: number of virtual tokens} of the loaded soft prompts."""
        return {n: sp.num_virtual_tokens for n, sp in self._soft_prompts.items()}

    def _prefix(self, soft_prompt: Optional[str], n_tokens: int) -> Optional[bytes]:
        """The soft prompt's embeddings (None without one), checking that its virtual tokens and
        `n_tokens` fit the context."""
        if soft_prompt is None:
            n_virtual, prefix = 0, None
        elif soft_prompt not in self._soft_prompts:
            known = ", ".join(sorted(self._soft_prompts)) or "none"
            raise InvalidArgumentError(f"no soft prompt named {soft_prompt!r} is loaded (loaded: {known})")
        else:
            sp = self._soft_prompts[soft_prompt]
            n_virtual, prefix = sp.num_virtual_tokens, sp.embeddings.tobytes()
        if n_virtual + n_tokens > self.context_length:
            what = f"the soft prompt's {n_virtual} virtual tokens and {n_tokens} tokens" if n_virtual else f"{n_tokens} tokens"
            raise ContextLengthError(f"{what} exceed the context length of {self.context_length}")
        return prefix

    @property
    def adapters(self) -> Dict[str, str]:
        """{name: "merged" | "unmerged"} of the loaded adapters."""
        return self._adapters.names

    @property
    def active_adapter(self) -> Optional[str]:
        return self._adapters.active

    def _core_for(self, adapter: Any) -> "_core.Model":
        return self._core if adapter is _ACTIVE else self._adapters.core_for(adapter)

    def new_session(self, adapter: Any = _ACTIVE) -> "Session":
        """A conversation of its own (its KV cache kept across calls): `session.generate(...)`
        continues where the last call ended. The backend session's own step-by-step interface
        (forward(ids), sample(params), logits(), reset(), ...) is available on it as well."""
        core = self._core_for(adapter)
        return Session(self, core, self._backend.new_session(core, self.context_length, self._kv_cache))

    # -- text ----------------------------------------------------------------------------------
    def _need_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise TokenizerError(f"{self.path} has no tokenizer.json: pass token ids instead of text")
        return self.tokenizer

    def tokenize(self, text: str, add_special_tokens: bool = True) -> List[int]:
        if not isinstance(text, str):
            raise InvalidArgumentError(f"text must be a str, got {type(text).__name__}")
        if not isinstance(add_special_tokens, bool):
            raise InvalidArgumentError(f"add_special_tokens must be True or False, got {add_special_tokens!r}")
        return self._need_tokenizer().encode(text, add_special_tokens=add_special_tokens)

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if not isinstance(skip_special_tokens, bool):
            raise InvalidArgumentError(f"skip_special_tokens must be True or False, got {skip_special_tokens!r}")
        return self._need_tokenizer().decode(self._check_ids(ids), skip_special_tokens=skip_special_tokens)

    def _check_ids(self, ids: Sequence[int]) -> List[int]:
        if not isinstance(ids, sequence_types()):
            raise InvalidArgumentError(f"token ids must be a list of integers, got {type(ids).__name__}")
        out = []
        for t in ids:
            if not isinstance(t, integer_types()) or isinstance(t, bool):
                raise InvalidArgumentError(f"token ids must be integers, got {t!r}")
            t = int(t)
            if not 0 <= t < self.vocab_size:
                raise InvalidTokenError(f"token id {t} is outside the vocabulary (size {self.vocab_size})")
            out.append(t)
        return out

    def _prompt_ids(self, prompt: Prompt) -> List[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidArgumentError("the prompt is empty")
            ids = self._check_ids(self.tokenize(prompt))
            if not ids:
                raise InvalidArgumentError("the prompt encodes to no tokens")
        elif isinstance(prompt, sequence_types()):
            ids = self._check_ids(prompt)
            if not ids:
                raise InvalidArgumentError("the prompt is empty")
        else:
            raise InvalidArgumentError(f"prompt must be a str or a list of token ids, got {type(prompt).__name__}")
        return ids

    # -- inference -----------------------------------------------------------------------------
    def logits(self, token_ids: Sequence[int], *, adapter: Any = _ACTIVE, soft_prompt: Optional[str] = None) -> np.ndarray:
        """float32 logits [len(token_ids), vocab] of every token position (for evaluation);
        `adapter` and `soft_prompt` as in generate() (the virtual tokens' own rows are not
        returned)."""
        ids = self._check_ids(token_ids)
        if not ids:
            raise InvalidArgumentError("token_ids is empty")
        prefix = self._prefix(soft_prompt, len(ids))
        with self._session(self._core_for(adapter)) as s:
            s.restart()
            if prefix is not None:
                s.forward_embeddings(prefix)
            raw = s.forward(ids, all_logits=True)
        return np.frombuffer(raw, dtype=np.float32).reshape(len(ids), self.vocab_size)

    def apply_chat_template(self, messages: Sequence[Dict[str, Any]], add_generation_prompt: bool = True,
                            **kwargs: Any) -> str:
        """The prompt text the model's chat template makes of `messages`."""
        if self.chat_template is None:
            raise TokenizerError(f"{self.path} has no chat template")
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)

    def end_of_turn_ids(self) -> Tuple[int, ...]:
        """EOS ids plus the end-of-turn tokens of common chat templates found in the vocabulary."""
        ids = list(self.eos_token_ids)
        tok = self.tokenizer
        for name in END_OF_TURN_TOKENS:
            tid = tok.token_to_id(name) if tok is not None else None
            if tid is not None and tid not in ids and (self.chat_template is None or name in self.chat_template.source):
                ids.append(tid)
        return tuple(ids)

    def chat(
        self,
        messages: Any,
        config: Optional[GenerationConfig] = None,
        *,
        stream: bool = False,
        **options: Any,
    ) -> Any:
        """Generates the assistant's reply to `messages` ([{"role": "user", "content": ...}, ...])
        through the model's chat template; stops at the end of the turn. A list of such
        conversations is a batch: a list of results (see generate). Options as in generate()."""
        batch = isinstance(messages, (list, tuple)) and len(messages) > 0 and all(isinstance(m, (list, tuple)) for m in messages)
        if batch:
            ids: Any = [self.tokenize(self.apply_chat_template(m), add_special_tokens=False) for m in messages]
        else:
            ids = self.tokenize(self.apply_chat_template(messages), add_special_tokens=False)
        if "eos_token_id" not in options and (config is None or config.eos_token_id is None):
            options["eos_token_id"] = self.end_of_turn_ids()
        return self.generate(ids, config, stream=stream, **options)

    def achat(self, messages: Any, config: Optional[GenerationConfig] = None, *, stream: bool = False,
              cancel: Any = None, **options: Any) -> Any:
        """chat() for asyncio: `await model.achat(...)`, or `async for delta in
        model.achat(..., stream=True)` (see agenerate)."""
        _check_cancel(cancel)
        batch = isinstance(messages, (list, tuple)) and len(messages) > 0 and all(isinstance(m, (list, tuple)) for m in messages)
        if stream and batch:
            raise InvalidArgumentError("stream=True takes one conversation; a batch returns a list of results")
        return _off_the_loop(lambda s, c: self.chat(messages, config, stream=s, cancel=c, **options), stream, cancel)

    def _resolve(self, config: Optional[GenerationConfig], options: Dict[str, Any]) -> Tuple[GenerationConfig, Tuple[int, ...]]:
        """The call's GenerationConfig (options over `config` over generation_config.json) and
        its EOS ids, checked against the vocabulary."""
        if config is not None and not isinstance(config, GenerationConfig):
            raise InvalidArgumentError(f"config must be a GenerationConfig, got {type(config).__name__}")
        cfg = config or self.generation_config
        if options:
            cfg = cfg.replace(**options)
        for tok in cfg.logit_bias:
            if tok >= self.vocab_size:
                raise InvalidTokenError(f"logit_bias token id {tok} is outside the vocabulary (size {self.vocab_size})")
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else self.eos_token_ids
        for tok in eos:
            if tok >= self.vocab_size:
                raise InvalidTokenError(f"eos_token_id {tok} is outside the vocabulary (size {self.vocab_size})")
        return cfg, tuple(eos)

    def generate(
        self,
        prompt: Union[Prompt, Sequence[Prompt]],
        config: Optional[GenerationConfig] = None,
        *,
        stream: bool = False,
        adapter: Any = _ACTIVE,
        soft_prompt: Optional[str] = None,
        cancel: Any = None,
        **options: Any,
    ) -> Any:
        """Generates a continuation of `prompt` (text, or a list of token ids).

        A list of prompts (strings or id lists) is a batch: it returns a list of
        GenerationResult, computed together (one pass over the weights per decode step for every
        sequence still running); each sequence gets exactly the tokens it gets alone with the same
        arguments (`seed` applies to each prompt as if called alone).

        `adapter`: the name of an unmerged LoRA adapter to run this call with, or None for the
        base weights (default: the active adapter, see set_adapter). `soft_prompt`: the name of a
        loaded soft prompt whose virtual tokens go before the prompt. `cancel`: a
        threading.Event; once set, the work stops before the next prefill chunk or decode step
        and the result has finish_reason "cancelled".

        Options are the fields of GenerationConfig (max_new_tokens, min_new_tokens, temperature,
        top_k, top_p, min_p, repetition_penalty, frequency_penalty, presence_penalty, logit_bias,
        stop, seed, ignore_eos, do_sample, eos_token_id, logprobs, top_logprobs); they override
        `config`, which defaults to the model's generation_config.json. With stream=True (one
        prompt), returns a TextStream of text deltas whose `.result` is set at the end;
        otherwise the GenerationResult.

        A prompt that starts with tokens an idle session already holds (an earlier call's
        prompt: a system prompt, few-shot examples, a chat's earlier turns) reuses them and
        computes only the rest, with the same logits as a cold run
        (`result.timings.cached_prompt_tokens`; see configure_prefix_cache).
        """
        _check_cancel(cancel)
        cfg, eos = self._resolve(config, options)
        if _is_batch(prompt):
            if stream:
                raise InvalidArgumentError("stream=True takes one prompt; a batch returns a list of results")
            return self._generate_batch(list(prompt), cfg, eos, adapter, soft_prompt, cancel)
        ids = self._prompt_ids(prompt)
        seed = cfg.seed if cfg.seed is not None else _random_seed()
        prefix = self._prefix(soft_prompt, len(ids))
        core = self._core_for(adapter)
        session, cached = self._sessions.take(core, None if prefix is not None else ids)
        seq = _Sequence(session, ids, cfg, self.tokenizer, eos, seed, prefix, cached=cached)
        gen = run(seq, cancel)
        if stream:
            return TextStream(gen, lambda: self._give_back(core, session), seq)
        try:
            return drain(gen)
        finally:
            self._give_back(core, session)

    def _generate_batch(self, prompts: List[Any], cfg: GenerationConfig, eos: Tuple[int, ...], adapter: Any,
                        soft_prompt: Optional[str], cancel: Any) -> List[GenerationResult]:
        all_ids = [self._prompt_ids(p) for p in prompts]
        prefixes = [self._prefix(soft_prompt, len(ids)) for ids in all_ids]
        core = self._core_for(adapter)
        taken: List[Any] = []
        try:
            seqs = []
            for ids, prefix in zip(all_ids, prefixes):
                session, cached = self._sessions.take(core, None if prefix is not None else ids)
                taken.append(session)
                seed = cfg.seed if cfg.seed is not None else _random_seed()
                seqs.append(_Sequence(session, ids, cfg, self.tokenizer, eos, seed, prefix, cached=cached))
            return run_batch(seqs, self._decode_batch, cancel)
        finally:
            for session in taken:
                self._give_back(core, session)

    def _decode_batch(self, sessions: List[Any], tokens: List[int]) -> None:
        decode = getattr(self._backend, "decode_batch", None)
        if decode is not None:
            decode(sessions, tokens)
        else:  # a backend without a batched step: one session after the other
            for s, t in zip(sessions, tokens):
                s.forward([t])

    def agenerate(self, prompt: Union[Prompt, Sequence[Prompt]], config: Optional[GenerationConfig] = None, *,
                  stream: bool = False, cancel: Any = None, **options: Any) -> Any:
        """generate() for asyncio, run off the event loop (in the loop's default executor; the
        core releases the GIL): `result = await model.agenerate(...)` (a list for a batch), or
        `async for delta in model.agenerate(..., stream=True)` (an AsyncTextStream; its
        `.result` is set at the end). Cancelling the awaiting task, or `await stream.aclose()`,
        stops the work before its next prefill chunk or decode step (the awaited call then
        raises CancelledError; a closed stream's `.result` says "cancelled")."""
        _check_cancel(cancel)
        if stream and _is_batch(prompt):
            raise InvalidArgumentError("stream=True takes one prompt; a batch returns a list of results")
        return _off_the_loop(lambda s, c: self.generate(prompt, config, stream=s, cancel=c, **options), stream, cancel)

    def score(self, text: Prompt, *, adapter: Any = _ACTIVE) -> TokenScores:
        """The log-probability of each token of `text` (a string, tokenized with the
        tokenizer's special tokens, or token ids) given the tokens before it: the log-softmax of
        `logits()` (the model's distribution, before any sampling processor)."""
        from .quality import log_softmax

        ids = self._prompt_ids(text)
        if len(ids) < 2:
            raise InvalidArgumentError("score() needs at least two tokens (the first one has no prediction)")
        if len(ids) > self.context_length:
            raise ContextLengthError(f"{len(ids)} tokens exceed the context length of {self.context_length}")
        lp = log_softmax(self.logits(ids, adapter=adapter)[:-1])
        return TokenScores(list(ids), [float(lp[i, t]) for i, t in enumerate(ids[1:])])


class Session:
    """A conversation kept across calls: its own KV cache, history and sampler. Each
    `generate()` appends its prompt to what the session holds (the previous reply included)
    and continues from there; nothing is recomputed. One call at a time per session.

    The backend session's step-by-step interface (forward(ids), sample(params), logits(),
    tokens(), position, context_length, ...) passes through to `.raw`."""

    def __init__(self, model: Model, core: "_core.Model", raw: Any) -> None:
        self._model = model
        self._core = core
        self.raw = raw
        self._pending: List[int] = []  # the last generated token, not fed yet
        self._busy = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "raw":
            raise AttributeError(name)
        return getattr(self.raw, name)

    def __repr__(self) -> str:
        return (f"Session(tokens={self.raw.position + len(self._pending)}, context={self.raw.context_length}, "
                f"kv_cache={self.raw.kv_cache!r})")

    def reset(self) -> None:
        """Forgets the conversation."""
        self.raw.reset()
        self._pending = []

    def history(self) -> List[int]:
        """Every token of the conversation: prompts and replies (the last reply token included)."""
        return list(self.raw.tokens()) + self._pending

    def generate(self, prompt: Prompt, config: Optional[GenerationConfig] = None, *, stream: bool = False,
                 cancel: Any = None, **options: Any) -> Any:
        """Appends `prompt` (text — tokenized with special tokens only if the conversation is
        empty — or token ids) to the conversation and generates the continuation; options as
        in Model.generate. The reply's tokens stay in the session for the next call."""
        _check_cancel(cancel)
        model = self._model
        cfg, eos = model._resolve(config, options)
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidArgumentError("the prompt is empty")
            ids = model._check_ids(model.tokenize(prompt, add_special_tokens=not self.history()))
            if not ids:
                raise InvalidArgumentError("the prompt encodes to no tokens")
        else:
            ids = model._prompt_ids(prompt)
        needed = self.raw.position + len(self._pending) + len(ids)
        if needed > self.raw.context_length:
            raise ContextLengthError(f"the conversation would need {needed} positions but the context length is {self.raw.context_length}")
        if not self._busy.acquire(blocking=False):
            raise InvalidArgumentError("this session is already generating (one call at a time per session)")
        seed = cfg.seed if cfg.seed is not None else _random_seed()
        seq = _Sequence(self.raw, ids, cfg, model.tokenizer, eos, seed, cached=0, feed=self._pending, fresh=False)
        gen = run(seq, cancel)

        def release() -> None:
            if seq.fed_feed:
                self._pending = []
            if seq.generated:
                self._pending = [seq.generated[-1]]
            self._busy.release()

        if stream:
            return TextStream(gen, release, seq)
        try:
            return drain(gen)
        finally:
            release()

    def agenerate(self, prompt: Prompt, config: Optional[GenerationConfig] = None, *, stream: bool = False,
                  cancel: Any = None, **options: Any) -> Any:
        """generate() for asyncio (see Model.agenerate)."""
        _check_cancel(cancel)
        return _off_the_loop(lambda s, c: self.generate(prompt, config, stream=s, cancel=c, **options), stream, cancel)


def load(
    path: Union[str, os.PathLike],
    precision: Optional[str] = None,
    *,
    device: str = "cpu",
    threads: Optional[int] = None,
    context_length: Optional[int] = None,
    kv_cache: str = "auto",
    progress: Union[None, bool, Callable[[int, int, str], None]] = None,
) -> Model:
    """Loads a Hugging Face model folder (config.json, model.safetensors or a sharded index,
    tokenizer.json, tokenizer_config.json and generation_config.json when present) or a GGUF file
    (LLaMA architecture).

    precision: "fp32", "bf16", "int8" or "int4" — the storage of every matmul weight (linear
    layers, embeddings, lm_head); weights are converted tensor by tensor as they are read, so the
    FP32 model is never in memory. None (the default) means the checkpoint's own: "int8" / "int4"
    for a checkpoint written by `ferrolm quantize`, for a GGUF file the precision nearest to the
    type of most of its matrices ("int4" for Q4_0/Q4_1, whose blocks are kept as they are;
    `Checkpoint.default_precision` says why), "bf16" for a BF16 checkpoint (config.json's
    torch_dtype; lossless, since the kernels compute in FP32 either way), "fp32" otherwise. An
    "int4" load of a GGUF file keeps its 8-bit and 5/6-bit matrices in INT8.
    device: "cpu" (the Rust core) or "cuda" (the CUDA kernels on an NVIDIA GPU through cupy:
    pip install 'ferrolm[cuda12]'; with FERROLM_CUDA_EMULATE=1 the same kernels run on the CPU
    emulator of the CUDA execution model, for testing). Weights stay in host memory too. The
    CUDA kernels compute fp32, bf16 and int8: a file whose own precision is int4 loads as bf16
    there by default (INT8 would requantize its 4-bit values onto another grid).
    threads: kernel threads (default: every CPU this process may use).
    context_length: KV-cache positions per session (default and maximum: the model's
    max_position_embeddings; a default whose KV cache would not fit in this machine's memory is
    cut to the longest that fits, with a warning, and an explicit one raises MemoryLimitError).
    kv_cache: how every session of the model (generate, batches, new_session, the prefix cache)
    stores keys and values: "fp32" (exact), "bf16" (half the memory and half the bytes read per
    decoded token from the cache: each K/V row is rounded to nearest even as it is written and
    widened back to f32 inside attention; docs/benchmarks.md measures speed, docs/quality.md
    quality) or "auto" (the default): FP32 for FP32 weights, BF16 for BF16, INT8 and INT4
    weights. `Model.kv_cache` says which. device="cuda" keeps an FP32 cache ("auto" is FP32
    there; "bf16" raises DeviceError).
    progress: None draws a bar on a terminal for loads over a second, False never, True always;
    or a callable(done, total, name). Nothing on disk is ever written.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise InvalidArgumentError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fsdecode(path)
    n_threads = check_load_args(precision, device, threads, kv_cache)
    if context_length is not None and (not isinstance(context_length, int) or isinstance(context_length, bool) or context_length < 1):
        raise InvalidArgumentError(f"context_length must be a positive integer or None, got {context_length!r}")
    ckpt = read_checkpoint(path)
    if precision is None and device == "cuda" and ckpt.saved_precision is None and ckpt.default_precision()[0] == "int4":
        precision = "bf16"  # the CUDA kernels have no INT4; BF16 keeps the 4-bit values closest (8-bit mantissa)
    precision = ckpt.resolve_precision(precision)
    kv_cache = resolve_kv_cache(kv_cache, precision, device)
    if precision in ("bf16", "int8", "int4") and device == "cpu":
        _core.prefill_gemm()  # raises on an invalid FERROLM_BF16_PREFILL or FERROLM_AMX
        _core.int8_layout()  # and on an invalid FERROLM_INT8_LAYOUT
    core = build_core_model(ckpt, n_threads, precision, resolve_progress(progress, "loading"))
    backend = backend_for(device, core)
    context_length = _context_length(core, context_length, backend, kv_cache)
    eos = eos_token_ids(ckpt)
    if any(i >= core.vocab_size for i in eos):
        raise ConfigError(f"{ckpt.path}: eos_token_id {list(eos)} lies outside the vocabulary (size {core.vocab_size})")
    return Model(
        core,
        path=ckpt.path,
        config=ckpt.config,
        tokenizer=ckpt.tokenizer,
        eos_token_ids=eos,
        generation_config=GenerationConfig.from_hf(ckpt.generation_config),
        precision=precision,
        context_length=context_length,
        chat_template=ckpt.chat_template,
        checkpoint=ckpt,
        backend=backend,
        kv_cache=kv_cache,
    )


def _context_length(core: "_core.Model", requested: Optional[int], backend: Backend, kv_cache: str = "fp32") -> int:
    """The KV-cache positions per session: `requested` (checked against the model and the
    memory of the device that holds the cache), or the model's maximum, cut to what fits."""
    max_ctx = core.max_position_embeddings
    fits = backend.max_context(core, kv_cache)
    per_position = core.kv_cache_bytes(1, kv_cache)
    if requested is None:
        if fits < 1:
            raise MemoryLimitError(f"one position of the KV cache needs {per_position} bytes, more than this machine's memory")
        if fits < max_ctx:
            warnings.warn(
                f"the model's context of {max_ctx} positions needs a {per_position * max_ctx / 2**30:.1f} GiB KV cache per "
                f"session, more than this machine's memory; using context_length={fits}",
                stacklevel=3,
            )
        return min(max_ctx, fits)
    if requested > max_ctx:
        raise InvalidArgumentError(f"context_length must be an integer in [1, {max_ctx}], got {requested!r}")
    if requested > fits:
        per_value = per_position // (2 * core.num_layers * core.num_kv_heads * core.head_dim)
        raise MemoryLimitError(
            f"context_length={requested} needs a {per_position * requested / 2**30:.1f} GiB KV cache per session "
            f"(2 · {core.num_layers} layers · {core.num_kv_heads} kv heads · {core.head_dim} head_dim · {requested} · "
            f"{per_value} bytes, kv_cache={kv_cache!r}), "
            f"more than this machine's {_core.memory_limit() / 2**30:.1f} GiB of memory; at most {fits} fits"
        )
    return requested
