"""Findings of the independent audit, each held through a real server process (``faceid serve``).

Items 2 (attributes nested too deep), 10 (every field's limit, checked once, at the API), 13 (missing
model files are the server's fault), 6 (a batch with a bad item: one transaction, and no commit
after the call was answered as failed) and 11 (identify returns ``top_k`` identities).  Real SQLite
and PostgreSQL, real FAISS, the real model weights; nothing mocked.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from faceid.client.client import FaceIdClient, FaceIdClientError, enroll_request, update_request
from faceid.engine.domain.errors import DeadlineExceededError, InvalidInputError
from faceid.engine.domain.limits import MAX_ATTRIBUTES_DEPTH, MAX_ATTRIBUTES_KEYS, MAX_DISPLAY_NAME
from faceid.engine.domain.results import EmbeddingInput, EnrolledFace, EnrollItem
from faceid.engine.service import FaceService
from faceid.proto.faceid.v1 import faceid_pb2 as pb

from .conftest import encode
from .helpers import ServerProcess, fresh_postgres_database, postgres_unavailable


class Server(ServerProcess):
    """``faceid serve`` on a loopback port, on SQLite in its data directory or on a PostgreSQL URL."""

    def __init__(self, data_dir: Path, database_url: str = "", env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, *(("--database-url", database_url) if database_url else ()), env=env)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """'' for SQLite in the data directory, or the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield ""
        return
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("audit")).start()
    yield s
    assert s.stop() == 0


@pytest.fixture
def client(server: Server) -> Iterator[FaceIdClient]:
    with server.client() as c:
        yield c


def unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=128)
    return [float(x) for x in v / np.linalg.norm(v)]


def code_of(call: object) -> tuple[str, str]:
    assert callable(call)
    with pytest.raises(FaceIdClientError) as info:
        call()
    assert info.value.message and "Traceback" not in info.value.message
    return info.value.code, info.value.message


def nested(depth: int) -> str:
    """A JSON object nested ``depth`` levels deep (the object itself is level 1)."""
    return '{"a": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def enroll_with_attributes(gallery: str, identity: str, seed: int, attributes_json: str) -> pb.EnrollRequest:
    request = enroll_request(gallery, identity, embedding=unit(seed))
    request.attributes_json = attributes_json
    return request


# ---- item 2: attributes nested too deep -----------------------------------------------------------
def test_attributes_nested_too_deep_or_with_too_many_keys_are_refused_with_a_reason(
    client: FaceIdClient,
) -> None:
    client.create_gallery("deep")
    for depth in (MAX_ATTRIBUTES_DEPTH + 1, 975, 5_000, 30_000):  # 975: just under Python's limit
        request = enroll_with_attributes("deep", f"d{depth}", 1, nested(depth))
        code, message = code_of(lambda r=request: client._call("Enroll", r))
        assert code == "INVALID_ARGUMENT" and f"{MAX_ATTRIBUTES_DEPTH} levels" in message, message
    huge = enroll_with_attributes("deep", "huge", 1, nested(200_000))  # 400 KB: the size is checked first
    code, message = code_of(lambda: client._call("Enroll", huge))
    assert code == "INVALID_ARGUMENT" and "65,536" in message, message
    many = json.dumps({f"k{i}": i for i in range(MAX_ATTRIBUTES_KEYS + 1)})
    code, message = code_of(lambda: client._call("Enroll", enroll_with_attributes("deep", "m", 2, many)))
    assert code == "INVALID_ARGUMENT" and f"{MAX_ATTRIBUTES_KEYS:,} keys" in message, message
    code, message = code_of(
        lambda: client._call("Enroll", enroll_with_attributes("deep", "nan", 2, '{"a": NaN}'))
    )
    assert code == "INVALID_ARGUMENT", message
    # At the limit, and brackets inside strings (escaped quotes too) do not count as nesting.
    client._call("Enroll", enroll_with_attributes("deep", "ok", 3, nested(MAX_ATTRIBUTES_DEPTH)))
    text = json.dumps({"s": '\\"' + "[" * 5_000, "t": "{" * 5_000})
    client._call("Enroll", enroll_with_attributes("deep", "strings", 4, text))
    assert client.get_identity("deep", "strings").attributes == json.loads(text)
    update = update_request("deep", "ok", None, None)
    update.attributes_json = nested(975)
    code, message = code_of(lambda: client._call("UpdateIdentity", update))
    assert code == "INVALID_ARGUMENT" and f"{MAX_ATTRIBUTES_DEPTH} levels" in message
    results = client.enroll_batch(
        [
            enroll_with_attributes("deep", "b0", 5, nested(975)),
            enroll_request("deep", "b1", embedding=unit(6)),
        ]
    )
    assert results[0].error_code == "INVALID_ARGUMENT" and not results[1].error_code
    assert client.get_gallery("deep").face_count == 3


