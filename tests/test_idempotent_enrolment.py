"""Audit item 7: enrolment is idempotent per source, so retries and re-runs are safe.

Every face keeps the SHA-256 of what it was enrolled from (the photo's bytes, or the embedding's
float32 values); enrolling the same source into the same identity again adds no face and answers
with the faces already there, marked ``already_enrolled``.  Through a real server process
(``faceid serve``) on SQLite and on PostgreSQL, with real photos; the race and the migration in
process, on both databases.  Nothing mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from faceid.client.client import AsyncFaceIdClient, BulkResult, FaceIdClient, enroll_request
from faceid.client.client import EnrolledFace as ClientFace
from faceid.engine.config import EngineConfig, IndexConfig
from faceid.engine.domain.records import NewFace, sha256_hex
from faceid.engine.domain.results import EmbeddingInput, EnrolledFace
from faceid.engine.service import FaceService
from faceid.engine.store import Store, make_engine
from faceid.engine.store.migrate import upgrade

from .helpers import fresh_postgres_database, postgres_unavailable, unit
from .test_audit_hardening import Server

SUBSET = "lfw_orig_subset10_krasserm"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One ``faceid serve`` per database for the module's API tests (each test its own gallery)."""
    data_dir = tmp_path_factory.mktemp(f"idempotent-{request.param}")
    if request.param == "sqlite":
        s = Server(data_dir).start()
        yield s
        assert s.stop() == 0
        return
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    with fresh_postgres_database() as url:
        s = Server(data_dir, url).start()
        yield s
        assert s.stop() == 0


@pytest.fixture
def client(server: Server) -> Iterator[FaceIdClient]:
    with server.client() as c:
        yield c


def photos(faces: Path, person: int, count: int) -> list[bytes]:
    folder = sorted(p for p in (faces / SUBSET / "images").iterdir() if p.is_dir())[person]
    return [p.read_bytes() for p in sorted(folder.iterdir())[:count]]


def vector(seed: int) -> list[float]:
    return [float(x) for x in unit(seed)]


def face_ids(result: BulkResult) -> list[int]:
    assert not result.error_code, result.error_message
    return [f.face_id for f in result.faces]


def flags(result: BulkResult) -> list[bool]:
    return [f.already_enrolled for f in result.faces]


def test_the_same_photo_enrolled_twice_into_one_identity_gives_one_face_and_the_second_answer_says_so(
    client: FaceIdClient, faces: Path
) -> None:
    a, b, c = photos(faces, 0, 3)
    client.create_gallery("photos")
    # Enroll, twice.
    [first] = client.enroll("photos", "ann", photo=a)
    [again] = client.enroll("photos", "ann", photo=a)
    assert not first.already_enrolled and again.already_enrolled
    assert again.face_id == first.face_id and again.box == first.box
    assert client.enroll("photos", "ann", photo=a, all_faces=True) == [again]  # the same source
    # EnrollBatch with the item repeated, and the first photo once more.
    batch = client.enroll_batch([enroll_request("photos", "ann", p) for p in (b, b, a)])
    assert [flags(r) for r in batch] == [[False], [True], [True]]
    assert face_ids(batch[1]) == face_ids(batch[0]) and face_ids(batch[2]) == [first.face_id]
    # BulkEnroll with the item repeated, and the earlier photos again.
    bulk = list(client.bulk_enroll(enroll_request("photos", "ann", p) for p in (c, c, b, a)))
    assert [flags(r) for r in bulk] == [[False], [True], [True], [True]]
    assert face_ids(bulk[1]) == face_ids(bulk[0]) and face_ids(bulk[2]) == face_ids(batch[0])
    ann = client.get_identity("photos", "ann")
    assert sorted(ann.face_ids) == sorted([first.face_id, *face_ids(batch[0]), *face_ids(bulk[0])])
    assert client.get_gallery("photos").face_count == 3


