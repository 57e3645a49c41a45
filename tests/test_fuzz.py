"""Hostile input, property-based: random field values on every RPC of a real server.

Whatever comes in, only a proper status code with a message comes back (never
INTERNAL or UNKNOWN, never a traceback), the server stays up, and afterwards the
store and the index hold exactly the same faces.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faceid.client.client import call_metadata, channel_options
from faceid.engine.config import EngineConfig
from faceid.engine.service import FaceService
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.proto.faceid.v1 import faceid_pb2_grpc as pb_grpc
from faceid.server.app import spawn

from .conftest import encode
from .test_crash_recovery import check_consistent

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # big reprs
EXAMPLES = int(os.environ.get("FACEID_FUZZ_EXAMPLES", "150"))
GALLERY = "fuzz"
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Target:
    def __init__(self, address: str, key: str, data_dir: Path) -> None:
        self.channel = grpc.insecure_channel(address, channel_options())
        self.stub = pb_grpc.FaceIdStub(self.channel)  # type: ignore[no-untyped-call]
        self.metadata = call_metadata(key, ())
        self.data_dir = data_dir

    def call(self, method: str, request: Any) -> grpc.StatusCode:
        """The call's status code; fails the test on a code or message no client should see."""
        try:
            response = getattr(self.stub, method)(request, timeout=60, metadata=self.metadata)
            if method in ("BulkEnroll", "EnrollBatch"):
                for result in response if method == "BulkEnroll" else response.results:
                    assert grpc.StatusCode.INTERNAL.value[0] != result.error_code, result.error_message
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            assert code in ALLOWED, f"{method}: {code.name}: {details}"
            assert details and "Traceback" not in details, f"{method}: {code.name} without a proper message"
            return code


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    proc, address, key = spawn(data_dir)
    t = Target(address, key, data_dir)
    assert t.call("CreateGallery", pb.CreateGalleryRequest(gallery_id=GALLERY)) == grpc.StatusCode.OK
    yield t
    t.channel.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, "the server did not shut down cleanly after the fuzzing"
    service = FaceService(EngineConfig(data_dir=data_dir))
    try:  # after all that: the store and the index agree, face for face
        for gallery in service.list_galleries():
            check_consistent(service, {}, set(), gallery=gallery.name)
    finally:
        service.close()


# ---- strategies -----------------------------------------------------------------------------------
texts = st.one_of(
    st.text(max_size=40),
    st.text(max_size=3000),
    st.sampled_from(
        [
            "",
            "'; DROP TABLE faces; --",
            "x' OR '1'='1",
            "../../etc/passwd",
            "%2F%2e%2e",
            "\x00",
            "名前",
            "🙂" * 100,
            "a" * 100_000,
        ]
    ),
)
gallery_names = st.one_of(
    st.just(f"galleries/{GALLERY}"),
    st.builds(lambda t: f"galleries/{t}", texts),
    texts,
)
identity_names = st.one_of(
    st.builds(lambda t: f"galleries/{GALLERY}/identities/{t}", texts),
    st.builds(lambda g, t: f"{g}/identities/{t}", gallery_names, texts),
    texts,
)
face_names = st.one_of(
    st.builds(lambda i: f"galleries/{GALLERY}/faces/{i}", st.integers(-(2**70), 2**70)),
    texts,
)
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


def _unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=128)
    return (v / np.linalg.norm(v)).tolist()  # type: ignore[no-any-return]


vectors = st.one_of(
    st.lists(floats, max_size=300),
    st.builds(_unit, st.integers(0, 2**32)),
    st.lists(floats, min_size=128, max_size=128),
)
embeddings = st.builds(pb.Embedding, values=vectors, model=st.one_of(st.just(""), texts))


def _image(height: int, width: int, seed: int, fmt: str) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return encode(pixels, fmt)


