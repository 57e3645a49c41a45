"""Several processes serving one store (``faceid serve --processes N``): each sees the others'
writes at its next search.  Two real services on one real database stand for two processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import sqlalchemy as sa

from faceid.engine.config import EngineConfig, IndexConfig
from faceid.engine.domain.errors import NotFoundError
from faceid.engine.domain.results import EmbeddingInput
from faceid.engine.service import FaceService

from .helpers import unit


@pytest.fixture
def pair(config: EngineConfig) -> Iterator[tuple[FaceService, FaceService]]:
    """The first process (writes snapshots) and a second one, opened after it as the server does."""
    shared = replace(config, shared=True, index=IndexConfig(background=False, train_min=2000))
    first = FaceService(shared)
    second = FaceService(replace(shared, snapshots=False))
    yield first, second
    second.close()
    first.close()


def top(service: FaceService, gallery: str, seed: int) -> tuple[str, str]:
    [matches] = service.identify_embeddings(gallery, [EmbeddingInput(unit(seed))], top_k=1)
    return (matches[0].external_id, matches[0].display_name) if matches else ("", "")


def test_a_face_enrolled_in_one_process_is_found_by_the_other(pair: tuple[FaceService, FaceService]) -> None:
    a, b = pair
    a.create_gallery("g")
    a.enroll_embeddings("g", ["ann"], [EmbeddingInput(unit(1))])
    assert top(b, "g", 1) == ("ann", "")
    b.enroll_embeddings("g", ["bob"], [EmbeddingInput(unit(2))])
    assert top(a, "g", 2) == ("bob", "")
    for s in (a, b):  # each face once in each index: its own writes are not applied twice
        assert s.stats("g").index.count == 2 == s.stats("g").faces


def test_deletes_and_updates_in_one_process_reach_the_others_results(
    pair: tuple[FaceService, FaceService],
) -> None:
    a, b = pair
    a.create_gallery("g")
    a.enroll_embeddings("g", ["ann", "bob"], [EmbeddingInput(unit(1)), EmbeddingInput(unit(2))])
    assert top(b, "g", 1) == ("ann", "")  # b now holds ann's row in its identity cache
    a.update_identity("g", "ann", display_name="Ann Smith")
    assert top(b, "g", 1) == ("ann", "Ann Smith")
    a.delete_identity("g", "ann")
    assert top(b, "g", 1)[0] == "bob"
    [face] = b.get_identity("g", "bob").face_ids
    b.delete_face("g", face)
    assert top(a, "g", 2) == ("", "")
    assert a.stats("g").index.count == 0 == b.stats("g").index.count


def test_galleries_created_and_deleted_in_one_process_come_and_go_in_the_other(
    pair: tuple[FaceService, FaceService],
) -> None:
    a, b = pair
    a.create_gallery("g")
    a.enroll_embeddings("g", ["ann"], [EmbeddingInput(unit(1))])
    assert [g.name for g in b.list_galleries()] == ["g"]
    assert top(b, "g", 1) == ("ann", "")
    a.delete_gallery("g")
    with pytest.raises(NotFoundError):
        top(b, "g", 1)
    a.create_gallery("g")  # the same name again: a new, empty gallery
    assert top(b, "g", 1) == ("", "")
    a.enroll_embeddings("g", ["cy"], [EmbeddingInput(unit(3))])
    assert top(b, "g", 3) == ("cy", "")
    with pytest.raises(NotFoundError):
        b.enroll_embeddings("nowhere", ["x"], [EmbeddingInput(unit(4))])


def test_a_reused_face_id_is_found_and_erased_everywhere(pair: tuple[FaceService, FaceService]) -> None:
    """SQLite hands out the id of a deleted last row again: the index must follow the new face."""
    a, b = pair
    a.create_gallery("g")
    a.enroll_embeddings("g", ["ann", "bob"], [EmbeddingInput(unit(1)), EmbeddingInput(unit(2))])
    assert top(b, "g", 2)[0] == "bob"
    [bob_face] = a.get_identity("g", "bob").face_ids
    a.delete_face("g", bob_face)
    [cy] = a.enroll_embeddings("g", ["cy"], [EmbeddingInput(unit(3))])
    for s in (a, b):
        assert top(s, "g", 3)[0] == "cy"
    a.delete_face("g", cy.face_id)
    for s in (a, b):
        assert top(s, "g", 3)[0] == "ann"  # the only face left
        assert s.stats("g").index.count == 1


def test_only_the_first_process_writes_snapshots(config: EngineConfig) -> None:
    shared = replace(config, shared=True)
    second = FaceService(replace(shared, snapshots=False))
    second.create_gallery("g")
    second.enroll_embeddings("g", ["ann"], [EmbeddingInput(unit(1))])
    second.close()
    snapshots = config.data_dir / "index"
    assert list(snapshots.iterdir()) == []
    first = FaceService(shared)
    assert top(first, "g", 1) == ("ann", "")  # rebuilt from the store
    first.close()
    assert [p.name for p in snapshots.iterdir()] == ["gallery-1.faceidx"]


def test_an_index_trained_from_the_others_writes_follows_them_on(
    pair: tuple[FaceService, FaceService],
) -> None:
    a, b = pair
    a.create_gallery("g")
    x = np.random.default_rng(0).normal(size=(3000, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a.enroll_embeddings("g", [f"p{i}" for i in range(3000)], [EmbeddingInput(v) for v in x])
    assert top(b, "g", 99)[0]  # b catches up 3,000 faces, and trains its own index
    assert b.stats("g").index.kind == "ivf_pq"
    a.delete_identity("g", "p7")
    a.enroll_embeddings("g", ["new"], [EmbeddingInput(unit(99))])
    assert top(b, "g", 99)[0] == "new"
    [matches] = b.identify_embeddings("g", [EmbeddingInput(x[7])], top_k=1)
    assert matches[0].external_id != "p7"
    assert b.stats("g").index.count == 3000


def test_concurrent_writers_in_both_processes_leave_both_indexes_equal_to_the_store(
    pair: tuple[FaceService, FaceService],
) -> None:
    """The gallery's writers are serialized in the database, so the change log's order is the
    commit order and neither process skips a change that committed late."""
    a, b = pair
    a.create_gallery("g")
    errors: list[BaseException] = []

    def enrol(service: FaceService, name: str) -> None:
        try:
            for i in range(40):
                service.enroll_embeddings("g", [f"{name}{i}"], [EmbeddingInput(unit(ord(name) * 1000 + i))])
                if i % 5 == 4:
                    service.delete_identity("g", f"{name}{i - 2}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=enrol, args=(s, n)) for s, n in ((a, "a"), (b, "b"), (a, "c"), (b, "d"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for s in (a, b):
        stats = s.stats("g")
        assert stats.faces == 4 * 32 and stats.index.count == stats.faces
        assert top(s, "g", ord("d") * 1000 + 39)[0] == "d39"
        [gone] = s.identify_embeddings("g", [EmbeddingInput(unit(ord("c") * 1000 + 2))], top_k=1)
        assert not gone or gone[0].external_id != "c2"


def test_a_process_no_search_reaches_still_follows_in_the_background(
    pair: tuple[FaceService, FaceService],
) -> None:
    a, b = pair
    a.create_gallery("g")
    a.enroll_embeddings("g", ["ann"], [EmbeddingInput(unit(1))])
    assert top(b, "g", 1) == ("ann", "")  # b knows the gallery now
    a.enroll_embeddings(
        "g", [f"p{i}" for i in range(100)], [EmbeddingInput(unit(10 + i)) for i in range(100)]
    )
    state = b.galleries.state("g")
    deadline = time.monotonic() + 10 * b.config.sync_seconds
    while state.index.count() < 101 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.index.count() == 101


def test_faces_moved_to_another_identity_in_one_process_are_found_under_it_by_the_other(
    pair: tuple[FaceService, FaceService],
) -> None:
    from faceid.engine.domain.records import NewIdentity

    a, b = pair
    a.create_gallery("g")
    a.enroll_embeddings("g", ["tmp-1", "tmp-2"], [EmbeddingInput(unit(1)), EmbeddingInput(unit(2))])
    assert top(b, "g", 1) == ("tmp-1", "")
    faces = [*a.get_identity("g", "tmp-1").face_ids, *a.get_identity("g", "tmp-2").face_ids]
    moved = a.move_faces("g", faces, "ann", NewIdentity("Ann"))
    assert moved.created and moved.face_ids == sorted(faces) and moved.emptied == ["tmp-1", "tmp-2"]
    assert top(a, "g", 1) == ("ann", "Ann") == top(b, "g", 2)
    b.move_faces("g", faces[1:], "tmp-2")  # back, from the other process
    assert top(a, "g", 2) == ("tmp-2", "") and top(b, "g", 1) == ("ann", "Ann")
    for s in (a, b):
        assert s.stats("g").index.count == 2 == s.stats("g").faces


def test_a_gallery_another_process_deletes_while_this_one_opens_is_not_served_here(
    config: EngineConfig,
) -> None:
    """The delete lands between this process listing the galleries and opening their indexes
    (made to, by a hook on its own database connection): its "drop" is older than anything this
    process will replay, so the open itself must notice."""
    shared = replace(config, shared=True, index=IndexConfig(background=False, train_min=2000))
    a = FaceService(shared)
    a.create_gallery("g")
    a.enroll_embeddings("g", ["ann"], [EmbeddingInput(unit(1))])
    b = FaceService(replace(shared, snapshots=False), load=False)
    deleted: list[bool] = []

    def delete_once(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if not deleted and "FROM galleries" in statement:
            deleted.append(True)
            a.delete_gallery("g")  # right after b has listed it

    sa.event.listen(b.store.engine, "after_cursor_execute", delete_once)
    try:
        b.galleries.open()
        assert deleted
        sa.event.remove(b.store.engine, "after_cursor_execute", delete_once)
        with pytest.raises(NotFoundError):
            top(b, "g", 1)
        assert b.galleries.open_states() == []
    finally:
        b.close()
        a.close()


def test_readings_cost_the_same_queries_for_one_gallery_or_twenty(
    pair: tuple[FaceService, FaceService],
) -> None:
    """What a metrics scrape asks of the database does not grow with the number of galleries."""
    a, _ = pair
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    def queries_of_a_reading() -> int:
        a._identity_counted = None  # as after IDENTITIES_TTL: the identities are counted too
        statements.clear()
        sa.event.listen(a.store.engine, "before_cursor_execute", count)
        try:
            a.readings()
        finally:
            sa.event.remove(a.store.engine, "before_cursor_execute", count)
        return len(statements)

    a.create_gallery("g0")
    one = queries_of_a_reading()
    for i in range(1, 20):
        a.create_gallery(f"g{i}")
        a.enroll_embeddings(f"g{i}", ["ann"], [EmbeddingInput(unit(i))])
    assert len(a.readings()) == 20
    assert queries_of_a_reading() == one <= 2


def test_unsaved_changes_count_every_process_s_changes_in_the_one_that_writes_snapshots(
    pair: tuple[FaceService, FaceService],
) -> None:
    a, b = pair  # a writes the snapshots
    a.create_gallery("g")
    a.enroll_embeddings("g", [f"a{i}" for i in range(5)], [EmbeddingInput(unit(i)) for i in range(5)])
    b.enroll_embeddings("g", [f"b{i}" for i in range(7)], [EmbeddingInput(unit(10 + i)) for i in range(7)])
    top(a, "g", 1)  # a search catches a up with b's changes
    [reading] = a.readings()
    assert reading.unsaved_changes == 12 and reading.changes_behind == 0
    [other] = b.readings()
    assert other.unsaved_changes is None  # b writes no snapshot: it has nothing unsaved to say
    a.snapshot("g")
    assert a.readings()[0].unsaved_changes == 0
