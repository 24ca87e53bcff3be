"""The patching verb: a vmapped grid equals one patch at a time, and changes only what it should."""

import jax
import jax.numpy as jnp
import numpy as np

from toylab import patching
from toylab import transformer as tf

CFG = tf.TransformerConfig(d_model=16, n_heads=3, d_head=4, d_mlp=0, d_vocab=9, d_vocab_out=9, n_ctx=7,
                           n_layers=2, attn_only=True, positional_embedding="shortformer")
MODEL = tf.init(jax.random.key(0), CFG)
TOKS = jax.random.randint(jax.random.key(1), (4, 7), 0, 9)


def loss(logits):
    logp = jax.nn.log_softmax(logits[:, :-1], -1)
    return -jnp.take_along_axis(logp, TOKS[:, 1:, None], -1).mean()


def test_grid_equals_one_static_ablation_at_a_time():
    grid = jax.jit(lambda m: patching.patch_grid(m, TOKS, loss, mode="zero"))(MODEL)
    assert grid.shape == (2, 3)
    for l in range(2):
        for h in range(3):
            hook = (f"blocks.{l}.attn.hook_z", lambda z, _, h=h: z.at[:, :, h].set(0.0))
            want = loss(tf.run_with_hooks(MODEL, TOKS, [hook]))
            np.testing.assert_allclose(grid[l, h], want, rtol=1e-5)
    assert not np.allclose(grid, loss(tf.forward(MODEL, TOKS)))


def test_a_patch_changes_only_later_positions_of_the_patched_run():
    clean = tf.forward(MODEL, TOKS)
    for site in ("z", "pattern"):
        out = patching.patch_heads(MODEL, TOKS, 1, 2, 4, site=site, mode="zero")
        np.testing.assert_array_equal(out[:, :4], clean[:, :4])  # queries before 4 untouched
        assert not np.allclose(out[:, 4], clean[:, 4])
    # head -1 selects nothing; patching a run's own activations changes nothing
    np.testing.assert_array_equal(patching.patch_heads(MODEL, TOKS, 0, -1), clean)
    _, cache = tf.run_with_cache(MODEL, TOKS)
    np.testing.assert_allclose(patching.patch_heads(MODEL, TOKS, 1, 0, mode="patch", source=cache), clean, atol=1e-6)


def test_activation_patching_from_another_run_restores_it():
    other = jax.random.randint(jax.random.key(2), (4, 7), 0, 9)
    _, src = tf.run_with_cache(MODEL, other)
    # patch every head of both layers with the other run's z: layer 1's output is then the other run's
    hooks = [h for l in range(2) for hd in range(3)
             for h in patching.head_hooks(CFG, l, hd, mode="patch", source=src)[l:l + 1]]
    _, cache = tf.run_with_cache(MODEL, TOKS, fwd_hooks=hooks)
    np.testing.assert_allclose(cache["blocks.1.hook_attn_out"], src["blocks.1.hook_attn_out"], atol=1e-5)


def test_head_none_ablates_the_whole_layer():
    out = patching.patch_heads(MODEL, TOKS, 1, None, mode="zero")
    hook = ("blocks.1.attn.hook_z", lambda z, _: jnp.zeros_like(z))
    np.testing.assert_allclose(out, tf.run_with_hooks(MODEL, TOKS, [hook]), atol=1e-6)
    # layer 1 contributes nothing: the logits are those of layer 0 alone, read off the cache
    _, cache = tf.run_with_cache(MODEL, TOKS)
    np.testing.assert_allclose(out, cache["blocks.0.hook_resid_post"] @ MODEL.unembed.W_U, atol=1e-5)
