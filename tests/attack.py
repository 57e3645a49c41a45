"""Calls that send their headers and never a message, from a process of their own (so that the
attacker's client does not share an interpreter lock with the caller a test measures).

    python tests/attack.py ADDRESS METHOD CALLS CHANNELS PERSIST [API_KEY]

Opens CALLS calls of METHOD (a unary method, or ``/faceid.v1.FaceId/BulkEnroll``) over CHANNELS
connections; with PERSIST > 0, each call that ends is opened again a second later for that many
seconds.  Prints ``opened`` once the calls are on the wire, then a JSON object of how many calls
ended with each status code.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator

import grpc

BULK = "/faceid.v1.FaceId/BulkEnroll"


async def _never() -> AsyncIterator[bytes]:
    await asyncio.sleep(3600)
    yield b""  # pragma: no cover


async def attack(
    address: str, method: str, calls: int, channels: int, persist: float, key: str
) -> Counter[str]:
    codes: Counter[str] = Counter()
    metadata = (("authorization", f"Bearer {key}"),) if key else None

    async def one(channel: grpc.aio.Channel) -> None:
        try:
            if method == BULK:
                async for _ in channel.stream_stream(method)(_never(), metadata=metadata):
                    pass
            else:
                await channel.stream_unary(method)(_never(), metadata=metadata)
            codes["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            codes[exc.code().name] += 1

    async def held(channel: grpc.aio.Channel) -> None:
        end = time.monotonic() + persist
        await one(channel)
        while time.monotonic() < end:
            await asyncio.sleep(1.0)
            await one(channel)

    opened = [grpc.aio.insecure_channel(address) for _ in range(channels)]
    tasks = [asyncio.create_task(held(opened[i % channels])) for i in range(calls)]
    await asyncio.sleep(0.5)
    print("opened", flush=True)
    await asyncio.gather(*tasks)
    for c in opened:
        await c.close()
    return codes


def main() -> None:
    address, method, calls, channels, persist = sys.argv[1:6]
    key = sys.argv[6] if len(sys.argv) > 6 else ""
    codes = asyncio.run(attack(address, method, int(calls), int(channels), float(persist), key))
    print(json.dumps(dict(codes)), flush=True)


if __name__ == "__main__":
    main()
