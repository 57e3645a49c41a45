"""Micro-batching: concurrent requests gathered into one call of a batch function.

Adaptive: while fewer than ``max_inflight`` batches of a key are running, a
request starts at once (a lone request waits for nothing); requests that arrive
while they run wait, and are handed over together as soon as one finishes (or
``max_items`` of them wait).  So batches grow with the load by themselves: one
index search for many identify-by-embedding calls, one network batch for the
faces of many photos.  ``window`` (seconds, default 0) additionally holds the
first request of an idle key that long, trading latency for bigger batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from faceid.engine.service.telemetry import Telemetry, Unobserved

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Pending(Generic[Item, Result]):
    items: Sequence[Item]
    future: asyncio.Future[list[Result]]
    #: When it was submitted (the event loop's clock).
    since: float


@dataclass
class _Queue(Generic[Item, Result]):
    pending: list[_Pending[Item, Result]] = field(default_factory=list)
    count: int = 0
    inflight: int = 0
    timer: asyncio.TimerHandle | None = None


class MicroBatcher(Generic[Item, Result]):
    """Gathers ``submit`` calls with equal keys into ``run(key, items)`` calls in ``executor``."""

    def __init__(
        self,
        run: Callable[[Hashable, list[Item]], list[Result]],
        executor: Executor,
        window: float = 0.0,
        max_items: int = 256,
        max_inflight: int = 2,
        name: str = "",
        telemetry: Telemetry | None = None,
    ) -> None:
        """``name`` and ``telemetry``: each batch is reported as ``telemetry.batch(name, ...)``."""
        self._run = run
        self.name = name
        self._telemetry: Telemetry = telemetry or Unobserved()
        self._executor = executor
        self.window = window
        self.max_items = max_items
        self.max_inflight = max_inflight
        self._queues: dict[Hashable, _Queue[Item, Result]] = {}
        self.batches = 0
        self.items = 0

    async def submit(self, key: Hashable, items: Sequence[Item]) -> list[Result]:
        """Results for ``items``, in order, computed together with other callers' items."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Result]] = loop.create_future()
        queue = self._queues.setdefault(key, _Queue())
        queue.pending.append(_Pending(items, future, loop.time()))
        queue.count += len(items)
        if queue.count >= self.max_items:
            self._flush(key)
        elif queue.inflight < self.max_inflight:
            if self.window > 0 and queue.inflight == 0:
                if queue.timer is None:
                    queue.timer = loop.call_later(self.window, self._flush, key)
            else:
                self._flush(key)
        return await future

    def _flush(self, key: Hashable) -> None:
        queue = self._queues.get(key)
        if queue is None:
            return
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        live = [p for p in queue.pending if not p.future.cancelled()]  # deadline passed: skip the work
        queue.pending, queue.count = [], 0
        if not live:
            self._forget(key, queue)
            return
        queue.inflight += 1
        self.batches += 1
        items = [item for p in live for item in p.items]
        self.items += len(items)
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._telemetry.batch(self.name, len(items), [now - p.since for p in live])
        task = loop.run_in_executor(self._executor, self._run, key, items)
        task.add_done_callback(lambda done: self._done(key, done, live))

    def _forget(self, key: Hashable, queue: _Queue[Item, Result]) -> None:
        if not queue.pending and not queue.inflight and self._queues.get(key) is queue:
            del self._queues[key]

    def _done(
        self, key: Hashable, done: asyncio.Future[list[Result]], live: list[_Pending[Item, Result]]
    ) -> None:
        queue = self._queues[key]
        queue.inflight -= 1
        self._deliver(done, live)
        if queue.pending:
            self._flush(key)
        else:
            self._forget(key, queue)

    @staticmethod
    def _deliver(done: asyncio.Future[list[Result]], pending: list[_Pending[Item, Result]]) -> None:
        error = done.exception()
        results = None if error else done.result()
        start = 0
        for p in pending:
            if not p.future.done():
                if error is not None:
                    p.future.set_exception(error)
                else:
                    assert results is not None
                    p.future.set_result(results[start : start + len(p.items)])
            start += len(p.items)
