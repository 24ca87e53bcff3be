"""The run directory: the one module that knows where a run keeps its files.

A run directory holds everything one command made::

    config.json        the Config the run was trained with (a run holds exactly one)
    preset.txt         the preset it started from
    checkpoints/<g>/   full training states of group g (resume), from ``train_models``
    params/<g>/        parameter snapshots of group g over training (the history analyses read)
    analysis.npz       what ``analyze`` returned
    checks.json, report.{json,md}, figures/, wall_time.json, provenance.json

A group is one compiled program's models (superposition's ``intro``, induction's
``2L``); an experiment with a single group uses ``""`` and its checkpoints sit
directly in ``checkpoints/``. Experiments, the shared runner and tests go through
``Run`` and never build these paths or parse checkpoint keys themselves::

    run = runs.open("runs/superposition")           # refuses a folder without a run
    cfg = run.config(superposition.Config)
    params, logs = run.final("basic")               # {"params.W": [models, n, m], ...}, {"loss": ...}
    steps, models = run.snapshots(like_model, "2L") # every snapshot, stacked [T, models, ...]

``Run.lock()`` makes a second process on the same directory fail at once with a
one-line error, instead of dying later inside Orbax.
"""

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from toylab import checkpoint, config
from toylab.checkpoint import CheckpointError
from toylab.config import ConfigError


class RunLockedError(ConfigError):
    """Another process holds the run directory; its message is one line."""


class Run:
    """A run directory and the files in it (see the module docstring for the layout)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        view = self.root / "view.json"
        # A sweep point: its models are rows [index*k, (index+1)*k) of its group's run (k = models per point).
        self._view = json.loads(view.read_text()) if view.exists() else None

    @classmethod
    def view(cls, root: Path | str, group: "Run", index: int, count: int) -> "Run":
        """A point of a sweep: its own config, analysis and figures, and point ``index`` of ``count``
        of ``group``'s models (every group of that run holds its models point-major)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(group.root, root)
        (root / "view.json").write_text(json.dumps({"group": rel, "index": index, "count": count}) + "\n")
        return cls(root)

    def _source(self) -> "Run":
        return Run(self.root / self._view["group"]) if self._view else self

    def _rows(self, n: int) -> slice:
        k, rem = divmod(n, self._view["count"])
        if rem:
            raise CheckpointError(f"{self.root}: {n} models do not split into {self._view['count']} points")
        return slice(self._view["index"] * k, (self._view["index"] + 1) * k)

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    # -- paths (the only place they are spelled) -------------------------------------------

    def checkpoints(self, group: str = "") -> Path:
        """Folder of a group's full training states (written by ``train_models``)."""
        if self._view:
            return self._source().checkpoints(group)
        return self.root / "checkpoints" / group if group else self.root / "checkpoints"

    def params(self, group: str = "") -> Path:
        """Folder of a group's parameter snapshots over training."""
        if self._view:
            return self._source().params(group)
        return self.root / "params" / group if group else self.root / "params"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def path(self, name: str) -> Path:
        """A named file of the run (``report.md``, ``analysis.npz``, ...)."""
        return self.root / name

    # -- config ------------------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.root / "config.json").exists()

    def config(self, cls: type) -> Any:
        """The Config the run was made with; a one-line error when missing or unreadable."""
        path = self.root / "config.json"
        if not path.exists():
            raise CheckpointError(f"no run in {self.root} (no config.json); run the train stage first")
        try:
            return config.from_dict(cls, json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ConfigError) as e:
            raise ConfigError(f"{path} is unreadable ({e}); delete it or use another --out") from None

    def start(self, cls: type, cfg: Any, preset: str) -> Any:
        """Begin or continue training ``cfg`` here: a new run writes its config, an old one must match it."""
        if self.exists():
            saved = self.config(cls)
            if saved != cfg:
                raise ConfigError(f"{self.root} holds a run with a different config "
                                  f"({'; '.join(config.diff(saved, cfg))}); use another --out")
            return saved
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "config.json").write_text(json.dumps(config.to_dict(cfg), indent=2) + "\n")
        (self.root / "preset.txt").write_text(preset + "\n")
        return cfg

    def preset(self, default: str = "") -> str:
        p = self.root / "preset.txt"
        return p.read_text().strip() if p.exists() else default

    # -- trained models -----------------------------------------------------------------------

    def final(self, group: str = "") -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The last full state of a group (flat, e.g. ``params.W`` ``[models, ...]``) and its logs
        (``{metric: [models, n_logs]}``)."""
        flat, _ = checkpoint.restore(self.checkpoints(group))
        if self._view:
            flat = {k: v[self._rows(v.shape[0])] for k, v in flat.items()}
        state = {k[len("state."):]: v for k, v in flat.items() if k.startswith("state.")}
        logs = {k[len("logs."):]: v for k, v in flat.items() if k.startswith("logs.")}
        return state, logs

    def groups(self) -> list[str]:
        """Names of the trained groups (``""`` for a run with a single group), sorted."""
        root = self.checkpoints()
        if not root.is_dir():
            return []
        if checkpoint.steps(root):
            return [""]
        return sorted(p.name for p in root.iterdir() if p.is_dir() and checkpoint.steps(p))

    def logs(self, group: str = "") -> dict[str, np.ndarray]:
        return self.final(group)[1]

    def final_params(self, like: Any, group: str = "", key: str = "params") -> Any:
        """The final ``state[key]`` (the parameters by default) shaped like ``like``, leaves ``[models, ...]``."""
        state, _ = self.final(group)
        p = key + "."
        return checkpoint.unflatten(like, {k[len(p):]: v for k, v in state.items() if k.startswith(p)})

    def snapshots(self, like: Any, group: str = "") -> tuple[np.ndarray, Any]:
        """Steps ``[T]`` of every parameter snapshot and the parameters, each leaf ``[T, models, ...]``."""
        steps, tree = checkpoint.history(self.params(group), like)
        if self._view:
            tree = jax.tree.map(lambda x: x[:, self._rows(x.shape[1])], tree)
        return steps, tree

    # -- analysis -----------------------------------------------------------------------------

    def save_analysis(self, arrays: dict[str, Any]) -> None:
        np.savez(self.root / "analysis.npz", **{k: np.asarray(v) for k, v in arrays.items()})

    def analysis(self) -> dict[str, np.ndarray]:
        path = self.root / "analysis.npz"
        if not path.exists():
            raise CheckpointError(f"no {path}; run the analyze stage first")
        with np.load(path) as f:
            return dict(f)

    # -- one process at a time ----------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run for this process; a second one is refused at once (one line).

        An OS advisory lock (``flock``) on ``<run>/.lock``: the kernel releases it when the
        process ends, however it ends, so a killed run never leaves a stale lock behind.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
                raise RunLockedError(f"{self.root} is in use by process {holder} (a run is already going there); "
                                     "wait for it to finish or use another --out") from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            yield
        finally:
            os.close(fd)


def open(root: Path | str) -> Run:  # noqa: A001 (reads as runs.open, like a file)
    """An existing run; a one-line error if ``root`` holds none."""
    run = Run(root)
    if not run.exists():
        raise CheckpointError(f"no run in {run.root} (no config.json); run the train stage first")
    return run
