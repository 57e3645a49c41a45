"""The servicer in process: a real gRPC server on a loopback port in the test's own event loop,
over an :class:`Engine` the test also holds, so that what the transport answers can be compared
with what the engine answers (one Identify implementation, not two)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

from faceid.client.client import AsyncFaceIdClient, FaceIdClient, FaceIdClientError, enroll_request
from faceid.engine.domain.results import EmbeddingInput
from faceid.engine.service import Engine
from faceid.engine.vision.pipeline import FacePipeline
from faceid.server.app import Server
from faceid.server.config import ServerConfig


@asynccontextmanager
async def serving(data_dir: Path, pipeline: FacePipeline) -> AsyncIterator[tuple[Server, AsyncFaceIdClient]]:
    config = ServerConfig.load(None, {}, port=0, data_dir=data_dir)
    server = Server(config, Engine(config.engine, pipeline=pipeline))
    await server.start()
    assert server.first_key is not None
    try:
        async with AsyncFaceIdClient(f"127.0.0.1:{server.port}", api_key=server.first_key.token) as client:
            yield server, client
    finally:
        await server.stop()


def test_identify_over_grpc_answers_what_the_engine_answers(
    faces: Path, tmp_path: Path, pipeline: FacePipeline
) -> None:
    root = faces / "lfw_orig_subset10_krasserm" / "images"
    people = sorted(p for p in root.iterdir() if p.is_dir())[:5]

    async def run() -> None:
        async with serving(tmp_path / "data", pipeline) as (server, client):
            await client.create_gallery("g")
            for person in people:
                for photo in sorted(person.iterdir())[:2]:
                    await client.enroll("g", person.name, photo=photo.read_bytes())
            probe = sorted(people[0].iterdir())[3].read_bytes()
            over_grpc = await client.identify("g", photo=probe, top_k=3)
            direct = await server.engine.identify("g", probe, top_k=3)
            assert len(over_grpc) == len(direct.faces) >= 1  # largest face first
            for sent, answered in zip(over_grpc, direct.faces, strict=True):
                assert sent.box is not None and answered.box is not None
                assert (sent.box.left, sent.box.top, sent.box.right, sent.box.bottom) == (
                    answered.box.left,
                    answered.box.top,
                    answered.box.right,
                    answered.box.bottom,
                )
                assert [m.identity_id for m in sent.matches] == [m.external_id for m in answered.matches]
                np.testing.assert_allclose(
                    [m.distance for m in sent.matches], [m.distance for m in answered.matches], rtol=1e-6
                )
            assert over_grpc[0].matches[0].identity_id == people[0].name
            # the largest face's embedding, sent as an embedding, ranks the same identities
            embedded = (await server.engine.embed(probe))[0]
            by_embedding = await client.identify("g", embedding=embedded.embedding.tolist(), top_k=3)
            assert [m.identity_id for m in by_embedding[0].matches] == [
                m.identity_id for m in over_grpc[0].matches
            ]

    asyncio.run(run())


def test_engine_errors_reach_the_caller_as_status_codes(tmp_path: Path, pipeline: FacePipeline) -> None:
    async def run() -> None:
        async with serving(tmp_path / "data", pipeline) as (server, client):
            with pytest.raises(FaceIdClientError) as missing:
                await client.identify("nowhere", embedding=[1.0] + [0.0] * 127)
            assert missing.value.code == "NOT_FOUND"
            await client.create_gallery("g")
            with pytest.raises(FaceIdClientError) as short:
                await client.identify("g", embedding=[1.0] * 3)
            assert short.value.code == "INVALID_ARGUMENT" and "128" in short.value.message
            with pytest.raises(FaceIdClientError) as top:
                await client.identify("g", embedding=[1.0] + [0.0] * 127, top_k=1000)
            assert top.value.code == "INVALID_ARGUMENT" and "top_k" in top.value.message
            # the engine refuses the same way when called directly
            with pytest.raises(Exception, match="top_k"):
                await server.engine.identify("g", EmbeddingInput(np.eye(128, dtype=np.float32)[0]), 1000)

    asyncio.run(run())


def public_calls(cls: type) -> set[str]:
    return {n for n in vars(cls) if not n.startswith("_") and callable(getattr(cls, n))} - {"close"}


def test_the_asyncio_client_has_every_call_of_the_blocking_one(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    assert public_calls(FaceIdClient) == public_calls(AsyncFaceIdClient)
    vector = [1.0] + [0.0] * 127

    async def run() -> None:
        async with serving(tmp_path / "data", pipeline) as (_server, client):
            await client.wait_ready()
            await client.create_gallery("g")
            requests = [enroll_request("g", f"p{i}", embedding=np.roll(vector, i).tolist()) for i in range(3)]
            results = [r async for r in client.bulk_enroll(requests)]
            assert [r.index for r in results] == [0, 1, 2] and all(r.faces for r in results)
            updated = await client.update_identity("g", "p1", display_name="P one")
            assert updated.display_name == "P one"
            await client.delete_face("g", results[2].faces[0].face_id)
            assert [g.face_count for g in await client.list_galleries()] == [2]
            await client.delete_gallery("g")
            assert await client.list_galleries() == []

    asyncio.run(run())


def test_the_detector_is_chosen_by_a_setting_and_serves_the_detect_call(faces: Path, tmp_path: Path) -> None:
    """``pipeline.detect.detector`` reaches the engine from the settings: with the CNN a profile
    shot HOG misses has its face found through the Detect call."""
    profile = sorted((faces / "cfp_dev" / "images").glob("*/profile_01.jpg"))[0].read_bytes()

    async def run() -> None:
        config = ServerConfig.load(
            None, {"FACEID_PIPELINE__DETECT__DETECTOR": "cnn"}, port=0, data_dir=tmp_path
        )
        assert config.engine.pipeline.detect.detector == "cnn"
        server = Server(config)
        await server.start()
        try:
            assert server.first_key is not None
            async with AsyncFaceIdClient(f"127.0.0.1:{server.port}", api_key=server.first_key.token) as c:
                [face] = await c.detect(profile)
                assert face.score > 0 and len(face.landmarks) == 5
        finally:
            await server.stop()

    asyncio.run(run())