@pytest.mark.parametrize("stored", ["975 levels", "5000 levels", "not JSON"])
def test_a_stored_row_nested_too_deep_does_not_stop_the_server_from_starting(
    tmp_path: Path, backend: str, stored: str
) -> None:
    if backend and stored == "not JSON":
        pytest.skip("PostgreSQL's json column holds only JSON")
    server = Server(tmp_path / "data", backend).start()
    with server.client() as c:
        c.create_gallery("g")
        c.enroll("g", "old", embedding=unit(1), display_name="Old")
        c.enroll("g", "new", embedding=unit(2), attributes={"team": "blue"})
    assert server.stop() == 0
    # What an older version accepted, written straight into the database.
    text = nested(int(stored.split()[0])) if stored.endswith("levels") else '{"a": [1, 2'
    if backend:
        engine = sa.create_engine(backend)
        with engine.begin() as conn:
            conn.execute(
                sa.text("update identities set attributes = cast(:t as json) where external_id = 'old'"),
                {"t": text},
            )
        engine.dispose()
    else:
        with sqlite3.connect(tmp_path / "data" / "faceid.db") as db:
            db.execute("update identities set attributes = ? where external_id = 'old'", (text,))
    server.start()
    try:
        with server.client() as c:
            [face] = c.identify("g", embedding=unit(1), top_k=2)
            assert [(m.identity_id, m.attributes) for m in face.matches] == [
                ("old", {}),
                ("new", {"team": "blue"}),
            ]
            assert face.matches[0].display_name == "Old"
            old = c.get_identity("g", "old")
            assert old.attributes == {} and old.display_name == "Old" and len(old.face_ids) == 1
            assert [i.identity_id for i in c.list_identities("g")] == ["new", "old"]
            c.update_identity("g", "old", attributes={"fixed": True})
            assert c.get_identity("g", "old").attributes == {"fixed": True}
            c.enroll("g", "newer", embedding=unit(3))
            assert c.get_gallery("g").face_count == 3
    finally:
        assert server.stop() == 0
    assert "could not be read" in server.log()


# ---- item 10: every field's limit, at the API -----------------------------------------------------
def test_an_over_long_display_name_is_refused_on_every_enrol_path_and_the_gallery_keeps_working(
    tmp_path: Path, backend: str
) -> None:
    server = Server(tmp_path / "data", backend).start()
    long_name = "n" * (MAX_DISPLAY_NAME + 1)
    try:
        with server.client() as c:
            c.create_gallery("names")
            code, message = code_of(lambda: c.enroll("names", "a", embedding=unit(1), display_name=long_name))
            assert code == "INVALID_ARGUMENT" and f"limit is {MAX_DISPLAY_NAME}" in message, message
            code, message = code_of(
                lambda: c.enroll("names", "a", photo=b"\x00garbage", display_name=long_name)
            )
            assert code == "INVALID_ARGUMENT" and "display_name" in message, message
            code, message = code_of(lambda: c.update_identity("names", "a", display_name=long_name))
            assert code == "INVALID_ARGUMENT" and "display_name" in message, message
            code, message = code_of(lambda: c.enroll("names", "i" * 257, embedding=unit(1)))
            assert code == "INVALID_ARGUMENT" and "identity_id" in message, message
            code, message = code_of(lambda: c.create_gallery("g" * 129))
            assert code == "INVALID_ARGUMENT" and "gallery" in message, message

            def items(first: int) -> list[pb.EnrollRequest]:
                return [
                    enroll_request("names", f"p{first}", embedding=unit(first)),
                    enroll_request(
                        "names", f"p{first + 1}", embedding=unit(first + 1), display_name=long_name
                    ),
                    enroll_request("names", f"p{first + 2}", embedding=unit(first + 2), display_name="ok"),
                ]

            for results in (c.enroll_batch(items(10)), list(c.bulk_enroll(items(20)))):
                assert [r.index for r in results] == [0, 1, 2]
                assert not results[0].error_code and not results[2].error_code
                assert results[1].error_code == "INVALID_ARGUMENT"
                assert "display_name" in results[1].error_message and not results[1].faces
            c.enroll("names", "after", embedding=unit(30), display_name="m" * MAX_DISPLAY_NAME)
            [face] = c.identify("names", embedding=unit(30), top_k=1)
            assert face.matches[0].identity_id == "after"
            assert face.matches[0].display_name == "m" * MAX_DISPLAY_NAME
            assert c.get_gallery("names").face_count == 5
    finally:
        assert server.stop() == 0
    assert "internal error" not in server.log()


