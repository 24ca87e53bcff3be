"""Fourier analysis on planted data with known answers."""

import numpy as np

from toylab.analysis import fourier

P = 23


def test_basis_is_orthonormal_and_ordered():
    F, names = fourier.fourier_basis(P)
    np.testing.assert_allclose(F @ F.T, np.eye(P), atol=1e-12)
    assert names[:3] == ["const", "cos 1", "sin 1"] and names[2 * 5 - 1] == "cos 5" and len(names) == P
    np.testing.assert_allclose(F[2 * 5 - 1] / F[2 * 5 - 1, 0], np.cos(2 * np.pi * 5 * np.arange(P) / P), atol=1e-12)


def test_a_planted_single_frequency_embedding_is_detected():
    x = np.arange(P)
    rng = np.random.default_rng(0)
    W_E = np.stack([np.cos(2 * np.pi * 7 * x / P), np.sin(2 * np.pi * 7 * x / P)], 1) @ rng.normal(size=(2, 16))
    W_E += 0.05 * rng.normal(size=W_E.shape)
    F, _ = fourier.fourier_basis(P)
    norms = fourier.frequency_norms(fourier.component_norms(F, W_E))
    assert norms.shape == (P // 2,)
    assert list(fourier.key_frequencies(norms)) == [7]
    assert fourier.gini(norms) > 0.7  # at most (n-1)/n = 0.91 for one frequency of 11


def test_gini():
    assert abs(fourier.gini(np.ones(10))) < 1e-12
    assert abs(fourier.gini(np.eye(10)[3]) - 0.9) < 1e-12


def planted_logits(ks, scale=8.0, shift=0):
    """sum_k scale cos(w_k (a + b + shift - c)): peaks at the answer c = a + b when shift = 0."""
    a, b = np.divmod(np.arange(P * P), P)
    c = np.arange(P)
    return sum(scale * np.cos(2 * np.pi * k / P * (a[:, None] + b[:, None] + shift - c[None])) for k in ks)


def test_restricted_and_excluded_loss_on_a_planted_model():
    ks = [3, 8]
    labels = np.sum(np.divmod(np.arange(P * P), P), axis=0) % P
    clean = planted_logits(ks)
    noise = planted_logits([5], scale=3.0, shift=4) + np.random.default_rng(1).normal(size=clean.shape)
    L = clean + noise
    D = fourier.sum_directions(P, ks)
    np.testing.assert_allclose(D @ D.T, np.eye(2 * len(ks)), atol=1e-10)
    # restricted keeps exactly the key cos/sin(w_k(a+b)) terms (and the mean): the noise goes
    R = fourier.restricted_logits(L, D)
    np.testing.assert_allclose(R - R.mean(-1, keepdims=True), clean - clean.mean(-1, keepdims=True), atol=0.3)
    assert fourier.cross_entropy(R, labels) < fourier.cross_entropy(L, labels)
    # excluded removes them: the rest carries no information on the answer, so the loss is near or above chance
    E = fourier.excluded_logits(L, D)
    np.testing.assert_allclose(E, L - (R - L.mean(-2, keepdims=True)), atol=1e-9)
    assert fourier.cross_entropy(E, labels) > np.log(P) - 0.5
    assert fourier.cross_entropy(clean, labels) < 0.05
    assert fourier.logit_fve(clean, P, ks) > 0.999 and fourier.logit_fve(clean, P, [4]) < 1e-6


def test_neuron_frequencies_on_planted_neurons():
    F, _ = fourier.fourier_basis(P)
    a, b = np.meshgrid(np.arange(P), np.arange(P), indexing="ij")
    w = 2 * np.pi / P
    post = np.stack([np.maximum(0.5 + np.cos(w * k * a) + np.cos(w * k * b), 0) for k in (2, 9)], -1)
    freq, frac = fourier.neuron_frequencies(post, F)
    assert list(freq) == [2, 9] and np.all(frac > 0.85)


def test_cross_entropy_resolves_tiny_losses():
    # a margin of 20 nats: the loss is ~(P-1) e^-20 ~ 5e-8, below float32's resolution near 0 of log-softmax
    logits = np.full((4, P), -10.0)
    labels = np.arange(4)
    logits[labels, labels] = 10.0
    want = np.log1p((P - 1) * np.exp(-20.0))
    assert abs(fourier.cross_entropy(logits.astype(np.float32), labels) - want) < 1e-3 * want


def test_fft2d_is_the_basis_change_on_both_input_axes():
    """F A F^T on (a, b), for each trailing entry, and a planted cos(w a) cos(w b) lands on one component."""
    p = 7
    F, _ = fourier.fourier_basis(p)
    A = np.random.default_rng(0).normal(size=(p, p, 3, 2))
    out = fourier.fft2d(A, F)
    assert out.shape == (p, p, 3, 2)
    for i in range(3):
        for j in range(2):
            np.testing.assert_allclose(out[:, :, i, j], F @ A[:, :, i, j] @ F.T, atol=1e-12)
    w = 2 * np.pi * 2 / p
    planted = np.outer(np.cos(w * np.arange(p)), np.cos(w * np.arange(p)))
    power = fourier.fft2d(planted, F) ** 2
    assert np.unravel_index(power.argmax(), power.shape) == (3, 3)  # cos 2 is component 2k - 1 = 3
    assert power[3, 3] / power.sum() > 0.999
