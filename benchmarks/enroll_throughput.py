"""Bulk enrolment of ready embeddings through the engine service, into SQLite and PostgreSQL.

For each database: faces/s of ``FaceService.enroll_embeddings`` in batches
(store commit + index add, with the index's automatic IVF-PQ training included
when the gallery passes its threshold), the end-to-end time for N faces, then
identify's cost split into the index search and the metadata lookup (face ids →
identity rows, one batched query) at top-10.

    python -m faceid.benchmarks.enroll_throughput [--n 1000000] [--batch 1000] [--databases sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from faceid.benchmarks.common import Progress, machine, unit_vectors, write_json
from faceid.engine.config import EngineConfig, IndexConfig
from faceid.engine.domain.results import EmbeddingInput
from faceid.engine.index import FaissGalleryIndex
from faceid.engine.service import FaceService

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def enrol(service: FaceService, n: int, batch: int, faces_per_identity: int) -> float:
    service.create_gallery("bench")
    progress = Progress(n, "enrol")
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        m = min(batch, n - start)
        vecs = unit_vectors(m, start)
        ids = [f"person-{(start + i) // faces_per_identity}" for i in range(m)]
        service.enroll_embeddings("bench", ids, [EmbeddingInput(v) for v in vecs])
        progress.update(m)
    index = service.galleries.state("bench").index
    assert isinstance(index, FaissGalleryIndex)  # this benchmark measures the FAISS backend
    index.wait_for_training()
    return time.perf_counter() - t0


def identify_split(service: FaceService, queries: int, batch: int) -> dict[str, float]:
    """Seconds per query spent in the index search and in the metadata lookup, at top-10."""
    state = service.galleries.state("bench")
    q = unit_vectors(queries, 999)
    t_search = t_lookup = 0.0
    for start in range(0, queries, batch):
        t0 = time.perf_counter()
        _, _, groups = state.index.search_with_groups(q[start : start + batch], 40)
        t1 = time.perf_counter()
        service._identities(state.gallery.id, {int(g) for g in groups[:, :10].ravel() if g >= 0})
        t_lookup += time.perf_counter() - t1
        t_search += t1 - t0
    return {
        "search_ms_per_query": 1e3 * t_search / queries,
        "lookup_ms_per_query": 1e3 * t_lookup / queries,
        "lookup_over_search": t_lookup / t_search,
    }


def run(database: str, n: int, batch: int, faces_per_identity: int, work: Path) -> dict[str, Any]:
    data = work / database
    url = None
    admin = None
    if database == "postgresql":
        import sqlalchemy as sa

        name = f"faceid_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f"create database {name}"))
        url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    service = FaceService(
        EngineConfig(data_dir=data, database_url=url, snapshot_every=0, index=IndexConfig(background=True))
    )
    try:
        seconds = enrol(service, n, batch, faces_per_identity)
        stats = service.stats("bench")
        split1 = identify_split(service, 200, 1)
        split100 = identify_split(service, 2000, 100)
        warm100 = identify_split(service, 2000, 100)  # the same queries again: identities now cached
        result = {
            "database": database,
            "faces": n,
            "batch": batch,
            "seconds": seconds,
            "faces_per_s": n / seconds,
            "index_kind": stats.index.kind,
            "identify_top10_batch1": split1,
            "identify_top10_batch100": split100,
            "identify_top10_batch100_warm": warm100,
        }
        print(
            f"{database}: {n:,} faces in {seconds:.1f} s = {n / seconds:,.0f} faces/s "
            f"(index {stats.index.kind}); "
            f"identify top-10 lookup/search = {split1['lookup_over_search']:.1%} (batch 1), "
            f"{split100['lookup_over_search']:.1%} (batch 100), "
            f"{warm100['lookup_over_search']:.1%} (batch 100, identities cached)"
        )
        return result
    finally:
        service.store.engine.dispose()
        if admin is not None and url is not None:
            import sqlalchemy as sa

            with admin.connect() as c:
                c.execute(sa.text(f"drop database {url.rsplit('/', 1)[1]} with (force)"))
            admin.dispose()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--faces-per-identity", type=int, default=2)
    ap.add_argument("--databases", default="sqlite,postgresql")
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args(argv)
    print(
        f"enroll_throughput: {args.n:,} faces, batches of {args.batch}, {args.faces_per_identity} faces per "
        f"identity, databases {args.databases}"
    )
    print(f"machine: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="faceid-enrol-"))
    try:
        results = [
            run(db, args.n, args.batch, args.faces_per_identity, work) for db in args.databases.split(",")
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    payload = {"benchmark": "enroll_throughput", "results": results, "machine": machine()}
    write_json(args.out / f"enroll_throughput_{args.n}.json", payload)
    return payload


if __name__ == "__main__":
    main()
