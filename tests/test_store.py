"""The identity store against real SQLite and real PostgreSQL: every behaviour on both."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from faceid.engine.domain.records import Identity, NewFace
from faceid.engine.store import Store, make_engine
from faceid.engine.store.store import COPY_MIN

from .helpers import PG_URL, make_gallery, postgres_unavailable, vec


def test_galleries_are_created_listed_and_found_by_name(store: Store) -> None:
    a = make_gallery(store, "a")
    make_gallery(store, "b")
    assert [g.name for g in store.list_galleries()] == ["a", "b"]
    found = store.get_gallery("a")
    assert found is not None and found.id == a.id and found.dim == 128
    assert store.get_gallery("nope") is None


def test_gallery_names_are_unique(store: Store) -> None:
    make_gallery(store, "a")
    with pytest.raises(sa.exc.IntegrityError):
        make_gallery(store, "a")


def test_enrolment_creates_identities_once_and_returns_face_ids_in_order(store: Store) -> None:
    g = make_gallery(store)
    faces = [NewFace("alice", vec(1), display_name="Alice"), NewFace("bob", vec(2)), NewFace("alice", vec(3))]
    ids, identity_ids, seq = store.add_faces(g, faces)
    assert identity_ids[0] == identity_ids[2] != identity_ids[1]
    assert len(ids) == 3 and ids == sorted(ids) and seq > 0
    alice = store.get_identity(g.id, "alice")
    assert alice is not None and alice.display_name == "Alice" and alice.face_ids == (ids[0], ids[2])
    _more, _, seq2 = store.add_faces(g, [NewFace("alice", vec(4))])
    assert seq2 > seq
    alice = store.get_identity(g.id, "alice")
    assert alice is not None and len(alice.face_ids) == 3
    assert store.count_identities(g.id) == 2 and store.count_faces(g.id) == 4


def test_embeddings_come_back_bit_for_bit(store: Store) -> None:
    g = make_gallery(store)
    ids, _, _ = store.add_faces(g, [NewFace(f"p{i}", vec(i)) for i in range(5)])
    got = store.face_embeddings(g.id, ids)
    for i, fid in enumerate(ids):
        np.testing.assert_array_equal(got[fid], vec(i))
    chunks = list(store.iter_embeddings(g.id, 128, chunk=2))
    records = store.face_records(g.id, ids)
    np.testing.assert_array_equal(records[ids[3]][1], vec(3))
    assert [len(c[0]) for c in chunks] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), ids)


def test_a_large_batch_keeps_every_field_and_the_order(store: Store) -> None:
    """Batches of COPY_MIN rows or more take the bulk path (COPY on PostgreSQL): same results."""
    g = make_gallery(store)
    store.add_faces(g, [NewFace("before", vec(0))])
    faces = [
        NewFace(
            f"p{i // 2}",
            vec(100 + i),
            display_name=f"Person {i // 2} ☃",
            attributes={"i": i // 2, "tags": ["a", "b"], "quote": 'it\'s \\ "x"'},
            detection_score=0.5 + i / 1000,
            box=(1.0 * i, 2.0, 3.5, 4.25) if i % 3 else None,
            source_sha256=f"{i:064x}",
        )
        for i in range(3 * COPY_MIN)
    ]
    created: dict[int, Identity] = {}
    ids, identity_ids, seq = store.add_faces(g, faces, created)
    assert ids == sorted(ids) and len(set(ids)) == len(faces)
    assert len(created) == len(faces) // 2 and identity_ids[0] == identity_ids[1] != identity_ids[2]
    records = store.face_records(g.id, ids)
    for i, fid in enumerate(ids):
        np.testing.assert_array_equal(records[fid][1], vec(100 + i))
        assert records[fid][0] == identity_ids[i]
    person = store.get_identity(g.id, "p7")
    assert person is not None and person.display_name == "Person 7 ☃"
    assert person.attributes == {"i": 7, "tags": ["a", "b"], "quote": 'it\'s \\ "x"'}
    assert person.face_ids == (ids[14], ids[15])
    changes = store.changes_since(g.id, 0)
    assert [c.face_id for c in changes[1:]] == ids and changes[-1].seq == seq
    assert [c.seq for c in changes] == sorted(c.seq for c in changes)
    more, _, seq2 = store.add_faces(g, [NewFace(f"q{i}", vec(900 + i)) for i in range(COPY_MIN)])
    assert min(more) > max(ids) and seq2 > seq  # later ids and sequence numbers, whichever path


def test_change_log_orders_adds_and_removes_by_a_growing_sequence(store: Store) -> None:
    g = make_gallery(store)
    ids, _, s1 = store.add_faces(g, [NewFace("a", vec(1)), NewFace("b", vec(2))])
    removed, s2 = store.delete_faces(g.id, [ids[0], 999_999])
    assert removed == [ids[0]] and s2 > s1
    changes = store.changes_since(g.id, 0)
    assert [(c.op, c.face_id) for c in changes] == [("add", ids[0]), ("add", ids[1]), ("remove", ids[0])]
    assert [c.face_id for c in store.changes_since(g.id, s1)] == [ids[0]]
    assert store.last_seq(g.id) == s2
    assert store.trim_changes(g.id, s1) == 2
    assert [c.op for c in store.changes_since(g.id, 0)] == ["remove", "trim"]  # tests/test_change_log.py


def test_identities_page_by_external_id_without_gaps_or_repeats(store: Store) -> None:
    g = make_gallery(store)
    names = [f"id{i:03d}" for i in range(25)]
    store.add_faces(g, [NewFace(n, vec(i)) for i, n in enumerate(names)])
    seen, after = [], None
    while True:
        page = store.list_identities(g.id, 10, after)
        if not page:
            break
        seen += [p.external_id for p in page]
        after = page[-1].external_id
    assert seen == names
    assert all(len(p.face_ids) == 1 for p in store.list_identities(g.id, 5))


def test_update_changes_name_and_attributes_only(store: Store) -> None:
    g = make_gallery(store)
    store.add_faces(g, [NewFace("x", vec(1), display_name="Old", attributes={"team": "a"})])
    updated = store.update_identity(g.id, "x", None, {"team": "b", "floor": 3})
    assert (
        updated is not None
        and updated.display_name == "Old"
        and updated.attributes == {"team": "b", "floor": 3}
    )
    updated = store.update_identity(g.id, "x", "New", None)
    assert updated is not None and updated.display_name == "New" and updated.attributes["floor"] == 3
    assert store.update_identity(g.id, "missing", "N", None) is None


def test_deleting_an_identity_removes_its_faces_and_logs_each(store: Store) -> None:
    g = make_gallery(store)
    ids, _, _ = store.add_faces(g, [NewFace("x", vec(1)), NewFace("x", vec(2)), NewFace("y", vec(3))])
    result = store.delete_identity(g.id, "x")
    assert result is not None and sorted(result[0]) == ids[:2]
    assert store.get_identity(g.id, "x") is None
    assert store.face_embeddings(g.id, ids).keys() == {ids[2]}
    assert store.delete_identity(g.id, "x") is None


def test_identities_are_looked_up_by_row_id_in_one_batch(store: Store) -> None:
    g = make_gallery(store)
    _, idents, _ = store.add_faces(g, [NewFace("x", vec(1)), NewFace("y", vec(2)), NewFace("x", vec(3))])
    found = store.identities_by_id(g.id, [*idents, 123_456])
    assert {i: r.external_id for i, r in found.items()} == {idents[0]: "x", idents[1]: "y"}


def test_a_replay_may_ask_for_more_faces_than_one_query_takes_parameters(store: Store) -> None:
    g = make_gallery(store)
    ids, idents, _ = store.add_faces(g, [NewFace("x", vec(1)), NewFace("y", vec(2))])
    wanted = [*range(10**9, 10**9 + 70_000), *ids]  # beyond PostgreSQL's 65,535 parameters
    records = store.face_records(g.id, wanted)
    assert sorted(records) == ids and [records[i][0] for i in ids] == idents


def test_deleting_a_gallery_erases_everything_in_it(store: Store) -> None:
    g = make_gallery(store, "gone")
    other = make_gallery(store, "kept")
    store.add_faces(g, [NewFace("x", vec(1))])
    store.add_faces(other, [NewFace("x", vec(2))])
    assert store.delete_gallery(g.id)
    assert store.get_gallery("gone") is None
    assert store.count_faces(g.id) == 0
    assert [c.op for c in store.changes_since(g.id, 0)] == ["drop"]  # for other processes to see
    assert store.count_faces(other.id) == 1


def test_identities_are_scoped_to_their_gallery(store: Store) -> None:
    a = make_gallery(store, "a")
    b = make_gallery(store, "b")
    ids, idents, _ = store.add_faces(a, [NewFace("same-name", vec(1))])
    store.add_faces(b, [NewFace("same-name", vec(2))])
    assert store.identities_by_id(b.id, idents) == {}
    assert store.face_records(b.id, ids) == {}
    assert store.delete_faces(b.id, ids)[0] == []


def test_unicode_and_sql_looking_identifiers_are_plain_data(store: Store) -> None:
    g = make_gallery(store)
    weird = ["Zoë Ångström 张伟", "x'); DROP TABLE faces; --", "emoji 🙂"]
    store.add_faces(g, [NewFace(w, vec(i)) for i, w in enumerate(weird)])
    for w in weird:
        ident = store.get_identity(g.id, w)
        assert ident is not None and ident.external_id == w
    assert store.count_faces(g.id) == 3


def test_migrations_build_exactly_the_schema_of_the_models(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from faceid.engine.store import Base
    from faceid.engine.store.migrate import upgrade

    urls = [f"sqlite:///{tmp_path / 'migrated.db'}"]
    if postgres_unavailable() is None:
        urls.append(PG_URL)
    for url in urls:
        schema = f"m_{uuid.uuid4().hex[:12]}"
        kwargs = {} if url.startswith("sqlite") else {"connect_args": {"options": f"-csearch_path={schema}"}}
        if not url.startswith("sqlite"):
            with sa.create_engine(PG_URL).begin() as c:
                c.execute(sa.text(f"create schema {schema}"))
        engine = make_engine(url, **kwargs)
        try:
            upgrade(engine)
            upgrade(engine)  # idempotent: a second start changes nothing
            with engine.connect() as c:
                diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
            assert diff == [], f"{url.split(':')[0]}: migrations and models differ: {diff}"
        finally:
            engine.dispose()
            if not url.startswith("sqlite"):
                with sa.create_engine(PG_URL).begin() as c:
                    c.execute(sa.text(f"drop schema {schema} cascade"))


def test_a_clustering_run_keeps_its_clusters_and_deleted_faces_leave_them(store: Store) -> None:
    from faceid.engine.domain.errors import FailedPreconditionError
    from faceid.engine.store import ClusterStore

    g = make_gallery(store)
    ids, _, _ = store.add_faces(g, [NewFace(f"p{i % 3}", vec(i)) for i in range(7)])
    runs = ClusterStore(store.engine)
    run = runs.start(g.id, 30, 0.32, 0.36, total=7)
    assert run.state == "running" and run.faces == 7
    with pytest.raises(FailedPreconditionError, match="still running"):
        runs.start(g.id, 30, 0.32, 0.36, total=7)
    runs.heartbeat(run.id, "neighbours", 4, 7)
    assert (runs.get(g.id, run.id).phase, runs.get(g.id, run.id).done) == ("neighbours", 4)  # type: ignore[union-attr]
    store.delete_faces(g.id, [ids[6]])  # deleted while the run works: left out of its result
    done = runs.finish(
        run.id, g.id, [(ids[0:4], ids[1], 0.9), (ids[4:6], ids[4], 0.8), ([ids[6]], ids[6], None)]
    )
    assert done is not None
    assert (done.state, done.clusters, done.singletons) == ("succeeded", 2, 0)
    page = runs.clusters(run.id, 10)
    assert [[m.face_id for m in c.members] for c in page] == [ids[0:4], ids[4:6]]
    assert [m.external_id for m in page[0].members] == ["p0", "p1", "p2", "p0"]
    assert page[0].representative_face_id == ids[1] and page[0].cohesion == 0.9
    store.delete_faces(g.id, [ids[1], ids[5]])  # the representative too
    page = runs.clusters(run.id, 10)
    assert [[m.face_id for m in c.members] for c in page] == [[ids[0], ids[2], ids[3]], [ids[4]]]
    assert page[0].representative_face_id == ids[0] and page[1].cohesion is None
    assert [c.rank for c in runs.clusters(run.id, 10, min_size=2)] == [1]
    assert [c.rank for c in runs.clusters(run.id, 1, after_rank=1)] == [2]
    store.delete_identity(g.id, "p0")
    assert [[m.face_id for m in c.members] for c in runs.clusters(run.id, 10)] == [[ids[2]], [ids[4]]]
    assert runs.delete(g.id, run.id) and runs.get(g.id, run.id) is None
    assert runs.finish(run.id, g.id, []) is None  # a run deleted while it worked stores nothing
    assert not runs.heartbeat(run.id, "merging", 1, 0)  # and its next step learns it


def test_a_run_left_running_by_a_stopped_server_is_marked_failed_and_another_may_start(store: Store) -> None:
    from faceid.engine.store import ClusterStore

    g = make_gallery(store)
    runs = ClusterStore(store.engine)
    first = runs.start(g.id, 30, 0.32, 0.36, total=1)
    assert runs.fail_running("stopped; start it again") == 1
    failed = runs.get(g.id, first.id)
    assert failed is not None and failed.state == "failed" and "start it again" in failed.error
    assert runs.start(g.id, 30, 0.32, 0.36, total=1).state == "running"
    store.delete_gallery(g.id)
    assert runs.of_gallery(g.id) == []
