"""The backend seam: what the generation loop needs of a model's session.

A backend makes sessions for a core model (`ferrolm._core.Model`, which holds the weights on
the host and knows the architecture). A session is one conversation's state (KV cache,
history, last logits, sampler) with this interface, which `generation.run` and `Model` use and
nothing more:

    context_length, position, prefix_len        (properties)
    kv_cache                                    "fp32" or "bf16": how its KV cache stores keys and values
    tokens() -> list[int]
    reset(); seed(seed)
    forward(tokens, all_logits=False) -> Optional[bytes]           float32 [n, vocab] when asked
    forward_embeddings(embeds, all_logits=False) -> Optional[bytes] soft prompts, at the start
    logits() -> bytes                                               float32 [vocab], last token
    sample(params, gen_start, suppress) -> int

Optional, where a backend can do better than the generic fallback (`generation` checks):

    session.forward_prompt(tokens, start, total), reusable_prefix(prompt), truncate(n), touched
        prompts fed in pieces on the paths of one call, and exact prefix reuse (`cpu`);
        without them a prompt is fed chunk by chunk with forward() and idle sessions are
        reused for their memory only
    session.logprobs(token, top)      log-probabilities (else `_core.logprobs(session.logits())`)
    backend.decode_batch(sessions, tokens)
        one decode step of several sessions in one pass over the weights (`cpu`); without it
        a batch steps its sessions one after the other (`cuda` today)

`cpu` is the Rust core's own session (no wrapper: unchanged speed); `cuda` computes on an NVIDIA
GPU through cupy, or on the CPU emulator of the CUDA execution model (FERROLM_CUDA_EMULATE=1).
Both sample on the host with the core's sampler, so equal logits give equal tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .. import _core

DEVICES = ("cpu", "cuda")


class Backend(Protocol):
    name: str

    def new_session(self, core: "_core.Model", context_length: int, kv_cache: str = "fp32") -> Any: ...

    def max_context(self, core: "_core.Model", kv_cache: str = "fp32") -> int: ...

    def keep_only(self, cores: "list[_core.Model]") -> None: ...


def backend_for(device: str, core: "_core.Model") -> Backend:
    """The backend of `device` ("cpu" or "cuda"), with `core`'s weights in place on it."""
    if device == "cuda":
        from .cuda import CudaBackend

        return CudaBackend(core)
    from .cpu import CpuBackend

    return CpuBackend()
