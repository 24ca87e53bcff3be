"""Toy Models of Superposition (Elhage et al. 2022), reproduced end to end.

Figures: (1) the introduction's 5-to-2 models at sparsity 0, 0.8, 0.9 (and 0.95);
(2) the basic results, W^T W and ||W_i|| of the 20-to-5 linear and ReLU models over
sparsity; (3) the n=2, m=1 phase diagram against its closed-form boundary; (4) the
uniform-superposition geometry: dimensions per feature and feature dimensionalities.

    python -m experiments.superposition all --preset paper --out runs/superposition

Recipe (Anthropic's notebook accompanying Elhage et al. 2022; the model, data and
step live in ``toylab.tms``): features are 0 with probability S, else uniform in
[0, 1]; x' = ReLU(W^T W x + b); loss is the importance-weighted squared error, mean
over batch and features; AdamW, lr 1e-3, weight decay 1e-2 (torch's default), batch
1024 of fresh data, 10,000 steps.
Deviations, each for a stated reason: per-model Xavier-normal init (the notebook's
torch init scales with the number of models trained together, so a model would
depend on its neighbours); one uniform draw per feature gives both the mask and the
value (u < p, then u / p, which is uniform on [0, 1): the same distribution with
half the random numbers); several models per cell with the lowest-loss one drawn
(the paper does this for its phase diagram and non-uniform figures), the lowest
chosen by a precise estimate of each fit's expected loss (``tms.expected_loss``: 2^20
fresh samples shared by the fits of a cell), not by the noisy logged training loss.
"""

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from toylab import config, experiment, report, sweep, tms
from toylab.analysis import superposition as sp
from toylab.config import require
from toylab.exercise import Exercise
from toylab.runs import Run
from toylab.train import Schedule, model_keys, on_cpu, train_models

