"""Training many models at once: one compiled program, chunks of ``lax.scan``, resume.

An experiment supplies two pure functions of one model:

- ``init(key, hp) -> state``: a pytree of arrays (parameters, optimiser state, and the
  model's PRNG key as uint32 words, so data streams survive a checkpoint);
- ``step(state, hp, t) -> (state, metrics)``: one optimisation step at global step
  ``t``. Data for step ``t`` must depend only on (state's key, t), never on how steps
  are grouped into chunks: that is what makes a resumed run bitwise equal to an
  uninterrupted one.

``train_models`` vmaps both over the model axis (sparsities x seeds x grid cells
flattened), shards that axis over the devices, and runs ``n_steps`` in chunks of
``chunk_steps`` with a checkpoint after each. The chunk function is jitted once and
reused: its start step is a traced argument, so no chunk retraces (``TRACE_COUNT``
lets tests prove it).
"""

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from toylab import checkpoint

InitFn = Callable[[jax.Array, Any], Any]
StepFn = Callable[[Any, Any, jax.Array], tuple[Any, Mapping[str, jax.Array]]]

TRACE_COUNT: dict[str, int] = {}  # times each chunk function was traced (tests read it)


def make_chunk(step: StepFn, chunk_steps: int, log_every: int, name: str = "chunk",
               models_per_call: int | None = None, sharding: NamedSharding | None = None) -> Callable:
    """The jitted, vmapped chunk: (states, hps, t0) -> (states, logs[models, chunk/log_every]).

    Logged metrics are means over each window of ``log_every`` steps.

    ``models_per_call``: None vmaps all of a device's models at once (thousands of tiny
    models, as in superposition); k makes each device loop over its models k at a time
    (``lax.map`` of a k-wide vmap, inside ``shard_map`` over ``sharding``'s mesh). Why:
    for models big enough to fill a core (the induction transformers), XLA's CPU
    backend runs one model's matmuls faster than the same matmuls batched over models
    (measured: 4 seeds of the 2-layer model, 14.5 ms per step one at a time, 17.3 ms vmapped).
    """

    def one_model(state: Any, hp: Any, t0: jax.Array) -> tuple[Any, Any]:
        TRACE_COUNT[name] = TRACE_COUNT.get(name, 0) + 1  # runs at trace time only

        def window(state: Any, w: jax.Array) -> tuple[Any, Any]:
            def body(state: Any, i: jax.Array) -> tuple[Any, Any]:
                return step(state, hp, t0 + w * log_every + i)

            state, metrics = jax.lax.scan(body, state, jnp.arange(log_every, dtype=jnp.int32))
            return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

        return jax.lax.scan(window, state, jnp.arange(chunk_steps // log_every, dtype=jnp.int32))

    if models_per_call is None:
        return jax.jit(jax.vmap(one_model, in_axes=(0, 0, None)), donate_argnums=0)

    def device_models(states: Any, hps: Any, t0: jax.Array) -> tuple[Any, Any]:
        return jax.lax.map(lambda sh: one_model(*sh, t0), (states, hps), batch_size=models_per_call)

    sharding = sharding or model_sharding(jax.devices()[:1])
    spec = sharding.spec
    return jax.jit(jax.shard_map(device_models, mesh=sharding.mesh, in_specs=(spec, spec, PartitionSpec()),
                                 out_specs=spec), donate_argnums=0)


def on_cpu(models_per_call: int | None) -> int | None:
    """``models_per_call`` when JAX runs on a CPU, else None (one vmap over a device's models).

    Why: looping over models pays off on XLA's CPU backend only; a GPU runs a batch of
    models in the time of one, so there the vmap is the fast way.
    """
    return models_per_call if jax.default_backend() == "cpu" else None


def use_cpu_cores() -> None:
    """Expose each CPU core as a JAX device, so the model axis shards across cores.

    Why: XLA's CPU backend runs most small ops (a batched matmul over thousands of
    tiny models, say) on one thread; one device per core runs them side by side. Has
    no effect once JAX has started, nor on which accelerator a GPU machine uses.
    """
    import os

    try:
        jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)
    except RuntimeError:
        pass  # backends already initialised (tests set their own device count)


def model_sharding(devices: list | None = None) -> NamedSharding:
    """Shard a leading model axis across ``devices`` (all by default)."""
    devices = jax.devices() if devices is None else devices
    return NamedSharding(Mesh(np.array(devices), ("models",)), PartitionSpec("models"))


def _pad(tree: Any, n: int) -> Any:
    """Repeat the last model so the model axis has length ``n`` (divisible by devices)."""
    return jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], n - a.shape[0], axis=0)]), tree)


