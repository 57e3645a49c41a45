"""Queueing delay as the event loop sees it: a standing queue counts, one long callback does not."""

from __future__ import annotations

import asyncio
import time

from faceid.server.overload import LoopLag


async def _measure(load: str) -> float:
    lag = LoopLag(interval=0.01, window=3)
    task = asyncio.create_task(lag.run())
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    end = time.perf_counter() + 0.4
    if load == "standing queue":  # always 8 callbacks of 5 ms waiting: each new one waits ~40 ms

        def busy() -> None:
            time.sleep(0.005)
            if time.perf_counter() < end:
                loop.call_soon(busy)

        for _ in range(8):
            loop.call_soon(busy)
        await asyncio.sleep(0.3)
    else:  # one callback that blocks 150 ms, then an idle loop
        time.sleep(0.15)
        await asyncio.sleep(0.3)
    task.cancel()
    return lag.seconds


def test_a_standing_queue_shows_as_lag() -> None:
    assert asyncio.run(_measure("standing queue")) > 0.02


def test_one_long_callback_is_not_a_queue() -> None:
    assert asyncio.run(_measure("one stall")) < 0.01
