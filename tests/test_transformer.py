"""The transformer: TransformerLens names and shapes, hooks, a hand-computed forward pass, causality."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toylab import checkpoint
from toylab import transformer as tf

CFG = tf.TransformerConfig(d_model=16, n_heads=3, d_head=4, d_mlp=24, d_vocab=11, d_vocab_out=7, n_ctx=6,
                           n_layers=2, use_attn_bias=True, use_unembed_bias=True)
DIMS = {"batch": 5, "pos": 6, "d_model": 16, "n_heads": 3, "d_head": 4, "d_mlp": 24, "query_pos": 6, "key_pos": 6}


def tokens(batch=5, n=6, seed=0):
    return jax.random.randint(jax.random.key(seed), (batch, n), 0, CFG.d_vocab)


def model(cfg=CFG, seed=0):
    m = tf.init(jax.random.key(seed), cfg)
    # nonzero biases and LN parameters, so a forgotten bias shows up
    return jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(seed + 1), x.shape), m)


def documented_hooks(n_layers: int, attn_only: bool, rotary: bool = False) -> dict[str, list[str]]:
    """Hook names and shapes as the module docstring lists them."""
    out = {}
    for line in tf.__doc__.splitlines():
        m = re.match(r"\s+((?:blocks\.\{l\}\.)?[\w.]*hook_\w+)\s+\[([\w, ]+)\](.*)", line)
        if not m:
            continue
        name, shape, note = m.group(1), [d.strip() for d in m.group(2).split(",")], m.group(3)
        if (attn_only and "not attn_only" in note) or (not rotary and "rotary only" in note):
            continue
        for l in range(n_layers) if "{l}" in name else [None]:
            out[name.replace("{l}", str(l))] = shape
    return out


@pytest.mark.parametrize("attn_only,rotary", [(False, False), (True, False), (True, True)])
def test_hook_names_and_shapes_match_the_docstring(attn_only, rotary):
    cfg = tf.TransformerConfig(**{**CFG.__dict__, "attn_only": attn_only,
                                  "positional_embedding": "rotary" if rotary else "standard"})
    _, cache = tf.run_with_cache(model(cfg), tokens())
    doc = documented_hooks(cfg.n_layers, attn_only, rotary)
    assert set(cache) == set(doc) == set(tf.hook_names(cfg))
    for name, shape in doc.items():
        assert cache[name].shape == tuple(DIMS[d] for d in shape), name


def test_weight_names_and_shapes_are_transformerlens():
    flat = checkpoint.flatten(model())
    assert flat["blocks.0.attn.W_Q"].shape == (3, 16, 4)
    assert flat["blocks.1.attn.W_O"].shape == (3, 4, 16)
    assert flat["blocks.0.attn.b_Q"].shape == (3, 4)
    assert flat["blocks.0.mlp.W_in"].shape == (16, 24)
    assert flat["blocks.1.mlp.W_out"].shape == (24, 16)
    assert flat["embed.W_E"].shape == (11, 16) and flat["pos_embed.W_pos"].shape == (6, 16)
    assert flat["unembed.W_U"].shape == (16, 7) and flat["unembed.b_U"].shape == (7,)


def numpy_rotate(x: np.ndarray, base: int) -> np.ndarray:
    """Rotary positions written out pair by pair: dims (i, i + d/2) at position t turned by t * base^(-2i/d)."""
    out = x.copy()
    d = x.shape[-1]
    for t in range(x.shape[1]):
        for i in range(d // 2):
            a = t * base ** (-2 * i / d)
            c, s = np.cos(a), np.sin(a)
            out[:, t, i] = c * x[:, t, i] - s * x[:, t, i + d // 2]
            out[:, t, i + d // 2] = s * x[:, t, i] + c * x[:, t, i + d // 2]
    return out


def numpy_forward(m: tf.Transformer, toks: np.ndarray, shortformer: bool = False) -> tuple[np.ndarray, dict]:
    """The transformer written out with explicit loops over heads and positions."""
    f = lambda x: np.asarray(x, np.float64)  # noqa: E731
    b, n = toks.shape
    rotary = m.cfg.positional_embedding == "rotary"
    embed, pos = f(m.embed.W_E)[toks], f(m.pos_embed.W_pos)[:n][None].repeat(b, 0)
    resid = embed if shortformer or rotary else embed + pos
    acts = {}
    for l, blk in enumerate(m.blocks):
        a = blk.attn
        x_qk = resid + pos if shortformer else resid
        heads = []
        for h in range(m.cfg.n_heads):
            q = x_qk @ f(a.W_Q[h]) + f(a.b_Q[h])
            k = x_qk @ f(a.W_K[h]) + f(a.b_K[h])
            if rotary:
                q, k = numpy_rotate(q, m.cfg.rotary_base), numpy_rotate(k, m.cfg.rotary_base)
            v = resid @ f(a.W_V[h]) + f(a.b_V[h])
            scores = np.einsum("bqe,bke->bqk", q, k) / np.sqrt(m.cfg.d_head)
            scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
            pattern = np.exp(scores - scores.max(-1, keepdims=True))
            pattern /= pattern.sum(-1, keepdims=True)
            acts[f"blocks.{l}.attn.hook_pattern", h] = pattern
            heads.append(np.einsum("bqk,bke->bqe", pattern, v) @ f(a.W_O[h]))
        resid = resid + sum(heads) + f(a.b_O)
        if blk.mlp is not None:
            post = np.maximum(resid @ f(blk.mlp.W_in) + f(blk.mlp.b_in), 0)
            acts[f"blocks.{l}.mlp.hook_post"] = post
            resid = resid + post @ f(blk.mlp.W_out) + f(blk.mlp.b_out)
    return resid @ f(m.unembed.W_U) + f(m.unembed.b_U), acts


@pytest.mark.parametrize("positions", ["standard", "shortformer", "rotary"])
def test_run_with_cache_equals_a_hand_computed_forward(positions):
    cfg = tf.TransformerConfig(**{**CFG.__dict__, "positional_embedding": positions})
    m, toks = model(cfg), tokens()
    logits, cache = jax.jit(tf.run_with_cache)(m, toks)
    want, acts = numpy_forward(m, np.asarray(toks), positions == "shortformer")
    np.testing.assert_allclose(logits, want, rtol=2e-4, atol=2e-4)
    for l in range(2):
        np.testing.assert_allclose(cache[f"blocks.{l}.mlp.hook_post"], acts[f"blocks.{l}.mlp.hook_post"], atol=2e-4)
        for h in range(3):
            np.testing.assert_allclose(cache[f"blocks.{l}.attn.hook_pattern"][:, h],
                                       acts[f"blocks.{l}.attn.hook_pattern", h], atol=2e-5)


@pytest.mark.parametrize("n_layers,positions", [(1, "standard"), (2, "standard"), (1, "shortformer")])
def test_last_only_and_the_factored_embedding_agree_with_the_full_pass(n_layers, positions):
    # Big batch, small vocab: layer 0 then reads W_E and W_pos factored (see _Embedded), and its
    # scores from the table of (token, position) pairs (_table_scores); with one layer and
    # last_only, the residual stream is embedded at the last position only.
    cfg = tf.TransformerConfig(**{**CFG.__dict__, "d_vocab": 4, "n_layers": n_layers,
                                  "positional_embedding": positions})
    m, toks = model(cfg), jax.random.randint(jax.random.key(3), (40, 6), 0, 4)
    x = tf._Embedded(toks, m.embed.W_E, m.pos_embed.W_pos)
    assert tf._table_scores(x, x, m.blocks[0].attn) is not None  # the table path is the one tested here
    full = tf.forward(m, toks)
    unfactored = tf.run_with_hooks(m, toks, [("hook_embed", lambda x, _: x)])  # a hook on the input disables it
    np.testing.assert_allclose(full, unfactored, atol=1e-5)
    np.testing.assert_allclose(tf.forward(m, toks, last_only=True), full[:, -1:], atol=1e-5)
    # gradients too: the shortened stream's backward pass reaches W_E and W_pos as the full one does
    shortened = lambda m: tf.forward(m, toks, last_only=True)  # noqa: E731
    whole = lambda m: tf.run_with_hooks(m, toks, [("hook_embed", lambda x, _: x)])  # noqa: E731
    grads = [jax.grad(lambda m: f(m)[:, -1].sum())(m) for f in (shortened, whole)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # a model loaded from disk holds numpy arrays; tokens closed over in a jitted function are sliced when traced
    m_np, toks_j = jax.tree.map(np.asarray, m), jnp.asarray(toks)
    np.testing.assert_allclose(jax.jit(lambda: tf.forward(m_np, toks_j, last_only=True))(), full[:, -1:], atol=1e-5)
    # a cache of the input hooks still holds every position
    _, cache = tf.run_with_cache(m, toks, ["hook_embed", "blocks.0.hook_resid_pre"], last_only=True)
    assert cache["hook_embed"].shape == cache["blocks.0.hook_resid_pre"].shape == (40, 6, cfg.d_model)


def test_a_patch_hook_changes_exactly_what_it_should():
    m, toks = model(), tokens()
    _, clean = tf.run_with_cache(m, toks)
    zero_head = ("blocks.1.attn.hook_z", lambda z, _: z.at[:, :, 2].set(0.0))
    patched_logits, patched = tf.run_with_cache(m, toks, fwd_hooks=[zero_head])
    for name in tf.hook_names(CFG):
        if name.startswith("blocks.0") or name.split(".")[-1] in ("hook_q", "hook_k", "hook_v", "hook_attn_scores",
                                                                   "hook_pattern", "hook_embed", "hook_pos_embed") \
                or name == "blocks.1.hook_resid_pre":
            np.testing.assert_array_equal(patched[name], clean[name], err_msg=name)
    z = patched["blocks.1.attn.hook_z"]
    np.testing.assert_array_equal(z[:, :, 2], 0.0)
    np.testing.assert_array_equal(z[:, :, :2], clean["blocks.1.attn.hook_z"][:, :, :2])
    assert not np.allclose(patched["blocks.1.hook_attn_out"], clean["blocks.1.hook_attn_out"])
    # the same ablation through each head's output (hook_result) gives the same logits
    via_result = tf.run_with_hooks(m, toks, [("blocks.1.attn.hook_result", lambda r, _: r.at[:, :, 2].set(0.0))])
    np.testing.assert_allclose(via_result, patched_logits, atol=1e-5)


def test_causality_no_position_sees_the_future():
    m, toks = model(), tokens()

    def logits_at(delta, t):
        out = tf.run_with_hooks(m, toks, [("hook_embed", lambda x, _: x + delta)])
        return out[:, t].sum()

    for t in range(6):
        g = np.asarray(jax.grad(logits_at)(jnp.zeros((5, 6, 16)), t))
        assert np.all(g[:, t + 1:] == 0), t
        assert np.all(np.abs(g[:, : t + 1]).sum(-1) > 0), t


def test_hooks_work_under_vmap_and_grad():
    ms = jax.vmap(lambda k: tf.init(k, CFG))(jax.random.split(jax.random.key(0), 2))
    toks = tokens()
    logits, cache = jax.jit(jax.vmap(lambda m: tf.run_with_cache(m, toks, "blocks.0.attn.hook_pattern")))(ms)
    assert logits.shape == (2, 5, 6, 7) and set(cache) == {"blocks.0.attn.hook_pattern"}
    one, _ = jax.jit(lambda m: tf.run_with_cache(m, toks))(jax.tree.map(lambda x: x[1], ms))
    np.testing.assert_allclose(logits[1], one, atol=1e-5)
    g = jax.jit(jax.grad(lambda m: tf.run_with_hooks(m, toks, [("blocks.1.attn.hook_pattern",
                                                               lambda p, _: p * 0.5)]).sum()))(
        jax.tree.map(lambda x: x[0], ms))
    assert np.isfinite(np.asarray(g.blocks[0].attn.W_Q)).all()