def train_models(
    *,
    directory: Path,
    init: InitFn,
    step: StepFn,
    keys: jax.Array,
    hparams: Any,
    n_steps: int,
    chunk_steps: int,
    log_every: int,
    meta: Mapping[str, Any],
    devices: list | None = None,
    progress: bool = True,
    desc: str = "train",
    stop_after_chunks: int | None = None,
    snapshot: Callable[[Any], Any] | None = None,
    snapshot_dir: Path | None = None,
    keep_last: int | None = None,
    models_per_call: int | None = None,
    resume_every: int = 1,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Train ``len(keys)`` models, resuming from ``directory`` if it holds checkpoints.

    Args:
        directory: checkpoint folder of this group of models.
        keys: typed PRNG keys, one per model: model k is a pure function of keys[k], hparams[k].
        hparams: pytree of arrays with a leading model axis.
        meta: JSON-able facts saved with every checkpoint; a checkpoint whose
            ``meta["config_hash"]`` differs from this one is refused, never overwritten.
        stop_after_chunks: for tests: SIGKILL this process after that many new chunks.
        snapshot, snapshot_dir: also save ``snapshot(state)`` (e.g. the parameters
            alone) into ``snapshot_dir`` at step 0 and after every chunk, all kept: the
            history an analysis over training reads.
        keep_last: keep only this many full-state checkpoints (None: all); they exist
            to resume, so two are enough when snapshots keep the history.
        models_per_call: see ``make_chunk``.
        resume_every: write the full-state checkpoint after every this many chunks
            (and after the last); snapshots are still written after every chunk. A
            resumed run repeats at most this many chunks, to the same bits, since a
            step's data depend on its global step only.

    Returns:
        The final state as a flat dict of numpy arrays, and the logs
        (``{metric: [models, n_steps // log_every]}``).
    """
    import tqdm

    if n_steps % chunk_steps or chunk_steps % log_every:
        raise ValueError(f"n_steps={n_steps} must be a multiple of chunk_steps={chunk_steps}, "
                         f"itself a multiple of log_every={log_every}")
    n_models = keys.shape[0]
    # Fewer models than devices: leave devices idle rather than train padding copies
    # (on a CPU, one device's matmuls already use every core).
    sharding = model_sharding(list(devices or jax.devices())[:n_models])
    n_dev = sharding.mesh.devices.size
    padded = -(-n_models // n_dev) * n_dev
    keys, hparams = _pad((keys, hparams), padded) if padded != n_models else (keys, hparams)
    hparams = jax.device_put(hparams, sharding)
    chunk = make_chunk(step, chunk_steps, log_every, name=desc, models_per_call=models_per_call, sharding=sharding)
    init_v = jax.jit(jax.vmap(init), out_shardings=sharding)

    start, logs = 0, None
    done = checkpoint.steps(directory)
    if done:
        flat, saved = checkpoint.restore(directory)
        if saved.get("config_hash") != meta.get("config_hash"):
            raise checkpoint.CheckpointError(
                f"{directory} holds checkpoints of a different config; use another --out or delete it")
        like = jax.eval_shape(jax.vmap(init), keys, hparams)
        state = checkpoint.unflatten(like, {k[len("state."):]: v for k, v in flat.items() if k.startswith("state.")})
        state = jax.device_put(_pad(jax.tree.map(jnp.asarray, state), padded) if padded != n_models else state, sharding)
        logs = {k[len("logs."):]: v for k, v in flat.items() if k.startswith("logs.")}
        start = saved["step"]
    else:
        state = init_v(keys, hparams)

    def save_snapshot(state: Any, t: int) -> None:
        if snapshot is not None and t not in checkpoint.steps(snapshot_dir):  # a resumed run rewrites nothing
            flat = {k: np.asarray(v)[:n_models] for k, v in checkpoint.flatten(snapshot(state)).items()}
            checkpoint.save(snapshot_dir, t, flat, {**meta, "step": t, "n_models": n_models,
                                                    **checkpoint.describe(flat)})

    save_snapshot(state, start)

    bar = tqdm.tqdm(total=n_steps, initial=start, desc=desc, unit="step", disable=not progress,
                    dynamic_ncols=True, mininterval=1.0)
    new_chunks = 0
    for t0 in range(start, n_steps, chunk_steps):
        state, chunk_logs = chunk(state, hparams, jnp.int32(t0))
        chunk_logs = {k: np.asarray(v)[:n_models] for k, v in chunk_logs.items()}
        logs = chunk_logs if logs is None else {k: np.concatenate([logs[k], chunk_logs[k]], axis=1) for k in logs}
        t = t0 + chunk_steps
        save_snapshot(state, t)
        if (t // chunk_steps) % resume_every == 0 or t == n_steps:
            host_state = {k: np.asarray(v)[:n_models] for k, v in checkpoint.flatten(state).items()}
            flat = {**{f"state.{k}": v for k, v in host_state.items()}, **{f"logs.{k}": v for k, v in logs.items()}}
            checkpoint.save(directory, t, flat, {**meta, "step": t, "n_models": n_models,
                                                 **checkpoint.describe(flat)}, max_to_keep=keep_last)
        bar.update(chunk_steps)
        if "loss" in chunk_logs:
            bar.set_postfix(loss=f"{float(np.mean(chunk_logs['loss'][:, -1])):.3g}")
        new_chunks += 1
        if stop_after_chunks is not None and new_chunks >= stop_after_chunks and t < n_steps:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)  # a hard kill, as a crash or Ctrl-\ would be
    bar.close()
    final = {k: np.asarray(v)[:n_models] for k, v in checkpoint.flatten(state).items()}
    return final, logs if logs is not None else {}

