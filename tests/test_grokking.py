"""Grokking: the data split, float64 loss, the smoke preset end to end (exact resume: tests/test_sweep.py)."""

import json
import random
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import grokking as exp
from toylab import checkpoint, config, runs


def test_split_is_the_papers_recipe():
    train, test = exp.split(113, 0.3, 0)
    assert (len(train), len(test)) == (3830, 8939)
    assert len(set(train) | set(test)) == 113 * 113 and not set(train) & set(test)
    pairs = [(i, j, 113) for i in range(113) for j in range(113)]  # the paper's code, verbatim
    random.seed(0)
    random.shuffle(pairs)
    np.testing.assert_array_equal(exp.all_pairs(113)[train], np.array(pairs[:3830]))
    assert not np.array_equal(exp.split(113, 0.3, 1)[0], train)
    toks = exp.all_pairs(113)
    np.testing.assert_array_equal(exp.labels(toks, 113), (toks[:, 0] + toks[:, 1]) % 113)


def test_the_training_loss_is_float64():
    import jax
    import jax.numpy as jnp

    logits = jnp.full((2, 113), -10.0).at[jnp.arange(2), jnp.arange(2)].set(10.0)
    with jax.enable_x64(True):
        loss = float(exp.cross_entropy(logits, jnp.arange(2)))
    want = np.log1p(112 * np.exp(-20.0))  # 2.3e-7: float32 log-softmax returns a multiple of 1.2e-7
    assert abs(loss - want) < 1e-4 * want


def test_progress_measures_equal_the_numpy_definitions():
    """The compiled progress measures over a stack of snapshots equal fourier's numpy ones, model by model."""
    import jax.numpy as jnp

    from toylab.analysis import fourier

    cfg = exp.PRESETS["smoke"]
    p = cfg.p
    models = jax.tree.map(lambda *xs: jnp.stack(xs), *[exp.init_model(jax.random.key(i), cfg) for i in range(3)])
    pairs, (tr, te) = exp.all_pairs(p), exp.split(p, cfg.frac_train, 0)
    y = exp.labels(pairs, p)
    D, D_each = fourier.sum_directions(p, [1, 3]), np.stack([fourier.sum_directions(p, [k]) for k in (1, 3)])
    with jax.enable_x64(True):
        got = exp.progress_measures(models, jnp.asarray(pairs), y, tr, te, D, D_each, batch=2)
    for i in range(3):
        L = np.asarray(exp.tf.forward(exp._index(models, i), jnp.asarray(pairs), last_only=True)[:, -1], np.float64)
        R, E = fourier.restricted_logits(L, D), fourier.excluded_logits(L, D)
        want = {"train_loss": fourier.cross_entropy(L[tr], y[tr]), "test_loss": fourier.cross_entropy(L[te], y[te]),
                "restricted_loss": fourier.cross_entropy(R, y), "restricted_test_loss": fourier.cross_entropy(R[te], y[te]),
                "excluded_loss": fourier.cross_entropy(E[tr], y[tr]),
                "excluded_each": [fourier.cross_entropy(fourier.excluded_logits(L, Dk)[tr], y[tr]) for Dk in D_each]}
        for k, v in want.items():
            np.testing.assert_allclose(got[k][i], v, rtol=1e-9, err_msg=k)


@pytest.mark.parametrize("argv, field", [(["--p", "100"], "p"), (["--frac-train", "1.5"], "frac_train"),
                                         (["--n-steps", "175"], "n_steps"), (["--lr", "-1"], "lr"),
                                         (["--weight-decay", "-0.1"], "weight_decay")])
def test_bad_values_are_one_line_errors_before_any_compute(tmp_path, capsys, argv, field):
    with pytest.raises(SystemExit) as e:
        config.main_guard(lambda: exp.main(["train", "--preset", "smoke", "--out", str(tmp_path / "r"), *argv]))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and field in err
    assert not (tmp_path / "r").exists()


def test_smoke_end_to_end(smoke_run):
    run = smoke_run("grokking")
    figs = Path(f"{run}-figures")
    rep = json.loads((run / "report.json").read_text())
    assert rep["experiment"] == "grokking" and rep["preset"] == "smoke" and rep["n_checks"] == 21
    assert len(rep["figures"]) == len(exp.FIGURES) and all(f["caption"] for f in rep["figures"])
    for f in rep["figures"]:
        assert (run / f["path"]).stat().st_size > 10_000 and (figs / Path(f["path"]).name).exists()
    cfg = exp.PRESETS["smoke"]
    # a snapshot every checkpoint_every epochs, from 0; a full state every resume_every snapshots and
    # after the last, of which the last two are kept to resume
    r = runs.open(run)
    assert checkpoint.steps(r.params()) == list(range(0, cfg.n_steps + 1, cfg.checkpoint_every))
    every = cfg.resume_every * cfg.checkpoint_every
    assert checkpoint.steps(r.checkpoints()) == sorted({*range(every, cfg.n_steps + 1, every), cfg.n_steps})[-2:]
    steps, models = r.snapshots(exp.init_model(jax.random.key(0), cfg))
    assert models.blocks[0].attn.W_Q.shape == (len(steps), 1, cfg.n_heads, cfg.d_model, cfg.d_head)  # TL shapes
    # the losses logged while training equal those recomputed from the snapshots
    a = r.analysis()
    # (the loss at step t is logged before update t; the last snapshot, after the last update, has no log)
    np.testing.assert_allclose(a["s0.ckpt_train_loss"][:-1], a["log_loss"][0, a["epochs"][:-1]], rtol=1e-4)
    first = {f["path"]: (run / f["path"]).read_bytes() for f in rep["figures"]}
    assert exp.main(["plot", "--out", str(run)]) == 0
    assert {p: (run / p).read_bytes() for p in first} == first