# ---------------------------------------------------------------------------
# Config, with presets
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    n_steps: int = 10_000  # optimisation steps per model (the notebook's 10,000)
    batch_size: int = 1024  # fresh samples drawn every step (the notebook's 1024)
    lr: float = 1e-3  # AdamW learning rate, constant (the notebook's schedule)
    weight_decay: float = 1e-2  # torch AdamW's default, used by the notebook; optax's default is 1e-4
    checkpoint_every: int = 1000  # steps per compiled lax.scan; a checkpoint is written after each
    intro_snapshot_every: int = 200  # steps between the intro models' parameter snapshots (the animation's frames)
    log_every: int = 100  # the loss is averaged over windows of this many steps and logged
    seed: int = 0  # root PRNG seed: every model's key is derived from it and its index
    intro_n_features: int = 5  # n of the introduction figure
    intro_n_hidden: int = 2  # m of the introduction figure: 2, so W can be drawn in the plane
    intro_importance_decay: float = 0.9  # feature i has importance decay**i (paper: 0.9)
    intro_densities: tuple[float, ...] = (1.0, 0.2, 0.1, 0.05)  # 1-S per panel: S = 0, 0.8, 0.9 (paper) and 0.95
    intro_seeds: int = 4  # models per density, the lowest-loss one drawn (2-D fits get stuck in local minima)
    basic_n_features: int = 20  # n of the basic-results figure (paper: 20)
    basic_n_hidden: int = 5  # m of the basic-results figure (paper: 5)
    basic_importance_decay: float = 0.7  # feature i has importance decay**i (paper: 0.7)
    basic_densities: tuple[float, ...] = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)  # 1-S of the ReLU panels (paper)
    basic_linear_density: float = 0.001  # 1-S of the linear model (paper shows 0.001, "others are similar")
    basic_seeds: int = 2  # models per panel, the lowest-loss one drawn
    phase_n_r: int = 12  # grid points of the extra feature's relative importance, log-spaced in [0.1, 10]
    phase_n_density: int = 12  # grid points of feature density 1-S, log-spaced in [0.01, 1]
    phase_seeds: int = 10  # models per cell; as in the paper, the worst is dropped and the rest averaged
    geometry_n_features: int = 200  # n of the uniform-superposition figures (notebook: 200; paper: 400)
    geometry_n_hidden: int = 20  # m of the uniform-superposition figures (notebook: 20; paper: 30)
    geometry_n_densities: int = 20  # sparsity levels, 1-S = max_inv**-linspace(0, 1, k) (notebook: 20)
    geometry_max_inv_density: float = 20.0  # largest 1/(1-S) of the geometry sweep (notebook: 20)
    best_fit_samples: int = 2**20  # fresh samples per fit for the expected loss that picks a cell's best fit

    # Fields a sweep varies inside one compiled program (arrays with a model axis); others are structural.
    PER_MODEL: ClassVar[tuple[str, ...]] = ("lr", "weight_decay", "seed", "intro_importance_decay",
                                            "basic_importance_decay")

    def __post_init__(self) -> None:
        for f in ("n_steps", "batch_size", "checkpoint_every", "log_every", "best_fit_samples", "intro_seeds", "basic_seeds",
                  "phase_seeds", "phase_n_r", "phase_n_density", "geometry_n_densities"):
            require(getattr(self, f) > 0, f, "a positive integer", getattr(self, f))
        require(self.lr > 0, "lr", "positive", self.lr)
        require(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        require(self.n_steps % self.checkpoint_every == 0, "n_steps",
                f"a multiple of checkpoint_every={self.checkpoint_every}", self.n_steps)
        require(self.checkpoint_every % self.log_every == 0, "checkpoint_every",
                f"a multiple of log_every={self.log_every}", self.checkpoint_every)
        require(self.intro_snapshot_every > 0 and self.checkpoint_every % self.intro_snapshot_every == 0
                and self.intro_snapshot_every % self.log_every == 0, "intro_snapshot_every",
                f"a divisor of checkpoint_every={self.checkpoint_every} and a multiple of log_every={self.log_every}",
                self.intro_snapshot_every)
        for part in ("intro", "basic", "geometry"):
            n, m = getattr(self, f"{part}_n_features"), getattr(self, f"{part}_n_hidden")
            require(n >= 1, f"{part}_n_features", ">= 1", n)
            require(1 <= m <= n, f"{part}_n_hidden", f"between 1 and {part}_n_features={n}", m)
        require(self.intro_n_hidden == 2, "intro_n_hidden", "2 (the figure draws W in the plane)",
                self.intro_n_hidden)
        for f in ("intro_importance_decay", "basic_importance_decay"):
            require(0 < getattr(self, f) <= 1, f, "in (0, 1]", getattr(self, f))
        for f in ("intro_densities", "basic_densities"):
            v = getattr(self, f)
            require(len(v) > 0 and all(0 < p <= 1 for p in v), f, "a list of probabilities in (0, 1]", v)
        require(0 < self.basic_linear_density <= 1, "basic_linear_density", "a probability in (0, 1]",
                self.basic_linear_density)
        require(self.geometry_max_inv_density >= 1, "geometry_max_inv_density", ">= 1",
                self.geometry_max_inv_density)


PRESETS: dict[str, Config] = {
    "paper": Config(),
    # Seconds on a laptop: every stage runs, nothing is expected to match the paper.
    "smoke": Config(n_steps=200, batch_size=128, checkpoint_every=100, log_every=20, intro_snapshot_every=20,
                    intro_seeds=1,
                    intro_densities=(1.0, 0.1), basic_densities=(1.0, 0.1, 0.01), basic_seeds=1,
                    phase_n_r=3, phase_n_density=3, phase_seeds=2, geometry_n_features=20,
                    geometry_n_hidden=4, geometry_n_densities=4, best_fit_samples=2**14),
}

# ---------------------------------------------------------------------------
# Data: ``toylab.tms.make_batch`` (sparse uniform features), shared with any
# experiment that trains or reads a superposition model.
# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
# Model: ``toylab.tms`` (init_params, forward, loss_and_grad, expected_loss).
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Train
# ---------------------------------------------------------------------------

GROUPS = ("intro", "basic", "phase", "geometry")  # one compiled program each: shapes differ


def group_models(cfg: Config, group: str) -> tuple[int, int, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(n_features, n_hidden, per-model hyperparameters, per-model labels) of one figure.

    Models are laid out cell-major, seed-minor: model = cell * n_seeds + seed.
    """
    if group == "intro":
        n, m, seeds = cfg.intro_n_features, cfg.intro_n_hidden, cfg.intro_seeds
        density = np.array(cfg.intro_densities)
        importance = np.broadcast_to(cfg.intro_importance_decay ** np.arange(n), (len(density), n))
        relu = np.ones(len(density))
        extra = {}
    elif group == "basic":
        n, m, seeds = cfg.basic_n_features, cfg.basic_n_hidden, cfg.basic_seeds
        density = np.array([cfg.basic_linear_density, *cfg.basic_densities])
        importance = np.broadcast_to(cfg.basic_importance_decay ** np.arange(n), (len(density), n))
        relu = np.array([0.0] + [1.0] * len(cfg.basic_densities))
        extra = {}
    elif group == "phase":
        n, m, seeds = 2, 1, cfg.phase_seeds
        rr, dd = np.meshgrid(np.logspace(-1, 1, cfg.phase_n_r), np.logspace(-2, 0, cfg.phase_n_density))
        r, density = rr.ravel(), dd.ravel()  # cell = density_index * n_r + r_index
        importance = np.stack([np.ones_like(r), r], axis=1)
        relu = np.ones(len(r))
        extra = {"r": r}
    elif group == "geometry":
        n, m, seeds = cfg.geometry_n_features, cfg.geometry_n_hidden, 1
        density = cfg.geometry_max_inv_density ** -np.linspace(0, 1, cfg.geometry_n_densities)
        importance = np.ones((len(density), n))
        relu = np.ones(len(density))
        extra = {}
    else:
        raise ValueError(group)
    hp = {"density": density, "importance": importance, "relu": relu}
    hp = {k: np.repeat(np.asarray(v, np.float32), seeds, axis=0) for k, v in hp.items()}
    labels = {"density": density, "seeds": np.array(seeds), **extra}
    return n, m, hp, labels


def make_train(cfg: Config, n_features: int, n_hidden: int):
    """Pure ``init(key, hp)`` and ``step(state, hp, t)`` of one model, for ``train_models``."""
    return tms.make_train(n_features=n_features, n_hidden=n_hidden, batch_size=cfg.batch_size, lr=cfg.lr,
                          weight_decay=cfg.weight_decay)


def group_keys(cfg: Config, group: str, n_models: int) -> jax.Array:
    """Key of model k of a group: a pure function of (seed, group, k)."""
    return model_keys(cfg.seed, GROUPS.index(group), n_models)


# How many models each device runs per call (None: all of its models in one vmap). The
# 200-to-20 geometry models are big enough that XLA's CPU backend runs one model's
# matmuls faster than the same matmuls batched over models (measured: 100 s against
# 140 s per 10k steps for 20 models); the thousands of tiny models elsewhere want the vmap.
MODELS_PER_CALL = {"geometry": 1}


def train(cfg: Config, run: Run, points: Sequence[Config] = (), *, groups=GROUPS, devices=None,
          progress=True) -> dict[str, float]:
    """Train every figure's models of each point (``cfg`` alone by default), resuming from the run's
    checkpoints. Points differ from ``cfg`` in ``PER_MODEL`` fields only. Returns wall times."""
    points = list(points) or [cfg]
    times = {}
    for group in groups:
        n, m, _, _ = group_models(cfg, group)
        per_point = [group_models(pt, group)[2] for pt in points]
        hp = {k: np.concatenate([h[k] for h in per_point]) for k in per_point[0]}
        n_models = len(per_point[0]["density"])
        hp |= sweep.per_model(points, ("lr", "weight_decay"), n_models)
        init, step = make_train(cfg, n, m)
        # The intro models also keep parameter snapshots, the frames of the animation: shorter
        # chunks, with the full state still written every checkpoint_every steps.
        every = cfg.intro_snapshot_every if group == "intro" else cfg.checkpoint_every
        t = time.perf_counter()
        train_models(
            directory=run.checkpoints(group), init=init, step=step,
            keys=jnp.concatenate([group_keys(pt, group, n_models) for pt in points]),
            per_model=jax.tree.map(jnp.asarray, hp),
            schedule=Schedule(cfg.n_steps, every, cfg.log_every, resume_every=cfg.checkpoint_every // every),
            snapshot=(lambda state: state["params"]) if group == "intro" else None,
            snapshot_dir=run.params(group) if group == "intro" else None,
            meta={"config_hash": sweep.points_hash(points), "group": group}, devices=devices,
            progress=progress, desc=f"superposition/{group} ({len(hp['density'])} models {n}->{m})",
            models_per_call=on_cpu(MODELS_PER_CALL.get(group)),
        )
        times[f"train.{group}"] = time.perf_counter() - t
    return times


# ---------------------------------------------------------------------------
# Analyse
# ---------------------------------------------------------------------------


def _best(values: np.ndarray, loss: np.ndarray, seeds: int) -> np.ndarray:
    """For each cell, the model with the lowest ``loss``."""
    loss = loss.reshape(-1, seeds)
    idx = np.argmin(loss, axis=1)
    return values.reshape(loss.shape[0], seeds, *values.shape[1:])[np.arange(loss.shape[0]), idx]


def fit_losses(cfg: Config, group: str, params: dict[str, np.ndarray], hp: dict[str, np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Every model's expected loss ``[models]`` and, per cell, how many standard errors separate
    the best fit from the runner-up ``[cells]`` (inf with one seed).

    All fits of a cell see the same 2^20 samples (one key per cell), so their
    difference is measured far more precisely than either loss (``tms.expected_loss``).
    """
    _, _, _, labels = group_models(cfg, group)
    seeds = int(labels["seeds"])
    n_models = params["W"].shape[0]
    cell_keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.key(cfg.seed + 10_000), c))(
        jnp.arange(n_models) // seeds)
    mean, batches = jax.jit(jax.vmap(lambda p, h, k: tms.expected_loss(p, h, k, cfg.best_fit_samples)))(
        jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, hp), cell_keys)
    mean, batches = np.asarray(mean, np.float64), np.asarray(batches, np.float64).reshape(-1, seeds, len(batches[0]))
    if seeds == 1:
        return mean, np.full(len(batches), np.inf)
    order = np.argsort(mean.reshape(-1, seeds), axis=1)
    cells = np.arange(len(batches))
    diff = batches[cells, order[:, 1]] - batches[cells, order[:, 0]]  # runner-up minus best, paired
    return mean, diff.mean(-1) / (diff.std(-1, ddof=1) / np.sqrt(diff.shape[-1]))


