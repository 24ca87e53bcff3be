"""Measurements of Toy Models of Superposition (Elhage et al. 2022).

``W`` is ``[..., n_features, n_hidden]`` as in Anthropic's notebook: row ``W[i]`` is
feature i's direction in the hidden space (the paper's column ``W_i``). Leading axes
(models, seeds) broadcast through every function.
"""

import numpy as np

REPRESENTED = 0.5  # a feature counts as represented when ||W_i|| exceeds this


def feature_norms(W: np.ndarray) -> np.ndarray:
    """||W_i||: is feature i represented? ``[..., n]``."""
    return np.linalg.norm(W, axis=-1)


def gram(W: np.ndarray) -> np.ndarray:
    """W^T W in the paper's notation: ``[..., n, n]``, entry (i, j) = W_i . W_j."""
    return W @ np.swapaxes(W, -1, -2)


def _overlaps(W: np.ndarray) -> np.ndarray:
    """(W_i_hat . W_j)^2 for all i, j: ``[..., n, n]``."""
    unit = W / np.maximum(feature_norms(W)[..., None], 1e-6)
    return (unit @ np.swapaxes(W, -1, -2)) ** 2


def superposition(W: np.ndarray) -> np.ndarray:
    """sum_{j != i} (W_i_hat . W_j)^2 (the paper's interference; 0 = orthogonal, >= 1 = fully shared)."""
    o = _overlaps(W)
    return o.sum(-1) - np.diagonal(o, axis1=-2, axis2=-1)


def dimensionality(W: np.ndarray) -> np.ndarray:
    """Feature dimensionality D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2 (j = i included)."""
    return feature_norms(W) ** 2 / np.maximum(_overlaps(W).sum(-1), 1e-12)


def dims_per_feature(W: np.ndarray) -> np.ndarray:
    """D* = m / ||W||_F^2: hidden dimensions per embedded feature."""
    return W.shape[-1] / np.maximum((W**2).sum((-1, -2)), 1e-12)


def n_represented(W: np.ndarray, threshold: float = REPRESENTED) -> np.ndarray:
    """How many features have ||W_i|| > threshold."""
    return (feature_norms(W) > threshold).sum(-1)


def adjacent_angles(W: np.ndarray, threshold: float = REPRESENTED) -> np.ndarray:
    """For a 2-D hidden space: angles in degrees between neighbouring represented features.

    A regular pentagon gives five angles of 72 degrees.
    """
    assert W.shape[-1] == 2, "adjacent_angles needs n_hidden == 2"
    rows = W[feature_norms(W) > threshold]
    if len(rows) < 2:
        return np.array([360.0])
    theta = np.sort(np.degrees(np.arctan2(rows[:, 1], rows[:, 0])) % 360.0)
    return np.diff(np.concatenate([theta, theta[:1] + 360.0]))


def phase_theory(r: np.ndarray, density: np.ndarray) -> np.ndarray:
    """Optimal phase of the n=2, m=1 model from the closed-form losses (Elhage et al. 2022, Superposition as a Phase Change).

    r is the extra feature's importance relative to the first, density is 1 - S.
    Returns 0: extra feature not represented, 1: dedicated dimension (the other is
    dropped), 2: both in an antipodal pair (superposition).
    """
    r, s = np.broadcast_arrays(np.asarray(r, float), np.asarray(density, float))
    drop = s / 3 - s**2 / 4  # expected loss of a weight-1 feature set to its mean
    loss_extra_dropped = r * drop  # the first feature keeps the dimension
    loss_first_dropped = drop  # the extra feature takes the dimension
    loss_pair = (1 + r) * s**2 / 6
    return np.argmin(np.stack([loss_extra_dropped, loss_first_dropped, loss_pair]), axis=0)


def phase_boundary(r: np.ndarray) -> np.ndarray:
    """Density below which superposition wins: 4r/(2+5r) for r <= 1, 4/(5+2r) for r >= 1."""
    r = np.asarray(r, float)
    return np.where(r <= 1, 4 * r / (2 + 5 * r), 4 / (5 + 2 * r))


def phase_empirical(W: np.ndarray) -> np.ndarray:
    """Phase of trained n=2, m=1 models, ``W`` ``[..., 2, 1]``, coded as in ``phase_theory``."""
    norms = feature_norms(W)
    both = (norms > REPRESENTED).all(-1)
    extra = norms[..., 1] > REPRESENTED
    return np.where(both, 2, np.where(extra, 1, 0))
