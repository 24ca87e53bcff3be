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