def analyze(cfg: Config, run: Run) -> dict[str, np.ndarray]:
    """The paper's measurements from the final checkpoints."""
    out: dict[str, np.ndarray] = {}
    for group in GROUPS:
        n, m, hp, labels = group_models(cfg, group)
        state, logs = run.final(group)
        W, b, losses = state["params.W"], state["params.b_final"], logs["loss"]
        seeds = int(labels["seeds"])
        final = losses[:, -1]
        out[f"{group}.density"] = labels["density"]
        out[f"{group}.loss_curve"] = losses
        if group == "phase":
            # The paper: ten models per point, the highest-loss one discarded, the rest averaged.
            norms = sp.feature_norms(W).reshape(-1, seeds, 2)
            sup = sp.superposition(W).reshape(-1, seeds, 2)
            keep = np.argsort(final.reshape(-1, seeds), axis=1)[:, : max(seeds - 1, 1)]
            take = lambda a: np.take_along_axis(a, keep[..., None], axis=1).mean(1)  # noqa: E731
            out["phase.r"] = labels["r"]
            out["phase.extra_norm"] = take(norms)[:, 1]
            out["phase.extra_superposition"] = take(sup)[:, 1]
            out["phase.empirical"] = sp.phase_empirical(_best(W, final, seeds))
            out["phase.theory"] = sp.phase_theory(labels["r"], labels["density"])
            continue
        if seeds > 1:  # a precise loss picks the drawn fit; the logged one is kept to show the difference
            expected, margin = fit_losses(cfg, group, {"W": W, "b_final": b}, hp)
            out[f"{group}.expected_loss"], out[f"{group}.best_margin_se"] = expected, margin
            out[f"{group}.logged_pick_agrees"] = (np.argmin(final.reshape(-1, seeds), 1)
                                                  == np.argmin(expected.reshape(-1, seeds), 1))
            final = expected
        Wb, bb = _best(W, final, seeds), _best(b, final, seeds)
        if group == "intro":  # the drawn fits over training, for the animation
            steps, snaps = run.snapshots(jax.eval_shape(lambda: tms.init_params(jax.random.key(0), n, m)), group)
            out["intro.snapshot_steps"] = steps
            out["intro.W_history"] = np.stack([_best(w, final, seeds) for w in snaps["W"]])  # [T, cells, n, m]
        out[f"{group}.W"], out[f"{group}.b"] = Wb, bb
        out[f"{group}.norms"] = sp.feature_norms(Wb)
        out[f"{group}.superposition"] = sp.superposition(Wb)
        out[f"{group}.n_represented"] = sp.n_represented(Wb)
        if group == "geometry":
            out["geometry.dims_per_feature"] = sp.dims_per_feature(Wb)
            out["geometry.dimensionality"] = sp.dimensionality(Wb)
    return out