def test_the_same_embedding_enrolled_twice_into_one_identity_gives_one_face_and_is_marked(
    client: FaceIdClient, server: Server
) -> None:
    client.create_gallery("vectors")
    [first] = client.enroll("vectors", "bob", embedding=vector(1))
    [again] = client.enroll("vectors", "bob", embedding=vector(1))
    assert (first.already_enrolled, again.already_enrolled) == (False, True)
    assert again.face_id == first.face_id

    async def enrol_async() -> ClientFace:
        async with AsyncFaceIdClient(server.address, api_key=server.admin_key) as ac:
            [face] = await ac.enroll("vectors", "bob", embedding=vector(1))
            return face

    assert asyncio.run(enrol_async()) == again  # the asyncio client carries the flag too
    # EnrollBatch: one new embedding three times, the first again, and another identity's.
    items = [vector(2), vector(2), vector(1), vector(2)]
    batch = client.enroll_batch([enroll_request("vectors", "bob", embedding=v) for v in items])
    assert [flags(r) for r in batch] == [[False], [True], [True], [True]]
    assert face_ids(batch[1]) == face_ids(batch[3]) == face_ids(batch[0])
    assert face_ids(batch[2]) == [first.face_id]
    # BulkEnroll: a new one twice, then the earlier ones.
    bulk = list(
        client.bulk_enroll(
            enroll_request("vectors", "bob", embedding=v) for v in (vector(3), vector(3), vector(2))
        )
    )
    assert [flags(r) for r in bulk] == [[False], [True], [True]]
    assert face_ids(bulk[1]) == face_ids(bulk[0]) and face_ids(bulk[2]) == face_ids(batch[0])
    assert client.get_gallery("vectors").face_count == 3
    [match] = client.identify("vectors", embedding=vector(3), top_k=1)
    assert match.matches[0].face_id == face_ids(bulk[0])[0]
    # A deleted face takes its source's hash with it: the same embedding then enrols anew.
    client.delete_face("vectors", first.face_id)
    [anew] = client.enroll("vectors", "bob", embedding=vector(1))
    assert not anew.already_enrolled and anew.face_id != first.face_id
    assert client.get_gallery("vectors").face_count == 3


def test_the_same_photo_or_embedding_for_two_identities_enrols_both(
    client: FaceIdClient, faces: Path
) -> None:
    [photo] = photos(faces, 1, 1)
    client.create_gallery("claims")
    [for_ann] = client.enroll("claims", "ann", photo=photo)
    [for_bea] = client.enroll("claims", "bea", photo=photo)  # another claim about the same photo
    assert not for_ann.already_enrolled and not for_bea.already_enrolled
    assert for_ann.face_id != for_bea.face_id
    batch = client.enroll_batch(
        [enroll_request("claims", who, embedding=vector(7)) for who in ("ann", "bea")]
    )
    assert [flags(r) for r in batch] == [[False], [False]] and face_ids(batch[0]) != face_ids(batch[1])
    client.create_gallery("claims-2")  # and the same source in another gallery
    [elsewhere] = client.enroll("claims-2", "ann", photo=photo)
    assert not elsewhere.already_enrolled
    assert client.get_gallery("claims").face_count == 4
    assert client.get_gallery("claims-2").face_count == 1


