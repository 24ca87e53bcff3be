"""The interpretability verbs against answers known exactly: DLA sums to the logits, the lens at the
last boundary is the model, a probe finds a planted signal and fails on shuffled labels, attribution
patching is exact on a linear path and not through a ReLU, steering by zero changes nothing; all
under ``jit`` and ``vmap``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toylab import lens, patching, probes, steering
from toylab import transformer as tf

# A grokking-shaped model (MLP, positions in the residual) and an induction-shaped one (attention only, Shortformer).
MLP_CFG = tf.TransformerConfig(d_model=16, n_heads=2, d_head=4, d_mlp=24, d_vocab=11, d_vocab_out=10, n_ctx=3,
                               n_layers=1)
ATTN_CFG = tf.TransformerConfig(d_model=16, n_heads=3, d_head=4, d_mlp=0, d_vocab=9, d_vocab_out=9, n_ctx=7,
                                n_layers=2, attn_only=True, positional_embedding="shortformer")


def _model(cfg, seed=0):
    return tf.init(jax.random.key(seed), cfg, std=lambda name: 0.5)


def _tokens(cfg, seed=1, batch=6):
    return jax.random.randint(jax.random.key(seed), (batch, cfg.n_ctx), 0, cfg.d_vocab_out)


@pytest.mark.parametrize("cfg", [MLP_CFG, ATTN_CFG], ids=["mlp", "attn-only"])
def test_dla_sums_to_the_logits_and_the_lens_ends_at_them(cfg):
    model, toks = _model(cfg), _tokens(cfg)
    answers = jax.random.randint(jax.random.key(3), toks.shape, 0, cfg.d_vocab_out)

    @jax.jit
    def go(model):
        logits, cache = tf.run_with_cache(model, toks, lens.resid_hooks(cfg) + lens.lens_boundaries(cfg))
        stack = lens.resid_stack(model, cache)
        attrs = lens.logit_attrs(model, stack, answers)
        lensed = lens.logit_lens(model, lens.accumulated_resid(cache, cfg))
        return logits, stack, attrs, lensed, cache

    logits, stack, attrs, lensed, cache = go(model)
    assert stack.shape[0] == len(lens.resid_labels(cfg))
    np.testing.assert_allclose(stack.sum(0), cache[lens.lens_boundaries(cfg)[-1]], atol=1e-5)
    target = jnp.take_along_axis(logits, answers[..., None], -1)[..., 0] - logits.mean(-1)
    scale = float(jnp.abs(logits).max())
    assert float(jnp.abs(attrs.sum(0) - target).max()) <= 1e-5 * scale
    np.testing.assert_allclose(lensed[-1], logits, atol=1e-5 * scale)
    assert not np.allclose(lensed[0], logits, atol=1e-2)  # the first boundary is not the answer yet
    # against an incorrect answer: a logit difference
    wrong = (answers + 1) % cfg.d_vocab_out
    diff = lens.logit_attrs(model, stack, answers, wrong).sum(0)
    want = (jnp.take_along_axis(logits, answers[..., None], -1) - jnp.take_along_axis(logits, wrong[..., None], -1))[..., 0]
    np.testing.assert_allclose(diff, want, atol=1e-5 * scale)
    # vmapped over two models equals each alone
    two = jax.tree.map(lambda a, b: jnp.stack([a, b]), model, _model(cfg, 5))
    both = jax.vmap(lambda m: go(m)[2])(two)
    np.testing.assert_allclose(both[0], attrs, atol=1e-6)


def test_neuron_attributions_sum_to_the_mlp_term():
    model, toks = _model(MLP_CFG), _tokens(MLP_CFG)
    answers = toks[:, 0]
    _, cache = tf.run_with_cache(model, toks)
    stack = lens.resid_stack(model, cache)[:, :, -1]
    mlp_row = lens.resid_labels(MLP_CFG).index("mlp0")
    per_neuron = lens.neuron_attrs(model, cache["blocks.0.mlp.hook_post"][:, -1], 0, answers)
    b_out = lens.logit_attrs(model, jnp.broadcast_to(model.blocks[0].mlp.b_out, (1, toks.shape[0], 16)), answers)[0]
    np.testing.assert_allclose(per_neuron.sum(-1) + b_out, lens.logit_attrs(model, stack, answers)[mlp_row], atol=1e-5)


def test_probes_recover_a_planted_signal_and_fail_on_shuffled_labels():
    key = jax.random.key(0)
    x = jax.random.normal(key, (600, 12))
    w = jax.random.normal(jax.random.key(1), (12, 2))
    y = x @ w + 0.1 * jax.random.normal(jax.random.key(2), (600, 2))
    tr, te = probes.split(jax.random.key(3), 600)
    fit = jax.jit(lambda x, y: probes.r2(y[te], probes.predict(probes.fit_ridge(x[tr], y[tr]), x[te])))
    r2 = fit(x, y)
    assert np.all(r2 > 0.95)
    assert np.all(fit(x, probes.shuffled(jax.random.key(4), y)) < 0.1)
    # classes: the label is the argmax of a planted linear map of 4 classes
    labels = (x @ jax.random.normal(jax.random.key(5), (12, 4))).argmax(-1)
    acc = jax.jit(lambda lab: probes.accuracy(probes.fit_logistic(x[tr], lab[tr], 4), x[te], lab[te]))
    assert float(acc(labels)) > 0.85
    assert float(acc(probes.shuffled(jax.random.key(6), labels))) < 0.45  # chance is about 0.25..0.3
    # vmapped over several targets' sets at once
    r2s = jax.vmap(lambda y: fit(x, y))(jnp.stack([y, probes.shuffled(jax.random.key(4), y)]))
    np.testing.assert_allclose(r2s[0], r2, atol=1e-4)


def test_steering_by_zero_is_the_identity_and_rotation_keeps_the_rest():
    model, toks = _model(MLP_CFG), _tokens(MLP_CFG)
    v = jax.random.normal(jax.random.key(7), (16,))
    clean = tf.forward(model, toks)
    metric = lambda logits: logits[:, -1].sum(-1)  # noqa: E731
    dr = jax.jit(lambda s: steering.dose_response(model, toks, "blocks.0.hook_resid_post", v, s, metric, position=2))(
        jnp.array([0.0, 1.0, 2.0]))
    np.testing.assert_allclose(dr[0], metric(clean), rtol=1e-5)  # jit may fuse differently: not bitwise
    assert not np.allclose(dr[1], dr[0])
    # adding at one position leaves the others alone
    out = tf.run_with_hooks(model, toks, [steering.add_hook("blocks.0.hook_resid_post", v, 3.0, position=2)])
    np.testing.assert_array_equal(out[:, :2], clean[:, :2])
    # a rotation turns the plane's component and keeps its length and everything off the plane
    basis = jnp.linalg.qr(jax.random.normal(jax.random.key(8), (16, 2)))[0].T
    x = jax.random.normal(jax.random.key(9), (5, 16))
    y = steering.rotate(basis, 0.7)(x)
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    off = lambda a: a - (a @ basis.T) @ basis  # noqa: E731
    np.testing.assert_allclose(off(y), off(x), atol=1e-5)
    angle = jnp.arctan2(y @ basis[1], y @ basis[0]) - jnp.arctan2(x @ basis[1], x @ basis[0])
    np.testing.assert_allclose(jnp.mod(angle, 2 * jnp.pi), 0.7, atol=1e-5)
    np.testing.assert_allclose(steering.rotate(basis, 0.0)(x), x, atol=1e-6)
    # with a skew basis and its dual read vectors: the read coordinates turn, and only along the basis
    skew = jax.random.normal(jax.random.key(10), (2, 16))
    read = jnp.linalg.solve(skew @ skew.T, skew)  # read @ skew.T = I
    y = steering.rotate(skew, 0.7, read)(x)
    c, s = x @ read[0], x @ read[1]
    np.testing.assert_allclose(y @ read.T, jnp.stack([jnp.cos(0.7) * c - jnp.sin(0.7) * s,
                                                      jnp.sin(0.7) * c + jnp.cos(0.7) * s], -1), atol=1e-4)
    null = jnp.linalg.svd(skew)[2][2:]  # the directions orthogonal to the plane
    np.testing.assert_allclose((y - x) @ null.T, 0.0, atol=1e-4)
    # mean difference of a set with itself, permuted, is zero
    np.testing.assert_allclose(steering.mean_difference(x, x[::-1]), 0.0, atol=1e-6)


def test_attribution_patching_is_exact_on_a_linear_path_and_not_through_a_relu():
    model = _model(MLP_CFG)
    clean, corrupt = _tokens(MLP_CFG, 1, 8), _tokens(MLP_CFG, 2, 8)
    answers, wrong = clean[:, 0], corrupt[:, 0]

    def metric(logits):
        last = logits[:, -1]
        return (jnp.take_along_axis(last, answers[:, None], -1) - jnp.take_along_axis(last, wrong[:, None], -1)).mean()

    names = ["blocks.0.mlp.hook_post", "blocks.0.mlp.hook_pre", "blocks.0.attn.hook_z"]

    @jax.jit
    def go(model):
        attr, cache, _, _ = patching.attribution_patch(model, clean, corrupt, metric, names)
        est = {n: patching.sum_units(attr[n], (2,)) for n in names}
        exact = {n: patching.patch_units(model, corrupt, cache, metric, n, (2,)) for n in names}
        return est, exact

    est, exact = go(model)
    # MLP neurons' outputs reach the logits linearly: equal to float precision
    np.testing.assert_allclose(est["blocks.0.mlp.hook_post"], exact["blocks.0.mlp.hook_post"], atol=1e-5)
    # through the ReLU (pre-activations) and the attention softmax (z feeds nothing non-linear here,
    # but the MLP after it is): only approximately
    for n in ("blocks.0.mlp.hook_pre", "blocks.0.attn.hook_z"):
        assert float(jnp.abs(est[n] - exact[n]).max()) > 1e-3
        assert np.corrcoef(est[n], exact[n])[0, 1] > 0.3


def test_atp_star_recomputes_query_and_key_patches_exactly():
    model = _model(ATTN_CFG)
    clean, corrupt = _tokens(ATTN_CFG, 1), _tokens(ATTN_CFG, 2)

    def metric(logits):
        return logits[:, -1, 0].mean()

    names = ["blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_pattern"]
    attr, c, r, grads = patching.attribution_patch(model, clean, corrupt, metric, names)
    d_q, d_k = patching.atp_star_qk(c["blocks.1.attn.hook_q"], c["blocks.1.attn.hook_k"], r["blocks.1.attn.hook_q"],
                                    r["blocks.1.attn.hook_k"], r["blocks.1.attn.hook_pattern"],
                                    grads["blocks.1.attn.hook_pattern"])
    # layer 1's pattern reaches this metric linearly (values fixed), so recomputing the
    # softmax makes the query and key estimates exact
    exact_q = patching.patch_units(model, corrupt, c, metric, "blocks.1.attn.hook_q", (1, 2))
    exact_k = patching.patch_units(model, corrupt, c, metric, "blocks.1.attn.hook_k", (1, 2))
    np.testing.assert_allclose(d_q, exact_q, atol=1e-5)
    np.testing.assert_allclose(d_k, exact_k, atol=1e-5)
    plain_q = patching.sum_units(attr["blocks.1.attn.hook_q"], (1, 2))
    assert float(jnp.abs(plain_q - exact_q).max()) > 1e-4  # the linearised softmax is not exact


def test_an_exact_sae_spliced_in_changes_nothing_and_ablating_a_latent_removes_its_write():
    from toylab import sae as S

    model, toks = _model(MLP_CFG), _tokens(MLP_CFG)
    d = MLP_CFG.d_mlp
    # ReLU(x) - ReLU(-x) = x: 2d latents reconstruct any activation exactly.
    eye = jnp.eye(d)
    exact = S.SAE(jnp.concatenate([eye, -eye], 1), jnp.zeros(2 * d), jnp.concatenate([eye, -eye], 0),
                  jnp.zeros(d), jnp.zeros(2 * d), S.SAEConfig(d_in=d, d_sae=2 * d))
    name = "blocks.0.mlp.hook_post"
    x = S.collect(model, toks, name)
    assert x.shape == (toks.size, d)
    labels = toks[:, -1] % MLP_CFG.d_vocab_out

    def loss_fn(logits):
        return -jnp.take_along_axis(jax.nn.log_softmax(logits[:, -1]), labels[:, None], -1).mean()

    s = jax.jit(lambda m: S.splice_scores(m, toks, name, exact, loss_fn))(model)
    np.testing.assert_allclose(s["spliced"], s["clean"], rtol=1e-5)
    np.testing.assert_allclose(s["recovered"], 1.0, atol=1e-4)
    # an SAE that reconstructs zero, spliced in, is the zero-ablation
    blank = S.SAE(exact.W_enc, exact.b_enc, jnp.zeros_like(exact.W_dec), exact.b_dec, exact.threshold, exact.cfg)
    z = S.splice_scores(model, toks, name, blank, loss_fn)
    np.testing.assert_allclose(z["spliced"], z["zero_ablated"], rtol=1e-6)
    assert abs(float(z["spliced"] - z["clean"])) > 1e-3
    # Ablating latent i (neuron i's positive part) is zeroing neuron i (post-ReLU, so >= 0), at one position.
    i, pos = 5, 2
    _, cache = tf.run_with_cache(model, toks, [name], fwd_hooks=[S.ablate_latent_hook(name, exact, i, position=pos)])
    _, clean = tf.run_with_cache(model, toks, [name])
    want = clean[name].at[:, pos, i].set(0.0)
    np.testing.assert_allclose(cache[name], want, atol=1e-6)


def test_an_sae_fitted_on_activations_finds_planted_features_under_vmap():
    from toylab import sae as S

    # Activations that are sparse sums of 6 planted unit directions in 8 dimensions.
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    truth = jnp.linalg.qr(jax.random.normal(k1, (8, 8)))[0][:6]
    active = jax.random.uniform(k2, (4096, 6)) < 0.15
    x = (active * jax.random.uniform(k3, (4096, 6), minval=0.5, maxval=1.5)) @ truth
    cfg = S.SAEConfig(d_in=8, d_sae=12, architecture="topk", k=2)
    fit = jax.jit(jax.vmap(lambda key, c: S.fit(key, cfg, x, c, n_steps=800, batch_size=256, lr=3e-3)))
    saes, logs = fit(jax.random.split(jax.random.key(1), 2), jnp.array([2, 2]))
    for i in range(2):
        sae = jax.tree.map(lambda a: a[i], saes)
        assert float(S.mmcs(sae.W_dec, truth)) > 0.95
        assert float(S.evaluate(sae, x)["fvu"]) < 0.05
    assert logs["loss"].shape == (2, 800)