def check(cfg: Config, a: dict[str, np.ndarray]) -> list[report.Check]:
    """The paper's quantitative claims (Elhage et al. 2022), each against a band fixed in advance."""
    checks = []
    m = cfg.basic_n_hidden
    # 1. The linear model learns exactly the top-m features (norms within 0.05 of 1 and 0).
    norms = a["basic.norms"][0]
    top, rest = norms[:m], norms[m:]
    checks.append(report.Check(
        f"linear {cfg.basic_n_features}->{m}: top {m} features have ||W_i|| = 1, the rest 0",
        [round(float(top.min()), 3), round(float(rest.max()), 3)],
        "min top norm >= 0.95 and max other norm <= 0.05 (Elhage et al. 2022, Basic Results)",
        bool(top.min() >= 0.95 and rest.max() <= 0.05)))
    # 2. The ReLU model's count grows with sparsity, from m towards the paper's count (Elhage et al. 2022, Basic Results).
    counts = [int(c) for c in a["basic.n_represented"][1:]]
    dens = list(cfg.basic_densities)
    checks.append(report.Check(
        f"ReLU {cfg.basic_n_features}->{m}: features represented (||W_i|| > 0.5) grow with sparsity",
        counts, "non-decreasing as 1-S falls (a dip of 1 allowed) and rising by >= 5 overall (Elhage et al. 2022, Basic Results)",
        bool(all(b >= a_ - 1 for a_, b in zip(counts, counts[1:])) and counts[-1] - counts[0] >= 5)))
    if dens[0] == 1.0:
        checks.append(report.Check(f"ReLU {cfg.basic_n_features}->{m} at 1-S = 1: represents the top {m}",
                                   counts[0], f"{m} (Elhage et al. 2022, Basic Results)", counts[0] == m))
    if 0.001 in dens and cfg.basic_n_features == 20 and m == 5:
        c = counts[dens.index(0.001)]
        checks.append(report.Check("ReLU 20->5 at 1-S = 0.001: features represented", c,
                                   "about 18 (12 full + ~6 partial, digitised) -> 15..20 (Elhage et al. 2022, Basic Results figure)", 15 <= c <= 20))
    # 3. The pentagon (the paper's introduction figure): all five features, neighbours about 72 degrees apart.
    for i, d in enumerate(cfg.intro_densities):
        if d <= 0.1 and cfg.intro_n_features == 5:
            ang = sp.adjacent_angles(a["intro.W"][i])
            ok = len(ang) == 5 and float(np.max(np.abs(ang - 72))) <= 10
            checks.append(report.Check(f"5->2 at 1-S = {d}: all five features as a pentagon (adjacent angles)",
                                       [round(float(x), 1) for x in ang], "5 angles, each 72 +/- 10 deg (Elhage et al. 2022, introduction figure)", ok))
    # 4. Phase diagram agrees with theory away from the boundaries (Superposition as a Phase Change).
    r, s = a["phase.r"], a["phase.density"]
    far = (np.abs(np.log10(s / sp.phase_boundary(r))) > 0.2) & (np.abs(np.log10(r)) > 0.2)
    agree = float(np.mean(a["phase.empirical"][far] == a["phase.theory"][far])) if far.any() else float("nan")
    checks.append(report.Check(
        "phase diagram n=2, m=1: empirical phase = analytic phase, cells > 0.2 decades from a boundary",
        round(agree, 3), ">= 0.9 of cells agree (Elhage et al. 2022, Superposition as a Phase Change)", bool(agree >= 0.9)))
    # 5. Dimensions per feature plateau at 1/2 (1/(1-S) in [2.2, 4.2] for 200->20).
    inv = 1 / a["geometry.density"]
    mid = (inv >= 2.2) & (inv <= 4.2)
    dstar = a["geometry.dims_per_feature"]
    plateau = float(np.mean(dstar[mid])) if mid.any() else float("nan")
    checks.append(report.Check("geometry: dimensions per feature D* for 1/(1-S) in [2.2, 4.2]",
                               round(plateau, 3), "plateau at 1/2: 0.44..0.56 (Elhage et al. 2022, Uniform Superposition)",
                               bool(0.44 <= plateau <= 0.56)))
    # 6. Feature dimensionalities sum to about m , over the sparse models.
    sums = a["geometry.dimensionality"].sum(-1) / cfg.geometry_n_hidden
    sparse = inv >= 2
    med = float(np.median(sums[sparse])) if sparse.any() else float("nan")
    checks.append(report.Check("geometry: sum_i D_i / m, median over models with 1/(1-S) >= 2",
                               round(med, 3), "about 1: 0.9..1.1 (Elhage et al. 2022, Feature Dimensionality)", bool(0.9 <= med <= 1.1)))
    return checks


