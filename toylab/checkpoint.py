"""Checkpoints: the only module that imports Orbax.

A checkpoint is a flat dict of named arrays (``params.W``, ``opt_state.0.mu.W``, ...;
with a leading model axis) plus a small JSON dict of metadata. Orbax writes each step
into a temporary folder and renames it when complete, so a run killed mid-save leaves
either the previous complete checkpoint or the new one, never half of one.

Layout: ``<dir>/<step>/{state,meta}``, one ``<dir>`` per trained group of models.
"""

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A missing, corrupt or mismatched checkpoint; its message is one line."""


def flatten(tree: Any) -> dict[str, Any]:
    """A pytree as a flat dict keyed by dotted paths (``opt_state.0.mu.W``)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_name(path): leaf for path, leaf in leaves}


def unflatten(like: Any, flat: Mapping[str, Any]) -> Any:
    """The inverse of ``flatten``, given a tree of the same structure."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    missing = [_name(p) for p, _ in paths if _name(p) not in flat]
    if missing:
        raise CheckpointError(f"checkpoint lacks arrays {missing[:3]}; it was written by other code")
    return jax.tree_util.tree_unflatten(treedef, [flat[_name(p)] for p, _ in paths])


def _name(path: tuple) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return ".".join(parts)


def _checkpointer(collective: bool = False) -> ocp.Checkpointer:
    """One process's Checkpointer; ``collective``: every process of a jax.distributed run saves together.

    A collective save writes each process's shards of the sharded arrays (Orbax's multi-process
    save); reading needs no other process, so a restore always acts alone (process 0 reads the
    checkpoints again for the analysis after the others have gone).
    """
    if jax.process_count() == 1 or collective:
        return ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(), active_processes={jax.process_index()})
    handler = ocp.CompositeCheckpointHandler(composite_options=ocp.CompositeOptions(multiprocessing_options=alone))
    return ocp.Checkpointer(handler, multiprocessing_options=alone)


def steps(directory: Path) -> list[int]:
    """Completed checkpoint steps in ``directory``.

    Orbax writes a step into a temporary folder and renames it to ``<step>`` only when
    complete, so the folders named by a number are exactly the finished checkpoints.
    (Listing them directly, not through a CheckpointManager, which reads every step's
    metadata: with 400 snapshots that cost most of a second per call.)
    """
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def save(directory: Path, step: int, state: Mapping[str, Any], meta: Mapping[str, Any],
         max_to_keep: int | None = None) -> None:
    """Write ``state`` (flat dict of arrays) and ``meta`` (JSON) as checkpoint ``step``.

    ``max_to_keep``: then delete all but the newest that many checkpoints (None keeps all).
    """
    import shutil

    # A model-sharded array spanning several processes stays one: each process writes its own shards.
    arrays = {k: v if _spans_processes(v) else np.asarray(v) for k, v in state.items()}
    collective = any(_spans_processes(v) for v in arrays.values())
    directory.mkdir(parents=True, exist_ok=True)
    _checkpointer(collective).save((directory / str(step)).absolute(), args=ocp.args.Composite(
        state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(dict(meta))))
    if max_to_keep is not None and jax.process_index() == 0:
        for old in steps(directory)[:-max_to_keep]:
            shutil.rmtree(directory / str(old))


def _spans_processes(v: Any) -> bool:
    return isinstance(v, jax.Array) and not v.is_fully_addressable


def restore(directory: Path, step: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read checkpoint ``step`` (the latest if None) as numpy arrays and its metadata."""
    have = steps(directory)
    if not have:
        raise CheckpointError(f"no checkpoint in {directory}; run the train stage first")
    step = have[-1] if step is None else step
    if step not in have:
        raise CheckpointError(f"no checkpoint for step {step} in {directory} (have {have[0]}..{have[-1]})")
    meta = _read(directory, step, lambda ck, path: ck.restore(
        path, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
    return _restore_state(directory, step, meta), meta


def _read(directory: Path, step: int, fn: Callable[[Any, Path], Any]) -> Any:
    """``fn(checkpointer, path)`` on checkpoint ``step``; a damaged one raises a one-line CheckpointError."""
    try:
        return fn(_checkpointer(), (directory / str(step)).absolute())
    except CheckpointError:
        raise
    except Exception as e:  # Orbax raises many types for damaged files; name the file, keep one line
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {directory / str(step)} is corrupt or unreadable ({msg})") from None


def _restore_state(directory: Path, step: int, meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of checkpoint ``step``, whose shapes and dtypes ``meta`` describes."""
    like = {k: np.zeros(s, dtype=meta["dtypes"][k]) for k, s in meta["shapes"].items()}
    got = _read(directory, step, lambda ck, path: ck.restore(
        path, args=ocp.args.Composite(state=ocp.args.StandardRestore(like)))["state"])
    if "n_models" in meta:  # a multi-process save keeps its padding models (rows past n_models)
        got = {k: v[:meta["n_models"]] for k, v in got.items()}
    return {k: np.asarray(v) for k, v in got.items()}


def describe(state: Mapping[str, Any]) -> dict[str, Any]:
    """Shapes and dtypes of a flat state, stored in ``meta`` so it restores without a template."""
    return {
        "shapes": {k: list(np.shape(v)) for k, v in state.items()},
        "dtypes": {k: str(np.dtype(v.dtype)) if hasattr(v, "dtype") else str(np.asarray(v).dtype)
                   for k, v in state.items()},
    }


def history(directory: Path, like: Any) -> tuple[np.ndarray, Any]:
    """Every checkpoint in ``directory`` stacked on a new leading axis, shaped like ``like``.

    Returns the steps ``[T]`` and the tree (each leaf ``[T, *saved shape]``): how an
    analysis reads a run's parameter snapshots.
    """
    have = steps(directory)
    if not have:
        raise CheckpointError(f"no checkpoint in {directory}; run the train stage first")
    # Every snapshot of a run has the first one's shapes: its metadata is read once (the second
    # Orbax read per snapshot was about a fifth of the time to read grokking's 401).
    first, meta = restore(directory, have[0])
    flats = [first] + [_restore_state(directory, t, meta) for t in have[1:]]
    return np.array(have), unflatten(like, {k: np.stack([f[k] for f in flats]) for k in flats[0]})
