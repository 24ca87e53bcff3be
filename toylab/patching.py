"""Activation patching and ablation of attention heads, built on ``run_with_hooks``.

One verb, ``patch_heads``: replace what chosen heads write (``hook_z``, their output
before W_O) or how they attend (``hook_pattern``) with zeros, the batch mean, or the
same activation from another run (activation patching: run on corrupted tokens, patch
in clean activations). A whole grid of patches (layer x head x position) is one
``vmap`` over the patch's coordinates, compiled once, not a Python loop:

    grid = patch_grid(model, tokens, metric, mode="zero")        # [n_layers, n_heads]
    grid = patch_grid(model, tokens, metric, by_position=True)   # [n_layers, n_heads, pos]

The coordinates are traced values, so the hooks select with ``where`` over one-hot
masks; a patch with ``head = -1`` changes nothing (a clean baseline in the same call).
"""

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from toylab import transformer as tf

MODES = ("zero", "mean", "patch")
SITES = ("z", "pattern")


def head_hooks(cfg: tf.TransformerConfig, layer: jax.Array, head: jax.Array, position: jax.Array | None = None, *,
               site: str = "z", mode: str = "zero", source: Mapping[str, jax.Array] | None = None) -> list:
    """Forward hooks that replace head ``head`` of layer ``layer`` (at query ``position``, or all).

    ``head=None`` patches every head of the layer at once (e.g. to ablate a redundant
    group of heads).

    ``site``: "z" (``[batch, pos, head, d_head]``) or "pattern" (``[batch, head, q, k]``).
    ``mode``: "zero"; "mean" (the mean over the batch, so each position keeps its
    average); "patch" (the activation from ``source``, a cache of another run).
    """
    if site not in SITES or mode not in MODES:
        raise ValueError(f"site must be one of {SITES} and mode one of {MODES}, got {site!r}, {mode!r}")
    if mode == "patch" and source is None:
        raise ValueError("mode='patch' needs a source cache (run_with_cache on the other tokens)")

    def hook_for(l: int) -> tuple[str, Callable]:
        name = f"blocks.{l}.attn.hook_{site}"
        head_axis, pos_axis = (2, 1) if site == "z" else (1, 2)

        def hook(x: jax.Array, _: str) -> jax.Array:
            shape = [1] * x.ndim
            shape[head_axis] = x.shape[head_axis]
            heads = jnp.arange(x.shape[head_axis])
            sel = (jnp.ones_like(heads, bool) if head is None else heads == head).reshape(shape) & (layer == l)
            if position is not None:
                pshape = [1] * x.ndim
                pshape[pos_axis] = x.shape[pos_axis]
                sel = sel & (jnp.arange(x.shape[pos_axis]) == position).reshape(pshape)
            if mode == "zero":
                new = jnp.zeros_like(x)
            elif mode == "mean":
                new = jnp.broadcast_to(x.mean(0, keepdims=True), x.shape)
            else:
                new = source[name]
            return jnp.where(sel, new, x)

        return name, hook

    return [hook_for(l) for l in range(cfg.n_layers)]


def patch_heads(model: tf.Transformer, tokens: jax.Array, layer, head, position=None, **kw) -> jax.Array:
    """Logits with one head (or one head at one query position) patched; see ``head_hooks``."""
    return tf.run_with_hooks(model, tokens, head_hooks(model.cfg, layer, head, position, **kw))


def patch_grid(model: tf.Transformer, tokens: jax.Array, metric: Callable[[jax.Array], jax.Array], *,
               by_position: bool = False, **kw) -> jax.Array:
    """``metric(logits)`` with each head patched in turn: ``[n_layers, n_heads(, pos)]``, one vmapped call."""
    cfg = model.cfg
    n_pos = tokens.shape[-1] if by_position else 1
    l, h, p = jnp.meshgrid(jnp.arange(cfg.n_layers), jnp.arange(cfg.n_heads), jnp.arange(n_pos), indexing="ij")

    def one(l, h, p):
        return metric(patch_heads(model, tokens, l, h, p if by_position else None, **kw))

    out = jax.vmap(one)(l.ravel(), h.ravel(), p.ravel())
    return out.reshape((cfg.n_layers, cfg.n_heads, n_pos) if by_position else (cfg.n_layers, cfg.n_heads))


# ---------------------------------------------------------------------------
# Activation patching of any hook's units, and attribution patching beside it
# ---------------------------------------------------------------------------


