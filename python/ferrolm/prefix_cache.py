"""Idle sessions kept for later calls, and the prefix reuse they allow.

A session that finished a generation still holds its prompt's KV cache. The next call takes the
idle session holding the longest reusable prefix of its prompt (a shared system prompt,
few-shot examples, a chat's earlier turns), keeps that prefix and computes only the rest; a
prompt that shares little with every kept session gets a new session while there is room, so
that unrelated calls do not overwrite each other's prefixes.
Reuse is exact: the core tracks which matmul path computed each cached token, and a token
counts only if it matches the prompt and was computed as a cold run of that prompt would
compute it, so the logits are bit-identical to a fresh session's
(`Session.reusable_prefix`, docs/architecture.md). Backends without that bookkeeping (the
CUDA backend) reuse the session's memory but not its cache.

Bounded memory: at most `max_sessions` idle sessions and `max_bytes` of their KV caches
(positions ever written x bytes per position), least recently used dropped first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .errors import InvalidArgumentError

DEFAULT_MAX_SESSIONS = 4
DEFAULT_MAX_BYTES = 1 << 30


@dataclass(frozen=True)
class PrefixCacheInfo:
    """What the cache holds now, and its bounds."""

    sessions: int
    tokens: int
    """Tokens held by the idle sessions."""
    bytes: int
    """KV-cache bytes of the idle sessions (positions ever written x bytes per position)."""
    max_sessions: int
    max_bytes: int


class SessionCache:
    """Idle sessions of a model's variants, most recently used first."""

    def __init__(self, new_session: Callable[[Any], Any], bytes_per_position: int,
                 max_sessions: int = DEFAULT_MAX_SESSIONS, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._new_session = new_session
        self._per_position = bytes_per_position
        self._idle: List[Tuple[Any, Any]] = []  # (core, session), most recent first
        self._lock = threading.Lock()
        self.reuse = True
        self.configure(max_sessions, max_bytes)

    def configure(self, max_sessions: int, max_bytes: Optional[int], reuse: bool = True) -> None:
        if not isinstance(reuse, bool):
            raise InvalidArgumentError(f"reuse must be True or False, got {reuse!r}")
        if not isinstance(max_sessions, int) or isinstance(max_sessions, bool) or max_sessions < 0:
            raise InvalidArgumentError(f"max_sessions must be an integer >= 0, got {max_sessions!r}")
        if max_bytes is None:
            max_bytes = DEFAULT_MAX_BYTES
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise InvalidArgumentError(f"max_bytes must be an integer >= 0 or None, got {max_bytes!r}")
        with self._lock:
            self.max_sessions, self.max_bytes, self.reuse = max_sessions, max_bytes, reuse
            self._trim()

    def take(self, core: Any, prompt: Optional[Sequence[int]]) -> Tuple[Any, int]:
        """A session of `core` for a call, and how many leading tokens of `prompt` it already
        holds exactly (its cache is cut to them).

        The idle session holding the most of the prompt is taken when that is at least half of
        what it holds (a chat's next turn, a shared system prompt); otherwise, while the cache
        has room, a new session is made so that no kept prefix is overwritten, and when it is
        full the least recently used session is reset; `prompt` None (a soft prompt, all
        logits) likewise. With reuse turned off or a backend that cannot reuse, the most
        recently used session is reset, as it is warm (on a device, its decode step captured)."""
        with self._lock:
            mine = [i for i, (c, _) in enumerate(self._idle) if c is core]
            if not mine:
                session, best_r = None, 0
            elif not self.reuse or not hasattr(self._idle[mine[0]][1], "reusable_prefix"):
                session, best_r = self._idle.pop(mine[0])[1], 0
            else:
                best, best_r = None, 0
                for i in mine if prompt is not None else ():
                    r = self._idle[i][1].reusable_prefix(prompt)
                    if r > best_r:
                        best, best_r = i, r
                full = len(self._idle) >= self.max_sessions
                if best is not None and (2 * best_r >= self._idle[best][1].position or full):
                    session = self._idle.pop(best)[1]
                elif full:
                    session, best_r = self._idle.pop(mine[-1])[1], 0
                else:
                    session, best_r = None, 0
        if session is None:
            return self._new_session(core), 0
        if best_r > 0:
            session.truncate(best_r)
        return session, best_r

    def give_back(self, core: Any, session: Any, live: Callable[[Any], bool]) -> None:
        """Keeps `session` as the most recent; drops sessions of retired variants and the least
        recently used past the bounds."""
        with self._lock:
            self._idle = [(core, session)] + [(c, s) for c, s in self._idle if live(c)]
            if not live(core):
                self._idle = self._idle[1:]
            self._trim()

    def clear(self) -> None:
        with self._lock:
            self._idle = []

    def info(self) -> PrefixCacheInfo:
        with self._lock:
            return PrefixCacheInfo(
                sessions=len(self._idle),
                tokens=sum(s.position for _, s in self._idle),
                bytes=sum(self._bytes(s) for _, s in self._idle),
                max_sessions=self.max_sessions,
                max_bytes=self.max_bytes,
            )

    def _bytes(self, session: Any) -> int:
        positions = getattr(session, "touched", None)
        if positions is None:
            positions = session.context_length
        return positions * self._per_position

    def _trim(self) -> None:
        kept, total = [], 0
        for c, s in self._idle[: self.max_sessions]:
            b = self._bytes(s)
            if total + b > self.max_bytes:
                continue
            kept.append((c, s))
            total += b
        self._idle = kept
