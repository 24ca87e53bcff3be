"""Steering: edit an activation during the forward pass and watch the answer move.

* ``add_hook``: add ``scale * vector`` at a hook (at one position, or every position),
  the activation addition of Turner et al. 2023 (ActAdd) and, with the vector a mean over
  many contrast pairs (``mean_difference``), contrastive activation addition (Rimsky et
  al. 2024). The vector may be anything with the activation's last dimension: a mean
  difference, a probe's weight column, an SAE's decoder row.
* ``edit_hook``: any function of the activation at a position (``rotate`` turns it in a
  plane), for features that adding a vector cannot move: a circular feature's angle.
* ``dose_response``: a metric of the steered model over many scales in one ``vmap``.

All are hooks for ``transformer.run_with_hooks``, so they work under ``jit``, ``vmap`` and
``grad``; ``scale`` and ``position`` may be traced values. A scale of 0 is the identity.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from toylab import transformer as tf


def mean_difference(positive: jax.Array, negative: jax.Array) -> jax.Array:
    """``mean(positive) - mean(negative)`` over the leading (sample) axis: the contrast vector."""
    return positive.mean(0) - negative.mean(0)


def _at_position(x: jax.Array, new: jax.Array, position, pos_axis: int) -> jax.Array:
    if position is None:
        return new
    shape = [1] * x.ndim
    shape[pos_axis] = x.shape[pos_axis]
    return jnp.where((jnp.arange(x.shape[pos_axis]) == position).reshape(shape), new, x)


def edit_hook(name: str, fn: Callable[[jax.Array], jax.Array], position=None, pos_axis: int = 1
              ) -> tuple[str, tf.Hook]:
    """A forward hook replacing activation ``x`` by ``fn(x)`` at ``position`` (all positions if None).

    ``pos_axis``: 1 for ``[batch, pos, ...]`` hooks (residuals, ``hook_z``, MLP activations).
    """
    return name, lambda x, _: _at_position(x, fn(x), position, pos_axis)


def add_hook(name: str, vector: jax.Array, scale=1.0, position=None, pos_axis: int = 1) -> tuple[str, tf.Hook]:
    """A forward hook adding ``scale * vector`` (broadcast over the activation's last axes) at ``position``."""
    return edit_hook(name, lambda x: x + scale * vector, position, pos_axis)


def rotate(basis: jax.Array, angle, read: jax.Array | None = None) -> Callable[[jax.Array], jax.Array]:
    """``x -> x`` turned by ``angle`` (radians) in the plane of ``basis [2, d]``, the rest kept.

    With ``basis = [u, v]``, the coordinates ``(c, s)`` of x in the plane become
    ``(c, s)`` turned from u towards v by ``angle``, written back along u and v. The
    coordinates are read by ``read [2, d]`` (dual vectors: ``read[i] . basis[j] = 1 if i == j
    else 0``), by default the basis itself, which must then be orthonormal. A dual pair
    is for a plane defined by what reads it, e.g. the plane the unembedding reads as
    cos/sin of one frequency; the edit moves x along u and v only.
    """
    u, v = basis[0], basis[1]
    ru, rv = (u, v) if read is None else (read[0], read[1])
    cos, sin = jnp.cos(angle), jnp.sin(angle)

    def fn(x: jax.Array) -> jax.Array:
        c, s = x @ ru, x @ rv
        c2, s2 = cos * c - sin * s, sin * c + cos * s
        return x + (c2 - c)[..., None] * u + (s2 - s)[..., None] * v

    return fn


def dose_response(model: tf.Transformer, tokens: jax.Array, name: str, vector: jax.Array, scales: jax.Array,
                  metric: Callable[[jax.Array], jax.Array], position=None) -> jax.Array:
    """``metric(logits)`` with ``scale * vector`` added at hook ``name``, for each of ``scales``: one vmapped call."""
    return jax.vmap(lambda s: metric(tf.run_with_hooks(model, tokens, [add_hook(name, vector, s, position)])))(scales)
