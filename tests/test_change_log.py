"""The change log is trimmed where snapshots are written, and nothing is lost or comes back for it: one
process, a restart after a trim (graceful or not), and processes sharing the store, on SQLite and
PostgreSQL."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import sqlalchemy as sa

from faceid.engine.config import EngineConfig, IndexConfig
from faceid.engine.domain.records import NewFace
from faceid.engine.domain.results import EmbeddingInput
from faceid.engine.service import FaceService
from faceid.engine.store import Store

from .helpers import make_gallery, unit, vec


def test_trimming_leaves_one_trim_row_that_keeps_the_last_sequence_number(store: Store) -> None:
    g = make_gallery(store)
    ids, _, s1 = store.add_faces(g, [NewFace(f"p{i}", vec(i)) for i in range(5)])
    _, s2 = store.delete_faces(g.id, ids[:2])
    assert store.trim_changes(g.id, s1) == 5
    assert [(c.op, c.face_id) for c in store.changes_since(g.id, 0)] == [
        ("remove", ids[0]),
        ("remove", ids[1]),
        ("trim", s1),
    ]
    assert store.last_seq(g.id) > s2  # never goes back: a snapshot at s2 is not "ahead of the store"
    assert store.trim_changes(g.id, s1) == 0  # only the trim row is that old: nothing to do
    last = store.last_seq(g.id)
    assert store.trim_changes(g.id, last) == 3  # the removes and the old trim row
    [row] = store.changes_since(g.id, 0)
    assert (row.op, row.face_id) == ("trim", s2) and row.seq > last  # the highest dropped change's seq
    assert store.count_changes(g.id) == 1


def logged(service: FaceService, gallery_id: int) -> int:
    """Rows of the gallery in the change-log table."""
    query = sa.text("select count(*) from changes where gallery_id = :g")
    with service.store.engine.connect() as c:
        return int(c.execute(query, {"g": gallery_id}).scalar_one())


def faces_of(service: FaceService, gallery: str) -> tuple[list[int], list[int]]:
    """The face ids of the store, sorted, and those of them the index holds (the same list when
    the index holds exactly the store's faces: it holds each and no more)."""
    state = service.galleries.state(gallery)
    in_store = sorted(
        int(i) for ids, _, _ in service.store.iter_embeddings(state.gallery.id, 128) for i in ids
    )
    held = state.index.contains(in_store) if in_store else np.zeros(0, bool)
    in_index = [f for f, h in zip(in_store, held, strict=True) if h]
    return in_store, in_index if state.index.count() == len(in_store) else [*in_index, -1]


def found(service: FaceService, gallery: str, seed: int) -> str:
    [matches] = service.identify_embeddings(gallery, [EmbeddingInput(unit(seed))], top_k=1)
    return matches[0].external_id if matches and matches[0].distance < 1e-3 else ""


def test_a_snapshot_trims_the_change_log_and_restarts_after_it_lose_and_resurrect_nothing(
    config: EngineConfig,
) -> None:
    config = replace(config, erasure_seconds=0)  # only the snapshots asked for here trim
    service = FaceService(config)
    gallery = service.create_gallery("g")
    for start in range(0, 60, 10):
        service.enroll_embeddings(
            "g",
            [f"p{i}" for i in range(start, start + 10)],
            [EmbeddingInput(unit(i)) for i in range(start, start + 10)],
        )
    for i in range(0, 10):
        service.delete_identity("g", f"p{i}")  # a remove and an update each
    [face] = service.get_identity("g", "p10").face_ids
    service.delete_face("g", face)
    before = logged(service, gallery.id)
    assert before == 60 + 10 * 2 + 1
    service.snapshot("g")
    assert logged(service, gallery.id) == 1  # the trim row
    # More after the snapshot, then a crash: nothing written at close, the log replays from the trim.
    service.enroll_embeddings("g", ["late"], [EmbeddingInput(unit(500))])
    service.delete_identity("g", "p20")
    service.store.engine.dispose()

    live = {f"p{i}": i for i in range(11, 60) if i != 20} | {"late": 500}
    gone = {f"p{i}": i for i in range(0, 11)} | {"p20": 20}
    for restart in ("after a crash", "after a graceful stop"):
        service = FaceService(config)
        try:
            in_store, in_index = faces_of(service, "g")
            assert in_store == in_index and len(in_store) == len(live), restart
            assert all(found(service, "g", seed) == name for name, seed in live.items()), restart
            assert not any(found(service, "g", seed) for seed in gone.values()), restart
        finally:
            service.close()  # snapshots again: trims again
        assert logged(service, gallery.id) == 1, restart


def test_processes_sharing_the_store_trim_only_after_the_keep_time_and_still_converge(
    config: EngineConfig,
) -> None:
    shared = replace(
        config,
        shared=True,
        erasure_seconds=0,
        change_log_keep_seconds=1.0,
        index=IndexConfig(background=False, train_min=2000),
    )
    a = FaceService(shared)
    b = FaceService(replace(shared, snapshots=False))
    # A third process that stopped following (no search, no background catch-up): stalled.
    stalled = FaceService(replace(shared, snapshots=False, sync_seconds=3600))
    try:
        gallery = a.create_gallery("g")
        assert found(stalled, "g", 1) == ""  # it knows the gallery, empty
        a.enroll_embeddings("g", [f"a{i}" for i in range(20)], [EmbeddingInput(unit(i)) for i in range(20)])
        b.enroll_embeddings(
            "g", [f"b{i}" for i in range(20)], [EmbeddingInput(unit(100 + i)) for i in range(20)]
        )
        b.delete_identity("g", "a3")
        a.snapshot("g")
        assert logged(a, gallery.id) == 40 + 2  # younger than the keep time: b may not have replayed it yet
        time.sleep(1.2)
        a.enroll_embeddings("g", ["late"], [EmbeddingInput(unit(500))])
        a.snapshot("g")  # the first snapshot is ripe now: the log drops what it reflected
        assert logged(a, gallery.id) == 2  # "late" and the trim row
        for s in (a, b, stalled):  # the stalled one meets the trim row past its position: rebuilds
            assert found(s, "g", 500) == "late" and found(s, "g", 101) == "b1" and found(s, "g", 3) == ""
            in_store, in_index = faces_of(s, "g")
            assert in_store == in_index and len(in_store) == 40
    finally:
        stalled.close()
        b.close()
        a.close()
    # A restart of the group after the trims replays to the same faces.
    a = FaceService(shared)
    try:
        in_store, in_index = faces_of(a, "g")
        assert in_store == in_index and len(in_store) == 40 and found(a, "g", 3) == ""
    finally:
        a.close()


def test_an_erasure_in_one_process_is_rewritten_out_of_the_snapshot_by_the_first(
    config: EngineConfig,
) -> None:
    """The snapshot is the first process's; a delete made in another reaches it within a catch-up."""
    from .test_erasure import traces

    shared = replace(config, shared=True, sync_seconds=0.2, erasure_seconds=1.0)
    a = FaceService(shared)
    b = FaceService(replace(shared, snapshots=False))
    try:
        a.create_gallery("g")
        a.enroll_embeddings("g", ["keep", "erase"], [EmbeddingInput(unit(1)), EmbeddingInput(unit(2))])
        a.snapshot("g")
        snapshots = shared.data_dir / "index"
        assert traces(snapshots, np.asarray(unit(2)))
        b.delete_identity("g", "erase")
        acked = time.monotonic()
        bound = shared.sync_seconds + shared.erasure_seconds
        while traces(snapshots, np.asarray(unit(2))):
            assert time.monotonic() - acked <= bound, "the snapshot still holds the erased face"
            time.sleep(0.05)
        assert traces(snapshots, np.asarray(unit(1))), "the kept face is still in the snapshot"
    finally:
        b.close()
        a.close()
