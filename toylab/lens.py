"""Reading the residual stream through the unembedding: logit lens and direct logit attribution.

The lab's models have no LayerNorm (``normalization=None``), so both are exact, not
approximations (the LayerNorm caveats of TransformerLens's ``apply_ln_to_stack`` do
not arise):

* the final residual is the sum of its components (the embedding, the positions
  when they enter the residual stream, every head's output, every MLP's output,
  itself the sum of its neurons' writes plus ``b_out``), so their direct logit
  attributions add up to the logits (``resid_stack``, ``logit_attrs``);
* unembedding an intermediate residual is the logit lens, and at the last boundary
  it is the model's logits (``logit_lens``).

Attributions are to ``logit[answer] - mean_v logit[v]`` (the logit a softmax can
tell apart from the others; Nanda et al. 2023 and TransformerLens's ``logit_attrs``
use such differences), or to ``logit[answer] - logit[incorrect]``.

Names follow TransformerLens's ``ActivationCache``: ``accumulated_resid``,
``decompose_resid``/``get_full_resid_decomposition``, ``logit_attrs``. Every function
takes arrays and a model and works under ``jit`` and ``vmap``; the labels of a stack
come from ``resid_labels``, a plain function of the config.
"""

import jax
import jax.numpy as jnp

from toylab import transformer as tf


def _no_layernorm(model: tf.Transformer) -> None:
    if model.cfg.normalization is not None:
        raise ValueError("lens and attribution are exact only for models without LayerNorm (normalization=None)")


def resid_labels(cfg: tf.TransformerConfig) -> list[str]:
    """Names of the rows of ``resid_stack``, in order (e.g. ``"embed", "L0H1", "mlp0"``)."""
    labels = ["embed"] + (["pos_embed"] if cfg.positional_embedding == "standard" else [])
    for l in range(cfg.n_layers):
        labels += [f"L{l}H{h}" for h in range(cfg.n_heads)]
        labels += [f"b_O{l}"] if cfg.use_attn_bias else []
        labels += [] if cfg.attn_only else [f"mlp{l}"]
    return labels


def resid_hooks(cfg: tf.TransformerConfig) -> list[str]:
    """The hooks ``resid_stack`` reads: give them to ``run_with_cache`` as its filter."""
    names = ["hook_embed", "hook_pos_embed"]
    for l in range(cfg.n_layers):
        names += [f"blocks.{l}.attn.hook_result"] + ([] if cfg.attn_only else [f"blocks.{l}.hook_mlp_out"])
    return names


def resid_stack(model: tf.Transformer, cache: dict[str, jax.Array]) -> jax.Array:
    """``[n_components, batch, pos, d_model]`` whose sum over axis 0 is the final residual.

    ``cache``: from ``run_with_cache(model, tokens, resid_hooks(model.cfg))`` (not ``last_only``).
    """
    _no_layernorm(model)
    cfg = model.cfg
    rows = [cache["hook_embed"]] + ([cache["hook_pos_embed"]] if cfg.positional_embedding == "standard" else [])
    for l, block in enumerate(model.blocks):
        result = cache[f"blocks.{l}.attn.hook_result"]  # [batch, pos, head, d_model]
        rows += [result[:, :, h] for h in range(cfg.n_heads)]
        rows += [jnp.broadcast_to(block.attn.b_O, result.shape[:2] + result.shape[3:])] if block.attn.b_O is not None else []
        rows += [] if cfg.attn_only else [cache[f"blocks.{l}.hook_mlp_out"]]
    return jnp.stack(rows)


def answer_directions(model: tf.Transformer, answers: jax.Array, incorrect: jax.Array | None = None) -> jax.Array:
    """Residual directions ``[..., d_model]`` read as ``logit[answer] - mean logit`` (or ``- logit[incorrect]``)."""
    rows = model.unembed.W_U.T  # [d_vocab_out, d_model]: row c is the direction logit c reads
    return rows[answers] - (rows.mean(0) if incorrect is None else rows[incorrect])


def bias_attr(model: tf.Transformer, answers: jax.Array, incorrect: jax.Array | None = None) -> jax.Array:
    """The unembedding bias's share of the attributed logit (0 for models without ``b_U``)."""
    b_U = model.unembed.b_U
    if b_U is None:
        return jnp.zeros(jnp.shape(answers))
    return b_U[answers] - (b_U.mean() if incorrect is None else b_U[incorrect])


def logit_attrs(model: tf.Transformer, stack: jax.Array, answers: jax.Array,
                incorrect: jax.Array | None = None) -> jax.Array:
    """Direct logit attribution of each component: ``stack [n, *batch, d_model]`` -> ``[n, *batch]``.

    ``answers`` (int, ``batch`` shaped) picks the logit at each activation; the rows sum to
    ``logit[answer] - mean logit`` (or ``- logit[incorrect]``) minus ``bias_attr``.
    """
    _no_layernorm(model)
    return jnp.einsum("n...d,...d->n...", stack, answer_directions(model, answers, incorrect))


def neuron_attrs(model: tf.Transformer, post: jax.Array, layer: int, answers: jax.Array,
                 incorrect: jax.Array | None = None) -> jax.Array:
    """Each MLP neuron's direct logit attribution ``[*batch, d_mlp]`` from its activation ``post [*batch, d_mlp]``.

    Neuron i writes ``post_i W_out[i]``; these plus ``b_out``'s term sum to the MLP's row
    of ``logit_attrs`` (TransformerLens's ``get_full_resid_decomposition(expand_neurons=True)``).
    """
    _no_layernorm(model)
    d = answer_directions(model, answers, incorrect)  # [*batch, d_model]
    return post * jnp.einsum("id,...d->...i", model.blocks[layer].mlp.W_out, d)


def lens_boundaries(cfg: tf.TransformerConfig) -> list[str]:
    """Residual boundaries the lens reads, in order: each layer's input (and middle), then the output."""
    names = []
    for l in range(cfg.n_layers):
        names += [f"blocks.{l}.hook_resid_pre"] + ([] if cfg.attn_only else [f"blocks.{l}.hook_resid_mid"])
    return names + [f"blocks.{cfg.n_layers - 1}.hook_resid_post"]


def accumulated_resid(cache: dict[str, jax.Array], cfg: tf.TransformerConfig) -> jax.Array:
    """``[n_boundaries, batch, pos, d_model]``: the residual at each of ``lens_boundaries``."""
    return jnp.stack([cache[n] for n in lens_boundaries(cfg)])


def logit_lens(model: tf.Transformer, resid: jax.Array) -> jax.Array:
    """Logits ``[..., d_vocab_out]`` read from residuals ``[..., d_model]`` through the unembedding.

    Exact for models without LayerNorm: at the last boundary it is the model's output.
    """
    _no_layernorm(model)
    logits = resid @ model.unembed.W_U
    return logits if model.unembed.b_U is None else logits + model.unembed.b_U
