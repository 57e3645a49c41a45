"""The servicer in process: a real gRPC server on a loopback port in the test's own event loop,
over an :class:`Engine` the test also holds, so that what the transport answers can be compared
with what the engine answers (one Identify implementation, not two)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from faceid.client.client import AsyncFaceIdClient, FaceIdClient, FaceIdClientError, enroll_request
from faceid.engine.domain.results import EmbeddingInput
from faceid.engine.service import Engine
from faceid.engine.vision.pipeline import FacePipeline
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.server.app import Server
from faceid.server.config import ServerConfig

from .conftest import encode


@asynccontextmanager
async def serving(
    data_dir: Path, pipeline: FacePipeline, settings: dict[str, Any] | None = None
) -> AsyncIterator[tuple[Server, AsyncFaceIdClient]]:
    config = ServerConfig.load(None, settings or {}, port=0, data_dir=data_dir)
    server = Server(config, Engine(config.engine, pipeline=pipeline))
    await server.start()
    await server.open()
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
            clustered = await client.cluster_faces("g", [np.roll(vector, i).tolist() for i in range(2)])
            assert [c.singleton for c in clustered.clusters] == [True, True]
            run = await client.start_clustering("g")
            done = await client.wait_clustering("g", run.run_id, poll=0.05, timeout=60)
            assert done.state == "SUCCEEDED" and [r.run_id for r in await client.list_clusterings("g")] == [
                run.run_id
            ]
            assert [c.rank async for c in client.list_clusters("g", run.run_id)] == [1, 2]
            promoted = await client.promote_cluster("g", run.run_id, 1, "first")
            merged = await client.merge_cluster("g", run.run_id, 2, "first")
            assert len(promoted.moved_face_ids) == len(merged.moved_face_ids) == 1
            await client.delete_clustering("g", run.run_id)
            await client.delete_gallery("g")
            assert await client.list_galleries() == []

    asyncio.run(run())


def test_the_detector_is_chosen_by_a_setting_and_serves_the_detect_call(
    faces: Path, tmp_path: Path, pipeline: FacePipeline
) -> None:
    """``pipeline.detect.detector`` reaches the engine from the settings: a profile shot HOG misses
    has its face found through the Detect call by the default detector, which has the CNN."""
    profile = sorted((faces / "cfp_dev" / "images").glob("*/profile_01.jpg"))[0].read_bytes()

    async def run() -> None:
        config = ServerConfig.load(
            None, {"FACEID_PIPELINE__DETECT__DETECTOR": "hog"}, port=0, data_dir=tmp_path / "hog"
        )
        assert config.engine.pipeline.detect.detector == "hog"
        server = Server(config)
        await server.start()
        await server.open()
        try:
            assert server.first_key is not None
            async with AsyncFaceIdClient(f"127.0.0.1:{server.port}", api_key=server.first_key.token) as c:
                assert await c.detect(profile) == []
        finally:
            await server.stop()
        async with serving(tmp_path / "cnn", pipeline) as (server, client):
            assert server.engine.config.pipeline.detect.detector == "auto"
            assert pipeline.detector.kind in ("cnn", "cascade")  # the CNN on a GPU, else HOG, then the CNN
            [face] = await client.detect(profile)
            assert face.score > 0 and len(face.landmarks) == 5

    asyncio.run(run())


def _two_people(faces: Path) -> bytes:
    """A 1000×400 photo: Colin Powell large on the left, Serena Williams smaller at the centre."""
    lfw = faces / "lfw" / "images"
    canvas = Image.new("RGB", (1000, 400), (90, 90, 90))
    canvas.paste(Image.open(lfw / "Colin_Powell" / "0001.jpg").resize((375, 375)), (0, 12))
    canvas.paste(Image.open(lfw / "Serena_Williams" / "0001.jpg"), (375, 75))
    return encode(canvas, "JPEG", quality=95)


def test_a_photo_probe_takes_the_face_its_choice_names(
    faces: Path, tmp_path: Path, pipeline: FacePipeline
) -> None:
    """Largest, nearest the centre (the default), or the caller's box: each call means the face it
    says, in Verify, Identify and Enroll."""
    lfw = faces / "lfw" / "images"
    photo = _two_people(faces)

    async def run() -> None:
        async with serving(tmp_path / "data", pipeline) as (_server, client):
            await client.create_gallery("g")
            await client.enroll("g", "powell", photo=(lfw / "Colin_Powell" / "0002.jpg").read_bytes())
            await client.enroll("g", "serena", photo=(lfw / "Serena_Williams" / "0002.jpg").read_bytes())
            found = await client.detect(photo)
            assert len(found) == 2 and found[0].box.right < found[1].box.left  # Powell's, the larger, first
            b = found[0].box
            powell_box = (b.left, b.top, b.right, b.bottom)

            async def matches(identity: str, **face: Any) -> bool:
                return (await client.verify("g", photo=photo, identity_id=identity, **face)).is_match

            assert await matches("powell", face="largest") and not await matches("serena", face="largest")
            assert await matches("serena", face="centre") and not await matches("powell", face="centre")
            assert await matches("serena")  # the default rule: nearest the centre
            assert await matches("powell", face=powell_box)

            every = await client.identify("g", photo=photo)
            assert len(every) == 2  # no choice: every face
            [largest] = await client.identify("g", photo=photo, face="largest")
            assert largest.matches[0].identity_id == "powell"
            [boxed] = await client.identify("g", photo=photo, face=powell_box)
            assert boxed.matches[0].identity_id == "powell" and boxed.box is not None
            assert (boxed.box.left, boxed.box.top, boxed.box.right, boxed.box.bottom) == powell_box

            [enrolled] = await client.enroll("g", "pair", photo=photo)  # the default: Serena's face
            [by_box] = await client.enroll("g", "pair", photo=photo, face=powell_box)
            assert by_box.face_id != enrolled.face_id and not by_box.already_enrolled
            [again] = await client.enroll("g", "pair", photo=photo, face=powell_box)
            assert again.already_enrolled and again.face_id == by_box.face_id

    asyncio.run(run())


def test_a_face_choice_that_cannot_apply_is_refused_with_what_to_send(
    faces: Path, tmp_path: Path, pipeline: FacePipeline
) -> None:
    photo = _two_people(faces)

    async def run() -> None:
        async with serving(tmp_path / "data", pipeline) as (_server, client):
            await client.create_gallery("g")
            await client.enroll("g", "x", embedding=[1.0] + [0.0] * 127)
            refusals = {
                "an embedding": {"embedding": [1.0] + [0.0] * 127, "face": "largest"},
                "outside the photo": {"photo": photo, "face": (900.0, 100.0, 1100.0, 300.0)},
                "too small": {"photo": photo, "face": (10.0, 10.0, 15.0, 15.0)},
                "inverted": {"photo": photo, "face": (300.0, 100.0, 100.0, 300.0)},
            }
            for why, probe in refusals.items():
                with pytest.raises(FaceIdClientError) as refused:
                    await client.verify("g", identity_id="x", **probe)  # type: ignore[arg-type]
                assert refused.value.code == "INVALID_ARGUMENT", why
                assert "face" in refused.value.message, why
            with pytest.raises(FaceIdClientError) as both:
                await client.enroll("g", "x", photo=photo, all_faces=True, face="largest")
            assert both.value.code == "INVALID_ARGUMENT" and "all_faces" in both.value.message
            for face in (
                pb.FaceChoice(rule=7),  # type: ignore[arg-type]
                pb.FaceChoice(
                    rule=pb.FaceChoice.RULE_LARGEST, box=pb.Box(left=1, top=1, right=90, bottom=90)
                ),
            ):
                request = pb.VerifyRequest(
                    parent="galleries/g", probe=pb.Probe(photo=photo, face=face), identity="x"
                )
                with pytest.raises(FaceIdClientError) as bad:
                    await client._call("Verify", request)
                assert bad.value.code == "INVALID_ARGUMENT" and "rule" in bad.value.message

    asyncio.run(run())


def test_concurrent_photos_of_one_size_go_through_the_cnn_together_with_the_same_boxes(
    faces: Path, tmp_path: Path, pipeline: FacePipeline
) -> None:
    """The engine batches the CNN across calls: photos of one size sent together share network
    batches, and each gets the boxes it gets alone."""
    photos = [
        p.read_bytes() for p in sorted((faces / "cfp_dev" / "images").glob("00[1-4]_*/profile_0[12].jpg"))
    ]
    sizes = {Image.open(io.BytesIO(p)).size for p in photos}
    photo = photos[0]
    same = [photo] * 8

    async def run() -> None:
        config = ServerConfig.load(None, {}, port=0, data_dir=tmp_path)
        engine = Engine(config.engine, pipeline=pipeline)
        try:
            alone = [d.box for d in (await engine.detect(photo)).faces]
            batcher = engine.detect_batcher
            batches, items = batcher.batches, batcher.items
            together = await asyncio.gather(*(engine.detect(p) for p in same))
            assert all([d.box for d in r.faces] == alone for r in together)
            assert batcher.items - items == 8 and batcher.batches - batches < 8
            mixed = await asyncio.gather(*(engine.detect(p) for p in photos))
            for p, r in zip(photos, mixed, strict=True):
                assert [d.box for d in r.faces] == [d.box for d in pipeline.detect(p)]
        finally:
            await asyncio.to_thread(engine.close)

    assert len(sizes) > 1  # the mixed photos are of several sizes
    asyncio.run(run())


def test_a_bad_embedding_fails_alone_and_not_the_calls_it_shares_a_search_batch_with(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    """Concurrent Identify calls share one index search; a caller that sends embeddings of the wrong
    size (or model) gets INVALID_ARGUMENT, and the callers batched with it get their matches."""
    good = [1.0] + [0.0] * 127

    async def run() -> None:
        # A batch window, so that the calls share batches however the machine schedules them.
        async with serving(tmp_path / "data", pipeline, {"batch_window_ms": 50}) as (server, client):
            await client.create_gallery("g")
            await client.enroll("g", "ann", embedding=good)
            bad: dict[str, Any] = {"embedding": [1.0] * 5}
            calls = [client.identify("g", **({"embedding": good} if i % 2 else bad)) for i in range(40)]
            answers = await asyncio.gather(*calls, return_exceptions=True)
            for i, answer in enumerate(answers):
                if i % 2:
                    assert not isinstance(answer, BaseException), answer
                    assert answer[0].matches[0].identity_id == "ann"
                else:
                    assert isinstance(answer, FaceIdClientError) and answer.code == "INVALID_ARGUMENT"
            assert server.engine.search_batcher.batches < 40  # they did share batches

    asyncio.run(run())


def test_identify_batch_answers_each_probe_as_identify_does_and_a_bad_probe_fails_alone(
    faces: Path, tmp_path: Path, pipeline: FacePipeline
) -> None:
    root = faces / "lfw_orig_subset10_krasserm" / "images"
    people = sorted(p for p in root.iterdir() if p.is_dir())[:4]
    rng = np.random.default_rng(3)

    async def run() -> None:
        async with serving(tmp_path / "data", pipeline) as (_server, client):
            await client.create_gallery("g")
            for person in people:
                await client.enroll("g", person.name, photo=sorted(person.iterdir())[0].read_bytes())
            vectors = [v / np.linalg.norm(v) for v in rng.normal(size=(3, 128))]
            for i, v in enumerate(vectors):
                await client.enroll("g", f"vector{i}", embedding=v.tolist())
            photos = [sorted(p.iterdir())[5].read_bytes() for p in people]
            probes: list[Any] = [
                photos[0],
                vectors[0].tolist(),
                [1.0] * 5,  # the wrong size: fails alone
                photos[1],
                b"not a photo",  # fails alone
                encode(np.full((200, 200, 3), 128, np.uint8)),  # no face: no faces, no error
                vectors[2].tolist(),
                *photos[2:],
            ]
            answers = await client.identify_batch("g", probes, top_k=3)
            assert [a.index for a in answers] == list(range(len(probes)))
            for probe, answer in zip(probes, answers, strict=True):
                if probe in ([1.0] * 5, b"not a photo"):
                    assert answer.error_code == "INVALID_ARGUMENT" and answer.faces == []
                    continue
                assert answer.error_code == "", answer.error_message
                kind = {"photo": probe} if isinstance(probe, bytes) else {"embedding": probe}
                alone = await client.identify("g", top_k=3, **kind)
                assert [[m.identity_id for m in f.matches] for f in answer.faces] == [
                    [m.identity_id for m in f.matches] for f in alone
                ]
            assert answers[0].faces[0].matches[0].identity_id == people[0].name
            assert answers[1].faces[0].matches[0].identity_id == "vector0"
            assert answers[5].faces == []

            for bad, code in (([], "INVALID_ARGUMENT"), ([vectors[0].tolist()] * 1025, "INVALID_ARGUMENT")):
                with pytest.raises(FaceIdClientError) as refused:
                    await client.identify_batch("g", bad)
                assert refused.value.code == code and "1,024" in refused.value.message
            with pytest.raises(FaceIdClientError) as missing:
                await client.identify_batch("nowhere", [vectors[0].tolist(), photos[0]])
            assert missing.value.code == "NOT_FOUND"
            request = pb.IdentifyBatchRequest(parent="galleries/g", probes=[pb.Probe()])
            [empty] = (await client._call("IdentifyBatch", request)).results
            assert empty.error_code == 3 and "photo or an embedding" in empty.error_message

    asyncio.run(run())


def test_search_faces_finds_an_enrolled_faces_neighbours_without_the_face_itself(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    """Duplicates through SearchFaces: a face finds its identity's other face and the look-alike
    enrolled under another identity, never itself; an unknown face id fails alone."""
    rng = np.random.default_rng(11)
    base = [v / np.linalg.norm(v) for v in rng.normal(size=(4, 128))]

    def near(v: np.ndarray, by: float) -> list[float]:
        moved = v + by * rng.normal(size=128) / np.sqrt(128)
        out: list[float] = (moved / np.linalg.norm(moved)).tolist()
        return out

    async def run() -> None:
        async with serving(tmp_path / "data", pipeline) as (_server, client):
            await client.create_gallery("g")
            [ann] = await client.enroll("g", "ann", embedding=base[0].tolist())
            [ann2] = await client.enroll("g", "ann", embedding=near(base[0], 0.2))
            [dupe] = await client.enroll("g", "ann-again", embedding=near(base[0], 0.1))
            for i in (1, 2, 3):
                await client.enroll("g", f"other{i}", embedding=base[i].tolist())
            [first, unknown] = await client.search_faces("g", [ann.face_id, 987654], top_k=3)
            assert first.error_code == "" and unknown.error_code == "NOT_FOUND"
            matches = first.faces[0].matches
            assert {m.identity_id for m in matches[:2]} == {"ann", "ann-again"}
            assert all(m.face_id != ann.face_id for m in matches)
            by_id = {m.identity_id: m for m in matches}
            assert by_id["ann"].face_id == ann2.face_id and by_id["ann-again"].face_id == dupe.face_id
            assert by_id["ann-again"].is_match
            with pytest.raises(FaceIdClientError) as refused:
                await client.search_faces("g", [])
            assert refused.value.code == "INVALID_ARGUMENT"

    asyncio.run(run())
