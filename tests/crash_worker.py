"""A real engine process for the crash tests: enrols in a loop and reports each acknowledged face.

    python tests/crash_worker.py DATA_DIR SEED [DATABASE_URL]

Prints ``ready`` once open, then one line ``ACK face_id external_id`` per face
whose enrol call returned (i.e. was committed), and ``DELETING external_id``
before each delete it starts, until it is killed.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

from faceid.engine.config import EngineConfig, IndexConfig
from faceid.engine.domain.errors import AlreadyExistsError
from faceid.engine.domain.results import EmbeddingInput
from faceid.engine.service import FaceService


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=128).astype(np.float32)
    return v / np.linalg.norm(v)


def main() -> None:
    data_dir, seed = Path(sys.argv[1]), int(sys.argv[2])
    url = sys.argv[3] if len(sys.argv) > 3 else None
    # small thresholds so that kills also land in snapshots and index training
    config = EngineConfig(
        data_dir=data_dir,
        database_url=url,
        snapshot_every=40,
        index=IndexConfig(train_min=300, retrain_growth=2.0),
    )
    service = FaceService(config)
    with contextlib.suppress(AlreadyExistsError):
        service.create_gallery("crash")
    print("ready", flush=True)
    n = 0
    while True:
        batch = [f"s{seed}-{n + i}" for i in range(5)]
        vectors = [EmbeddingInput(vector(hash((seed, n + i)) % 2**32)) for i in range(5)]
        for face in service.enroll_embeddings("crash", batch, vectors):
            print(f"ACK {face.face_id} {face.external_id}", flush=True)
        if n % 35 == 0:
            print(f"DELETING {batch[0]}", flush=True)  # in flight: may or may not commit before a kill
            service.delete_identity("crash", batch[0])
        n += 5


if __name__ == "__main__":
    main()