# ---------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------


def _wtw_panel(ax, bax, W: np.ndarray, b: np.ndarray, title: str, m: int | None = None):
    import matplotlib.pyplot as plt

    im = ax.imshow(sp.gram(W), cmap="coolwarm", vmin=-1, vmax=1)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    bax.imshow(b[:, None], cmap="coolwarm", vmin=-1, vmax=1, aspect="auto")
    bax.set_xticks([0], ["b"])
    bax.set_yticks([])
    plt.setp(list(bax.spines.values()), visible=False)
    return im


def _hidden_plane(ax, title: str, first: bool) -> None:
    """An axis for columns W_i drawn in the 2-D hidden space."""
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.5, 1.5)
    ax.set_aspect("equal")
    ax.axhline(0, color="0.85", lw=0.5, zorder=0)
    ax.axvline(0, color="0.85", lw=0.5, zorder=0)
    ax.set_title(title)
    ax.set_xlabel("hidden dim 0")
    ax.set_ylabel("hidden dim 1" if first else "")


def fig_intro(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    """Columns of W in the plane, beside W^T W and b, at each density."""
    import matplotlib.pyplot as plt

    dens = a["intro.density"]
    k = len(dens)
    n = cfg.intro_n_features
    colors = plt.cm.viridis(np.linspace(0, 0.9, n))
    fig = plt.figure(figsize=(3.0 * k, 5.6))
    gs = fig.add_gridspec(2, 2 * k, width_ratios=[12, 1] * k, height_ratios=[3, 2], wspace=0.15, hspace=0.35)
    for i, d in enumerate(dens):
        ax = fig.add_subplot(gs[0, 2 * i: 2 * i + 2])
        W = a["intro.W"][i]
        for j in range(n):
            ax.plot([0, W[j, 0]], [0, W[j, 1]], color=colors[j], lw=1.5)
            ax.scatter(W[j, 0], W[j, 1], color=colors[j], s=18, zorder=3,
                       label=f"feature {j} (I={cfg.intro_importance_decay ** j:.2f})" if i == 0 else None)
        _hidden_plane(ax, f"sparsity S = {1 - d:.2f} (1-S = {d:g})", first=i == 0)
        _wtw_panel(fig.add_subplot(gs[1, 2 * i]), fig.add_subplot(gs[1, 2 * i + 1]), W, a["intro.b"][i],
                   "W^T W and b")
    fig.legend(loc="lower center", ncol=n, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"{n} features in {cfg.intro_n_hidden} dimensions: superposition appears as features get sparser")
    from toylab.plotting import savefig

    return savefig(fig, path)


def fig_basic(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    """W^T W (with b) and ||W_i|| coloured by superposition, linear then ReLU over sparsity."""
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    dens = a["basic.density"]
    k = len(dens)
    n, m = cfg.basic_n_features, cfg.basic_n_hidden
    fig = plt.figure(figsize=(2.1 * k + 1.2, 5.6))
    gs = fig.add_gridspec(2, 2 * k + 1, width_ratios=[10, 1] * k + [1.2], height_ratios=[1, 1.1],
                          wspace=0.2, hspace=0.3)
    cmap = plt.cm.viridis
    for i, d in enumerate(dens):
        kind = "linear" if i == 0 else "ReLU"
        im = _wtw_panel(fig.add_subplot(gs[0, 2 * i]), fig.add_subplot(gs[0, 2 * i + 1]), a["basic.W"][i],
                        a["basic.b"][i], f"{kind}, 1-S = {d:g}")
        ax = fig.add_subplot(gs[1, 2 * i: 2 * i + 2])
        sup = np.clip(a["basic.superposition"][i], 0, 1)
        ax.barh(np.arange(n), a["basic.norms"][i], color=cmap(sup), height=0.8)
        ax.axhline(m - 0.5, color="0.6", lw=0.6, ls="--")
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlim(0, 1.6)
        ax.set_xlabel("||W_i||")
        ax.set_ylabel("feature (most important on top)" if i == 0 else "")
        ax.set_title(f"{int(a['basic.n_represented'][i])} represented")
    fig.colorbar(im, cax=fig.add_subplot(gs[0, -1]), label="W^T W and b")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
    fig.colorbar(sm, cax=fig.add_subplot(gs[1, -1]), label="superposition (clipped at 1)")
    fig.suptitle(f"{n} features, {m} hidden, importance {cfg.basic_importance_decay}^i: "
                 "superposition grows with sparsity")
    return savefig(fig, path)


PHASE_COLORS = np.array([[0.75, 0.75, 0.75], [0.2, 0.4, 0.85], [0.85, 0.2, 0.2]])  # not repr., dedicated, superp.


def fig_phase(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    """The n=2, m=1 phase diagram: closed-form theory beside the trained models, boundary overlaid."""
    import matplotlib.patches as mpatches
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    nr, nd = cfg.phase_n_r, cfg.phase_n_density
    r = a["phase.r"].reshape(nd, nr)[0]
    s = a["phase.density"].reshape(nd, nr)[:, 0]

    def edges(v: np.ndarray) -> np.ndarray:
        lv = np.log10(v)
        step = (lv[-1] - lv[0]) / max(len(v) - 1, 1) if len(v) > 1 else 1.0
        return 10 ** np.concatenate([lv - step / 2, lv[-1:] + step / 2])

    fr, fs = np.logspace(-1, 1, 300), np.logspace(-2, 0, 300)
    theory = PHASE_COLORS[sp.phase_theory(*np.meshgrid(fr, fs))]
    norm = np.clip(a["phase.extra_norm"], 0, 1)[:, None]
    sup = np.clip(a["phase.extra_superposition"], 0, 1)[:, None]
    emp = (1 - norm) * PHASE_COLORS[0] + norm * ((1 - sup) * PHASE_COLORS[1] + sup * PHASE_COLORS[2])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    axes[0].pcolormesh(edges(fr), edges(fs), theory)
    axes[1].pcolormesh(edges(r), edges(s), emp.reshape(nd, nr, 3))
    line_r = np.logspace(-1, 1, 200)
    for ax, title in zip(axes, ["theory (closed-form losses)", f"trained models ({cfg.phase_seeds} per cell, "
                                "worst dropped, rest averaged)"]):
        ax.plot(line_r, sp.phase_boundary(line_r), color="k", lw=1, label="analytic boundary")
        ax.plot([1, 1], [4 / 7, 1], color="k", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("relative importance of the extra feature")
        ax.set_title(title)
    axes[0].set_ylabel("feature density 1-S")
    handles = [mpatches.Patch(color=c, label=lbl) for c, lbl in
               zip(PHASE_COLORS, ["extra feature not represented", "extra feature gets the dimension",
                                  "superposition (antipodal pair)"])]
    fig.legend(handles=handles + [axes[0].lines[0]], loc="lower center", ncol=4, bbox_to_anchor=(0.5, -0.06))
    fig.suptitle("Phase diagram of 2 features in 1 dimension")
    return savefig(fig, path)


FRACTIONS = {"1": 1, "3/4": 3 / 4, "2/3": 2 / 3, "1/2": 1 / 2, "2/5": 2 / 5, "3/8": 3 / 8}


def fig_geometry(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    """Dimensions per feature against 1/(1-S), and every feature's dimensionality."""
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    inv = 1 / a["geometry.density"]
    dstar = a["geometry.dims_per_feature"]
    dims = a["geometry.dimensionality"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    axes[0].plot(inv, dstar, "o-", color="k", ms=3, label="D* = m / ||W||_F^2")
    for y in (1, 0.5):
        axes[0].axhline(y, color="0.6", ls="--", lw=0.8)
    axes[0].set_ylabel("dimensions per feature")
    axes[0].set_title(f"Uniform superposition, n={cfg.geometry_n_features}, m={cfg.geometry_n_hidden}")
    jitter = np.random.default_rng(0).uniform(-0.04, 0.04, dims.shape)
    x = inv[:, None] * np.exp(jitter)
    axes[1].scatter(x.ravel(), dims.ravel(), s=2, color="k", alpha=0.5, label="feature dimensionality D_i")
    axes[1].plot(inv, dstar, color="tab:orange", lw=1, label="D*")
    for name, y in FRACTIONS.items():
        axes[1].axhline(y, color="tab:purple", lw=0.5, alpha=0.6)
        axes[1].text(inv.max() * 1.08, y, name, va="center", fontsize=7, color="tab:purple")
    axes[1].set_title("Feature dimensionality clusters at 1/2, 2/5, 2/3, 3/4 ...")
    axes[1].set_ylabel("D_i")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("1 / (1-S)  (features sparser to the right)")
        ax.legend(loc="upper right")
        ax.set_ylim(-0.05, 1.1)
    return savefig(fig, path)


def anim_intro(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    """GIF: the drawn 5-to-2 fits' feature directions over training, one panel per sparsity."""
    import matplotlib.pyplot as plt

    from toylab.plotting import save_animation

    steps, H = a["intro.snapshot_steps"], a["intro.W_history"]  # [T], [T, cells, n, 2]
    dens = a["intro.density"]
    n = cfg.intro_n_features
    colors = plt.cm.viridis(np.linspace(0, 0.9, n))
    fig, axes = plt.subplots(1, len(dens), figsize=(2.9 * len(dens), 3.8), squeeze=False)
    lines = []
    for i, (ax, d) in enumerate(zip(axes[0], dens)):
        lines.append([ax.plot([0, H[0, i, j, 0]], [0, H[0, i, j, 1]], color=colors[j], lw=2, marker="o", ms=3,
                              markevery=[1], label=f"feature {j}" if i == 0 else None)[0] for j in range(n)])
        _hidden_plane(ax, f"S = {1 - d:.2f} (1-S = {d:g})", first=i == 0)
    fig.legend(loc="lower center", ncol=n, fontsize=8)
    title = fig.suptitle("")
    fig.tight_layout(rect=(0, 0.1, 1, 0.93))

    def update(t: int):
        for i in range(len(dens)):
            for j, line in enumerate(lines[i]):
                line.set_data([0, H[t, i, j, 0]], [0, H[t, i, j, 1]])
        title.set_text(f"{n} features in 2 dimensions over training: step {int(steps[t]):,} of {cfg.n_steps:,}")
        return [*(line for ls in lines for line in ls), title]

    return save_animation(fig, update, len(steps), path)


FIGURES = [
    ("intro", fig_intro, "Each line is a feature's direction W_i in the 2-D hidden space (colour: importance). "
     "Dense: only the two most important features get a dimension. At S = 0.8 more features share the plane "
     "in antipodal pairs; at S >= 0.9 all five sit on a pentagon. Below: W^T W and the bias b (negative biases "
     "appear with superposition)."),
    ("basic", fig_basic, "Top: W^T W (red +1, blue -1) with b beside it; bottom: ||W_i|| per feature, coloured by "
     "how much it shares its direction (dark: alone, yellow: in superposition). The linear model keeps exactly "
     "the top m features; the ReLU model packs more features as they get sparser, first in antipodal pairs."),
    ("phase", fig_phase, "Left: which solution has the lowest loss, from the closed-form losses; right: what "
     "trained models do (grey: extra feature dropped, blue: it takes the dimension, red: antipodal pair). "
     "Superposition wins when features are sparse; the line is the analytic boundary, triple point at (1, 4/7)."),
    ("geometry", fig_geometry, "Left: dimensions per feature D* stays at 1, then sticks at 1/2 (antipodal pairs) "
     "over a range of sparsity before falling. Right: each feature's dimensionality clusters on the fractions "
     "of regular polytopes (1/2 digons, 2/5 pentagons, 2/3 triangles, 3/4 tetrahedra)."),
    ("intro.gif", anim_intro, "Animation of the introduction's fits over training (colour: feature, darkest the "
     "most important). From small random directions, the dense model grows the two most important features "
     "into orthogonal axes and shrinks the rest to zero; sparser models spread more features around the circle, "
     "first as antipodal pairs, then as the pentagon."),
]


def plot(cfg: Config, run: Run) -> list[report.Figure]:
    """Render every figure from the saved analysis, without retraining."""
    return experiment.render(cfg, run, FIGURES)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


# The reading group's exercises (``make exercises``): the other figures' models shrunk to seconds.
_SMALL = ("--phase-n-r", "2", "--phase-n-density", "2", "--phase-seeds", "2", "--geometry-n-features", "20",
          "--geometry-n-hidden", "4", "--geometry-n-densities", "2")


def _intro_cell(a: dict[str, np.ndarray], density: float) -> int:
    return int(np.argmin(np.abs(a["intro.density"] - density)))


def _check_equal(rep: dict, a: dict[str, np.ndarray]) -> report.Check:
    n = int(a["intro.n_represented"][_intro_cell(a, 0.2)])
    return report.Check("5->2 with equal importances at 1-S = 0.2: features represented (||W_i|| > 0.5)", n,
                        "5: all five, a pentagon (with importances 0.9^i: 4)", n == 5)


def _check_steep(rep: dict, a: dict[str, np.ndarray]) -> report.Check:
    i = _intro_cell(a, 0.05)
    W, norms = a["intro.W"][i], a["intro.norms"][i]
    kept = np.flatnonzero(norms > 0.5)
    angles = np.sort(np.degrees(np.arctan2(W[kept, 1], W[kept, 0])) % 360)
    gaps = np.diff(np.append(angles, angles[0] + 360)) if kept.size else np.array([360.0])
    worst = float(np.abs(gaps - 90).max())
    return report.Check("5->2 with importances 0.5^i at 1-S = 0.05: features represented; the least important's "
                        "norm; max |adjacent angle - 90 deg|", [int(kept.size), round(float(norms[-1]), 3),
                                                                 round(worst, 1)],
                        "4 features at right angles (two antipodal pairs, within 5 deg), feature 4 dropped "
                        "(norm < 0.1)", bool(kept.size == 4 and norms[-1] < 0.1 and worst <= 5))


EXERCISES = [
    Exercise(
        name="superposition-equal-importance", experiment="superposition", title="every feature equally important",
        question="In the paper's 5-to-2 model, feature i has importance 0.9^i, and at S = 0.8 the model represents "
                 "four of the five features. Make every feature equally important (importance 1). At S = 0.8, "
                 "how many features will the model represent, and in what shape?",
        args=("--intro-importance-decay", "1.0", *_SMALL),
        check_text="all five features represented at 1-S = 0.2, where the paper's importances give four",
        check=_check_equal,
        answer="All five, on a regular pentagon, already at S = 0.8. With equal importances no feature is cheap "
               "to drop, and the symmetric arrangement has the lowest loss once features are sparse enough "
               "that interference is rare. With decaying importance, the least valuable features are the first "
               "left out: importance and sparsity together decide what gets represented (Elhage et al. 2022, "
               "'Demonstrating Superposition'). The dense model still keeps only two features, but which two is "
               "now arbitrary.",
        minutes=1),
    Exercise(
        name="superposition-steep-importance", experiment="superposition", title="importance that falls fast",
        question="Now make importance fall steeply: feature i has importance 0.5^i, so feature 4 is worth 1/16 of "
                 "feature 0. At S = 0.95, where the paper's model makes a pentagon, what will the model do?",
        args=("--intro-importance-decay", "0.5", *_SMALL),
        check_text="four features at right angles (two antipodal pairs) and the least important dropped, "
                   "at 1-S = 0.05",
        check=_check_steep,
        answer="It drops feature 4 and packs the other four as two antipodal pairs at right angles (a square), "
               "not a pentagon. An antipodal pair interferes only through the ReLU's negative side, which the "
               "bias cuts off, so pairs are the cheapest superposition; a pentagon costs every feature some "
               "interference, worth paying only when the fifth feature is worth enough. The geometry follows "
               "importance, not only sparsity (Elhage et al. 2022, 'The Geometry of Superposition').",
        minutes=1),
]


main = experiment.main_for(name="superposition", doc=__doc__, Config=Config, presets=PRESETS, train=train,
                           analyze=analyze, check=check, plot=plot, figures=FIGURES,
                           guide_template=Path(__file__).parent / "guides" / "superposition.md", exercises=EXERCISES)

if __name__ == "__main__":
    config.main_guard(main)
