"""asyncio front ends: a generation runs in the event loop's default executor (the core
releases the GIL while it computes), so the loop stays free; cancelling the task stops the
work before its next prefill chunk or decode step."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Callable, List, Optional, Tuple

from .generation import GenerationResult, TokenLogprob


class _Either:
    """Set when our own event or the caller's cancel token is set."""

    def __init__(self, own: threading.Event, user: Any) -> None:
        self.own, self.user = own, user

    def is_set(self) -> bool:
        return self.own.is_set() or (self.user is not None and self.user.is_set())

    def set(self) -> None:
        self.own.set()


async def run_async(call: Callable[[Any], Any], user_cancel: Any = None) -> Any:
    """Runs `call(cancel_token)` off the event loop. If the awaiting task is cancelled, the
    token is set and the worker is waited for (it stops within one decode step or prefill
    chunk and hands its sessions back) before CancelledError propagates."""
    token = _Either(threading.Event(), user_cancel)
    fut = asyncio.get_running_loop().run_in_executor(None, call, token)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        token.set()
        try:
            await fut
        except BaseException:
            pass
        raise


class AsyncTextStream(AsyncIterator[str]):
    """`async for delta in stream`: text deltas as tokens are generated (the generation runs in
    the loop's default executor and hands each delta to the loop when the loop asks for the
    next one: like a plain stream, it never runs ahead of its consumer). `.result` holds the
    GenerationResult at the end; `.logprobs` grows as tokens come when asked for. Cancelling
    the consuming task, `await stream.aclose()` or dropping the stream stops the work within
    one decode step."""

    def __init__(self, open_stream: Callable[[Any], Any], user_cancel: Any = None) -> None:
        self._open = open_stream
        self._token = _Either(threading.Event(), user_cancel)
        self._queue: Optional[asyncio.Queue] = None
        self._worker: Optional[asyncio.Future] = None
        self._stream: Any = None
        self._demand = threading.Semaphore(0)
        self._done = False
        self.result: Optional[GenerationResult] = None

    @property
    def logprobs(self) -> Optional[List[TokenLogprob]]:
        return None if self._stream is None else self._stream.logprobs

    def __aiter__(self) -> "AsyncTextStream":
        return self

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        token, demand = self._token, self._demand

        def put(item: Tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody listens any more
                token.set()

        def work() -> None:
            # one delta per request of the consumer, as a plain stream: nothing runs ahead
            try:
                stream = self._open(token)
                self._stream = stream
                while True:
                    while not demand.acquire(timeout=0.05):
                        if token.is_set():
                            break
                    if token.is_set():
                        stream.close()
                        put(("end", stream.result))
                        return
                    try:
                        delta = next(stream)
                    except StopIteration:
                        put(("end", stream.result))
                        return
                    put(("delta", delta))
            except BaseException as e:  # handed to the consumer
                put(("error", e))

        self._queue = queue
        self._worker = loop.run_in_executor(None, work)

    async def __anext__(self) -> str:
        if self._done:
            raise StopAsyncIteration
        if self._queue is None:
            self._start()
        assert self._queue is not None
        self._demand.release()
        try:
            kind, value = await self._queue.get()
        except asyncio.CancelledError:
            self._token.set()
            raise
        if kind == "delta":
            return value
        self._done = True
        if kind == "error":
            raise value
        self.result = value
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stops the generation (before its next decode step) and waits for the worker; then
        `.result` holds what was generated, with finish_reason "cancelled" unless it had ended."""
        self._token.set()
        if self._worker is not None and self._queue is not None and not self._done:
            try:
                await self._worker
            except BaseException:
                pass
            while not self._queue.empty():
                kind, value = self._queue.get_nowait()
                if kind == "end":
                    self.result = value
        self._done = True

    def __del__(self) -> None:
        self._token.set()
