"""Micro-batching: concurrent requests gathered into one call of a batch function.

Requests that arrive within ``window`` seconds of the first (or until ``max_items``
items are waiting) are handed together to ``run`` in a worker thread: one index
search for many identify-by-embedding calls, one network batch for the faces of
many photos.  A lone request waits at most the window (about a millisecond).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Pending(Generic[Item, Result]):
    items: Sequence[Item]
    future: asyncio.Future[list[Result]]


@dataclass
class _Queue(Generic[Item, Result]):
    pending: list[_Pending[Item, Result]] = field(default_factory=list)
    count: int = 0
    timer: asyncio.TimerHandle | None = None


class MicroBatcher(Generic[Item, Result]):
    """Gathers ``submit`` calls with equal keys into one ``run(key, items)`` call."""

    def __init__(
        self,
        run: Callable[[Hashable, list[Item]], list[Result]],
        executor: Executor,
        window: float = 0.001,
        max_items: int = 256,
    ) -> None:
        self._run = run
        self._executor = executor
        self.window = window
        self.max_items = max_items
        self._queues: dict[Hashable, _Queue[Item, Result]] = {}
        self.batches = 0
        self.items = 0

    async def submit(self, key: Hashable, items: Sequence[Item]) -> list[Result]:
        """Results for ``items``, in order, computed together with other callers' items."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Result]] = loop.create_future()
        queue = self._queues.setdefault(key, _Queue())
        queue.pending.append(_Pending(items, future))
        queue.count += len(items)
        if queue.count >= self.max_items:
            self._flush(key)
        elif queue.timer is None:
            queue.timer = loop.call_later(self.window, self._flush, key)
        return await future

    def _flush(self, key: Hashable) -> None:
        queue = self._queues.pop(key, None)
        if queue is None:
            return
        if queue.timer is not None:
            queue.timer.cancel()
        live = [p for p in queue.pending if not p.future.cancelled()]
        if not live:
            return
        self.batches += 1
        items = [item for p in live for item in p.items]
        self.items += len(items)
        loop = asyncio.get_running_loop()
        task = loop.run_in_executor(self._executor, self._run, key, items)
        task.add_done_callback(lambda done: self._deliver(done, live))

    @staticmethod
    def _deliver(done: asyncio.Future[list[Result]], pending: list[_Pending[Item, Result]]) -> None:
        error = done.exception()
        results = None if error else done.result()
        start = 0
        for p in pending:
            if p.future.done():
                start += len(p.items)
                continue
            if error is not None:
                p.future.set_exception(error)
            else:
                assert results is not None
                p.future.set_result(results[start : start + len(p.items)])
            start += len(p.items)