photos = st.one_of(
    st.binary(max_size=2048),
    st.builds(
        _image, st.integers(1, 64), st.integers(1, 64), st.integers(0, 99), st.sampled_from(["PNG", "JPEG"])
    ),
    st.builds(
        lambda head, tail: head + tail,
        st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a"]),
        st.binary(max_size=512),
    ),
)
probes = st.one_of(
    st.builds(pb.Probe, photo=photos),
    st.builds(pb.Probe, embedding=embeddings),
    st.just(pb.Probe()),
)
attributes = st.one_of(
    st.just(""),
    texts,
    st.builds(lambda n: '{"k": "' + "v" * n + '"}', st.integers(0, 200_000)),
    st.just('{"nested": ' * 50 + "1" + "}" * 50),
)
ints = st.integers(-(2**31), 2**31 - 1)
enroll_requests = st.builds(
    pb.EnrollRequest,
    parent=gallery_names,
    identity_id=texts,
    probe=probes,
    all_faces=st.booleans(),
    display_name=texts,
    attributes_json=attributes,
)


# ---- properties -----------------------------------------------------------------------------------
@FUZZ
@given(gallery_id=texts, name=gallery_names)
def test_gallery_calls(target: Target, gallery_id: str, name: str) -> None:
    target.call("CreateGallery", pb.CreateGalleryRequest(gallery_id=gallery_id))
    target.call("GetGallery", pb.GetGalleryRequest(name=name))
    if name != f"galleries/{GALLERY}":
        target.call("DeleteGallery", pb.DeleteGalleryRequest(name=name))
    target.call("ListGalleries", pb.ListGalleriesRequest())


@FUZZ
@given(request=enroll_requests)
def test_enroll(target: Target, request: pb.EnrollRequest) -> None:
    target.call("Enroll", request)


@FUZZ
@given(requests=st.lists(enroll_requests, max_size=8))
def test_bulk_enroll(target: Target, requests: list[pb.EnrollRequest]) -> None:
    target.call("BulkEnroll", iter(requests))
    target.call("EnrollBatch", pb.EnrollBatchRequest(items=requests))


@FUZZ
@given(
    parent=gallery_names,
    probe=probes,
    top_k=ints,
    threshold=floats,
    min_similarity=floats,
    nprobe=ints,
    rerank=ints,
)
def test_identify(
    target: Target,
    parent: str,
    probe: pb.Probe,
    top_k: int,
    threshold: float,
    min_similarity: float,
    nprobe: int,
    rerank: int,
) -> None:
    request = pb.IdentifyRequest(
        parent=parent,
        probe=probe,
        top_k=top_k,
        threshold=threshold,
        min_similarity=min_similarity,
        nprobe=nprobe,
        rerank_factor=rerank,
    )
    target.call("Identify", request)


@FUZZ
@given(
    parent=gallery_names,
    probe=probes,
    identity=identity_names,
    other=probes,
    threshold=floats,
    pair=st.booleans(),
)
def test_verify(
    target: Target, parent: str, probe: pb.Probe, identity: str, other: pb.Probe, threshold: float, pair: bool
) -> None:
    request = pb.VerifyRequest(parent=parent, probe=probe, threshold=threshold)
    if pair:
        request.other.CopyFrom(other)
    else:
        request.identity = identity
    target.call("Verify", request)


@FUZZ
@given(
    name=identity_names,
    parent=gallery_names,
    page_size=ints,
    token=texts,
    display_name=st.none() | texts,
    attrs=st.none() | attributes,
    face=face_names,
)
def test_identity_calls(
    target: Target,
    name: str,
    parent: str,
    page_size: int,
    token: str,
    display_name: str | None,
    attrs: str | None,
    face: str,
) -> None:
    target.call("GetIdentity", pb.GetIdentityRequest(name=name))
    target.call(
        "ListIdentities", pb.ListIdentitiesRequest(parent=parent, page_size=page_size, page_token=token)
    )
    update = pb.UpdateIdentityRequest(name=name)
    if display_name is not None:
        update.display_name = display_name
    if attrs is not None:
        update.attributes_json = attrs
    target.call("UpdateIdentity", update)
    target.call("DeleteFace", pb.DeleteFaceRequest(name=face))
    target.call("DeleteIdentity", pb.DeleteIdentityRequest(name=name))


@FUZZ
@given(photo=photos, aligned=st.booleans())
def test_detect_and_embed(target: Target, photo: bytes, aligned: bool) -> None:
    target.call("Detect", pb.DetectRequest(photo=photo))
    target.call("Embed", pb.EmbedRequest(photo=photo, aligned=aligned))