def run_enroll(server: Server, gallery: str, folder: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "faceid.client.cli", "--server", server.address]
    command += ["--api-key", server.admin_key, "enroll", gallery, str(folder)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_an_interrupted_faceid_enroll_run_again_enrols_every_photo_once_and_says_how_many_were_there(
    client: FaceIdClient, server: Server, faces: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "people"
    people = sorted(p for p in (faces / SUBSET / "images").iterdir() if p.is_dir())
    for person in people:
        (folder / person.name).mkdir(parents=True)
        for photo in sorted(person.iterdir())[:4]:
            shutil.copy(photo, folder / person.name / photo.name)
    total = 4 * len(people)
    client.create_gallery("resume")
    # The first run, killed once it has enrolled a few photos.
    first = run_enroll(server, "resume", folder)
    while client.get_gallery("resume").face_count < 8:
        assert first.poll() is None, "the first run ended before it could be interrupted"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    there, stable_since = client.get_gallery("resume").face_count, time.monotonic()
    while time.monotonic() - stable_since < 1.5:  # an item the server was enrolling may still land
        time.sleep(0.1)
        if (count := client.get_gallery("resume").face_count) != there:
            there, stable_since = count, time.monotonic()
    assert 8 <= there < total
    # Run again, to the end.
    second = run_enroll(server, "resume", folder)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    summary = re.search(
        r"enrolled (\d+) faces from (\d+) of (\d+) photos; "
        r"(\d+) photos were already enrolled \((\d+) faces\)",
        out,
    )
    assert summary, out
    faces_new, photos_new, photos, photos_old, faces_old = map(int, summary.groups())
    assert (photos, photos_old, faces_old) == (total, there, there)
    assert photos_new == faces_new == total - there  # every photo of this subset holds a face
    lines = out.splitlines()
    assert sum(line.startswith("already enrolled  ") for line in lines) == there
    assert sum(line.startswith("enrolled  ") for line in lines) == total - there
    # Each photo enrolled exactly once: 4 faces per identity, counted through the API.
    assert client.get_gallery("resume").face_count == total
    assert {i.identity_id: len(i.face_ids) for i in client.list_identities("resume")} == {
        p.name: 4 for p in people
    }
    # A third run finds everything there.
    third = run_enroll(server, "resume", folder)
    out, err = third.communicate(timeout=600)
    assert third.returncode == 0, err
    assert f"enrolled 0 faces from 0 of {total} photos; {total} photos were already enrolled" in out
    assert client.get_gallery("resume").face_count == total


def test_two_processes_enrolling_the_same_sources_at_once_enrol_each_once(
    config: EngineConfig,
) -> None:
    """Two services on one database stand for two server processes; two threads in each send the
    same 30 embeddings for one identity at the same time.  The check and the write happen under
    the gallery's lock in the database, so each embedding is enrolled once, by one of the four."""
    shared = replace(config, shared=True, index=IndexConfig(background=False, train_min=2000))
    first = FaceService(shared)
    second = FaceService(replace(shared, snapshots=False))
    try:
        first.create_gallery("race")
        first.enroll_embeddings("race", ["ann"], [EmbeddingInput(unit(999))])  # the identity exists
        start = threading.Barrier(4)
        answers: list[list[EnrolledFace]] = [[] for _ in range(4)]
        errors: list[BaseException] = []

        def enrol(service: FaceService, k: int) -> None:
            try:
                start.wait()
                for i in range(30):
                    answers[k] += service.enroll_embeddings("race", ["ann"], [EmbeddingInput(unit(i))])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=enrol, args=(s, k)) for k, s in enumerate((first, second) * 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for i in range(30):
            given = [answers[k][i] for k in range(4)]
            assert len({f.face_id for f in given}) == 1  # all four got the one face
            assert sum(not f.already_enrolled for f in given) == 1  # which one of them enrolled
        for s in (first, second):
            stats = s.stats("race")
            assert stats.faces == 31 and stats.index.count == 31
    finally:
        second.close()
        first.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_photo_enrolled_before_the_upgrade_counts_as_already_enrolled_after_it(
    database: str, tmp_path: Path
) -> None:
    """Migration 0003 renames ``image_sha256`` (photos' hashes, kept since the first schema) to
    ``source_sha256`` in place: faces enrolled from photos by an older version keep theirs."""
    if database == "postgresql" and (reason := postgres_unavailable()):
        pytest.skip(reason)
    sqlite = contextlib.nullcontext(f"sqlite:///{tmp_path / 'old.db'}")
    with fresh_postgres_database() if database == "postgresql" else sqlite as url:
        engine = make_engine(url)
        try:
            upgrade(engine, "0002")
            digest = sha256_hex(b"the photo's bytes")
            with engine.begin() as c:
                c.execute(
                    sa.text(
                        "insert into galleries (id, name, model_name, model_version, dim, metric, "
                        "created_at) values (1, 'old', 'dlib-resnet-v1', 'flip-unit', 128, 'euclidean', "
                        "current_timestamp)"
                    )
                )
                c.execute(
                    sa.text(
                        "insert into identities (id, gallery_id, external_id, display_name, attributes, "
                        "created_at, updated_at) values (1, 1, 'ann', '', '{}', current_timestamp, "
                        "current_timestamp)"
                    )
                )
                c.execute(
                    sa.text(
                        "insert into faces (id, gallery_id, identity_id, embedding, model_version, "
                        "detection_score, box_left, box_top, box_right, box_bottom, image_sha256, "
                        "created_at) "
                        "values (7, 1, 1, :e, 'flip-unit', 1.5, 10, 20, 110, 120, :h, current_timestamp)"
                    ),
                    {"e": unit(1).astype("<f4").tobytes(), "h": digest},
                )
            upgrade(engine)
            store = Store(engine)
            gallery = store.get_gallery("old")
            assert gallery is not None
            box = (10.0, 20.0, 110.0, 120.0)
            again = NewFace("ann", unit(2), detection_score=1.5, box=box, source_sha256=digest)
            [result], _ = store.enrol(gallery, [[again]])
            assert result.already and [f.id for f in result.faces] == [7]
            assert result.faces[0].box == box and result.faces[0].detection_score == 1.5
            assert store.count_faces(gallery.id) == 1
        finally:
            engine.dispose()


def test_a_store_enrolment_writes_each_source_once_and_reports_repeats_in_order(tmp_path: Path) -> None:
    """The store's contract, on which the service builds: repeats within one call refer to the first."""
    store = Store(make_engine(f"sqlite:///{tmp_path / 'faceid.db'}"))
    store.create_schema()
    g = store.create_gallery("g", "dlib-resnet-v1", "flip-unit", 128, "euclidean")
    photo = [NewFace("ann", unit(i), source_sha256="a" * 64) for i in range(3)]  # a photo's 3 faces
    embedding = [NewFace("ann", unit(9), source_sha256="b" * 64)]
    results, seq = store.enrol(g, [photo, embedding, photo, [NewFace("ann", unit(10))], embedding])
    assert [r.already for r in results] == [False, False, True, False, True]
    assert len(results[0].faces) == 3 and results[2].faces == results[0].faces
    assert results[4].faces == results[1].faces
    assert store.count_faces(g.id) == 5 and store.changes_since(g.id, 0)[-1].seq == seq
    again, seq2 = store.enrol(g, [photo])
    assert again[0].already and again[0].faces == results[0].faces and seq2 == seq  # nothing logged
    held = store.get_identity(g.id, "ann")
    assert held is not None and len(held.face_ids) == 5
    store.engine.dispose()
