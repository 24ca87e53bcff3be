"""SAEs: each architecture's loss by hand, the decoder constraint, JumpReLU's threshold, AuxK, the metrics."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toylab import sae as S
from toylab import train as core


def tiny(arch: str, **kw) -> S.SAE:
    """d_in 2, d_sae 3, hand-set weights: W_enc = [[1, 0, 1], [0, 1, 1]], W_dec rows e0, e1, (e0+e1)/sqrt2."""
    cfg = S.SAEConfig(d_in=2, d_sae=3, architecture=arch, k=2, jumprelu_bandwidth=0.1, **kw)
    r = 1 / np.sqrt(2)
    return S.SAE(jnp.array([[1.0, 0, 1], [0, 1, 1]]), jnp.array([0.0, -0.5, -1.0]),
                 jnp.array([[1.0, 0], [0, 1], [r, r]]), jnp.array([0.1, 0.0]), jnp.array([0.2, 0.2, 0.2]), cfg)


X = jnp.array([[1.0, 0.0], [0.5, 2.0]])


def by_hand(arch: str, coef: float) -> float:
    """The same losses written out with numpy, one example at a time."""
    m = tiny(arch)
    W_enc, b_enc, W_dec, b_dec = (np.asarray(a) for a in (m.W_enc, m.b_enc, m.W_dec, m.b_dec))
    total, fs = [], []
    for x in np.asarray(X):
        z = ((x - b_dec) if m.cfg.apply_b_dec_to_input else x) @ W_enc + b_enc
        if arch == "jumprelu":
            f = z * (z > 0.2)
        elif arch == "topk":
            f = np.where(z >= np.sort(z)[-int(coef)], np.maximum(z, 0), 0)
        else:
            f = np.maximum(z, 0)
        fs.append(f)
        err = np.sum((x - (f @ W_dec + b_dec)) ** 2)
        sparsity = {"standard": coef * f.sum(), "april": coef * (f * np.linalg.norm(W_dec, axis=1)).sum(),
                    "jumprelu": coef * (z > 0.2).sum(), "topk": 0.0}[arch]
        total.append((err, sparsity))
    err, sp = np.array(total).T
    if arch == "topk":
        var = np.mean(np.sum((np.asarray(X) - np.asarray(X).mean(0)) ** 2, -1))
        return err.mean() / var
    return err.mean() + sp.mean()


@pytest.mark.parametrize("arch, coef", [("standard", 0.3), ("april", 0.3), ("jumprelu", 0.5), ("topk", 2)])
def test_each_architecture_loss_equals_the_hand_computed_value(arch, coef):
    got, parts = S.loss(tiny(arch), X, jnp.asarray(coef))
    np.testing.assert_allclose(got, by_hand(arch, coef), rtol=1e-5)
    assert by_hand(arch, coef) != by_hand(arch, coef * 2 if arch != "topk" else 1)  # the coefficient matters


def test_batch_topk_keeps_b_times_k_over_the_batch():
    m = tiny("batchtopk")
    z = S.pre_acts(m, X)
    _, parts = S.loss(m, X, jnp.asarray(1))
    f = np.asarray(parts["f"])
    assert (f > 0).sum() == 2  # B k = 2 x 1 over the whole batch, not 1 per example
    assert np.all(f[f > 0] >= np.sort(np.maximum(np.asarray(z), 0).ravel())[-2])


def synthetic(key, hp, batch, n=8, d=6):
    """8 random unit directions in 6 dims, each on with probability 0.25, U[0, 1] magnitudes."""
    G = jax.random.normal(jax.random.key(123), (n, d))
    G = G / jnp.linalg.norm(G, axis=-1, keepdims=True)
    k1, k2 = jax.random.split(key)
    c = jax.random.uniform(k1, (batch, n)) * (jax.random.uniform(k2, (batch, n)) < 0.25)
    return c @ G


def train_steps(cfg, n_steps=300, coef=0.1, key=0, **kw):
    init, step = S.make_train(cfg, synthetic, n_steps=n_steps, batch_size=64, **kw)
    hp = {"coefficient": jnp.asarray(coef, jnp.float32), "scale": jnp.float32(1.0)}
    state = init(jax.random.key(key), hp)
    run = jax.jit(lambda s: jax.lax.scan(lambda s, t: step(s, hp, t), s, jnp.arange(n_steps)))
    return run(state)


def test_unit_norm_decoder_rows_stay_unit():
    state, _ = train_steps(S.SAEConfig(d_in=6, d_sae=12, architecture="standard"), n_steps=50)
    np.testing.assert_allclose(np.linalg.norm(state["sae"].W_dec, axis=-1), 1.0, atol=1e-5)
    # the April recipe has no constraint: its rows leave their initial norm of 0.1
    state, _ = train_steps(S.SAEConfig(d_in=6, d_sae=12, architecture="april"), n_steps=50)
    assert np.abs(np.linalg.norm(state["sae"].W_dec, axis=-1) - 0.1).max() > 0.01


def test_jumprelu_threshold_moves_and_lowers_l0():
    cfg = S.SAEConfig(d_in=6, d_sae=12, architecture="jumprelu", jumprelu_init_threshold=0.01)
    state, logs = train_steps(cfg, n_steps=300, coef=0.05)
    theta = np.asarray(state["sae"].threshold)
    assert np.abs(theta - 0.01).max() > 0.05  # the threshold really learns (not frozen at its init)
    _, logs_free = train_steps(cfg, n_steps=300, coef=0.0)
    assert float(logs["l0"][-20:].mean()) < float(logs_free["l0"][-20:].mean())


def test_auxk_revives_a_dead_latent():
    """A latent too weak to enter any example's top k gets no gradient from TopK's loss; AuxK gives it one,
    and training with AuxK makes it fire again."""
    cfg = S.SAEConfig(d_in=6, d_sae=12, architecture="topk", k=2, dead_window=1)
    init, step = S.make_train(cfg, synthetic, n_steps=200, batch_size=64)
    hp = {"coefficient": jnp.asarray(2), "scale": jnp.float32(1.0)}
    state = init(jax.random.key(0), hp)
    sae = eqx.tree_at(lambda s: s.W_enc, state["sae"], state["sae"].W_enc.at[:, 0].multiply(0.02))
    state = {**state, "sae": sae}
    x = synthetic(jax.random.key(5), hp, 512)
    x = x[jnp.linalg.norm(x, axis=-1) > 0.5]
    assert not bool(S.topk_mask(S.pre_acts(sae, x), 2, 2)[:, 0].any())  # never among an example's top 2
    assert bool((S.pre_acts(sae, x)[:, 0] > 0).any())
    dead = jnp.zeros(12, bool).at[0].set(True)
    g_aux = jax.grad(lambda s: S.loss(s, x, 2, dead)[0])(sae)
    g_plain = jax.grad(lambda s: S.loss(s, x, 2, None)[0])(sae)
    assert float(jnp.abs(g_aux.W_enc[:, 0]).sum()) > 0 and float(jnp.abs(g_plain.W_enc[:, 0]).sum()) == 0
    run = jax.jit(lambda s: jax.lax.scan(lambda s, t: step(s, hp, t), s, jnp.arange(200)))
    state, _ = run(state)
    assert float((S.encode(state["sae"], x, 2)[:, 0] > 0).mean()) > 0.01  # latent 0 fires again


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_auxk_skipped_before_the_dead_window_changes_nothing(arch):
    """Before step dead_window no latent can be dead, and the step skips AuxK: it must equal a step that
    computes AuxK with no dead latent (dead_window 1, nothing has gone a step without firing)."""
    hp = {"coefficient": jnp.asarray(2), "scale": jnp.float32(1.0)}
    out = []
    for window in (1000, 1):
        cfg = S.SAEConfig(d_in=6, d_sae=12, architecture=arch, k=2, dead_window=window)
        init, step = S.make_train(cfg, synthetic, n_steps=10, batch_size=64)
        state = init(jax.random.key(0), hp)
        out.append(jax.jit(lambda s: step(s, hp, jnp.int32(5)))(state))
    (a, la), (b, lb) = out
    assert float(la["loss"]) == float(lb["loss"])
    for x, y in zip(jax.tree.leaves(a["sae"]), jax.tree.leaves(b["sae"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def test_resampling_rewrites_dead_latents_and_resets_their_moments():
    cfg = S.SAEConfig(d_in=6, d_sae=12, architecture="standard")
    init, step = S.make_train(cfg, synthetic, n_steps=10, batch_size=64)
    state = init(jax.random.key(0), {"coefficient": 0.1, "scale": 1.0})
    x = synthetic(jax.random.key(1), None, 64)
    which = jnp.zeros(12, bool).at[3].set(True)
    import optax
    opt = optax.adam(1e-3)
    opt_state = opt.init(state["sae"])
    opt_state = jax.tree.map(lambda a: a + 1.0 if a.dtype == jnp.float32 else a, opt_state)
    err = jnp.sum(x**2, -1)
    sae, opt_state, since = S.resample(state["sae"], opt_state, jnp.full(12, 7), x, err, jax.random.key(2),
                                       which, opt)
    row = np.asarray(sae.W_dec[3])
    cands = np.asarray(x - state["sae"].b_dec)
    cands = cands[np.linalg.norm(cands, axis=-1) > 0]
    cands = cands / np.linalg.norm(cands, axis=-1, keepdims=True)
    assert np.isclose(np.abs(cands @ row).max(), 1.0, atol=1e-5)  # one of the inputs, unit norm
    np.testing.assert_array_equal(sae.W_dec[:3], state["sae"].W_dec[:3])  # the others untouched
    mu = opt_state[0].mu
    assert float(mu.W_dec[3].sum()) == 0 and float(mu.W_dec[2].sum()) != 0
    assert since.tolist() == [7] * 3 + [0] + [7] * 8


def test_metrics_on_planted_answers():
    G = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 16)))[0][:10]  # 10 orthonormal truths in 16 dims
    perfect = jnp.asarray(np.concatenate([G, np.random.default_rng(1).normal(size=(6, 16))]))
    assert abs(float(S.mmcs(perfect, jnp.asarray(G))) - 1) < 1e-6
    assert int(S.recovered(perfect, jnp.asarray(G), 0.99)) == 10
    assert int(S.recovered(-perfect, jnp.asarray(G), 0.9)) < 10  # signed: the opposite direction does not count
    rand = S.random_mmcs(128, 64, 128)
    assert 0.28 < rand < 0.36  # the published random baseline for 128 truths in 64 dims is 0.32
    x = jnp.asarray(np.random.default_rng(2).normal(size=(500, 5)))
    assert abs(float(S.fvu(x, jnp.broadcast_to(x.mean(0), x.shape))) - 1) < 1e-6  # the mean predictor: FVU 1
    assert float(S.fvu(x, x)) == 0.0
    f = jnp.array([[0.0, 1.0, 0.0], [2.0, 0.5, 0.0]])
    assert float(S.l0(f)) == 1.5 and S.dead_latents(f).tolist() == [False, False, True]


@pytest.mark.parametrize("shared_data", [False, True])
def test_vmapped_saes_equal_saes_trained_alone(tmp_path, shared_data):
    cfg = S.SAEConfig(d_in=6, d_sae=12, architecture="standard", resample_every=20, dead_window=5)
    schedule = core.Schedule(n_steps=40, checkpoint_every=20, log_every=10)
    init, step = S.make_train(cfg, synthetic, n_steps=40, batch_size=32,
                              data_key=jax.random.key(9) if shared_data else None)
    hp = {"coefficient": jnp.array([0.01, 0.1, 0.3], jnp.float32), "scale": jnp.ones(3, jnp.float32)}
    keys = core.model_keys(0, 0, 3)
    common = dict(init=init, step=step, schedule=schedule, meta={"config_hash": "x"}, progress=False,
                  devices=jax.devices()[:1])
    grid, _ = core.train_models(directory=tmp_path / "grid", keys=keys, per_model=hp, desc="sae-grid", **common)
    one, _ = core.train_models(directory=tmp_path / "one", keys=keys[1:2], desc="sae-one",
                               per_model=jax.tree.map(lambda a: a[1:2], hp), **common)
    for k in one:
        np.testing.assert_allclose(one[k][0], grid[k][1], rtol=1e-5, atol=1e-6, err_msg=k)
    assert not np.allclose(grid["sae.W_dec"][0], grid["sae.W_dec"][2], atol=1e-3)


def test_fold_scaling_keeps_the_function():
    m = tiny("standard")
    x = X * 3.0
    folded = S.fold_activation_norm_scaling_factor(m, 3.0)  # trained on 3x, now reads x itself
    np.testing.assert_allclose(S.forward(folded, X), S.forward(m, x) / 3.0, rtol=1e-6)


def test_bad_architecture_is_a_one_line_error():
    from toylab.config import ConfigError

    with pytest.raises(ConfigError, match="architecture"):
        S.SAEConfig(d_in=2, d_sae=3, architecture="gatedd")
    assert dataclasses.fields(S.SAEConfig)


def test_interrupted_sae_grid_resumes_to_the_same_bits(tmp_path):
    """Stopped after its first checkpoint and started again, a grid ends bitwise equal to an uninterrupted one
    (resampling at step 20 and the Adam moments included)."""
    cfg = S.SAEConfig(d_in=6, d_sae=12, architecture="standard", resample_every=20, dead_window=5)
    schedule = core.Schedule(n_steps=40, checkpoint_every=10, log_every=10)
    init, step = S.make_train(cfg, synthetic, n_steps=40, batch_size=32, data_key=jax.random.key(9))
    hp = {"coefficient": jnp.array([0.03, 0.3], jnp.float32)}
    common = dict(init=init, step=step, keys=core.model_keys(0, 0, 2), per_model=hp, schedule=schedule,
                  meta={"config_hash": "x"}, progress=False, devices=jax.devices()[:1], desc="sae-resume")
    whole, whole_logs = core.train_models(directory=tmp_path / "whole", **common)

    class Stop(Exception):
        pass

    def stop(step):
        raise Stop(step)

    with core.on_chunk(stop), pytest.raises(Stop):
        core.train_models(directory=tmp_path / "cut", **common)
    resumed, resumed_logs = core.train_models(directory=tmp_path / "cut", **common)
    for k in whole:
        np.testing.assert_array_equal(whole[k], resumed[k], err_msg=k)
    for k in whole_logs:
        np.testing.assert_array_equal(whole_logs[k], resumed_logs[k], err_msg=k)


@pytest.mark.parametrize("int_count", [False, True])
@pytest.mark.parametrize("case", ["normal", "ties", "infinities", "negative"])
def test_kth_largest_equals_top_k(case, int_count, monkeypatch):
    """The bisection that selects TopK, AuxK and BatchTopK's latents picks exactly lax.top_k's k-th value,
    ties, -inf (AuxK's live latents) and all-negative rows included; k is traced, per model."""
    if int_count:  # the int32 count that rows of 2^24 or more use
        monkeypatch.setattr(S, "FLOAT_COUNT_LIMIT", 0)
    rng = np.random.default_rng(["normal", "ties", "infinities", "negative"].index(case))
    z = rng.normal(size=(32, 48)).astype(np.float32)
    if case == "ties":
        z = np.round(z, 1)
    if case == "infinities":
        z[:, rng.random(48) < 0.8] = -np.inf
    if case == "negative":
        z = -np.abs(z) - 1e-30
    z = jnp.asarray(z)
    for k in (1, 3, 12):
        assert bool((S.kth_largest(z, k) == jax.lax.top_k(z, k)[0][:, k - 1:]).all()), k
    ks = jnp.array([1, 5, 9])  # vmapped over models with their own k
    got = jax.vmap(lambda k: S.kth_largest(z, k))(ks)
    want = jnp.stack([jax.lax.top_k(z, int(k))[0][:, int(k) - 1:] for k in ks])
    assert bool((got == want).all())
    flat = jax.nn.relu(z).ravel()  # BatchTopK: B k over the whole batch, many zeros tie
    mask, kth = S.batch_topk_mask(z, jnp.int32(3), 12)
    assert float(kth) == float(jax.lax.top_k(flat, 32 * 3)[0][-1])
    assert bool((mask == ((z >= kth) & (z > 0))).all())


def test_custom_gradients_equal_autodiff():
    """The encoder's bias gradient summed before its matmul, and the decoder's weight gradient taken as a
    transposed product, equal plain autodiff (to float rounding), for any batch shape and vmapped over models."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
    params = tuple(jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((2, 4), (2, 4, 6), (2, 6, 4)))

    def ours(b, W_enc, W_dec, x):
        return jnp.sum(g * S._decode_matmul(jax.nn.relu(S._centred_matmul(x, b, W_enc)), W_dec))

    def plain(b, W_enc, W_dec, x):
        return jnp.sum(g * (jax.nn.relu((x - b) @ W_enc) @ W_dec))

    args = (0, 1, 2, 3)
    for i in range(2):  # one model
        one = tuple(p[i] for p in params)
        for a, r in zip(jax.grad(ours, args)(*one, x), jax.grad(plain, args)(*one, x)):
            np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)
    got = jax.vmap(jax.grad(ours, args), (0, 0, 0, None))(*params, x)  # a grid of models reading one batch
    want = jax.vmap(jax.grad(plain, args), (0, 0, 0, None))(*params, x)
    for a, r in zip(got, want):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(got[0]).max()) > 0.1  # the bias gradient is not trivially zero


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("dead_counts", [(0, 0, 0), (2, 1, 3), (2, 10, 0)])
def test_grid_wide_auxk_choice_steps_like_the_full_auxk(arch, dead_counts):
    """With ``grid_axis`` a grid chooses AuxK's work from its most dead latents (none: no AuxK; at most n_aux
    = 3: every dead latent, no selection; more: the full AuxK for all). Each case must step every SAE of
    the grid as the full AuxK chosen per SAE does."""
    cfg = S.SAEConfig(d_in=6, d_sae=12, architecture=arch, k=2, dead_window=10)
    hp = {"coefficient": jnp.array([1, 2, 3]), "scale": jnp.ones(3, jnp.float32)}
    out = []
    for grid_axis in (None, "models"):
        init, step = S.make_train(cfg, synthetic, n_steps=100, batch_size=32, grid_axis=grid_axis)
        state = jax.vmap(init)(jax.random.split(jax.random.key(0), 3), hp)
        since = np.zeros((3, 12), np.int32)
        for m, n_dead in enumerate(dead_counts):
            since[m, :n_dead] = cfg.dead_window
        state = {**state, "since_fired": jnp.asarray(since)}
        out.append(jax.jit(jax.vmap(lambda s, h: step(s, h, jnp.int32(50)), axis_name="models"))(state, hp))
    (a, la), (b, lb) = out
    np.testing.assert_allclose(np.asarray(la["loss"]), np.asarray(lb["loss"]), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(a["sae"]), jax.tree.leaves(b["sae"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
