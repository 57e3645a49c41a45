"""Adaptive micro-batching: a lone call runs at once; calls arriving meanwhile share the next batch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor

import pytest

from faceid.engine.service.batching import MicroBatcher


class Recorder:
    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, key: Hashable, items: list[int]) -> list[int]:
        with self.lock:
            self.batches.append(list(items))
        time.sleep(self.delay)
        if self.fail:
            raise ValueError("bad batch")
        return [i * 10 for i in items]


def test_a_lone_call_runs_at_once_in_a_batch_of_its_own() -> None:
    run = Recorder()

    async def main() -> list[int]:
        batcher = MicroBatcher(run, ThreadPoolExecutor(2), max_inflight=1)
        t0 = time.perf_counter()
        out = await batcher.submit("k", [3])
        assert time.perf_counter() - t0 < 0.05
        return out

    assert asyncio.run(main()) == [30]
    assert run.batches == [[3]]


def test_calls_arriving_during_a_batch_share_the_next_one_and_get_their_own_results() -> None:
    run = Recorder(delay=0.05)

    async def main() -> list[list[int]]:
        batcher = MicroBatcher(run, ThreadPoolExecutor(2), max_inflight=1)
        first = asyncio.create_task(batcher.submit("k", [0]))
        await asyncio.sleep(0.01)  # the first batch is running now
        rest = [asyncio.create_task(batcher.submit("k", [i, i + 100])) for i in range(1, 11)]
        return [await first] + [await r for r in rest]

    results = asyncio.run(main())
    assert results[0] == [0]
    assert results[1:] == [[i * 10, (i + 100) * 10] for i in range(1, 11)]
    assert len(run.batches) == 2 and len(run.batches[1]) == 20


def test_batches_never_exceed_max_items() -> None:
    run = Recorder(delay=0.02)

    async def main() -> None:
        batcher = MicroBatcher(run, ThreadPoolExecutor(2), max_items=4, max_inflight=1)
        await asyncio.gather(*(batcher.submit("k", [i]) for i in range(20)))

    asyncio.run(main())
    assert max(len(b) for b in run.batches) <= 4
    assert sorted(i for b in run.batches for i in b) == list(range(20))


def test_different_keys_are_never_mixed() -> None:
    run = Recorder(delay=0.02)

    async def main() -> None:
        batcher = MicroBatcher(run, ThreadPoolExecutor(2), max_inflight=1)
        await asyncio.gather(*(batcher.submit(("gallery", i % 2), [i]) for i in range(10)))

    asyncio.run(main())
    for batch in run.batches:
        assert len({i % 2 for i in batch}) == 1


def test_an_error_reaches_every_caller_of_the_batch() -> None:
    run = Recorder(fail=True)

    async def main() -> None:
        batcher = MicroBatcher(run, ThreadPoolExecutor(2))
        results = await asyncio.gather(*(batcher.submit("k", [i]) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)

    asyncio.run(main())


def test_a_cancelled_call_is_left_out_of_the_next_batch() -> None:
    run = Recorder(delay=0.05)

    async def main() -> None:
        batcher = MicroBatcher(run, ThreadPoolExecutor(2), max_inflight=1)
        first = asyncio.create_task(batcher.submit("k", [1]))
        await asyncio.sleep(0.01)
        doomed = asyncio.create_task(batcher.submit("k", [2]))
        kept = asyncio.create_task(batcher.submit("k", [3]))
        await asyncio.sleep(0)
        doomed.cancel()
        assert await first == [10] and await kept == [30]
        with pytest.raises(asyncio.CancelledError):
            await doomed

    asyncio.run(main())
    assert [2] not in run.batches and all(2 not in b for b in run.batches)
