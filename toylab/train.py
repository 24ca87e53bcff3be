"""Training many models at once: one compiled program, chunks of ``lax.scan``, resume.

An experiment supplies two pure functions of one model:

- ``init(key, hp) -> state``: a pytree of arrays (parameters, optimiser state, and the
  model's PRNG key as uint32 words, so data streams survive a checkpoint);
- ``step(state, hp, t) -> (state, metrics)``: one optimisation step at global step
  ``t``. Data for step ``t`` must depend only on (state's key, t), never on how steps
  are grouped into chunks: that is what makes a resumed run bitwise equal to an
  uninterrupted one.

``train_models`` vmaps both over the model axis (sparsities x seeds x grid cells
flattened), shards that axis over the devices, and runs a ``Schedule``: ``n_steps``
in chunks of ``checkpoint_every`` with a checkpoint after each. The chunk function is
jitted once and reused: its start step is a traced argument, so no chunk retraces
(``TRACE_COUNT`` lets tests prove it). ``hp`` is the model's row of ``per_model``:
every per-model hyperparameter (a learning rate, a sparsity, a seed's data) enters
the compiled program as an array with a model axis.

Under ``jax.distributed`` (``init_distributed``) the model axis spans every process's
devices; every process saves its own shards of each checkpoint (Orbax's multi-process save)
and gets the logs gathered.
"""

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator, Mapping
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
# The name of a chunk's vmapped model axis: a step may take a decision shared by the models computed
# together with a collective over it (``jax.lax.pmax(x, MODEL_AXIS)``), which keeps a ``lax.cond`` a real
# branch. Without ``models_per_call`` the axis spans every device (a cross-device reduction each step: on
# 2 CPU devices about 0.7 ms of waiting); with it, one device's batch of models.
MODEL_AXIS = "models"


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When a group of models trains, logs and writes checkpoints (all in optimisation steps)."""

    n_steps: int  # optimisation steps per model
    checkpoint_every: int  # steps per compiled chunk; snapshots (and checkpoints) are written after each
    log_every: int  # metrics are averaged over windows of this many steps and logged
    resume_every: int = 1  # write the full state (to resume) every this many chunks, and after the last
    keep_last: int | None = None  # full-state checkpoints kept (None: all); snapshots keep the history

    def __post_init__(self) -> None:
        if self.n_steps % self.checkpoint_every or self.checkpoint_every % self.log_every:
            raise ValueError(f"n_steps={self.n_steps} must be a multiple of checkpoint_every="
                             f"{self.checkpoint_every}, itself a multiple of log_every={self.log_every}")


ChunkCallback = Callable[[int], None]
_ON_CHUNK: contextvars.ContextVar[tuple[ChunkCallback, ...]] = contextvars.ContextVar("on_chunk", default=())


@contextlib.contextmanager
def on_chunk(callback: ChunkCallback) -> Iterator[None]:
    """Call ``callback(step)`` after every chunk that ``train_models`` runs (and checkpoints) inside this block.

    Why a context and not an argument: the callers that need it (the runner's kill
    switch for resume tests, a progress hook) sit above the experiments, which should
    not have to pass it along.
    """
    token = _ON_CHUNK.set((*_ON_CHUNK.get(), callback))
    try:
        yield
    finally:
        _ON_CHUNK.reset(token)


def kill_after(n_chunks: int) -> ChunkCallback:
    """A callback that SIGKILLs this process after ``n_chunks`` chunks: how tests prove exact resume."""
    seen = [0]

    def callback(step: int) -> None:
        seen[0] += 1
        if seen[0] >= n_chunks:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)  # a hard kill, as a crash or Ctrl-\ would be

    return callback


def model_keys(seed: int, group: int, n_models: int) -> jax.Array:
    """Key of model k of group ``group``: a pure function of (seed, group, k), the lab's one way.

    A model's key never depends on how many models train beside it, so a model can be
    retrained alone, or inside a bigger sweep, to the same bits.
    """
    base = jax.random.fold_in(jax.random.key(seed), group)
    return jax.vmap(lambda k: jax.random.fold_in(base, k))(jnp.arange(n_models))


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
        return jax.jit(jax.vmap(one_model, in_axes=(0, 0, None), axis_name=MODEL_AXIS), donate_argnums=0)

    def device_models(states: Any, hps: Any, t0: jax.Array) -> tuple[Any, Any]:
        return _map_models(lambda sh: one_model(*sh, t0), (states, hps), models_per_call)

    sharding = sharding or model_sharding(jax.devices()[:1])
    spec = sharding.spec
    return jax.jit(jax.shard_map(device_models, mesh=sharding.mesh, in_specs=(spec, spec, PartitionSpec()),
                                 out_specs=spec, check_vma=False), donate_argnums=0)


def _map_models(f: Callable, xs: Any, batch_size: int) -> Any:
    """``jax.lax.map(f, xs, batch_size=batch_size)`` with the vmap over each batch named ``MODEL_AXIS``, so a
    step's collective over it reduces over the models computed together (on one device, inside shard_map)."""
    n = jax.tree.leaves(xs)[0].shape[0]
    batched = jax.vmap(f, axis_name=MODEL_AXIS)
    full, rest = (n // batch_size) * batch_size, n % batch_size
    parts = []
    if full:
        grouped = jax.tree.map(lambda x: x[:full].reshape(full // batch_size, batch_size, *x.shape[1:]), xs)
        _, ys = jax.lax.scan(lambda _, x: ((), batched(x)), (), grouped)
        parts.append(jax.tree.map(lambda y: y.reshape(-1, *y.shape[2:]), ys))
    if rest:
        parts.append(batched(jax.tree.map(lambda x: x[full:], xs)))
    return parts[0] if len(parts) == 1 else jax.tree.map(lambda a, b: jnp.concatenate([a, b]), *parts)


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
    ``TOYLAB_CPU_DEVICES=n`` sets the count (tests pin it, so runs compare across machines).
    """
    import os

    try:
        jax.config.update("jax_num_cpu_devices", int(os.environ.get("TOYLAB_CPU_DEVICES") or os.cpu_count() or 1))
    except RuntimeError:
        pass  # backends already initialised (tests set their own device count)


def full_float32_matmuls() -> None:
    """Multiply float32 matrices in full float32 on every backend (``jax_default_matmul_precision``).

    Why: on recent NVIDIA GPUs JAX's default rounds float32 matmul inputs to TensorFloat-32 (10 bits of
    mantissa), while the papers' PyTorch code multiplies in float32 (PyTorch's default since 1.12). A CPU
    computes float32 either way: its compiled programs differ only by the precision annotation, and
    give the same bits (tests/test_train.py).
    """
    jax.config.update("jax_default_matmul_precision", "highest")


def model_sharding(devices: list | None = None) -> NamedSharding:
    """Shard a leading model axis across ``devices`` (all by default)."""
    devices = jax.devices() if devices is None else devices
    return NamedSharding(Mesh(np.array(devices), ("models",)), PartitionSpec("models"))


def _pad(tree: Any, n: int) -> Any:
    """Repeat the last model so the model axis has length ``n`` (divisible by devices)."""
    return jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[-1:], n - a.shape[0], axis=0)]), tree)


def _strong(tree: Any) -> Any:
    """``tree`` with every weakly typed array (from a Python scalar) made strongly typed, same dtype."""
    return jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype) if getattr(x, "weak_type", False) else x,
                        tree)


def init_distributed(**kwargs: Any) -> None:
    """Join a ``jax.distributed`` run (JAX's own runtime: no arguments detects SLURM, Open MPI, ...;
    or ``coordinator_address``, ``num_processes``, ``process_id``). CPU processes talk through gloo."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


def leader() -> bool:
    """Whether this process writes the run's own files (config, analysis, report, figures) and shows
    progress: the only process, or process 0 of a ``jax.distributed`` run. Checkpoints every process writes."""
    return jax.process_index() == 0


def _put(tree: Any, sharding: NamedSharding) -> Any:
    """Host arrays (the same on every process) onto the model-sharded devices of every process."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx]), tree)


def _host(x: Any) -> np.ndarray:
    """A model-sharded array as one numpy array on every process (gathered across processes if need be)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _sync(name: str) -> None:
    """Every process waits here after a checkpoint is written, so none runs ahead of the files."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def train_models(
    *,
    directory: Path,
    init: InitFn,
    step: StepFn,
    keys: jax.Array,
    per_model: Any,
    schedule: Schedule,
    meta: Mapping[str, Any],
    devices: list | None = None,
    progress: bool = True,
    desc: str = "train",
    snapshot: Callable[[Any], Any] | None = None,
    snapshot_dir: Path | None = None,
    models_per_call: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Train ``len(keys)`` models, resuming from ``directory`` if it holds checkpoints.

    Args:
        directory: checkpoint folder of this group of models.
        keys: typed PRNG keys, one per model: model k is a pure function of keys[k], per_model[k].
        per_model: pytree of arrays with a leading model axis (each model's hyperparameters and data).
        schedule: steps, chunking, logging, and how often the full state is kept. A resumed
            run repeats at most ``resume_every`` chunks, to the same bits, since a step's
            data depend on its global step only.
        meta: JSON-able facts saved with every checkpoint; a checkpoint whose
            ``meta["config_hash"]`` differs from this one is refused, never overwritten.
        snapshot, snapshot_dir: also save ``snapshot(state)`` (e.g. the parameters
            alone) into ``snapshot_dir`` at step 0 and after every chunk, all kept: the
            history an analysis over training reads.
        models_per_call: see ``make_chunk``.

    Callbacks registered with ``on_chunk`` run after each chunk's checkpoint.

    Returns:
        The final state as a flat dict of numpy arrays, and the logs
        (``{metric: [models, n_steps // log_every]}``).
    """
    import tqdm

    n_steps, chunk_steps, log_every = schedule.n_steps, schedule.checkpoint_every, schedule.log_every
    n_models = keys.shape[0]
    # Fewer models than devices: leave devices idle rather than train padding copies
    # (on a CPU, one device's matmuls already use every core).
    sharding = model_sharding(list(devices or jax.devices())[:n_models])
    n_dev = sharding.mesh.devices.size
    padded = -(-n_models // n_dev) * n_dev
    # Keys travel as their uint32 words and everything as host arrays: one path for one process
    # and for many (where each process hands JAX the shards its own devices hold).
    key_data = np.asarray(jax.random.key_data(keys))
    host_hp = jax.tree.map(np.asarray, per_model)
    key_data, host_hp = _pad((key_data, host_hp), padded) if padded != n_models else (key_data, host_hp)
    hparams = _put(host_hp, sharding)
    chunk = make_chunk(step, chunk_steps, log_every, name=desc, models_per_call=models_per_call, sharding=sharding)
    # Models one after another (lax.map), not vmapped: the same bits (checked for every experiment's
    # paper preset), and XLA compiles a batched random-number draw several times slower (e.g. 4.9 s
    # against 3.4 s for the induction models' init).
    # Weak types dropped: a chunk returns strongly typed arrays, and a state whose types change after
    # the first chunk would be compiled for twice.
    init_v = jax.jit(lambda kd, hp: _strong(jax.lax.map(lambda a: init(jax.random.wrap_key_data(a[0]), a[1]),
                                                        (kd, hp))), out_shardings=sharding)

    start, logs = 0, None
    done = checkpoint.steps(directory)
    if done:
        flat, saved = checkpoint.restore(directory)
        if saved.get("config_hash") != meta.get("config_hash"):
            raise checkpoint.CheckpointError(
                f"{directory} holds checkpoints of a different config; use another --out or delete it")
        like = jax.eval_shape(jax.vmap(lambda kd, hp: init(jax.random.wrap_key_data(kd), hp)), key_data, host_hp)
        state = checkpoint.unflatten(like, {k[len("state."):]: v for k, v in flat.items() if k.startswith("state.")})
        state = jax.tree.map(np.asarray, state)
        state = _put(_pad(state, padded) if padded != n_models else state, sharding)
        logs = {k[len("logs."):]: v for k, v in flat.items() if k.startswith("logs.")}
        start = saved["step"]
    else:
        state = init_v(_put(key_data, sharding), hparams)

    multi = jax.process_count() > 1

    def rows(v: Any) -> Any:
        """One process: the real models' rows on the host. Several: the sharded array itself, which
        every process saves together, each its own shards (Orbax's multi-process save)."""
        return v if multi else np.asarray(v)[:n_models]

    def save_snapshot(state: Any, t: int) -> None:
        if snapshot is not None and t not in checkpoint.steps(snapshot_dir):  # a resumed run rewrites nothing
            flat = {k: rows(v) for k, v in checkpoint.flatten(snapshot(state)).items()}
            checkpoint.save(snapshot_dir, t, flat, {**meta, "step": t, "n_models": n_models,
                                                    **checkpoint.describe(flat)})
            _sync(f"snapshot-{snapshot_dir}-{t}")

    save_snapshot(state, start)

    def save_chunk(state: Any, logs: Any, t: int) -> None:
        save_snapshot(state, t)
        if (t // chunk_steps) % schedule.resume_every == 0 or t == n_steps:
            flat = {**{f"state.{k}": rows(v) for k, v in checkpoint.flatten(state).items()},
                    **{f"logs.{k}": v for k, v in logs.items()}}
            checkpoint.save(directory, t, flat, {**meta, "step": t, "n_models": n_models,
                                                 **checkpoint.describe(flat)}, max_to_keep=schedule.keep_last)
            _sync(f"checkpoint-{directory}-{t}")
        for callback in _ON_CHUNK.get():
            callback(t)

    bar = tqdm.tqdm(total=n_steps, initial=start, desc=desc, unit="step", disable=not progress or not leader(),
                    dynamic_ncols=True, mininterval=1.0)
    # One process: chunk k's files are written while chunk k + 1 computes (its state copied to the host
    # first, since the next chunk takes over its buffers). Why: on an accelerator the host's writes then
    # cost nothing; on a 2-core CPU they compete with the chunk for the cores (no measurable gain in
    # `make induction`). Several processes: each chunk is saved before the next starts, since every
    # process saves its own shards of the device arrays.
    pending = None
    for t0 in range(start, n_steps, chunk_steps):
        state, chunk_logs = chunk(state, hparams, jnp.int32(t0))  # returns at once; the chunk runs
        if pending is not None:
            save_chunk(*pending)
        chunk_logs = {k: _host(v)[:n_models] for k, v in chunk_logs.items()}  # waits for the chunk
        logs = chunk_logs if logs is None else {k: np.concatenate([logs[k], chunk_logs[k]], axis=1) for k in logs}
        t = t0 + chunk_steps
        pending = (state if multi else jax.tree.map(np.array, state), logs, t)  # copies: buffers are donated
        bar.update(chunk_steps)
        if "loss" in chunk_logs:
            bar.set_postfix(loss=f"{float(np.mean(chunk_logs['loss'][:, -1])):.3g}")
        if multi:
            save_chunk(*pending)
            pending = None
    if pending is not None:
        save_chunk(*pending)
    bar.close()
    final = {k: _host(v)[:n_models] for k, v in checkpoint.flatten(state).items()}
    return final, logs if logs is not None else {}

