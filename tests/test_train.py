"""The training core: vmapped = alone, sharded = unsharded, compiled once."""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import superposition as exp
from toylab import checkpoint, tms
from toylab import train as core

CFG = dataclasses.replace(exp.PRESETS["smoke"], n_steps=60, checkpoint_every=20, log_every=10)


def run_group(tmp, group="basic", select=None, devices=None, desc="t", resume_every=1, **kw):
    n, m, hp, _ = exp.group_models(CFG, group)
    keys = exp.group_keys(CFG, group, len(hp["density"]))
    hp = jax.tree.map(jnp.asarray, hp)
    if select is not None:
        keys, hp = keys[select], jax.tree.map(lambda a: a[select], hp)
    init, step = exp.make_train(CFG, n, m)
    schedule = core.Schedule(CFG.n_steps, CFG.checkpoint_every, CFG.log_every, resume_every=resume_every)
    return core.train_models(directory=tmp, init=init, step=step, keys=keys, per_model=hp, schedule=schedule,
                             meta={"config_hash": "x"}, devices=devices, progress=False, desc=desc, **kw)


def test_two_devices_are_visible():
    assert len(jax.devices()) == 2  # conftest: the sharded path is really taken


def test_vmapped_model_equals_model_trained_alone(tmp_path):
    all_state, all_logs = run_group(tmp_path / "all", devices=jax.devices()[:1])
    k = 2
    one_state, one_logs = run_group(tmp_path / "one", select=slice(k, k + 1), devices=jax.devices()[:1])
    np.testing.assert_allclose(one_state["params.W"][0], all_state["params.W"][k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one_logs["loss"][0], all_logs["loss"][k], rtol=1e-5)
    # and the models really differ from each other, so the comparison means something
    assert not np.allclose(all_state["params.W"][k], all_state["params.W"][k + 1], atol=1e-3)


def test_sharded_equals_unsharded(tmp_path):
    one, _ = run_group(tmp_path / "one", devices=jax.devices()[:1])
    two, _ = run_group(tmp_path / "two", devices=jax.devices())  # 4 models over 2 devices
    odd, _ = run_group(tmp_path / "odd", select=slice(0, 3), devices=jax.devices())  # padded to 4
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(odd[k], one[k][:3], rtol=1e-5, atol=1e-6)


def test_models_looped_per_device_equal_models_vmapped(tmp_path):
    vmapped, logs = run_group(tmp_path / "v", devices=jax.devices()[:1])
    for k, devices in ((1, jax.devices()), (2, jax.devices()[:1]), (3, jax.devices())):  # 3: a ragged last call
        looped, looped_logs = run_group(tmp_path / f"l{k}", devices=devices, models_per_call=k, desc=f"loop{k}")
        for name in vmapped:
            np.testing.assert_allclose(looped[name], vmapped[name], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(looped_logs["loss"], logs["loss"], rtol=1e-5)
    assert core.TRACE_COUNT["loop1"] == 1  # compiled once for its 3 chunks


def test_sparse_full_checkpoints_resume_to_the_same_bits(tmp_path):
    whole, whole_logs = run_group(tmp_path / "run", resume_every=2, snapshot=lambda s: s["params"],
                                  snapshot_dir=tmp_path / "snap")
    steps = [CFG.checkpoint_every * 2, CFG.n_steps]  # chunk 2 and the last, not chunk 1
    assert checkpoint.steps(tmp_path / "run") == steps
    assert checkpoint.steps(tmp_path / "snap") == list(range(0, CFG.n_steps + 1, CFG.checkpoint_every))
    shutil.rmtree(tmp_path / "run" / str(CFG.n_steps))  # as if killed during the last chunk
    resumed, resumed_logs = run_group(tmp_path / "run", resume_every=2, snapshot=lambda s: s["params"],
                                      snapshot_dir=tmp_path / "snap")
    for name in whole:
        np.testing.assert_array_equal(resumed[name], whole[name], err_msg=name)
    np.testing.assert_array_equal(resumed_logs["loss"], whole_logs["loss"])


def test_chunks_do_not_retrace(tmp_path):
    core.TRACE_COUNT.pop("retrace", None)
    run_group(tmp_path / "r", desc="retrace")  # 3 chunks
    assert core.TRACE_COUNT["retrace"] == 1


def test_a_weakly_typed_initial_state_does_not_retrace(tmp_path):
    """An init that returns a Python-scalar-typed (weak) array: the chunks' output is strongly typed, so
    without care the second chunk would be traced and compiled again (the SAEs' threshold once did this)."""
    n, m, hp, _ = exp.group_models(CFG, "basic")
    init0, step = exp.make_train(CFG, n, m)

    def init(key, hp):
        return {**init0(key, hp), "weak": jnp.full(3, 0.0)}

    def step2(state, hp, t):
        new, logs = step({k: v for k, v in state.items() if k != "weak"}, hp, t)
        return {**new, "weak": state["weak"] + jnp.float32(1.0)}, logs  # strongly typed

    row = jax.tree.map(lambda a: jnp.asarray(a)[0], hp)
    assert jax.eval_shape(lambda: init(jax.random.key(0), row))["weak"].weak_type
    core.TRACE_COUNT.pop("weak", None)
    state, _ = core.train_models(directory=tmp_path, init=init, step=step2, keys=exp.group_keys(CFG, "basic", 2),
                                 per_model=jax.tree.map(lambda a: jnp.asarray(a)[:2], hp),
                                 schedule=core.Schedule(CFG.n_steps, CFG.checkpoint_every, CFG.log_every),
                                 meta={"config_hash": "x"}, progress=False, desc="weak")
    assert core.TRACE_COUNT["weak"] == 1
    np.testing.assert_array_equal(state["weak"], CFG.n_steps)


def test_bad_chunking_is_refused():
    with pytest.raises(ValueError, match="multiple"):
        core.Schedule(n_steps=50, checkpoint_every=20, log_every=10)
    with pytest.raises(ValueError, match="multiple"):
        core.Schedule(n_steps=60, checkpoint_every=20, log_every=15)


def test_hand_written_gradient_equals_autodiff():
    n, m, hp, _ = exp.group_models(CFG, "basic")
    params = tms.init_params(jax.random.key(0), n, m)
    params["b_final"] = 0.1 * jax.random.normal(jax.random.key(2), (n,))
    x = tms.make_batch(jax.random.key(1), jnp.float32(0.3), n, 64)
    for k in (0, 1):  # the linear model, then a ReLU model
        h = jax.tree.map(lambda a: jnp.asarray(a[k]), hp)
        loss, grads = jax.value_and_grad(tms.loss_fn)(params, x, h)
        loss2, grads2 = tms.loss_and_grad(params, x.T, h)
        np.testing.assert_allclose(loss2, loss, rtol=1e-6)
        for name in grads:
            np.testing.assert_allclose(grads2[name], grads[name], rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("models_per_call", [None, 3, 1])
def test_a_collective_over_the_model_axis_spans_the_models_computed_together(models_per_call):
    """A step may reduce over ``MODEL_AXIS``: over every model when vmapped whole, over each batch of
    ``models_per_call`` when looped per device (here one device, 7 models: batches 3, 3 and the rest 1)."""

    def step(state, hp, t):
        return state + jax.lax.pmax(hp, core.MODEL_AXIS), {"loss": jnp.float32(0.0)}

    chunk = core.make_chunk(step, 1, 1, name="collective", models_per_call=models_per_call,
                            sharding=core.model_sharding(jax.devices()[:1]))
    hp = jnp.arange(7, dtype=jnp.float32)
    out, _ = chunk(jnp.zeros(7), hp, jnp.int32(0))
    want = {None: [6] * 7, 3: [2, 2, 2, 5, 5, 5, 6], 1: list(range(7))}[models_per_call]
    np.testing.assert_array_equal(np.asarray(out), np.asarray(want, np.float32))


def test_full_float32_matmuls_changes_no_bits_on_cpu():
    """The experiments ask for float32 matmuls (TF32 on a GPU otherwise); on a CPU the same program results."""
    from toylab.train import full_float32_matmuls

    kx, kw = jax.random.split(jax.random.key(0))
    x, W = jax.random.normal(kx, (64, 96)), jax.random.normal(kw, (96, 48))

    def loss(W):
        return jnp.sum((jnp.tanh(x @ W) @ W.T) ** 2)

    before = jax.config.jax_default_matmul_precision  # an in-process CLI test may have set it already
    try:
        jax.config.update("jax_default_matmul_precision", None)
        assert "HIGHEST" not in jax.jit(loss).lower(W).as_text()
        plain = jax.jit(jax.value_and_grad(loss))(W)
        full_float32_matmuls()
        assert "HIGHEST" in jax.jit(loss).lower(W).as_text()  # the setting reached the program
        full = jax.jit(jax.value_and_grad(loss))(W)
    finally:
        jax.config.update("jax_default_matmul_precision", before)
    for a, b in zip(plain, full):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
