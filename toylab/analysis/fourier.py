"""Fourier analysis of modular addition (Nanda et al. 2023, §3-§5).

Conventions (the paper's code): the basis of functions on Z_p has rows
``[const, cos 1, sin 1, ..., cos K, sin K]`` with K = (p-1)/2, each of unit norm, so
row 2k-1 is cos(w_k x) and row 2k is sin(w_k x), w_k = 2 pi k / p. Inputs over the
(a, b) grid are flattened row-major: index a * p + b. Everything here is numpy on
arrays already computed by the model: no training code, easy to test on planted data.
"""

import numpy as np


def fourier_basis(p: int) -> tuple[np.ndarray, list[str]]:
    """The orthonormal basis ``F [p, p]`` (rows are basis functions) and their names."""
    x = np.arange(p)
    rows, names = [np.ones(p)], ["const"]
    for k in range(1, p // 2 + 1):
        rows += [np.cos(2 * np.pi * k * x / p), np.sin(2 * np.pi * k * x / p)]
        names += [f"cos {k}", f"sin {k}"]
    F = np.stack(rows)
    return F / np.linalg.norm(F, axis=1, keepdims=True), names


def component_norms(F: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Norm of each Fourier component of ``W [p, d]`` (the p axis transformed): ``[p]``."""
    return np.linalg.norm(F @ W, axis=1)


def frequency_norms(components: np.ndarray) -> np.ndarray:
    """Per frequency k = 1..K, the norm of its (cos k, sin k) pair: ``[K]`` (the constant dropped)."""
    return np.sqrt(components[1::2] ** 2 + components[2::2] ** 2)


def key_frequencies(freq_norms: np.ndarray, rel: float = 0.25) -> np.ndarray:
    """Frequencies (1-based) whose norm exceeds ``rel`` times the largest.

    The rule TransformerLens's notebook applies to W_E (``norm > max / 4``); we apply
    it to the neuron-logit map W_L, whose DFT the paper uses to pick them (App. C.2).
    """
    return np.flatnonzero(freq_norms > rel * freq_norms.max()) + 1


def gini(x: np.ndarray) -> float:
    """Gini coefficient of a non-negative vector (Hurley & Rickard 2009): 0 even, -> 1 sparse."""
    c = np.sort(np.abs(np.asarray(x, np.float64)))
    n = c.size
    return float(np.sum((2 * np.arange(1, n + 1) - n - 1) * c) / (n * c.sum()))


def fft2d(acts: np.ndarray, F: np.ndarray) -> np.ndarray:
    """``[p, p, ...]`` over the (a, b) grid into the 2-D Fourier basis: ``F acts F^T`` on the first two axes."""
    # Two matrix products, not one three-operand einsum: numpy's einsum would sum over
    # (a, b) for every (f, g) at once, p^4 work per trailing entry instead of 2 p^3.
    return np.tensordot(F, np.tensordot(F, acts, axes=(1, 0)), axes=(1, 1)).swapaxes(0, 1)


def sum_directions(p: int, ks) -> np.ndarray:
    """Unit vectors ``[2 len(ks), p*p]`` of cos(w_k (a+b)) and sin(w_k (a+b)) over the flattened grid.

    They are orthonormal, so projecting onto them is ``D^T (D x)``: the paper's
    P_K (Nanda et al. 2023, §5.1), built from the exact 1-D products so no cross-frequency
    term sneaks in.
    """
    a, b = np.divmod(np.arange(p * p), p)
    rows = []
    for k in ks:
        w = 2 * np.pi * k / p
        rows += [np.cos(w * (a + b)), np.sin(w * (a + b))]
    D = np.stack(rows) if rows else np.zeros((0, p * p))
    return D / np.linalg.norm(D, axis=1, keepdims=True) if rows else D


def restricted_logits(logits: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Keep only the cos/sin(w_k(a+b)) components and the constant: ``[..., p*p, p]`` (Nanda et al. 2023, §5.1)."""
    return D.T @ (D @ logits) + logits.mean(-2, keepdims=True)


def excluded_logits(logits: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Remove the cos/sin(w_k(a+b)) components, keep everything else (Nanda et al. 2023, §5.1)."""
    return logits - D.T @ (D @ logits)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean cross-entropy over the second-to-last axis, in float64: ``[...]``."""
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, np.broadcast_to(labels[:, None], z.shape[:-1] + (1,)), -1)[..., 0].mean(-1)


def neuron_frequencies(post: np.ndarray, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each neuron's frequency and the share of its variance that frequency explains.

    ``post [p, p, n_neurons]``: activations at '=' over the (a, b) grid. As in the
    paper's notebook: centre each neuron, take its 2-D Fourier power, and for each k
    the power in the 3x3 block of {const, cos k, sin k} x {const, cos k, sin k}.
    Returns ``freq [n]`` (1-based) and ``frac [n]``.
    """
    p = F.shape[0]
    power = fft2d(post - post.mean((0, 1)), F) ** 2
    total = power.sum((0, 1))
    fracs = []
    for k in range(1, p // 2 + 1):
        idx = [0, 2 * k - 1, 2 * k]
        fracs.append(power[np.ix_(idx, idx)].sum((0, 1)) / np.maximum(total, 1e-30))
    fracs = np.stack(fracs)  # [K, n]
    return fracs.argmax(0) + 1, fracs.max(0)


def logit_fve(logits: np.ndarray, p: int, ks) -> float:
    """Share of the logits' variance that sum_k alpha_k cos(w_k (a + b - c)) explains, over the key ks.

    ``logits [p*p, p]`` at '='; each input's logits are centred over c first (softmax
    ignores a constant per input). The cos(w_k(a+b-c)) patterns are orthogonal, so
    the best fit is a sum of independent projections.
    """
    a, b = np.divmod(np.arange(p * p), p)
    c = np.arange(p)
    L = logits - logits.mean(-1, keepdims=True)
    explained = 0.0
    for k in ks:
        v = np.cos(2 * np.pi * k / p * (a[:, None] + b[:, None] - c[None, :]))
        explained += np.sum(L * v) ** 2 / np.sum(v * v)
    return float(explained / np.sum(L * L))
