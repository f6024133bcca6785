"""The CPU backend: the Rust core's sessions, used as they are."""

from __future__ import annotations

from typing import List

from .. import _core


class CpuBackend:
    name = "cpu"

    def new_session(self, core: "_core.Model", context_length: int, kv_cache: str = "fp32") -> "_core.Session":
        return core.new_session(context_length, kv_cache)

    def max_context(self, core: "_core.Model", kv_cache: str = "fp32") -> int:
        """The longest context whose KV cache (stored as `kv_cache`) fits in this machine's memory."""
        return core.max_context_in_memory(kv_cache)

    def keep_only(self, cores: "list[_core.Model]") -> None:
        """Nothing to free: the cores own their weights, sessions their caches."""

    def decode_batch(self, sessions: "List[_core.Session]", tokens: List[int]) -> None:
        """One decode step of several sessions: one pass over the weights for all of them."""
        _core.decode_batch(sessions, tokens)
