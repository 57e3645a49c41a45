"""Average linkage over a neighbour graph, against a brute-force agglomeration and real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faceid.benchmarks.common import centre_most
from faceid.engine.cluster.clusters import groups
from faceid.engine.cluster.linkage import Linkage, average_linkage, neighbour_pairs
from faceid.engine.vision.pipeline import FacePipeline


def people(n_people: int, per: int, spread: float, seed: int) -> tuple[npt.NDArray[np.float32], list[int]]:
    """Unit vectors around ``n_people`` random centres, ``per`` each (and their person numbers)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_people, 16))
    x = np.repeat(centres, per, axis=0) + spread * rng.standard_normal((n_people * per, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [p for p in range(n_people) for _ in range(per)]


def brute_force(x: npt.NDArray[np.float32], linkage: Linkage) -> list[frozenset[int]]:
    """One merge at a time, every pair of clusters scored by the mean of all its member pairs."""
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    clusters = [[i] for i in range(len(x))]
    while True:
        best, pair = -np.inf, None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                s = sims[np.ix_(clusters[a], clusters[b])].mean()
                need = linkage.required(np.array(len(clusters[a]), float), np.array(len(clusters[b]), float))
                if s >= need and s > best:
                    best, pair = s, (a, b)
        if pair is None:
            return sorted((frozenset(c) for c in clusters), key=min)
        a, b = pair
        clusters[a] += clusters.pop(b)


def partition(labels: npt.NDArray[np.int64]) -> list[frozenset[int]]:
    return sorted((frozenset(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels)), key=min)


def complete_graph(n: int) -> npt.NDArray[np.int64]:
    return neighbour_pairs(np.tile(np.arange(n), (n, 1)))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n_people=st.integers(1, 6), per=st.integers(1, 5))
def test_on_a_complete_graph_the_rounds_make_the_merges_of_one_at_a_time_average_linkage(
    seed: int, n_people: int, per: int
) -> None:
    x, _ = people(n_people, per, 0.6, seed)
    for linkage in (Linkage.from_distances(0.9, 0.9), Linkage.from_distances(0.7, 1.0)):
        labels = average_linkage(x, complete_graph(len(x)), linkage)
        assert partition(labels) == brute_force(x, linkage)


def test_a_cluster_is_named_by_its_smallest_row_and_a_face_no_proposal_joined_stays_alone() -> None:
    x, _ = people(3, 4, 0.1, seed=1)
    labels = average_linkage(x, complete_graph(len(x)), Linkage.from_distances(0.6, 0.6))
    assert labels.tolist() == [0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8]
    nothing = np.zeros((0, 2), np.int64)
    assert average_linkage(x, nothing, Linkage.from_distances(0.6, 0.6)).tolist() == list(range(12))


def test_neighbour_pairs_drop_self_loops_missing_neighbours_and_repeats() -> None:
    table = np.array([[0, 1, 2], [1, 0, -1], [2, 0, 0]])
    assert neighbour_pairs(table).tolist() == [[0, 1], [0, 2]]


def test_the_size_dependent_threshold_joins_large_groups_that_two_single_faces_would_not() -> None:
    linkage = Linkage.from_distances(0.3, 0.5)
    strict, loose = 1 - 0.3**2 / 2, 1 - 0.5**2 / 2
    assert linkage.required(np.array(1.0), np.array(1.0)) == pytest.approx(strict)
    assert linkage.required(np.array(100.0), np.array(100.0)) == pytest.approx(loose + (strict - loose) / 100)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 30))
def test_cohesion_is_the_mean_similarity_of_all_pairs_and_the_representative_is_a_member(
    seed: int, n: int
) -> None:
    x, _ = people(1, n, 0.5, seed)
    [group] = groups(x, np.zeros(n, np.int64))
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    assert group.cohesion == pytest.approx(sims[np.triu_indices(n, 1)].mean(), abs=1e-6)
    assert group.representative == int(np.argmax(sims.sum(axis=1)))


