"""A conversation on the device: the same interface as the core's Session (see
`ferrolm.backends`), with the KV cache and activations in device memory. Logits come back to
the host once per step and are sampled there by the core's sampler — the same code and RNG as
a CPU session, so equal logits give equal tokens. Plain greedy decoding (no penalty, bias or
suppressed token) takes the argmax on the device instead and copies one token id back; the
logits are copied only when something asks for them."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence

import numpy as np

from ... import _core
from ...errors import ContextLengthError, InvalidArgumentError, InvalidTokenError
from .model import PREFILL_CHUNK, DeviceModel, _cdiv
from .runtime import graphs_enabled

if TYPE_CHECKING:
    from .runtime import Runtime


class CudaSession:
    #: The device's KV cache stores keys and values in FP32 (the only kind it has).
    kv_cache = "fp32"

    def __init__(self, model: DeviceModel, context_length: Optional[int] = None) -> None:
        max_ctx = model.shape.max_positions
        n_ctx = max_ctx if context_length is None else context_length
        if not 1 <= n_ctx <= max_ctx:
            raise InvalidArgumentError(f"context_length must be between 1 and {max_ctx}, got {n_ctx}")
        self.model = model
        self.rt: "Runtime" = model.rt
        self.state = model.new_state(n_ctx)
        self.stream = self.rt.new_stream()
        self._sampler = _core.Sampler(model.shape.vocab)
        self._tokens: List[int] = []
        self._prefix = 0
        self._has_logits = False
        self._logits: Optional[np.ndarray] = None  # host copy of the last logits, when made
        self._decode_step: Optional[Callable[[], None]] = None
        #: kernel launches of one decode step (known once a step ran)
        self.decode_launches = 0
        self._lock = threading.Lock()

    # -- the Session interface -------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return self.state.context

    @property
    def position(self) -> int:
        return self._prefix + len(self._tokens)

    @property
    def prefix_len(self) -> int:
        return self._prefix

    def tokens(self) -> List[int]:
        return list(self._tokens)

    def reset(self) -> None:
        self._prefix = 0
        self._tokens.clear()
        self._has_logits = False
        self._logits = None

    def restart(self) -> None:
        """As reset: the device cache is allocated whole, so there is no memory to keep."""
        self.reset()

    def seed(self, seed: int) -> None:
        self._sampler.seed(seed)

    def forward(self, tokens: Sequence[int], all_logits: bool = False) -> Optional[bytes]:
        if len(tokens) == 0:
            raise InvalidArgumentError("no tokens to process")
        vocab = self.model.shape.vocab
        ids = []
        for t in tokens:
            if not isinstance(t, (int, np.integer)) or isinstance(t, bool) or not 0 <= int(t) < vocab:
                raise InvalidTokenError(f"token id {t} is outside the vocabulary (size {vocab})")
            ids.append(int(t))
        out = self._run(np.asarray(ids, dtype=np.int32), len(ids), all_logits)
        self._tokens.extend(ids)
        return out

    def forward_embeddings(self, embeds: bytes, all_logits: bool = False) -> Optional[bytes]:
        d = self.model.shape.d
        e = np.frombuffer(embeds, dtype=np.float32)
        if e.size == 0 or e.size % d != 0 or len(embeds) % 4 != 0:
            raise InvalidArgumentError(f"embeddings must be [n, {d}] with n >= 1, got {len(embeds) // 4} values")
        if self.position != 0:
            raise InvalidArgumentError("embeddings (a soft prompt) can only start a session: reset it first")
        if not np.isfinite(e).all():
            raise InvalidArgumentError(f"embeddings must be finite, got {e[~np.isfinite(e)][0]}")
        n = e.size // d
        out = self._run(e.reshape(n, d), n, all_logits, embeds=True)
        self._prefix = n
        return out

    def logits(self) -> bytes:
        return self._host_logits().tobytes()

    def sample(self, params: "_core.SamplingParams", gen_start: int = 0, suppress: Sequence[int] = ()) -> int:
        if not self._has_logits:
            raise InvalidArgumentError("no logits yet: feed tokens first")
        if self._logits is None and params.plain_greedy and not suppress:
            st = self.state
            with self._lock, self.rt.on(self.stream):
                self.rt.launch("argmax_f32", (1,), (1024,), (st.logits, np.int32(self.model.shape.vocab), st.token))
                token, host_decides = (int(v) for v in self.rt.download(st.token, self.stream))
            if not host_decides:
                return token
        return self._sampler.sample(self._host_logits().tobytes(), params, self._tokens, gen_start, list(suppress))

    def _host_logits(self) -> np.ndarray:
        """The last logits on the host (copied from the device on first use)."""
        if not self._has_logits:
            raise InvalidArgumentError("no logits yet: feed tokens first")
        if self._logits is None:
            with self._lock, self.rt.on(self.stream):
                self._logits = self.rt.download(self.state.logits, self.stream)
        return self._logits

    # -- running chunks ----------------------------------------------------------------------------
    def _run(self, data: np.ndarray, n: int, all_logits: bool, embeds: bool = False) -> Optional[bytes]:
        needed = self.position + n
        if needed > self.state.context:
            raise ContextLengthError(f"the sequence needs {needed} positions but the context length is {self.state.context}")
        st, rt, vocab = self.state, self.rt, self.model.shape.vocab
        out = np.empty((n, vocab), dtype=np.float32) if all_logits else None
        with self._lock, rt.on(self.stream):
            need = min(n, PREFILL_CHUNK) * vocab
            if all_logits and (st.all_logits is None or st.all_logits.size < need):
                st.all_logits = rt.zeros(need, np.float32)
            done = 0
            while done < n:
                t = min(PREFILL_CHUNK, n - done)
                pos = self.position + done
                rt.write(st.pos, np.asarray([pos], dtype=np.int32), self.stream)
                if embeds:
                    rt.write(st.x, data[done:done + t], self.stream)
                else:
                    rt.write(st.ids, data[done:done + t], self.stream)
                if t == 1 and not embeds and not all_logits:
                    self._decode()
                else:
                    splits = _cdiv(pos + t, st.key_chunk) if t == 1 else None
                    self.model.forward(st, t, embeds, all_logits, splits)
                if all_logits:
                    rows = rt.download(st.all_logits[: t * vocab], self.stream)
                    out[done:done + t] = rows.reshape(t, vocab)
                done += t
            self._has_logits = True
            self._logits = out[-1].copy() if all_logits else None
        return out.tobytes() if out is not None else None

    def _decode(self) -> None:
        """One token from st.ids[0] at st.pos: the captured step replayed, or launched afresh."""
        st, before = self.state, self.rt.launches
        if not graphs_enabled():
            self.model.forward(st, 1, False, False, _cdiv(self.position + 1, st.key_chunk))
            self.decode_launches = self.rt.launches - before
            return
        if self._decode_step is None:
            self._decode_step = self.rt.capture(self.stream, lambda: self.model.forward(st, 1, False, False, st.max_splits))
            self.decode_launches = self.rt.launches - before
        self._decode_step()
