import numpy as np

from toylab.analysis import superposition as sp


def pentagon(radius=1.0):
    t = np.radians(90 + 72 * np.arange(5))
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def test_orthogonal_features_no_superposition():
    W = np.zeros((6, 3))
    W[:3] = np.eye(3)  # three dedicated features, three dropped
    np.testing.assert_allclose(sp.feature_norms(W), [1, 1, 1, 0, 0, 0])
    np.testing.assert_allclose(sp.superposition(W)[:3], 0)
    np.testing.assert_allclose(sp.dimensionality(W)[:3], 1)
    assert sp.n_represented(W) == 3
    np.testing.assert_allclose(sp.dims_per_feature(W), 1.0)


def test_antipodal_pair():
    W = np.array([[1.0], [-1.0]])
    np.testing.assert_allclose(sp.superposition(W), [1, 1])
    np.testing.assert_allclose(sp.dimensionality(W), [0.5, 0.5])
    np.testing.assert_allclose(sp.dims_per_feature(W), 0.5)


def test_pentagon_angles_and_dimensionality():
    W = pentagon(1.1)
    np.testing.assert_allclose(sp.adjacent_angles(W), [72] * 5, atol=1e-9)
    np.testing.assert_allclose(sp.dimensionality(W), 2 / 5, atol=1e-9)
    np.testing.assert_allclose(sp.dimensionality(W).sum(), 2, atol=1e-9)  # sums to m
    W[2] = 0  # a dropped feature leaves a 144-degree gap
    assert sorted(np.round(sp.adjacent_angles(W)).tolist()) == [72, 72, 72, 144]


def test_leading_axes_broadcast():
    W = np.stack([pentagon(), pentagon(0.5)])
    assert sp.superposition(W).shape == (2, 5)
    assert sp.n_represented(W).tolist() == [5, 0]


def test_phase_theory_boundaries():
    # Dense: a more important extra feature takes the dimension; a less important one is dropped.
    assert sp.phase_theory(3.0, 1.0) == 1 and sp.phase_theory(0.3, 1.0) == 0
    # Sparse: superposition wins, on both sides of r = 1.
    assert sp.phase_theory(3.0, 0.05) == 2 and sp.phase_theory(0.3, 0.05) == 2
    # The closed-form boundary separates them (triple point at r = 1, density 4/7).
    for r in (0.1, 0.3, 3.0, 10.0):
        s = float(sp.phase_boundary(r))
        assert sp.phase_theory(r, s * 0.95) == 2 and sp.phase_theory(r, s * 1.05) != 2
    np.testing.assert_allclose(sp.phase_boundary(1.0), 4 / 7)


def test_phase_empirical():
    W = np.array([[[1.0], [0.0]], [[0.0], [1.0]], [[1.0], [-1.0]]])
    assert sp.phase_empirical(W).tolist() == [0, 1, 2]