def test_groups_come_largest_first_and_singletons_have_no_cohesion() -> None:
    x, _ = people(3, 1, 0.1, seed=2)
    found = groups(x, np.array([2, 0, 2]))
    assert [g.members.tolist() for g in found] == [[0, 2], [1]]
    assert found[1].cohesion is None and found[1].representative == 1


def real_faces(faces: Path, pipeline: FacePipeline, name: str) -> tuple[npt.NDArray[np.float32], list[str]]:
    """The embedding of the central face of each photo of a shared set, and the person's name."""
    vectors, names = [], []
    for path in sorted((faces / name / "images").glob("*/*")):
        image = pipeline.decode(path.read_bytes())
        found = pipeline.process(image)
        assert found, f"no face found in {path}"
        vectors.append(centre_most(found, image.shape[1], image.shape[0]).embedding)
        names.append(path.parent.name)
    return np.stack(vectors).astype(np.float32), names


def cluster_real(x: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    nearest = np.argsort(-(x @ x.T), axis=1)[:, :31]
    return average_linkage(x, neighbour_pairs(nearest), Linkage.from_distances(0.32, 0.36))


@pytest.mark.parametrize("name", ["dlib_johns5", "deepface_unit13"])
def test_each_persons_real_photos_cluster_together_and_apart_from_the_others(
    faces: Path, pipeline: FacePipeline, name: str
) -> None:
    x, names = real_faces(faces, pipeline, name)
    labels = cluster_real(x)
    by_person = {n: {int(labels[i]) for i in range(len(names)) if names[i] == n} for n in set(names)}
    assert all(len(clusters) == 1 for clusters in by_person.values()), by_person
    assert len({c for clusters in by_person.values() for c in clusters}) == len(by_person)


def test_no_cluster_of_real_lfw_photos_mixes_two_people_and_most_photos_join_their_persons_cluster(
    faces: Path, pipeline: FacePipeline
) -> None:
    x, names = real_faces(faces, pipeline, "lfw_orig_subset10_krasserm")  # 10 people, 10 photos each
    labels = cluster_real(x)
    people_in = {c: {names[i] for i in np.flatnonzero(labels == c)} for c in np.unique(labels)}
    assert all(len(p) == 1 for p in people_in.values()), people_in
    largest = [max(np.bincount(labels[[i for i in range(len(names)) if names[i] == n]])) for n in set(names)]
    assert sum(largest) >= 0.9 * len(names)  # measured: 91 of 100 (a few profile and blurred photos apart)


def test_starting_from_an_earlier_clustering_keeps_its_clusters_whole_and_assigns_the_new_faces() -> None:
    x, person = people(4, 6, 0.1, seed=3)  # 4 people, 6 faces each
    old = np.flatnonzero(np.arange(len(x)) % 6 < 4)  # the first 4 faces of each person: clustered before
    earlier = average_linkage(x[old], complete_graph(len(old)), Linkage.from_distances(0.6, 0.6))
    start = np.arange(len(x), dtype=np.int64)
    start[old] = old[earlier]
    nothing = np.zeros((0, 2), np.int64)
    assert partition(average_linkage(x, nothing, Linkage.from_distances(0.6, 0.6), start=start)) == partition(
        start
    )
    new = np.setdiff1d(np.arange(len(x)), old)
    proposals = np.array([(i, j) for i in new for j in range(len(x)) if i != j])
    labels = average_linkage(x, neighbour_pairs_of(proposals), Linkage.from_distances(0.6, 0.6), start=start)
    for c in np.unique(start[old]):  # the earlier clusters stay whole
        assert len(np.unique(labels[start == c])) == 1
    assert partition(labels) == partition(np.array(person))  # and each new face joined its person


def neighbour_pairs_of(pairs: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    lo, hi = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    return np.unique(np.stack([lo, hi], axis=1), axis=0)
