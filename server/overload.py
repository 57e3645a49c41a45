"""Load shedding by queueing delay: how long a call that has arrived waits before its handler runs.

gRPC Python's aio server accepts calls into asyncio tasks that wait in the event loop's ready
queue; under overload that queue, not the handlers, is where calls wait, and a count of calls
in progress cannot see it.  :class:`LoopLag` measures the wait directly (how late a timer's
callback runs), and the servicer refuses new calls with RESOURCE_EXHAUSTED while it exceeds
``max_queue_ms``: refusals are cheap, so the queue drains and the latency of the calls that are
served stays bounded (the idea of CoDel: act on the time spent queued, not on the queue length).
"""

from __future__ import annotations

import asyncio
from collections import deque


class LoopLag:
    """The event loop's scheduling delay: the smallest of the last ``window`` samples, taken every
    ``interval`` seconds.  One long callback makes one large sample and does not count as a queue;
    a queue that stands through ``window`` samples does (the idea of CoDel's minimum delay)."""

    def __init__(self, interval: float = 0.01, window: int = 3) -> None:
        self.interval = interval
        self.samples: deque[float] = deque(maxlen=window)

    @property
    def seconds(self) -> float:
        return min(self.samples) if len(self.samples) == self.samples.maxlen else 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            self.samples.append(max(0.0, loop.time() - start - self.interval))
