"""Attention-head scores of a transformer (Olsson et al. 2022; Elhage et al. 2021).

Functions of attention patterns or of a model's weights, not of an experiment's
config, so any study of a lab transformer can use them. Patterns are
``[batch, layers, heads, query, key]`` (stacked ``blocks.{l}.attn.hook_pattern``);
weights follow TransformerLens's row-vector convention (``W_Q`` is
``[n_heads, d_model, d_head]``). All are pure ``jnp``, so an analysis can vmap them
over seeds and snapshots.
"""

import jax
import jax.numpy as jnp
import numpy as np

from toylab import transformer as tf


def prev_token_score(patterns: jax.Array) -> jax.Array:
    """Mean attention from each position i >= 1 to i - 1: ``[batch, layers, heads, q, k] -> [layers, heads]``."""
    return jnp.diagonal(patterns, offset=-1, axis1=-2, axis2=-1).mean((0, -1))


def induction_score(patterns: jax.Array, length: int) -> jax.Array:
    """On [BOS] + R + R with |R| = ``length``: attention from each second-copy token to the token
    after its first occurrence (ARENA's stripe at offset 1 - length), averaged over the second
    copy's rows only, so a perfect induction head scores 1: ``[layers, heads]``."""
    dest = jnp.arange(length + 1, 2 * length + 1)
    return patterns[:, :, :, dest, dest - length + 1].mean((0, -1))


def ov_qk(model: tf.Transformer) -> tuple[jax.Array, jax.Array]:
    """W_OV = W_V W_O and W_QK = W_Q W_K^T per head, ``[layers, heads, d_model, d_model]`` (row-vector convention)."""
    W_V = jnp.stack([b.attn.W_V for b in model.blocks])
    W_O = jnp.stack([b.attn.W_O for b in model.blocks])
    W_Q = jnp.stack([b.attn.W_Q for b in model.blocks])
    W_K = jnp.stack([b.attn.W_K for b in model.blocks])
    return jnp.einsum("lhde,lhem->lhdm", W_V, W_O), jnp.einsum("lhde,lhme->lhdm", W_Q, W_K)


def copying_scores(model: tf.Transformer) -> jax.Array:
    """OV-circuit eigenvalue positivity sum(l) / sum|l| of W_E W_OV W_U per head, ``[layers, heads]``.

    The nonzero eigenvalues of W_E W_V W_O W_U equal those of the d_head x d_head W_O W_U W_E W_V.
    """
    small = jnp.stack([jnp.einsum("hem,mv,vd,hdf->hef", b.attn.W_O, model.unembed.W_U, model.embed.W_E, b.attn.W_V)
                       for b in model.blocks])
    ev = jnp.linalg.eigvals(small)
    return ev.real.sum(-1) / jnp.abs(ev).sum(-1)


def composition_scores(model: tf.Transformer) -> dict[str, jax.Array]:
    """Q-, K- and V-composition from each layer-0 head into each layer-1 head: ``[heads0, heads1]``.

    Elhage et al. 2021 in the row-vector convention of TransformerLens: with
    left = W_OV of the layer-0 head, K uses left @ W_QK^T, Q uses left @ W_QK, V uses left @ W_OV
    of the layer-1 head; score = ||left @ right||_F / (||left||_F ||right||_F). Pure jnp, so an
    analysis can vmap it over every snapshot and seed.
    """
    OV, QK = ov_qk(model)
    norm = lambda m: jnp.sqrt(jnp.sum(m * m, axis=(-2, -1)))  # noqa: E731
    out = {}
    for name, right in (("Q", QK[1]), ("K", QK[1].transpose(0, 2, 1)), ("V", OV[1])):
        prod = jnp.einsum("adm,bmn->abdn", OV[0], right)
        out[name] = norm(prod) / (norm(OV[0])[:, None] * norm(right)[None])
    return out


def composition_baseline(d_model: int, d_head: int, draws: int = 200, seed: int = 0) -> float:
    """The same score for random factorised matrices of the model's shapes (Elhage's baseline)."""
    rng = np.random.default_rng(seed)
    d, e = d_model, d_head
    vals = []
    for _ in range(draws):
        A = rng.normal(size=(d, e)) @ rng.normal(size=(e, d))
        B = rng.normal(size=(d, e)) @ rng.normal(size=(e, d))
        vals.append(np.linalg.norm(A @ B) / (np.linalg.norm(A) * np.linalg.norm(B)))
    return float(np.mean(vals))
