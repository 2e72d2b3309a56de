"""k-means: exact recovery of separated clusters, monotone inertia, seeding, batched labels, centroid files."""
import numpy as np
import pytest
import torch

from speechdistill.data.kmeans import (KMeansError, assign_labels, compute_inertia, fit_kmeans, kmeans_plus_plus,
                                       load_centroids, save_centroids)

CENTRES = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0], [10.0, 10.0, 10.0]])


def blobs(per_cluster=40, seed=0):
    rng = np.random.default_rng(seed)
    points = np.concatenate([centre + 0.3 * rng.standard_normal((per_cluster, 3)) for centre in CENTRES])
    truth = np.repeat(np.arange(len(CENTRES)), per_cluster)
    order = rng.permutation(len(points))
    return points[order].astype(np.float32), truth[order]


def assert_same_partition(labels, truth):
    labels = np.asarray(labels)
    mapping = {}
    for label, true in zip(labels, truth):
        assert mapping.setdefault(true, label) == label, "a true cluster was split"
    assert len(set(mapping.values())) == len(mapping), "two true clusters were merged"


def sample_mean_inertia(points, truth):
    """Inertia of the true partition around its own sample means (the optimum for separated blobs)."""
    points = points.astype(np.float64)
    return float(sum(((points[truth == k] - points[truth == k].mean(0)) ** 2).sum() for k in np.unique(truth)))


@pytest.mark.parametrize("batch_size", [None, 64])
def test_recovers_well_separated_clusters_exactly(batch_size):
    points, truth = blobs()
    result = fit_kmeans(points, 5, seed=0, batch_size=batch_size, max_iterations=50 if batch_size is None else 300)
    labels, _ = assign_labels(points, result.centroids)
    assert_same_partition(labels.numpy(), truth)
    optimum = sample_mean_inertia(points, truth)
    if batch_size is None:
        # Lloyd ends at the sample means of the true clusters: same centroids, same inertia
        for k in range(5):
            members = points[truth == k]
            label = int(labels[np.flatnonzero(truth == k)[0]])
            np.testing.assert_allclose(result.centroids[label].numpy(), members.mean(0), atol=1e-5)
        assert result.inertia == pytest.approx(optimum, rel=1e-6)
        assert result.converged
    else:
        assert result.inertia == pytest.approx(optimum, rel=0.02)
    assert result.inertia == pytest.approx(compute_inertia(points, result.centroids), rel=1e-9)


def test_lloyd_inertia_never_increases():
    # Uniform data has no clear clusters, so Lloyd needs many iterations to settle.
    points = np.random.default_rng(1).uniform(size=(600, 2)).astype(np.float32)
    result = fit_kmeans(points, 12, seed=3, max_iterations=60, tolerance=0.0)
    history = result.inertia_history
    assert len(history) >= 5
    assert all(later <= earlier * (1 + 1e-7) for earlier, later in zip(history, history[1:]))
    assert history[-1] < history[0]
    assert history[-1] == pytest.approx(result.inertia)


def test_seeded_runs_are_reproducible():
    points, _ = blobs(seed=2)
    first = fit_kmeans(points, 5, seed=7, batch_size=32, max_iterations=20)
    second = fit_kmeans(points, 5, seed=7, batch_size=32, max_iterations=20)
    torch.testing.assert_close(first.centroids, second.centroids, rtol=0, atol=0)
    assert first.inertia_history == second.inertia_history


def test_kmeans_plus_plus_picks_one_seed_per_separated_cluster():
    points, truth = blobs(seed=4)
    seeds = kmeans_plus_plus(points, 5, seed=0)
    labels, _ = assign_labels(seeds, torch.tensor(CENTRES, dtype=torch.float32))
    assert sorted(labels.tolist()) == [0, 1, 2, 3, 4]


def test_more_clusters_than_distinct_points_reseeds_empty_clusters():
    points = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0], [9.0, 0.0]], dtype=np.float32), 10, axis=0)
    result = fit_kmeans(points, 4, seed=0)
    assert result.inertia == pytest.approx(0.0, abs=1e-9)


def test_batched_labels_match_brute_force():
    rng = np.random.default_rng(5)
    points = rng.standard_normal((301, 4)).astype(np.float32)
    centroids = rng.standard_normal((9, 4)).astype(np.float32)
    labels, distances = assign_labels(points, centroids, chunk_size=7)
    brute = ((points[:, None, :] - centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels.numpy(), brute.argmin(1))
    np.testing.assert_allclose(distances.numpy(), brute.min(1), rtol=1e-4, atol=1e-5)
    assert compute_inertia(points, centroids, chunk_size=13) == pytest.approx(float(brute.min(1).sum()), rel=1e-5)


def test_matches_scikit_learn_on_blobs():
    from sklearn.cluster import KMeans
    points, _ = blobs(seed=6)
    reference = KMeans(n_clusters=5, n_init=3, random_state=0).fit(points)
    result = fit_kmeans(points, 5, seed=1)
    assert result.inertia == pytest.approx(reference.inertia_, rel=1e-5)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_centroid_files_round_trip_atomically(tmp_path, suffix):
    centroids = torch.randn(6, 39)
    path = tmp_path / "km" / f"centroids{suffix}"
    save_centroids(path, centroids)
    torch.testing.assert_close(load_centroids(path), centroids, rtol=0, atol=0)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left behind


def test_centroid_file_errors_name_the_file(tmp_path):
    with pytest.raises(KMeansError, match=r"centroids\.pt.*\*\.npy or \*\.safetensors"):
        save_centroids(tmp_path / "centroids.pt", torch.zeros(2, 2))
    with pytest.raises(KMeansError, match="not found"):
        load_centroids(tmp_path / "missing.npy")
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not a numpy file")
    with pytest.raises(KMeansError, match="bad.npy: cannot read"):
        load_centroids(bad)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros(5, dtype=np.float32))
    with pytest.raises(KMeansError, match=r"float \[k, D\]"):
        load_centroids(flat)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(KMeansError, match="k=5 must be in"):
        fit_kmeans(np.zeros((3, 2), dtype=np.float32), 5)
    with pytest.raises(KMeansError, match="NaN"):
        fit_kmeans(np.array([[0.0, np.nan]]), 1)
    with pytest.raises(KMeansError, match=r"\[N, D\]"):
        fit_kmeans(np.zeros(4), 1)