# ---- item 13: missing model files -----------------------------------------------------------------
@pytest.mark.parametrize("fault", ["missing", "corrupt"])
def test_model_files_that_cannot_load_are_a_server_fault_not_a_bad_request(
    tmp_path: Path, fault: str
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    if fault == "corrupt":
        from faceid.engine.vision.weights import LANDMARKS_5_FILE, RESNET_FILE

        (models / RESNET_FILE).write_bytes(b"\x00not a dlib network" * 10)
        (models / LANDMARKS_5_FILE).write_bytes(b"\x00not a shape predictor" * 10)
    server = Server(tmp_path / "data", env={"FACEID_MODELS_DIR": str(models)}).start()
    photo = encode(np.full((120, 120, 3), 128, np.uint8))
    try:
        with server.client() as c:
            c.create_gallery("m")
            for _ in range(3):
                code, message = code_of(lambda: c.identify("m", photo=photo))
                assert code == "INTERNAL" and "model files" in message, message
            code, message = code_of(lambda: c.enroll("m", "x", photo=photo))
            assert code == "INTERNAL" and "model files" in message, message
            code, message = code_of(lambda: c.detect(photo))
            assert code == "INTERNAL" and "model files" in message, message
            # Embeddings need no model: the server keeps serving them.
            c.enroll("m", "vector", embedding=unit(1))
            [face] = c.identify("m", embedding=unit(1), top_k=1)
            assert face.matches[0].identity_id == "vector"
    finally:
        assert server.stop() == 0
    # The fault is logged once, saying where the files were looked for.
    lines = [line for line in server.log().splitlines() if "FACEID_MODELS_DIR" in line]
    assert len(lines) == 1 and "cannot be loaded" in lines[0], lines


# ---- item 6: a batch with a bad item ----------------------------------------------------------------
def transactions(data_dir: Path, gallery: str) -> int:
    """Transactions that enrolled the gallery's faces: each stamps its faces with its own time."""
    with sqlite3.connect(f"file:{data_dir / 'faceid.db'}?mode=ro", uri=True) as db:
        [(count,)] = db.execute(
            "select count(distinct f.created_at) from faces f join galleries g on g.id = f.gallery_id "
            "where g.name = ?",
            (gallery,),
        )
    return int(count)


@pytest.mark.parametrize("bad", ["wrong dimension", "over-long display name"])
def test_a_batch_with_one_bad_item_enrols_the_rest_in_one_transaction(
    server: Server, client: FaceIdClient, bad: str
) -> None:
    gallery = f"batch-{bad.split()[0]}"
    client.create_gallery(gallery)
    requests = [enroll_request(gallery, f"p{i}", embedding=unit(10_000 + i)) for i in range(2_000)]
    if bad == "wrong dimension":
        requests[1_234] = enroll_request(gallery, "bad", embedding=unit(1)[:100])
    else:
        requests[1_234] = enroll_request(gallery, "bad", embedding=unit(1), display_name="x" * 300)
    start = time.perf_counter()
    results = client.enroll_batch(requests)
    took = time.perf_counter() - start
    print(f"EnrollBatch of 2,000 with one bad item ({bad}): {took:.2f} s")
    assert [r.index for r in results] == list(range(2_000))
    assert results[1_234].error_code == "INVALID_ARGUMENT" and not results[1_234].faces
    assert all(len(r.faces) == 1 and not r.error_code for i, r in enumerate(results) if i != 1_234)
    assert client.get_gallery(gallery).face_count == 1_999
    assert transactions(server.data_dir, gallery) == 1
    assert took < 10  # one transaction per item took 20 s
    [face] = client.identify(gallery, embedding=unit(10_000 + 1_999), top_k=1)
    assert face.matches[0].identity_id == "p1999"


def settled_count(client: FaceIdClient, gallery: str) -> int:
    """The gallery's face count once nothing more lands (a commit may still be running)."""
    last, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 1.5:
        count = client.get_gallery(gallery).face_count
        if count != last:
            last, stable_since = count, time.monotonic()
        time.sleep(0.1)
    return last


def test_a_batch_whose_deadline_passes_commits_all_its_good_items_or_none(
    server: Server, client: FaceIdClient
) -> None:
    outcomes = []
    for n, deadline in enumerate([0.02, 0.1, 0.3, 0.6, 1.0, 2.0, 4.0, 30.0]):
        gallery = f"deadline-{n}"
        client.create_gallery(gallery)
        requests = [enroll_request(gallery, f"p{i}", embedding=unit(20_000 + i)) for i in range(2_000)]
        requests[1_000] = enroll_request(gallery, "bad", embedding=[0.5] * 128)  # not unit length
        try:
            results = client.enroll_batch(requests, timeout=deadline)
            code = "OK"
            assert sum(1 for r in results if r.error_code) == 1
        except FaceIdClientError as exc:
            code = exc.code
        count = settled_count(client, gallery)
        outcomes.append((deadline, code, count))
        assert code in ("OK", "DEADLINE_EXCEEDED"), outcomes
        # Never a part; and never a commit after the caller was told the call failed.
        assert (code, count) in (("OK", 1_999), ("DEADLINE_EXCEEDED", 0)), outcomes
    print("deadline (s), outcome, faces committed:", outcomes)
    assert outcomes[0][1] == "DEADLINE_EXCEEDED" and outcomes[-1][1] == "OK"
    assert "internal error" not in server.log()


# ---- item 11: identify returns top_k identities -------------------------------------------------------
def test_identify_returns_top_k_identities_when_each_identity_has_many_faces(client: FaceIdClient) -> None:
    client.create_gallery("crowded")
    rng = np.random.default_rng(7)
    centres = [np.asarray(unit(40_000 + p)) for p in range(10)]
    vectors: dict[str, list[np.ndarray]] = {}
    requests = []
    for p, centre in enumerate(centres):
        for _ in range(20):
            v = centre + rng.normal(0, 0.05, 128)
            v /= np.linalg.norm(v)
            vectors.setdefault(f"person{p}", []).append(v)
            requests.append(enroll_request("crowded", f"person{p}", embedding=[float(x) for x in v]))
    assert all(not r.error_code for r in client.enroll_batch(requests))
    for probe_seed in range(3):
        probe = centres[probe_seed] + rng.normal(0, 0.05, 128)
        probe /= np.linalg.norm(probe)
        nearest = {p: min(float(np.linalg.norm(v - probe)) for v in vs) for p, vs in vectors.items()}
        expected = sorted(nearest, key=lambda p: nearest[p])
        for top_k in (5, 10, 20):
            [face] = client.identify("crowded", embedding=[float(x) for x in probe], top_k=top_k)
            ids = [m.identity_id for m in face.matches]
            assert len(ids) == min(top_k, 10) == len(set(ids)), (top_k, ids)
            assert ids == expected[:top_k]
            distances = [m.distance for m in face.matches]
            assert distances == sorted(distances)
            assert distances == pytest.approx([nearest[p] for p in ids], abs=1e-3)


def test_a_write_refused_right_before_its_commit_leaves_nothing_behind(service: FaceService) -> None:
    """The commit guard's second check runs from the engine's commit event, after the rows were
    inserted: refusing there rolls everything back, on SQLite and PostgreSQL."""
    service.create_gallery("g")
    checks: list[int] = []

    def refuse_at_commit() -> None:
        checks.append(1)
        if len(checks) == 2:  # the first check passes (before the transaction), the second refuses
            raise DeadlineExceededError("too late")

    items = [
        EnrollItem(f"p{i}", EmbeddingInput(np.asarray(unit(50_000 + i), np.float32))) for i in range(100)
    ]
    items[3] = EnrollItem("bad", EmbeddingInput(np.zeros(5, np.float32)))
    with pytest.raises(DeadlineExceededError):
        service.enroll_each("g", items, refuse_at_commit)
    assert len(checks) == 2
    assert service.stats("g").faces == 0 and service.stats("g").identities == 0
    assert service.stats("g").index.count == 0
    outcomes = service.enroll_each("g", items, lambda: None)
    assert isinstance(outcomes[3], InvalidInputError)
    assert sum(isinstance(o, EnrolledFace) for o in outcomes) == 99
    assert service.stats("g").faces == 99
    [matches] = service.identify_embeddings("g", [EmbeddingInput(np.asarray(unit(50_000), np.float32))], 1)
    assert matches[0].external_id == "p0"