def _unit_grid(shape: tuple[int, ...], unit_axes: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    dims = tuple(shape[a] for a in unit_axes)
    n = 1
    for d in dims:
        n *= d
    return dims, n


def _unit_mask(shape: tuple[int, ...], unit_axes: tuple[int, ...], index: jax.Array) -> jax.Array:
    """Boolean mask, broadcastable to ``shape``, of the unit with flat ``index`` over ``unit_axes``."""
    dims, _ = _unit_grid(shape, unit_axes)
    coords = jnp.unravel_index(index, dims)
    mask = jnp.ones([1] * len(shape), bool)
    for a, c in zip(unit_axes, coords):
        s = [1] * len(shape)
        s[a] = shape[a]
        mask = mask & (jnp.arange(shape[a]) == c).reshape(s)
    return mask


def patch_units(model: tf.Transformer, corrupt_tokens: jax.Array, clean: Mapping[str, jax.Array],
                metric: Callable[[jax.Array], jax.Array], name: str, unit_axes: tuple[int, ...],
                batch_size: int | None = None) -> jax.Array:
    """Activation patching, exactly: ``metric`` of the corrupted run with one unit of hook ``name`` set
    to its clean value, minus ``metric`` of the corrupted run; for every unit.

    A unit is one coordinate over ``unit_axes`` of the activation (for ``hook_z``
    ``[batch, pos, head, d_head]``: ``(2,)`` per head, ``(1, 2)`` per position and head;
    for ``mlp.hook_post``: ``(2,)`` per neuron), patched in every sequence of the batch
    at once. Returns ``[*unit dims]``. Units run ``batch_size`` at a time (``lax.map``).
    """
    base = metric(tf.forward(model, corrupt_tokens))
    shape = clean[name].shape
    dims, n = _unit_grid(shape, unit_axes)

    def one(i):
        hook = (name, lambda x, _: jnp.where(_unit_mask(shape, unit_axes, i), clean[name], x))
        return metric(tf.run_with_hooks(model, corrupt_tokens, [hook])) - base

    return jax.lax.map(one, jnp.arange(n), batch_size=batch_size).reshape(dims)


def attribution_patch(model: tf.Transformer, clean_tokens: jax.Array, corrupt_tokens: jax.Array,
                      metric: Callable[[jax.Array], jax.Array], names: list[str]
                      ) -> tuple[dict[str, jax.Array], ...]:
    """Attribution patching (Nanda 2023): ``(a_clean - a_corrupt) * dmetric/da`` at the corrupted run,
    elementwise at every hook of ``names``: the first-order estimate of every activation-patching
    effect at once, from two forward passes and one backward pass.

    Returns ``(attribution, clean cache, corrupted cache, gradients)``; sum an attribution over the
    axes that are not a unit's (``sum_units``) to compare with ``patch_units``. Exact where the
    metric is linear in the activation (a logit difference read through linear paths only).
    """
    _, clean = tf.run_with_cache(model, clean_tokens, names)

    def corrupted(deltas):
        hooks = [(n, lambda x, n_: x + deltas[n_]) for n in names]
        logits, cache = tf.run_with_cache(model, corrupt_tokens, names, fwd_hooks=hooks)
        return metric(logits), cache

    zeros = {n: jnp.zeros_like(clean[n]) for n in names}
    (_, corrupt), grads = jax.value_and_grad(corrupted, has_aux=True)(zeros)
    return {n: (clean[n] - corrupt[n]) * grads[n] for n in names}, clean, corrupt, grads


def spearman(estimate, exact) -> float:
    """Rank correlation of an estimate with the exact effects (ties broken by order, enough for
    continuous effects): how well attribution patching orders the units."""
    import numpy as np

    rx, ry = np.argsort(np.argsort(np.ravel(estimate))), np.argsort(np.argsort(np.ravel(exact)))
    return float(np.corrcoef(rx, ry)[0, 1])


def sum_units(attribution: jax.Array, unit_axes: tuple[int, ...]) -> jax.Array:
    """An elementwise attribution summed over every axis but ``unit_axes``: one estimate per unit."""
    return attribution.sum(tuple(a for a in range(attribution.ndim) if a not in unit_axes))


def atp_star_qk(q_clean: jax.Array, k_clean: jax.Array, q_corrupt: jax.Array, k_corrupt: jax.Array,
                pattern_corrupt: jax.Array, grad_pattern: jax.Array) -> tuple[jax.Array, jax.Array]:
    """AtP* for queries and keys (Kramar et al. 2024): recompute the attention pattern exactly for
    each patched query or key and take the first-order step from the pattern on.

    Plain attribution patching linearises the softmax, which misses patches that move a
    saturated pattern. Inputs: one layer's ``hook_q``/``hook_k`` ``[batch, pos, head, d_head]``
    from both runs, the corrupted ``hook_pattern`` ``[batch, head, q, k]`` and the metric's
    gradient there. Returns estimates ``[pos, head]`` for patching each query and each key.
    """
    scale = q_clean.shape[-1] ** 0.5
    n = q_clean.shape[1]
    causal = jnp.arange(n)[:, None] >= jnp.arange(n)[None, :]
    scores = jnp.einsum("bqhe,bkhe->bhqk", q_corrupt, k_corrupt) / scale
    # A query patch changes only its own row of scores: all rows at once.
    s_q = jnp.where(causal, jnp.einsum("bqhe,bkhe->bhqk", q_clean, k_corrupt) / scale, -1e5)
    d_q = ((jax.nn.softmax(s_q, -1) - pattern_corrupt) * grad_pattern).sum((0, 3)).T  # [pos, head]
    # A key patch at position j changes column j of every row.
    new_col = jnp.einsum("bqhe,bkhe->bhqk", q_corrupt, k_clean) / scale  # column j's new scores

    def key_patch(j):
        s = jnp.where(causal, jnp.where(jnp.arange(n) == j, new_col, scores), -1e5)
        return ((jax.nn.softmax(s, -1) - pattern_corrupt) * grad_pattern).sum((0, 2, 3))  # [head]

    d_k = jax.lax.map(key_patch, jnp.arange(n))  # [pos, head]
    return d_q, d_k
