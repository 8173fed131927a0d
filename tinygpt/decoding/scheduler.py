"""Continuous batching for many threads: a Scheduler drives an Engine's decode loop from a thread of its own.

Requests submitted from any thread (the app's chats, `tinygpt serve`'s HTTP requests) join the shared batch
between steps and leave it when they end or are cancelled, so one engine serves them all: one KV cache, one CUDA
graph per batch bucket. Tokens go back to each caller through a callback, a queue (`stream`) or asyncio
(`astream`), a replay's worth at a time: per token, a hand-over between threads would cost more than a step.
"""

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator

from tinygpt.decoding.engine import Engine
from tinygpt.decoding.request import Live, Request


class Scheduler:
    """Continuous batching for many threads: one thread of its own drives an Engine's loop, and requests submitted
    from any thread join the batch between steps and leave it when they end or are cancelled.

    While no request is decoding the thread waits (and the engine is free for its own `run`).
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._submitted: queue.SimpleQueue[Live | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="tinygpt-scheduler", daemon=True)
        self._thread.start()

    def submit(self, request: Request, deliver: Callable[[list[int] | None | Exception], None]) -> Callable[[], None]:
        """Queue `request`; `deliver` is called from the scheduler's thread with each list of new token ids as it is
        read, then None at the end (or the exception that ended it). Returns `cancel`, which ends the request before
        its next read."""
        cancelled = threading.Event()
        self._submitted.put(Live(request, cancelled.is_set, deliver=deliver))
        return cancelled.set

    def stream(self, request: Request, stop_event: threading.Event | None = None) -> Iterator[int]:
        """The request's token ids as they come, in the caller's thread; closing the stream (or setting
        `stop_event`) cancels it."""
        reads: queue.SimpleQueue = queue.SimpleQueue()
        cancel = self.submit(request, reads.put)
        try:
            while (tokens := reads.get()) is not None:
                if isinstance(tokens, Exception):
                    raise tokens
                for token in tokens:
                    if stop_event is not None and stop_event.is_set():
                        return
                    yield token
        finally:
            cancel()

    async def astream(self, request: Request) -> AsyncIterator[int]:
        """As `stream`, for asyncio: the tokens come through the running loop; cancelling the task cancels the
        request."""
        loop, reads = asyncio.get_running_loop(), asyncio.Queue()
        cancel = self.submit(request, lambda tokens: loop.call_soon_threadsafe(reads.put_nowait, tokens))
        try:
            while (tokens := await reads.get()) is not None:
                if isinstance(tokens, Exception):
                    raise tokens
                for token in tokens:
                    yield token
        finally:
            cancel()

    def close(self) -> None:
        """End the scheduler's thread once the requests it holds are done."""
        self._submitted.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (first := self._submitted.get()) is not None and self._turn(first):
            pass

    def _turn(self, first: Live) -> bool:
        """Decode `first` and whatever joins it until nothing is live; False once close() was asked."""
        pending, taken, open_ = [first], set(), [True]  # taken: requests in the loop and not yet ended

        def take(idle: bool) -> Live | None:
            try:
                entry = pending.pop() if pending else self._submitted.get_nowait()
            except queue.Empty:
                return None
            if entry is None:  # close(): finish what is live, then stop
                open_[0] = False
                return None
            taken.add(entry)
            return entry

        with self.engine.busy:
            try:
                for entry, tokens in self.engine.decode(take):
                    if tokens is None:
                        taken.discard(entry)
                    self._deliver(entry, tokens)
            except Exception as error:  # the engine failed: every request it held hears why
                for entry in taken:
                    self._deliver(entry, error)
        return open_[0]

    @staticmethod
    def _deliver(entry: Live, tokens) -> None:
        try:
            entry.deliver(tokens)
        except RuntimeError:  # the caller's event loop is closed: nobody listens any more
            pass


__all__ = ["Scheduler"]
