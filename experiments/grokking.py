"""Grokking modular addition (Nanda et al. 2023), with Fourier analysis and progress measures.

A one-layer transformer learns (a + b) mod 113 from 30% of all pairs. It memorises
first (train loss falls, test loss rises), then forms a Fourier-multiplication circuit
while test loss stays flat, then cleans the memorisation up and test loss falls
suddenly: grokking. The analysis reads the circuit out of the weights and measures
it over every checkpoint, then reads it again with the lab's interpretability verbs
(direct logit attribution, probes over training, steering, attribution patching, an
SAE on the neurons: ``toolbox_seed``).

    python -m experiments.grokking all --preset paper --out runs/grokking

Recipe (the paper's, and its released code's): tokens [a, b, =]
with '=' = 113; one layer, d_model 128, 4 heads of 32, d_mlp 512, ReLU, no LayerNorm,
learned positions, untied embed and unembed, biases in the MLP only, the paper code's
initialisation; full-batch AdamW lr 1e-3, betas (0.9, 0.98), weight decay 1.0 on every
parameter, lr warm-up from 0 over 10 steps; 40,000 epochs; cross-entropy in float64.
Deviations, each for a stated reason: 113 output classes (the paper's analysis and
TransformerLens; the released trainer also scores a 114th, '=', class that is never
the answer); the test loss is logged every ``eval_every`` epochs (10), not every
epoch: it costs as much as most of a training step, and 10 epochs is far finer than
any feature of the curves; each seed trains its own split and initialisation (the
paper's code seeds only the split).
"""

import dataclasses
import random
import time
from typing import ClassVar
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from toylab import config, experiment, lens, patching, probes, report, steering, sweep
from toylab import sae as saes
from toylab import transformer as tf
from toylab.analysis import fourier
from toylab.config import require
from toylab.exercise import Exercise
from toylab.runs import Run
from toylab.train import Schedule, on_cpu, train_models

# ---------------------------------------------------------------------------
# Config, with presets
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    p: int = 113  # the modulus, a prime (paper: 113); tokens 0..p-1 are numbers, p is '='
    frac_train: float = 0.3  # share of the p^2 pairs used for training (paper: 0.3, 3,830 pairs)
    d_model: int = 128  # residual stream width (paper: 128)
    n_heads: int = 4  # attention heads (paper: 4)
    d_head: int = 32  # width per head (paper: 32)
    d_mlp: int = 512  # MLP hidden neurons (paper: 512)
    lr: float = 1e-3  # AdamW peak learning rate (paper: 1e-3)
    weight_decay: float = 1.0  # AdamW decoupled weight decay on all parameters (paper: 1.0; 0 does not grok)
    beta2: float = 0.98  # AdamW second-moment decay (paper's code: 0.98; beta1 is 0.9)
    warmup_steps: int = 10  # linear lr warm-up from 0 (paper's code: 10)
    n_steps: int = 40_000  # full-batch AdamW steps, one per epoch (paper: 40,000 epochs)
    checkpoint_every: int = 100  # epochs between checkpoints, the analysis's time resolution (paper: 100)
    resume_every: int = 10  # snapshots per full-state checkpoint (1: every one); a killed run repeats at most these
    eval_every: int = 10  # epochs between test-loss evaluations (paper: 1; see the module docstring)
    n_seeds: int = 1  # models trained side by side in one vmapped program (paper's figures: 1)
    seed: int = 0  # seed s trains split random.seed(seed + s) and initialisation key (seed + s)

    # Fields a sweep varies inside one compiled program (arrays with a model axis); others are structural.
    PER_MODEL: ClassVar[tuple[str, ...]] = ("lr", "weight_decay", "beta2", "frac_train", "seed")

    def __post_init__(self) -> None:
        require(self.p >= 3 and all(self.p % d for d in range(2, int(self.p**0.5) + 1)), "p", "a prime >= 3", self.p)
        require(0 < self.frac_train < 1, "frac_train", "in (0, 1)", self.frac_train)
        for f in ("d_model", "n_heads", "d_head", "d_mlp", "n_steps", "checkpoint_every", "resume_every", "eval_every",
                  "n_seeds"):
            require(getattr(self, f) > 0, f, "a positive integer", getattr(self, f))
        require(self.lr > 0, "lr", "positive", self.lr)
        require(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        require(0 <= self.beta2 < 1, "beta2", "in [0, 1)", self.beta2)
        require(self.warmup_steps >= 0, "warmup_steps", ">= 0", self.warmup_steps)
        require(self.n_steps % self.checkpoint_every == 0, "n_steps",
                f"a multiple of checkpoint_every={self.checkpoint_every}", self.n_steps)
        require(self.checkpoint_every % self.eval_every == 0, "checkpoint_every",
                f"a multiple of eval_every={self.eval_every}", self.checkpoint_every)
        n_train = int(self.frac_train * self.p**2)
        require(0 < n_train < self.p**2, "frac_train", f"leaving train and test pairs non-empty at p={self.p}",
                self.frac_train)


PRESETS: dict[str, Config] = {
    "paper": Config(),
    # Seconds on a laptop: a small prime, a small model; every stage runs, nothing groks.
    "smoke": Config(p=23, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_steps=200, checkpoint_every=50,
                    eval_every=10),
    # The phase diagram on 2 CPU cores in about 10 minutes (make grokking-phases; its sweep is in
    # PRESET_SWEEPS): 84 models of a quarter of the paper's width on (a + b) mod 31, at 3x the paper's
    # learning rate so that 6,000 epochs show every phase (at lr 1e-3 they need about 3x as long).
    "phases": Config(p=31, d_model=32, n_heads=4, d_head=8, d_mlp=128, lr=3e-3, n_steps=6000, checkpoint_every=200,
                     n_seeds=2),
    # The same at the paper's scale, for a GPU or a cluster: 48 points x 2 seeds of the paper's model.
    "phases-paper": Config(n_steps=20_000, checkpoint_every=500, n_seeds=2),
}

# A preset's own sweep, run when no --sweep is given (make grokking-phases).
PRESET_SWEEPS: dict[str, tuple[str, ...]] = {
    "phases": ("weight_decay=0,0.1,0.3,1,3,10", "frac_train=0.2,0.3,0.4,0.5,0.6,0.7,0.8"),
    "phases-paper": ("weight_decay=0,0.1,0.3,1,3,10", "frac_train=0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8"),
}

# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def all_pairs(p: int) -> np.ndarray:
    """Every input ``[a, b, =]``, row-major in (a, b): ``[p*p, 3]`` int32."""
    a, b = np.divmod(np.arange(p * p), p)
    return np.stack([a, b, np.full_like(a, p)], axis=1).astype(np.int32)


def split(p: int, frac_train: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``all_pairs`` of the train and test sets, as the paper's code draws them.

    Its recipe exactly: ``random.seed(seed); random.shuffle(pairs)``, the first
    ``int(frac * p^2)`` train, the rest test.
    """
    order = list(range(p * p))
    random.Random(seed).shuffle(order)
    n_train = int(frac_train * p * p)
    return np.array(order[:n_train], np.int32), np.array(order[n_train:], np.int32)


def labels(tokens: np.ndarray | jax.Array, p: int):
    return (tokens[..., 0] + tokens[..., 1]) % p


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def model_config(cfg: Config) -> tf.TransformerConfig:
    return tf.TransformerConfig(d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head, d_mlp=cfg.d_mlp,
                                d_vocab=cfg.p + 1, d_vocab_out=cfg.p, n_ctx=3, n_layers=1, act_fn="relu",
                                normalization=None, use_attn_bias=False, use_mlp_bias=True, use_unembed_bias=False)


def init_model(key: jax.Array, cfg: Config) -> tf.Transformer:
    """The paper code's initialisation: N(0, 1/d_model) for every matrix, N(0, 1/d_vocab) for W_U."""
    mc = model_config(cfg)
    return tf.init(key, mc, std=lambda name: (1 / mc.d_vocab if name == "W_U" else 1 / mc.d_model) ** 0.5)


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean cross-entropy in float64: in float32, log-softmax can only return multiples of
    ~1.2e-7, so late losses of order 1e-7 are noise and the loss spikes (the paper's note).

    ``weights`` (1 for a real pair, 0 for padding) mask a padded batch: a sweep over the training
    fraction pads every model's pairs to one shape. With all weights 1 the value and its gradient
    are the unweighted mean's, bit for bit (multiplying by 1 and summing n ones are exact).
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float64), axis=-1)
    nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    if weights is None:
        return jnp.mean(nll)
    w = weights.astype(jnp.float64)
    return jnp.sum(w * nll) / jnp.sum(w)


def loss_and_accuracy(model: tf.Transformer, tokens: jax.Array, p: int,
                      weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    logits = tf.forward(model, tokens, last_only=True)[:, -1]
    y = labels(tokens, p)
    hit = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    acc = jnp.mean(hit) if weights is None else jnp.sum(weights * hit) / jnp.sum(weights)
    return cross_entropy(logits, y, weights), acc


# ---------------------------------------------------------------------------
# Train
# ---------------------------------------------------------------------------


def optimizer(cfg: Config, hp: dict | None = None) -> optax.GradientTransformation:
    """torch AdamW + LambdaLR(min(step/10, 1)): lr is 0 at the first step, decay scaled by lr.

    A swept per-model field (``Config.PER_MODEL``) is read from the model's ``hp`` row, an
    array inside the compiled program; any other from ``cfg``, a constant. An array lr or
    weight decay does the same float32 arithmetic as the constant, so a sweep point equals
    its single run bit for bit; beta2 does not quite (optax forms 1 - beta2 in float32 from an
    array, in float64 from a constant), so a beta2 sweep matches single runs to rounding.
    """
    hp = hp or {}
    lr, wd, b2 = hp.get("lr", cfg.lr), hp.get("weight_decay", cfg.weight_decay), hp.get("beta2", cfg.beta2)
    warmup = optax.linear_schedule(0.0, lr, cfg.warmup_steps) if cfg.warmup_steps else lr
    return optax.adamw(warmup, b1=0.9, b2=b2, eps=1e-8, weight_decay=wd)


def make_train(cfg: Config):
    """Pure ``init(key, hp)`` and ``step(state, hp, t)`` of one model, for ``train_models``.

    ``hp`` holds the model's own data (its train and test tokens, full batch, with weights
    when a sweep pads them to one shape) and the swept per-model hyperparameters.
    """

    def init(key: jax.Array, hp: dict) -> dict:
        model = init_model(key, cfg)
        return {"params": model, "opt_state": optimizer(cfg, hp).init(model)}

    def step(state: dict, hp: dict, t: jax.Array) -> tuple[dict, dict]:
        model, opt = state["params"], optimizer(cfg, hp)
        (loss, acc), grads = jax.value_and_grad(loss_and_accuracy, has_aux=True)(
            model, hp["train"], cfg.p, hp.get("train_w"))
        test_loss, test_acc = jax.lax.cond(  # t is shared by all models, so this stays a real branch
            t % cfg.eval_every == 0, lambda: loss_and_accuracy(model, hp["test"], cfg.p, hp.get("test_w")),
            lambda: (jnp.float64(jnp.nan), jnp.float32(jnp.nan)))
        updates, opt_state = opt.update(grads, state["opt_state"], model)
        metrics = {"loss": loss, "train_acc": acc, "test_loss": test_loss, "test_acc": test_acc}
        return {"params": optax.apply_updates(model, updates), "opt_state": opt_state}, metrics

    return init, step


def seed_data(cfg: Config, points: Sequence[Config] = ()) -> dict[str, np.ndarray]:
    """Every model's train and test tokens, stacked on a leading model axis (point-major, then seed).

    Points of a sweep with different training fractions have different numbers of pairs:
    then each set is padded to the largest with copies of its first pair, weighted 0.
    """
    pairs = all_pairs(cfg.p)
    splits = [split(cfg.p, pt.frac_train, pt.seed + s) for pt in (points or [cfg]) for s in range(cfg.n_seeds)]
    out = {}
    for name, i in (("train", 0), ("test", 1)):
        sets = [sp[i] for sp in splits]
        n = max(len(x) for x in sets)
        out[name] = np.stack([pairs[np.concatenate([x, np.full(n - len(x), x[0], np.int32)])] for x in sets])
        if any(len(x) < n for x in sets):
            out[f"{name}_w"] = np.stack([np.arange(n) < len(x) for x in sets]).astype(np.float32)
    return out


def train(cfg: Config, run: Run, points: Sequence[Config] = (), *, devices=None, progress=True) -> dict[str, float]:
    """Train ``n_seeds`` models of each point (``cfg`` alone by default) side by side; params every
    ``checkpoint_every`` epochs. Points differ from ``cfg`` in ``PER_MODEL`` fields only."""
    points = list(points) or [cfg]
    init, step = make_train(cfg)
    keys = jax.vmap(jax.random.key)(jnp.array([pt.seed + s for pt in points for s in range(cfg.n_seeds)]))
    hp = seed_data(cfg, points) | sweep.per_model(points, Config.PER_MODEL, cfg.n_seeds, exclude=("frac_train", "seed"))
    n = len(points) * cfg.n_seeds
    t = time.perf_counter()
    with jax.enable_x64(True):  # float64 exists only for the cross-entropy; every weight is float32
        train_models(
            directory=run.checkpoints(), init=init, step=step, keys=keys, per_model=jax.tree.map(jnp.asarray, hp),
            schedule=Schedule(cfg.n_steps, cfg.checkpoint_every, log_every=1, resume_every=cfg.resume_every,
                              keep_last=2),
            meta={"config_hash": sweep.points_hash(points)},
            devices=devices, progress=progress, desc=f"grokking ({n} model{'s' * (n > 1)})",
            snapshot=lambda state: state["params"], snapshot_dir=run.params(), models_per_call=on_cpu(1),
        )
    return {"train": time.perf_counter() - t}


# ---------------------------------------------------------------------------
# Analyse
# ---------------------------------------------------------------------------


def load_history(cfg: Config, run: Run) -> tuple[np.ndarray, tf.Transformer]:
    """Epochs ``[T]`` of every saved snapshot and the models, stacked ``[T, seeds, ...]``."""
    return run.snapshots(jax.eval_shape(lambda: init_model(jax.random.key(0), cfg)))  # shapes only: nothing runs


def _index(tree, *idx):
    return jax.tree.map(lambda x: x[idx], tree)


def progress_measures(models: tf.Transformer, pairs: jax.Array, y: np.ndarray, train_idx: np.ndarray,
                      test_idx: np.ndarray, D: np.ndarray, D_each: np.ndarray, batch: int = 8) -> dict[str, np.ndarray]:
    """Nanda et al. 2023's progress measures (§5.1) of every model of a stack ``[T, ...]``, in float64:
    train and test loss, restricted loss (the logits' cos/sin(w_k(a+b)) components for the key
    frequencies ``D [2K, p*p]`` and the constant; on every input and on the test inputs), excluded
    loss (those components removed; training inputs), and excluded loss per key frequency
    (``D_each [K, 2, p*p]``). ``[T]`` each, ``excluded_each`` ``[T, K]``.

    One compiled call per ``batch`` snapshots, one model after another inside it (``lax.map``: a vmapped
    forward over 8 snapshots ran 35% slower on a CPU, most of it copies into the batched layout). Each
    row's log-softmax is taken once (over every input) and read by the losses that need it. Call it
    inside ``jax.enable_x64``.
    """
    yj, tr, te = jnp.asarray(y), jnp.asarray(train_idx), jnp.asarray(test_idx)
    Dj, Dk = jnp.asarray(D, jnp.float64), jnp.asarray(D_each, jnp.float64)
    Dk_train = Dk[:, :, tr]  # the per-frequency components are only scored on the training inputs

    def nll(L, labels):  # per-row cross-entropy
        return -jnp.take_along_axis(jax.nn.log_softmax(L, -1), labels[:, None], -1)[:, 0]

    def one(m):
        L = tf.forward(m, pairs, last_only=True)[:, -1].astype(jnp.float64)  # [p*p, p]
        full = nll(L, yj)
        kept = Dj.T @ (Dj @ L)
        restricted = nll(kept + L.mean(0, keepdims=True), yj)
        L_train, y_train = L[tr], yj[tr]
        each = jnp.einsum("kjn,kjc->knc", Dk_train, jnp.einsum("kjn,nc->kjc", Dk, L))  # [K, train, p]
        return {"train_loss": full[tr].mean(), "test_loss": full[te].mean(),
                "restricted_loss": restricted.mean(), "restricted_test_loss": restricted[te].mean(),
                "excluded_loss": nll(L_train - kept[tr], y_train).mean(),
                "excluded_each": jax.vmap(lambda e: nll(L_train - e, y_train).mean())(each)}

    f = jax.jit(lambda ms: jax.lax.map(one, ms))
    n = jax.tree.leaves(models)[0].shape[0]
    parts = [jax.tree.map(np.asarray, f(_index(models, slice(i, min(i + batch, n))))) for i in range(0, n, batch)]
    return {k: np.concatenate([q[k] for q in parts]) for k in parts[0]}


def weight_l(model: tf.Transformer) -> np.ndarray:
    """The neuron-logit map W_L = W_out W_U: ``[d_mlp, p]``."""
    return np.asarray(model.blocks[0].mlp.W_out @ model.unembed.W_U)


def sum_sq(model: tf.Transformer) -> float:
    return float(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(model)))


def analyze_seed(cfg: Config, epochs: np.ndarray, models: tf.Transformer, seed: int) -> dict[str, np.ndarray]:
    """Every measurement of one seed: the final model's circuit, and progress measures over training."""
    p = cfg.p
    F, _ = fourier.fourier_basis(p)
    pairs = all_pairs(p)
    y = labels(pairs, p)
    train_idx, test_idx = split(p, cfg.frac_train, cfg.seed + seed)
    final = _index(models, -1)
    out: dict[str, np.ndarray] = {}
    lap = experiment.laps()  # each part's seconds go into the report's wall times

    # The final model: which frequencies, and how the circuit uses them.
    we = fourier.component_norms(F, np.asarray(final.embed.W_E)[:p])
    wl = fourier.component_norms(F, weight_l(final).T)
    keys = fourier.key_frequencies(fourier.frequency_norms(wl))
    out.update(W_E_norms=we, W_L_norms=wl, key_freqs=keys)
    names = ["blocks.0.attn.hook_pattern", "blocks.0.mlp.hook_post"]
    logits, cache = jax.jit(lambda m: tf.run_with_cache(m, jnp.asarray(pairs), names, last_only=True))(final)
    logits = np.asarray(logits[:, -1])
    out["attn_to_a"] = np.asarray(cache[names[0]][:, :, 0, 0]).T.reshape(-1, p, p)  # [head, a, b]
    post = np.asarray(cache[names[1]][:, 0]).reshape(p, p, -1)
    out["neuron_freq"], out["neuron_frac"] = fourier.neuron_frequencies(post, F)
    # the first four neurons that one frequency explains (> 0.85), or the first four if none is
    shown = (list(np.flatnonzero(out["neuron_frac"] > 0.85)) + list(range(post.shape[-1])))[:4]
    out["neuron_ids"] = np.array(shown)
    out["neurons"] = post[:, :, shown].transpose(2, 0, 1)
    out["neuron_fourier"] = fourier.fft2d(post[:, :, shown[0]], F)
    out["logit_fourier_norms"] = np.linalg.norm(fourier.fft2d(logits.reshape(p, p, p), F), axis=-1)
    out["logit_fve"] = np.array(fourier.logit_fve(logits, p, keys))
    out["W_L_fourier"] = F @ weight_l(final).T  # [component, neuron]

    # Ablations through hooks on the MLP neurons at '=' (as the paper's ablations, at neuron level).
    def loss_with(post_fn) -> float:
        hook = ("blocks.0.mlp.hook_post", lambda h, _: post_fn(h[:, 0])[:, None])
        lg = jax.jit(lambda m: tf.run_with_hooks(m, jnp.asarray(pairs), [hook], last_only=True))(final)
        return float(fourier.cross_entropy(np.asarray(lg[:, -1]), y))

    def project(ks, keep: bool):
        D = jnp.asarray(fourier.sum_directions(p, ks), jnp.float32)
        return lambda h: (h.mean(0) + D.T @ (D @ h)) if keep else h - D.T @ (D @ h)

    out["ablation_names"] = np.array(["original", "key frequencies only"] + [f"without {k}" for k in keys])
    out["ablation_losses"] = np.array([loss_with(lambda h: h), loss_with(project(keys, True))]
                                      + [loss_with(project([k], False)) for k in keys])

    lap("fourier_and_ablations")
    # Progress measures over every snapshot, with the final model's key frequencies.
    per = progress_measures(models, jnp.asarray(pairs), y, train_idx, test_idx, fourier.sum_directions(p, keys),
                            np.stack([fourier.sum_directions(p, [k]) for k in keys]))
    out.update({f"ckpt_{k}": v for k, v in per.items()})
    n = len(epochs)
    # Fourier component norms of W_E and W_L at every snapshot: the Gini progress measure and the animation
    out["ckpt_W_E_norms"] = np.stack([fourier.component_norms(F, np.asarray(models.embed.W_E[t])[:p])
                                      for t in range(n)])
    out["ckpt_W_L_norms"] = np.stack([fourier.component_norms(F, weight_l(_index(models, t)).T) for t in range(n)])
    out["ckpt_gini_W_E"] = np.array([fourier.gini(fourier.frequency_norms(x)) for x in out["ckpt_W_E_norms"]])
    out["ckpt_gini_W_L"] = np.array([fourier.gini(fourier.frequency_norms(x)) for x in out["ckpt_W_L_norms"]])
    out["ckpt_sum_sq"] = np.array([sum_sq(_index(models, t)) for t in range(n)])
    lap("progress_measures")
    return out


# The toolbox's settings (analysis only: they do not change training).
PROBE_EVERY = 4  # probe every 4th snapshot (400 epochs apart in the paper preset), plus the untrained model
PROBE_HOOKS = ("blocks.0.mlp.hook_post", "blocks.0.hook_resid_post")  # where the probes read, at '='
STEER_HOOK = "blocks.0.hook_mlp_out"  # where the steers act, at '=' (the MLP's write to the residual)
STEER_INPUTS = 1000  # inputs the steered accuracy is measured on, per shift delta (a fixed random subset)
ATP_PAIRS = 64  # clean/corrupted pairs (a, b) vs (a', b) of the attribution-patching comparison
SAE_WIDTH = 0.5  # SAE latents per MLP neuron (256 for d_mlp 512: room for several latents per key circle)
SAE_K = 10  # TopK SAE's active latents per input (about two per key frequency)
SAE_EPOCHS = 60  # SAE training passes over the p^2 activations (batches of 256, lr 1e-3; 3,000 steps at p = 113)


def sae_steps(n: int) -> int:
    """Steps for SAE_EPOCHS passes over ``n`` activations in batches of 256 (at least 200)."""
    return int(max(200, round(SAE_EPOCHS * n / 256, -2)))


def fourier_targets(p: int) -> np.ndarray:
    """cos and sin of w_k (a + b) for k = 1..(p-1)/2 over the flattened grid: ``[p*p, 2K]`` (cos k, sin k, ...)."""
    a, b = np.divmod(np.arange(p * p), p)
    k = np.arange(1, p // 2 + 1)
    angle = 2 * np.pi * k[None, :] * (a + b)[:, None] / p
    return np.stack([np.cos(angle), np.sin(angle)], -1).reshape(p * p, -1)


def unembed_planes(model: tf.Transformer, ks) -> tuple[np.ndarray, np.ndarray]:
    """Per key frequency, the plane the unembedding reads as cos/sin(w_k c): write vectors ``[K, 2, d_model]``
    (adding one raises the logits by exactly cos(w_k c) or sin(w_k c)) and their dual read vectors."""
    W_U = np.asarray(model.unembed.W_U, np.float64)  # [d_model, p]
    p = W_U.shape[1]
    c = np.arange(p)
    waves = np.stack([np.stack([np.cos(2 * np.pi * k * c / p), np.sin(2 * np.pi * k * c / p)]) for k in ks])
    write = waves @ np.linalg.pinv(W_U)  # x @ W_U = wave, exactly when W_U has rank p (d_model >= p)
    read = waves @ W_U.T / (p / 2)  # x . read = the logits' coefficient on that wave
    return write, read


def toolbox_seed(cfg: Config, epochs: np.ndarray, models: tf.Transformer, seed: int, keys: np.ndarray,
                 neuron_freq: np.ndarray) -> dict[str, np.ndarray]:
    """The interpretability toolbox on one seed: DLA, probes over training, steering, attribution
    patching, an SAE on the MLP neurons (Nanda et al. 2023's circuit read by each verb)."""
    p = cfg.p
    mc = model_config(cfg)
    pairs = all_pairs(p)
    y = labels(pairs, p)
    tok, yj = jnp.asarray(pairs), jnp.asarray(y)
    train_idx, test_idx = split(p, cfg.frac_train, cfg.seed + seed)
    final = _index(models, -1)
    rng = np.random.default_rng(cfg.seed + seed)
    out: dict[str, np.ndarray] = {}
    lap = experiment.laps()  # each verb's seconds go into the report's wall times

    # Direct logit attribution at '=' to logit[c*] - mean logit, and logits from the MLP output alone.
    @jax.jit
    def dla(m):
        names = lens.resid_hooks(mc) + ["blocks.0.mlp.hook_post"]
        logits, cache = tf.run_with_cache(m, tok, names, last_only=True)
        cache = {k: v[:, -1:] for k, v in cache.items()}
        attrs = lens.logit_attrs(m, lens.resid_stack(m, cache)[:, :, 0], yj)  # [component, p*p]
        lg = logits[:, -1]
        target = jnp.take_along_axis(lg, yj[:, None], -1)[:, 0] - lg.mean(-1)
        return attrs, target, lg, cache["blocks.0.hook_mlp_out"][:, 0] @ m.unembed.W_U, \
            cache["blocks.0.mlp.hook_post"][:, 0]

    attrs, target, logits, mlp_logits, post = (np.asarray(v) for v in dla(final))
    out["dla_labels"] = np.array(lens.resid_labels(mc))
    out["dla_mean"] = attrs.mean(1)
    out["dla_identity_err"] = np.array(np.abs(attrs.sum(0) - target).max() / np.abs(target).max())
    out["dla_losses"] = np.array([fourier.cross_entropy(logits, y), fourier.cross_entropy(mlp_logits, y)])
    out["dla_mlp_acc"] = np.array(np.mean(mlp_logits.argmax(-1) == y))
    # Per key-frequency cluster of neurons, the attribution to every candidate c (centred over c) against
    # the wave alpha cos(w_k(a + b - c)) the paper's algorithm predicts.
    W_L = weight_l(final).astype(np.float64)
    W_L = W_L - W_L.mean(1, keepdims=True)
    a_, b_ = np.divmod(np.arange(p * p), p)
    example = int(rng.integers(p * p))
    fve, waves, alphas, sizes = [], [], [], []
    for k in keys:
        idx = np.flatnonzero(neuron_freq == k)
        A = post[:, idx].astype(np.float64) @ W_L[idx]  # [p*p, p]
        T = np.cos(2 * np.pi * k / p * (a_[:, None] + b_[:, None] - np.arange(p)[None, :]))
        alpha = np.sum(A * T) / np.sum(T * T)
        fve.append(1 - np.sum((A - alpha * T) ** 2) / max(np.sum((A - A.mean()) ** 2), 1e-30))
        waves.append(A[example])
        alphas.append(alpha)
        sizes.append(idx.size)
    out.update(wave_fve=np.array(fve), wave_example=np.array(example), waves=np.array(waves).reshape(-1, p),
               wave_alpha=np.array(alphas), wave_sizes=np.array(sizes))

    lap("dla")

    # Probes for cos/sin(w_k(a+b)), every k, fitted on the training pairs and scored on the test pairs: the
    # untrained model (row 0) and every PROBE_EVERY-th snapshot in one compiled call.
    Y = jnp.asarray(fourier_targets(p), jnp.float32)
    tr, te = jnp.asarray(train_idx), jnp.asarray(test_idx)

    def probe_r2(m, hooks, Yfit):
        _, cache = tf.run_with_cache(m, tok, list(hooks), last_only=True)
        r = []
        for h in hooks:
            x = cache[h][:, -1]
            pr = probes.fit_ridge(x[tr], Yfit[tr])
            r.append(probes.r2(Y[te], probes.predict(pr, x[te])).reshape(-1, 2).mean(-1))  # [K]: cos, sin averaged
        return jnp.stack(r)

    picked = np.unique(np.r_[np.arange(0, len(epochs), PROBE_EVERY), len(epochs) - 1])
    stack = jax.tree.map(lambda m: m[picked], models)
    if epochs[0] != 0:  # the untrained model is the snapshot at epoch 0; rebuild it if that was not kept
        untrained = init_model(jax.random.key(cfg.seed + seed), cfg)
        stack = jax.tree.map(lambda u, m: jnp.concatenate([u[None], m]), untrained, stack)
    # One compiled call per snapshot: the same fits inside lax.map deadlocked XLA's CPU thread pool (2 cores).
    fit = jax.jit(lambda m: probe_r2(m, PROBE_HOOKS, Y))
    r2 = np.stack([np.asarray(fit(_index(stack, i))) for i in range(len(jax.tree.leaves(stack)[0]))])
    out["probe_epochs"] = np.r_[[0] * int(epochs[0] != 0), epochs[picked]]
    out["probe_r2"] = r2  # [1 + snapshots, hook, K]
    Y_shuffled = probes.shuffled(jax.random.key(cfg.seed + seed), Y)
    out["probe_controls"] = np.stack([  # [control, K]
        np.asarray(jax.jit(lambda m: probe_r2(m, ("blocks.0.hook_resid_pre",), Y))(final))[0],
        np.asarray(jax.jit(lambda m: probe_r2(m, PROBE_HOOKS[:1], Y_shuffled))(final))[0]])
    out["probe_control_names"] = np.array(["before the layer (resid_pre at '=')", "shuffled labels (hook_post)"])

    lap("probes")

    # Steering at the MLP output, on answer a + b + delta. The mean difference over the full grid is a
    # difference of two means over the same activations (b -> b + delta permutes the grid): zero.
    _, cache = jax.jit(lambda m: tf.run_with_cache(m, tok, [STEER_HOOK], last_only=True))(final)
    h = np.asarray(cache[STEER_HOOK][:, -1], np.float64).reshape(p, p, -1)
    deltas = np.arange(p)
    V = np.stack([np.roll(h, -d, axis=1).reshape(p * p, -1).mean(0) - h.reshape(p * p, -1).mean(0) for d in deltas])
    out["steer_mean_diff_norm"] = np.linalg.norm(V, axis=-1) / np.linalg.norm(h, axis=-1).mean()
    sub = rng.choice(p * p, min(STEER_INPUTS, p * p), replace=False)
    sub_tok, sub_y = tok[sub], yj[sub]
    write, read = (jnp.asarray(x, jnp.float32) for x in unembed_planes(final, keys))
    w_keys = jnp.asarray(2 * np.pi * keys / p, jnp.float32)

    def shifted_acc(m, hook, d):
        logits = tf.run_with_hooks(m, sub_tok, [hook], last_only=True)[:, -1]
        return jnp.mean(logits.argmax(-1) == (sub_y + d) % p)

    def rotation(d):
        def fn(x):
            for i in range(len(keys)):
                x = steering.rotate(write[i], w_keys[i] * d, read[i])(x)
            return x
        return fn

    @jax.jit
    def steer(m, V):
        add = jax.vmap(lambda v, d: shifted_acc(m, steering.add_hook(STEER_HOOK, v), d))(V, jnp.arange(p))
        rot = jax.vmap(lambda d: shifted_acc(m, steering.edit_hook(STEER_HOOK, rotation(d)), d))(jnp.arange(p))
        none = jax.vmap(lambda d: shifted_acc(m, (STEER_HOOK, lambda x, _: x), d))(jnp.arange(p))
        return jnp.stack([none, add, rot])

    out["steer_acc"] = np.asarray(steer(final, jnp.asarray(V, jnp.float32)))  # [unsteered/mean diff/rotation, delta]

    lap("steering")

    # Attribution patching against exact activation patching: clean (a, b), corrupted (a', b);
    # metric logit[(a+b)] - logit[(a'+b)] at '=', averaged over the pairs.
    i = rng.choice(p * p, ATP_PAIRS, replace=False)
    a2 = (a_[i] + rng.integers(1, p, ATP_PAIRS)) % p
    clean = tok[i]
    corrupt = clean.at[:, 0].set(jnp.asarray(a2, jnp.int32))
    c_clean, c_corrupt = yj[i], jnp.asarray((a2 + b_[i]) % p)
    batch = jnp.arange(ATP_PAIRS)

    def metric(lg):
        return jnp.mean(lg[batch, -1, c_clean] - lg[batch, -1, c_corrupt])

    sites = {"blocks.0.attn.hook_z": (2,), "blocks.0.mlp.hook_post": (2,), "blocks.0.mlp.hook_pre": (2,)}

    @jax.jit
    def atp_ap(m):
        attr, clean_cache, corrupt_cache, _ = patching.attribution_patch(m, clean, corrupt, metric, list(sites))
        atp = {n: patching.sum_units(attr[n], u) for n, u in sites.items()}
        ap = {n: patching.patch_units(m, corrupt, clean_cache, metric, n, u, batch_size=64) for n, u in sites.items()}
        pre = "blocks.0.mlp.hook_pre"
        flips = ((clean_cache[pre][:, -1] > 0) != (corrupt_cache[pre][:, -1] > 0)).any(0)
        return atp, ap, flips

    atp, ap, flips = atp_ap(final)
    for n in sites:
        short = n.split(".")[-1]
        out[f"atp.{short}"], out[f"ap.{short}"] = np.asarray(atp[n]), np.asarray(ap[n])
    out["atp_relu_flips"] = np.asarray(flips)

    lap("attribution_patching")

    # A TopK SAE on the MLP neurons at '=' over all p^2 inputs.
    scfg = saes.SAEConfig(d_in=cfg.d_mlp, d_sae=max(int(SAE_WIDTH * cfg.d_mlp), 2 * SAE_K), architecture="topk",
                          k=SAE_K, normalize_activations="expected_average_only_in")
    x = jnp.asarray(post)
    sae, logs = jax.jit(lambda key: saes.fit(key, scfg, x, SAE_K, n_steps=sae_steps(p * p), batch_size=256))(
        jax.random.key(cfg.seed + seed))
    ce = lambda lg: -jnp.mean(jax.nn.log_softmax(lg[:, -1].astype(jnp.float64))[jnp.arange(p * p), yj])  # noqa: E731

    @jax.jit
    def sae_eval(sae):
        spliced = tf.run_with_hooks(final, tok, [saes.splice_hook(PROBE_HOOKS[0], sae)], last_only=True)[:, -1]
        return (saes.splice_scores(final, tok, PROBE_HOOKS[0], sae, ce, last_only=True), saes.evaluate(sae, x),
                jnp.mean(spliced.argmax(-1) == yj), saes.dead_latents(saes.encode(sae, x)))

    with jax.enable_x64(True):  # the losses are ~1e-6: float64 cross-entropy, as in training
        sc, ev, acc, dead = sae_eval(sae)
    out["sae_scores"] = np.array([float(sc["clean"]), float(sc["spliced"]), float(sc["zero_ablated"]), float(acc),
                                  float(ev["l0"]), float(ev["fvu"]), float(ev["dead"])])
    out["sae_loss_curve"] = np.asarray(logs["mse_loss"])
    # Each latent's logit effect (its decoder row through W_out W_U), centred over c, in the Fourier basis.
    effect = np.asarray(sae.W_dec, np.float64) @ W_L  # [d_sae, p]
    F, _ = fourier.fourier_basis(p)
    coef = effect @ F.T  # [d_sae, p]: const, cos 1, sin 1, ...
    power = coef[:, 1::2] ** 2 + coef[:, 2::2] ** 2  # [d_sae, K]
    out["sae_purity"] = power.max(1) / np.maximum(power.sum(1), 1e-30)
    out["sae_freq"] = power.argmax(1) + 1
    out["sae_phase"] = np.arctan2(coef[np.arange(len(coef)), 2 * out["sae_freq"]],
                                  coef[np.arange(len(coef)), 2 * out["sae_freq"] - 1])
    out["sae_alive"] = ~np.asarray(dead)
    lap("sae")
    return out


def analyze(cfg: Config, run: Run) -> dict[str, np.ndarray]:
    """Measure every seed from its snapshots and logs; saved to ``analysis.npz`` (keys ``s{seed}.name``)."""
    lap = experiment.laps()  # each part's seconds go into the report's wall times
    epochs, models = load_history(cfg, run)
    logs = run.logs()
    lap("snapshots")
    out = {"epochs": epochs}
    for k in ("loss", "train_acc", "test_loss", "test_acc"):
        out[f"log_{k}"] = logs[k]  # [seeds, n_steps]
    for s in range(cfg.n_seeds):
        seed_models = jax.tree.map(lambda x: x[:, s], models)
        with jax.enable_x64(True):
            seed_out = analyze_seed(cfg, epochs, seed_models, s)
        # float32, as the model: x64 mode would make the probes' and the SAE's new arrays float64
        seed_out |= toolbox_seed(cfg, epochs, seed_models, s, seed_out["key_freqs"], seed_out["neuron_freq"])
        out.update({f"s{s}.{k}": v for k, v in seed_out.items()})
    return out


def first_below(x: np.ndarray, epochs: np.ndarray, level: float) -> float:
    """First epoch at which ``x`` (NaNs skipped) is below ``level``; inf if never."""
    hit = np.flatnonzero(np.nan_to_num(x, nan=np.inf) < level)
    return float(epochs[hit[0]]) if hit.size else float("inf")


def phases(a: dict[str, np.ndarray], s: int) -> tuple[float, float, float]:
    """Ends of memorisation, circuit formation and cleanup for seed ``s``, by rules fixed in advance.

    The paper drew its boundaries (1.4k / 9.4k / 14k) by eye. Ours: memorisation ends
    at the test-loss peak (the paper's 1.4k is its run's peak); circuit formation ends
    when the test loss starts its sudden fall (first below 1); cleanup ends when the
    sum of squared weights has come within 10% of its final value.
    """
    test = a["log_test_loss"][s]
    epochs = np.arange(test.size)
    mem = float(np.nanargmax(test))
    circuit = first_below(test, epochs, 1.0)
    w, ck = a[f"s{s}.ckpt_sum_sq"], a["epochs"]
    after = (ck > circuit) & (w <= 1.1 * w[-1])
    cleanup = float(ck[np.flatnonzero(after)[0]]) if after.any() else float("inf")
    return mem, circuit, cleanup


def check(cfg: Config, a: dict[str, np.ndarray]) -> list[report.Check]:
    """Eight checks against Nanda et al. 2023 (its figures and released runs), each against its band; every seed must pass."""
    S = cfg.n_seeds
    one = lambda v: v[0] if S == 1 else v  # noqa: E731  (a list only when there are several seeds)
    epochs = np.arange(a["log_loss"].shape[1])
    checks = []

    mem = [[first_below(a["log_loss"][s], epochs, 1e-3), first_below(a["log_loss"][s], epochs, 1e-6)] for s in range(S)]
    checks.append(report.Check(
        "memorisation: first epoch train loss < 1e-3, < 1e-6", one(mem),
        "300..550 and 1,000..1,500 (Nanda et al. 2023's released runs: 480, and 1,179 with a float32 loss)",
        all(300 <= m[0] <= 550 and 1000 <= m[1] <= 1500 for m in mem)))
    peak = [[round(float(np.nanmax(a["log_test_loss"][s])), 1), float(np.nanargmax(a["log_test_loss"][s]))]
            for s in range(S)]
    checks.append(report.Check(
        "test loss peak: value, epoch", one(peak),
        "26..40 at epoch 1,300..1,600 (Nanda et al. 2023 §5.2: memorisation ends at 1.4k)",
        all(26 <= v <= 40 and 1300 <= e <= 1600 for v, e in peak)))
    grok = [[first_below(a["log_test_loss"][s], epochs, 1.0), first_below(a["log_test_loss"][s], epochs, 1e-3)]
            for s in range(S)]
    checks.append(report.Check(
        "grokking: first epoch test loss < 1, < 1e-3", one(grok),
        "7,500..14,000 and 8,500..15,000 (Nanda et al. 2023's released run at 30%: 7,583 and 8,505)",
        all(7500 <= g1 <= 14000 and 8500 <= g3 <= 15000 for g1, g3 in grok)))
    final = [[float(a["log_loss"][s, -1]), float(a["log_test_loss"][s][~np.isnan(a["log_test_loss"][s])][-1]),
              float(a["log_test_acc"][s][~np.isnan(a["log_test_acc"][s])][-1])] for s in range(S)]
    checks.append(report.Check(
        "final train loss, test loss, test accuracy", one(final),
        "losses 1e-8..1e-6 (paper 2.4e-7 on all pairs) and accuracy 1.0 (Nanda et al. 2023)",
        all(1e-8 <= tr <= 1e-6 and 1e-8 <= te <= 1e-6 and acc == 1.0 for tr, te, acc in final)))
    keys = [[int(k) for k in a[f"s{s}.key_freqs"]] for s in range(S)]
    share = [round(float(np.mean(a[f"s{s}.neuron_frac"] > 0.85)), 3) for s in range(S)]
    checks.append(report.Check(
        "key frequencies (W_L norm > max/4); share of neurons > 85% one frequency", one([[k, f] for k, f in zip(keys, share)]),
        "3..6 frequencies (paper: 14, 35, 41, 42, 52); neuron share reported (paper 0.846) (Nanda et al. 2023, Figs. 3 and 5)",
        all(3 <= len(k) <= 6 for k in keys)))
    prog = []
    for s in range(S):
        ck = a["epochs"]
        m_end, c_end, _ = phases(a, s)
        exc = a[f"s{s}.ckpt_excluded_loss"]
        at = lambda t: exc[np.argmin(np.abs(ck - t))]  # noqa: E731
        prog.append([first_below(a[f"s{s}.ckpt_restricted_test_loss"], ck, 1.0),
                     first_below(a[f"s{s}.ckpt_test_loss"], ck, 1.0), round(float(at(c_end) / at(m_end)), 1)])
    checks.append(report.Check(
        "progress measures: restricted (test) loss < 1 at, test loss < 1 at; excluded loss rise over circuit formation",
        one(prog), "restricted first, by >= 500 epochs; excluded loss x >= 10 from memorisation end to grokking (Nanda et al. 2023, Fig. 7)",
        all(r + 500 <= t and rise >= 10 for r, t, rise in prog)))
    abl = []
    for s in range(S):
        L = a[f"s{s}.ablation_losses"]
        abl.append([round(float(L[1] / L[0]), 3), round(float(np.min(L[2:]) / L[0]), 1)])
    checks.append(report.Check(
        "ablations: loss ratio keeping only key frequencies; smallest ratio removing one",
        one(abl), "< 1 (paper 0.23) and >= 100 (paper 830..1e5) (Nanda et al. 2023, Fig. 6)",
        all(keep < 1 and rm >= 100 for keep, rm in abl)))
    norms = []
    for s in range(S):
        w = a[f"s{s}.ckpt_sum_sq"]
        norms.append([round(float(w[0])), round(float(w.max())), float(a["epochs"][np.argmax(w)]), round(float(w[-1]))])
    checks.append(report.Check(
        "sum of squared weights: initial, peak, peak epoch, final", one(norms),
        "peak >= 1.3x initial, before epoch 3,000; final <= 0.5x peak (released runs ~1,800 -> 3,000..3,500 -> ~1,000) (Nanda et al. 2023, Fig. 7)",
        all(pk >= 1.3 * w0 and ep <= 3000 and fin <= 0.5 * pk for w0, pk, ep, fin in norms)))
    return checks + toolbox_checks(cfg, a)


# Sweeps: each point's outcome from its training logs, by rules fixed before any sweep ran (after
# Liu et al. 2022, "Towards understanding grokking", whose phases are read off at 90% accuracy).
FIT = 0.9  # a set counts as fitted (train) or generalised (test) from the first epoch its accuracy reaches 90%
GROK_DELAY = 2.0  # generalising this many times later than fitting, and at least GROK_MIN epochs later: grokking
GROK_MIN = 200  # epochs: a shorter delay is comprehension, whatever the ratio (early epochs are noisy)
PHASES = ("comprehension", "grokking", "memorisation", "confusion")


def first_at_least(x: np.ndarray, level: float) -> float:
    """First epoch at which ``x`` (NaNs skipped) reaches ``level``; NaN if never."""
    hit = np.flatnonzero(np.nan_to_num(x, nan=-np.inf) >= level)
    return float(hit[0]) if hit.size else float("nan")


def phase(t_fit: float, t_gen: float) -> str:
    """The phase of one model from the epochs it fitted and generalised (NaN: never, within the budget).

    confusion: never fits the training set; memorisation: fits it, never generalises;
    comprehension: generalises soon after fitting; grokking: generalises much later.
    """
    if np.isnan(t_fit):
        return "confusion"
    if np.isnan(t_gen):
        return "memorisation"
    return "grokking" if t_gen - t_fit >= GROK_MIN and t_gen >= GROK_DELAY * t_fit else "comprehension"


def summarize(cfg: Config, run: Run) -> dict[str, list]:
    """One sweep point's outcomes, a value per seed: epochs to fit and to generalise (90%), phase, final accuracies."""
    logs = run.logs()
    fit = [first_at_least(a, FIT) for a in logs["train_acc"]]
    gen = [first_at_least(a, FIT) for a in logs["test_acc"]]
    last = lambda x: float(x[~np.isnan(x)][-1])  # noqa: E731
    return {"epoch_fit": fit, "epoch_generalise": gen, "phase": [phase(f, g) for f, g in zip(fit, gen)],
            "train_acc": [round(last(a), 4) for a in logs["train_acc"]],
            "test_acc": [round(last(a), 4) for a in logs["test_acc"]]}


def _at(points: list, summaries: list, **fields) -> list[dict]:
    return [s for p, s in zip(points, summaries) if all(np.isclose(getattr(p, f), v) for f, v in fields.items())]


def sweep_check(cfg: Config, sw, points: list, summaries: list) -> list[report.Check]:
    """Checks of a weight decay x training fraction sweep against the papers' findings (skipped where the
    sweep lacks the points they need). Bands are qualitative: the papers' runs are at another scale."""
    checks = []
    wds = sorted({p.weight_decay for p in points})
    fracs = sorted({p.frac_train for p in points})
    no_wd = _at(points, summaries, weight_decay=0.0, frac_train=0.3)
    if no_wd:
        ph = no_wd[0]["phase"]
        checks.append(report.Check(
            "no weight decay, 30% of pairs: phase of each seed", ph,
            "memorisation: fits, never generalises within the budget (Nanda et al. 2023 App. D: no grokking at "
            "weight decay 0 in 40,000 epochs)", all(x == "memorisation" for x in ph)))
    wd1 = [(p.frac_train, s) for p, s in zip(points, summaries) if np.isclose(p.weight_decay, 1.0)]
    gen = [(f, float(np.mean(s["epoch_generalise"]))) for f, s in wd1 if not np.any(np.isnan(s["epoch_generalise"]))]
    if len(gen) >= 3:
        times = [t for _, t in gen]
        rho = _spearman([f for f, _ in gen], times)
        checks.append(report.Check(
            "weight decay 1: rank correlation of training fraction with epochs to generalise (points that "
            "generalise)", round(rho, 3),
            "<= -0.8: more data groks sooner (Power et al. 2022 Fig. 2; Nanda et al. 2023 App. D: 30% ~7.6k, "
            "40% ~2.6k, 50% ~0.7k epochs)", rho <= -0.8))
    if len(wds) >= 3 and wds[-1] >= 3:
        top = _at(points, summaries, weight_decay=wds[-1])
        conf = [x for s in top for x in s["phase"]]
        share = round(float(np.mean([x == "confusion" for x in conf])), 3)
        checks.append(report.Check(
            f"weight decay {sweep.config_value(wds[-1])} (the largest): share of models in confusion", share,
            ">= 0.5: too much weight decay fails to fit the training set (Liu et al. 2022 \"Omnigrok\" Fig. 1, "
            "the confusion phase at large weight decay)", share >= 0.5))
    if len(fracs) >= 3 and 1.0 in [round(w, 6) for w in wds]:
        low = _at(points, summaries, weight_decay=1.0, frac_train=fracs[0])[0]["phase"]
        high = _at(points, summaries, weight_decay=1.0, frac_train=fracs[-1])[0]["phase"]
        checks.append(report.Check(
            f"weight decay 1: phases at the smallest ({fracs[0]:g}) and largest ({fracs[-1]:g}) fraction", [low, high],
            "smallest: memorisation in every seed; largest: comprehension in every seed (Nanda et al. 2023 App. D: "
            "10-20% does not generalise, >= 60% generalises at once)",
            all(x == "memorisation" for x in low) and all(x == "comprehension" for x in high)))
    return checks


def _spearman(x: list, y: list) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def probe_key_r2(a: dict[str, np.ndarray], s: int) -> np.ndarray:
    """Probe R^2 averaged over the key frequencies: ``[snapshots, hook]``."""
    keys = a[f"s{s}.key_freqs"]
    return a[f"s{s}.probe_r2"][:, :, keys - 1].mean(-1)


def toolbox_checks(cfg: Config, a: dict[str, np.ndarray]) -> list[report.Check]:
    """Thirteen checks of the toolbox's readings of the circuit: exact identities to float tolerance,
    Nanda et al. 2023's numbers, and expectations derived from its algorithm; every seed must pass."""
    S = cfg.n_seeds
    one = lambda v: v[0] if S == 1 else v  # noqa: E731
    r = lambda x, n=3: float(f"{float(x):.{n}g}")  # noqa: E731
    g = lambda s, k: a[f"s{s}.{k}"]  # noqa: E731
    seeds = range(S)
    checks = []

    err = [r(g(s, "dla_identity_err")) for s in seeds]
    checks.append(report.Check(
        "DLA: components minus their sum's target, max |error| / max |logit[c] - mean logit|", one(err),
        "<= 1e-5: exact without LayerNorm (float32)", all(e <= 1e-5 for e in err)))
    mlp = []
    for s in seeds:
        full, only = g(s, "dla_losses")
        dm = g(s, "dla_mean")
        mlp.append([r(only), r(full), r(g(s, "dla_mlp_acc")), r(dm[-1] / dm.sum())])
    checks.append(report.Check(
        "DLA: loss from the MLP output alone, full loss, MLP-alone accuracy, MLP share of the mean margin", one(mlp),
        "MLP alone <= 1e-5 with accuracy 1.0, share >= 0.9 (Nanda et al. 2023 App. A.1: 9.12e-7 vs 2.41e-7)",
        all(o <= 1e-5 and acc == 1.0 and sh >= 0.9 for o, _, acc, sh in mlp)))
    fve = [[r(v) for v in g(s, "wave_fve")] for s in seeds]
    checks.append(report.Check(
        "neuron DLA per key-frequency cluster vs a cos(w_k(a+b-c)) wave: variance explained, per cluster", one(fve),
        ">= 0.8 each (Nanda et al. 2023 §4: the logits are a sum of such waves)", all(min(f) >= 0.8 for f in fve)))

    probe = []
    for s in seeds:
        keys = g(s, "key_freqs") - 1
        final = g(s, "probe_r2")[-1]  # [hook, K]
        other = np.setdiff1d(np.arange(final.shape[1]), keys)
        probe.append([r(final[0, keys].min()), r(final[1, keys].min()), r(final[:, other].mean(), 2)])
    checks.append(report.Check(
        "probe R^2 of cos/sin(w_k(a+b)), test pairs: key frequencies' min at hook_post, resid_post; others' mean",
        one(probe), "keys >= 0.9 (Nanda et al. 2023 §4.3: its readouts explain 93-98%); others <= 0.1",
        all(k1 >= 0.9 and k2 >= 0.9 and o <= 0.1 for k1, k2, o in probe)))
    ctrl = [[r(g(s, "probe_r2")[0].max(), 2), r(g(s, "probe_controls")[0].max(), 2),
             r(g(s, "probe_controls")[1].max(), 2)] for s in seeds]
    checks.append(report.Check(
        "probe controls, max R^2 over every k: untrained model, resid_pre at '=' (constant), shuffled labels",
        one(ctrl), "<= 0.1 each (Hewitt & Liang 2019: a probe means something only beside its controls)",
        all(max(c) <= 0.1 for c in ctrl)))
    prog = []
    for s in seeds:
        ep = g(s, "probe_epochs")
        prog.append([first_below(-probe_key_r2(a, s)[:, 0], ep, -0.5), phases(a, s)[1]])
    checks.append(report.Check(
        "probe as a progress measure: epoch key-frequency R^2 (hook_post) first >= 0.5; epoch test loss < 1",
        one(prog), "probe first (the circuit forms before test loss falls: Nanda et al. 2023 §5)",
        all(pr < t for pr, t in prog)))

    mean_diff = []
    for s in seeds:
        acc = g(s, "steer_acc")
        mean_diff.append([r(g(s, "steer_mean_diff_norm").max()), r(acc[1, 1:].max())])
    checks.append(report.Check(
        "steering by the mean difference for answer + delta: max |v| / mean |h|; best shifted accuracy, delta != 0",
        one(mean_diff), "|v| <= 1e-6 (exactly 0: a permutation of the same activations); accuracy <= 0.05",
        all(v <= 1e-6 and acc <= 0.05 for v, acc in mean_diff)))
    rot = [[r(g(s, "steer_acc")[2].mean()), r(g(s, "steer_acc")[2].min())] for s in seeds]
    checks.append(report.Check(
        "steering by a rotation of w_k delta in each key-frequency plane: accuracy on a+b+delta, mean and min",
        one(rot), "mean >= 0.9 (logits are waves cos(w_k(a+b-c)); Nanda et al. 2023 §4)",
        all(m >= 0.9 for m, _ in rot)))

    rel = lambda s, n: np.abs(g(s, f"atp.{n}") - g(s, f"ap.{n}")).max() / np.abs(g(s, f"ap.{n}")).max()  # noqa: E731
    post = [r(rel(s, "hook_post")) for s in seeds]
    checks.append(report.Check(
        "attribution vs activation patching, MLP neurons (hook_post): max |AtP - AP| / max |AP|", one(post),
        "<= 1e-4: exact, the path to the logits is linear (Nanda 2023)", all(e <= 1e-4 for e in post)))
    pre = [[r(patching.spearman(g(s, "atp.hook_pre"), g(s, "ap.hook_pre"))), r(rel(s, "hook_pre"))] for s in seeds]
    checks.append(report.Check(
        "attribution vs activation patching through the ReLU (hook_pre): rank correlation; max error / max |AP|",
        one(pre), "rank correlation >= 0.5 and error > 1e-3 (an approximation, not exact)",
        all(rho >= 0.5 and e > 1e-3 for rho, e in pre)))
    heads = [[r(patching.spearman(g(s, "atp.hook_z"), g(s, "ap.hook_z"))), r(rel(s, "hook_z"))] for s in seeds]
    checks.append(report.Check(
        "attribution vs activation patching, heads (hook_z): rank correlation; max error / max |AP|", one(heads),
        "rank correlation >= 0.8 (Nanda 2023: head outputs are approximated well)",
        all(rho >= 0.8 for rho, _ in heads)))

    sae = []
    for s in seeds:
        clean, spliced, zero, acc, l0, fvu, dead = g(s, "sae_scores")
        sae.append([r(acc), r(spliced), r(clean), r(fvu), r(l0)])
    checks.append(report.Check(
        "SAE on hook_post, spliced in: accuracy, loss (clean loss); FVU; L0", one(sae),
        "accuracy >= 0.95 and FVU <= 0.1 (no published number: set from the circuit's low rank)",
        all(acc >= 0.95 and fvu <= 0.1 for acc, _, _, fvu, _ in sae)))
    tiles = []
    for s in seeds:
        counts, gaps = sae_tiling(a, s)
        tiles.append([counts.tolist(), [round(float(np.degrees(x))) for x in gaps]])
    checks.append(report.Check(
        "SAE latents tiling each key frequency (alive, purity >= 0.8): count; largest gap between phases (deg)",
        one(tiles), ">= 3 latents and gap < 180 deg for every key frequency (a circle needs 3 ReLU latents)",
        all(min(c) >= 3 and max(gp) < 180 for c, gp in tiles)))
    return checks


def sae_tiling(a: dict[str, np.ndarray], s: int) -> tuple[np.ndarray, np.ndarray]:
    """Per key frequency: how many alive latents have purity >= 0.8 there, and the largest gap (radians)
    between their phases (2 pi when there are none)."""
    keys = a[f"s{s}.key_freqs"]
    ok = a[f"s{s}.sae_alive"] & (a[f"s{s}.sae_purity"] >= 0.8)
    counts, gaps = [], []
    for k in keys:
        ph = np.sort(a[f"s{s}.sae_phase"][ok & (a[f"s{s}.sae_freq"] == k)])
        counts.append(ph.size)
        gaps.append(np.max(np.diff(np.r_[ph, ph[:1] + 2 * np.pi])) if ph.size else 2 * np.pi)
    return np.array(counts), np.array(gaps)


# ---------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------

PHASE_NAMES = ("memorisation", "circuit formation", "cleanup")


def _mark_phases(ax, a: dict[str, np.ndarray], label: bool = True) -> None:
    """Shade the three phases of seed 0 (rules in ``phases``); epochs in thousands on the x axis."""
    import matplotlib.ticker as mticker

    ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0"))
    ends = phases(a, 0)
    starts = (0.0, *ends[:2])
    for (x0, x1), name, c in zip(zip(starts, ends), PHASE_NAMES, ("#f4d8c8", "#d8e4f0", "#d9ecd0")):
        if np.isfinite(x1) and x1 > x0:
            ax.axvspan(x0, x1, color=c, alpha=0.6, lw=0, label=name if label else None)


def fig_loss(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    epochs = np.arange(a["log_loss"].shape[1])
    for s in range(cfg.n_seeds):
        test = ~np.isnan(a["log_test_loss"][s])
        lab = "" if cfg.n_seeds == 1 else f" (seed {cfg.seed + s})"
        axes[0].plot(epochs, a["log_loss"][s], color="C0", lw=1, alpha=1 if s == 0 else 0.4, label="train" + lab)
        axes[0].plot(epochs[test], a["log_test_loss"][s][test], color="C3", lw=1, alpha=1 if s == 0 else 0.4,
                     label="test" + lab)
        axes[1].plot(epochs, a["log_train_acc"][s], color="C0", lw=1, alpha=1 if s == 0 else 0.4, label="train" + lab)
        axes[1].plot(epochs[test], a["log_test_acc"][s][test], color="C3", lw=1, alpha=1 if s == 0 else 0.4,
                     label="test" + lab)
    axes[0].axhline(np.log(cfg.p), color="grey", ls=":", lw=1, label=f"uniform (ln {cfg.p})")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("cross-entropy loss")
    axes[0].set_title("Loss")
    axes[1].set_ylabel("accuracy")
    axes[1].set_title("Accuracy")
    for k, ax in enumerate(axes):
        _mark_phases(ax, a, label=k == 0)
        ax.set_xlabel("epoch (full-batch step)")
        ax.legend(loc="center right", fontsize=8)
    fig.suptitle(f"Grokking (a + b) mod {cfg.p} from {cfg.frac_train:.0%} of pairs")
    return savefig(fig, path)


def _freq_bars(ax, norms: np.ndarray, keys: np.ndarray, title: str) -> None:
    x = np.arange(norms.size)
    key_idx = {i for k in keys for i in (2 * k - 1, 2 * k)}
    colors = ["C3" if i in key_idx else "C0" for i in x]
    ax.bar(x, norms, color=colors, width=1.0)
    ticks = [0] + [2 * k - 1 for k in keys]
    ax.set_xticks(ticks, ["const"] + [f"cos {k}" for k in keys], rotation=90, fontsize=7)
    ax.set_xlabel("Fourier component (red: key frequencies)")
    ax.set_ylabel("norm")
    ax.set_title(title)


def fig_fourier(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    keys = a["s0.key_freqs"]
    _freq_bars(axes[0], a["s0.W_E_norms"], keys, "Embedding W_E: norm of each Fourier component")
    _freq_bars(axes[1], a["s0.W_L_norms"], keys, "Neuron-logit map W_L = W_out W_U: norm per component")
    fig.suptitle(f"Fourier components of the final model's weights; key frequencies {', '.join(map(str, keys))}")
    return savefig(fig, path)


def fig_activations(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    att, neu = a["s0.attn_to_a"], a["s0.neurons"]
    n = max(len(att), len(neu))
    fig, axes = plt.subplots(2, n, figsize=(3.4 * n, 6.2), squeeze=False)
    fig.subplots_adjust(wspace=0.55, hspace=0.4)
    for h in range(n):
        for row, data, name, cmap in ((0, att, "head", "viridis"), (1, neu, "neuron", "magma")):
            ax = axes[row, h]
            if h >= len(data):
                ax.axis("off")
                continue
            im = ax.imshow(data[h], origin="lower", cmap=cmap)
            idx = h if row == 0 else int(a["s0.neuron_ids"][h])
            ax.set_title(f"{name} {idx}" + (": attention from = to a" if row == 0 and h == 0 else ""), fontsize=8)
            ax.set_xlabel("b")
            ax.set_ylabel("a")
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("Top: attention of each head from '=' to a, over all inputs (a, b); bottom: MLP neurons at '=' "
                 "(the first four that one frequency explains)")
    return savefig(fig, path)


def fig_logits(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    _, names = fourier.fourier_basis(cfg.p)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, data, title in ((axes[0], a["s0.neuron_fourier"], f"Neuron {int(a['s0.neuron_ids'][0])} in the 2-D Fourier basis"),
                            (axes[1], a["s0.logit_fourier_norms"], "Logits: norm over outputs c, 2-D Fourier basis")):
        lim = np.abs(data).max()
        im = ax.imshow(data, origin="lower", cmap="coolwarm" if data.min() < 0 else "viridis",
                       vmin=-lim if data.min() < 0 else 0, vmax=lim)
        ticks = [0] + [2 * k - 1 for k in a["s0.key_freqs"]]
        for setter in (ax.set_xticks, ax.set_yticks):
            setter(ticks, [names[t] for t in ticks], fontsize=7)
        ax.tick_params(axis="x", rotation=90)
        ax.set_xlabel("component over b")
        ax.set_ylabel("component over a")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.subplots_adjust(wspace=0.45)
    fig.suptitle(f"The final model in the 2-D Fourier basis; sum_k cos(w_k(a+b-c)) over the key frequencies "
                 f"explains {float(a['s0.logit_fve']):.1%} of the logits' variance")
    return savefig(fig, path)


def fig_neurons(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    freq, frac, keys = a["s0.neuron_freq"], a["s0.neuron_frac"], a["s0.key_freqs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    axes[0].scatter(freq, frac, s=8, alpha=0.6)
    axes[0].axhline(0.85, color="grey", ls=":", lw=1, label="0.85: cluster threshold")
    axes[0].set_xlabel("neuron's frequency k (largest share of its 2-D Fourier power)")
    axes[0].set_ylabel("share of variance explained by k")
    axes[0].set_title(f"Neurons by frequency: {np.mean(frac > 0.85):.1%} above 0.85 (paper: 84.6%)")
    axes[0].legend(loc="lower right")
    clusters = [int(np.sum((freq == k) & (frac > 0.85))) for k in keys]
    labels_ = [str(k) for k in keys] + ["none"]
    axes[1].bar(labels_, clusters + [int(np.sum(frac <= 0.85))], color=["C3"] * len(keys) + ["C7"])
    axes[1].set_xlabel("cluster (key frequency)")
    axes[1].set_ylabel("neurons")
    axes[1].set_title("Neuron clusters (paper: 44, 93, 145, 87, 64; 79 unexplained)")
    fig.suptitle("MLP neurons of the final model, grouped by frequency")
    return savefig(fig, path)


def fig_progress(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    ck = a["epochs"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.9))
    for key, lab, c in (("train_loss", "train", "C0"), ("test_loss", "test", "C3"),
                        ("restricted_test_loss", "restricted (test pairs)", "C2"),
                        ("excluded_loss", "excluded (train pairs)", "C1")):
        axes[0].plot(ck, a[f"s0.ckpt_{key}"], color=c, label=lab)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("loss")
    axes[0].set_title("Losses at each checkpoint")
    axes[1].plot(ck, a["s0.ckpt_gini_W_E"], label="Gini of W_E's frequency norms")
    axes[1].plot(ck, a["s0.ckpt_gini_W_L"], label="Gini of W_L's frequency norms")
    axes[1].set_ylabel("Gini coefficient")
    axes[1].set_title("Sparsity in the Fourier basis")
    axes[2].plot(ck, a["s0.ckpt_sum_sq"], color="k", label="sum of squared weights")
    axes[2].set_ylabel("sum of squared weights")
    axes[2].set_title("Weight norm")
    for k, ax in enumerate(axes):
        _mark_phases(ax, a, label=k == 2)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"Progress measures over training (key frequencies {', '.join(map(str, a['s0.key_freqs']))} "
                 "fixed from the final model)")
    return savefig(fig, path)


def fig_ablations(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    names, losses = a["s0.ablation_names"], a["s0.ablation_losses"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(range(len(losses)), losses, color=["C7", "C2"] + ["C3"] * (len(losses) - 2))
    ax.axhline(np.log(cfg.p), color="grey", ls=":", lw=1, label=f"uniform (ln {cfg.p})")
    ax.set_xticks(range(len(losses)), names, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("loss over all p^2 inputs")
    ax.set_title("Ablating the MLP neurons' Fourier components (final model)")
    ax.legend()
    return savefig(fig, path)


def fig_dla(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 2]})
    labels, dm = a["s0.dla_labels"], a["s0.dla_mean"]
    axes[0].bar(range(len(dm)), dm, color=["C7"] * (len(dm) - 1) + ["C3"])
    axes[0].set_xticks(range(len(dm)), labels, rotation=30, ha="right")
    axes[0].set_ylabel("mean DLA to logit[c*] - mean logit")
    axes[0].set_title("Which component writes the answer")
    p = cfg.p
    c = np.arange(p)
    x0, y0 = divmod(int(a["s0.wave_example"]), p)
    for i, (k, w, alpha, f) in enumerate(zip(a["s0.key_freqs"], a["s0.waves"], a["s0.wave_alpha"], a["s0.wave_fve"])):
        phase = np.mod(2 * np.pi * k * (x0 + y0 - c) / p + np.pi, 2 * np.pi) - np.pi  # w_k(a+b-c), in (-pi, pi]
        axes[1].scatter(phase, w, s=6, color=f"C{i}",
                        label=f"k = {k}: {a['s0.wave_sizes'][i]} neurons, fit explains {f:.0%} over all inputs")
        t = np.linspace(-np.pi, np.pi, 200)
        axes[1].plot(t, alpha * np.cos(t), color=f"C{i}", lw=0.8)
    axes[1].set_xlabel("w_k (a + b - c), wrapped to (-pi, pi]: 0 is the answer c = a + b")
    axes[1].set_ylabel("cluster's DLA to logit[c] - mean")
    axes[1].set_title(f"Each key-frequency cluster, input a = {x0}, b = {y0}, every c (line: a cos(w_k(a+b-c)))")
    axes[1].legend(fontsize=7, loc="lower center")
    fig.suptitle("Direct logit attribution of the final model at '='")
    return savefig(fig, path)


def fig_probes(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    r2, keys = a["s0.probe_r2"], a["s0.key_freqs"]
    k = np.arange(1, r2.shape[-1] + 1)
    axes[0].plot(k, r2[-1, 0], "o-", ms=3, lw=1, color="C3", label="final, mlp.hook_post")
    axes[0].plot(k, r2[-1, 1], "s-", ms=2, lw=1, color="C1", label="final, hook_resid_post")
    axes[0].plot(k, r2[0].max(0), lw=1, color="C7", label="untrained model (max of both hooks)")
    for name, row, st in zip(a["s0.probe_control_names"], a["s0.probe_controls"], (":", "--")):
        axes[0].plot(k, row, lw=1, color="k", ls=st, label=str(name))
    for kk in keys:
        axes[0].axvline(kk, color="C3", lw=0.5, alpha=0.4)
    axes[0].set_ylim(-0.3, 1.05)
    axes[0].set_xlabel("frequency k (thin red lines: key frequencies)")
    axes[0].set_ylabel("held-out R^2 (cos and sin averaged)")
    axes[0].set_title("Probing cos/sin(w_k(a+b)) at '='")
    axes[0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    ep = a["s0.probe_epochs"]
    kr = probe_key_r2(a, 0)
    axes[1].plot(ep, kr[:, 0], color="C3", lw=1.2, label="probe R^2, key frequencies (hook_post)")
    axes[1].plot(ep, kr[:, 1], color="C1", lw=1.2, label="probe R^2, key frequencies (resid_post)")
    axes[1].set_ylabel("held-out R^2 (clipped at -0.3)")
    axes[1].set_ylim(-0.3, 1.05)
    axes[1].set_xlabel("epoch")
    tw = axes[1].twinx()
    tw.plot(a["epochs"], a["s0.ckpt_test_loss"], color="k", lw=1, label="test loss (right)")
    tw.set_yscale("log")
    tw.set_ylabel("test loss")
    _mark_phases(axes[1], a)
    h1, l1 = axes[1].get_legend_handles_labels()
    h2, l2 = tw.get_legend_handles_labels()
    axes[1].legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    axes[1].set_title("A probe as a progress measure")
    return savefig(fig, path)


def fig_steering(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig, ax = plt.subplots(figsize=(7, 3.6))
    d = np.arange(cfg.p)
    for row, name, c, st in zip(a["s0.steer_acc"], ("no steering", "add the mean difference for +delta",
                                                    "rotate each key plane by w_k delta"), ("C7", "C0", "C3"),
                                ({"lw": 4, "alpha": 0.5}, {"lw": 1.2, "ls": "--"}, {"lw": 1.2})):
        ax.plot(d, row, color=c, label=name, **st)
    ax.set_xlabel("shift delta")
    ax.set_ylabel("accuracy on (a + b + delta) mod p")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("Steering the MLP output towards a + b + delta")
    ax.legend(fontsize=8, loc="center right")
    return savefig(fig, path)


def fig_attribution(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    flips = a["s0.atp_relu_flips"].astype(bool)
    for ax, site, title in zip(axes, ("hook_z", "hook_post", "hook_pre"),
                               ("heads (attn.hook_z)", "neurons (mlp.hook_post)", "neurons (mlp.hook_pre)")):
        x, y = a[f"s0.ap.{site}"], a[f"s0.atp.{site}"]
        if site == "hook_pre":
            ax.scatter(x[flips], y[flips], s=6, color="C3", label="ReLU changes state in some pair")
            ax.scatter(x[~flips], y[~flips], s=6, color="C0", label="ReLU keeps its state")
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.scatter(x, y, s=12 if site == "hook_z" else 6, color="C0")
        lim = [min(x.min(), y.min()), max(x.max(), y.max())]
        ax.plot(lim, lim, color="k", lw=0.8, ls=":")
        rho = patching.spearman(y, x)
        ax.set_title(f"{title}: rank corr. {rho:.2f}")
        ax.set_xlabel("activation patching (exact)")
        ax.set_ylabel("attribution patching (estimate)")
    fig.suptitle("Patching (a', b) -> (a, b): metric logit[a+b] - logit[a'+b]; dotted: y = x")
    return savefig(fig, path)


def fig_sae(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig = plt.figure(figsize=(11, 4))
    ax0 = fig.add_subplot(1, 2, 1)
    alive = a["s0.sae_alive"].astype(bool)
    ax0.hist(a["s0.sae_purity"][alive], bins=np.linspace(0, 1, 21), color="C0")
    ax0.axvline(0.8, color="k", ls=":", lw=1, label="purity 0.8")
    ax0.set_xlabel("purity: share of a latent's logit effect in one frequency")
    ax0.set_ylabel("alive latents")
    clean, spliced, zero, acc, l0, fvu, dead = a["s0.sae_scores"]
    ax0.set_title(f"TopK SAE on hook_post: {alive.sum()} of {alive.size} latents alive, L0 {l0:.0f}, "
                  f"FVU {fvu:.3f}, spliced acc. {acc:.3f}", fontsize=9)
    ax0.legend(fontsize=8)
    ax1 = fig.add_subplot(1, 2, 2, projection="polar")
    ok = alive & (a["s0.sae_purity"] >= 0.8)
    for i, k in enumerate(a["s0.key_freqs"]):
        ph = a["s0.sae_phase"][ok & (a["s0.sae_freq"] == k)]
        ax1.scatter(ph, np.full(ph.size, i + 1), s=14, color=f"C{i}", label=f"k = {k}: {ph.size} latents")
    ax1.set_rticks(range(1, len(a["s0.key_freqs"]) + 1), [])
    ax1.set_title("Phases of the pure latents, one ring per key frequency")
    ax1.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.1, 0.5))
    return savefig(fig, path)


ANIMATION_FRAMES = 60  # frames of the training animation, spread over the first ANIMATION_UNTIL of training
ANIMATION_UNTIL = 0.4  # share of training the animation covers (the paper preset's cleanup ends near 14k of 40k)


def anim_training(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    """GIF: W_E's and W_L's Fourier spectra sharpening onto the key frequencies, the loss with a cursor."""
    import matplotlib.pyplot as plt

    from toylab.plotting import save_animation

    epochs = a["epochs"]
    last = max(1, np.searchsorted(epochs, ANIMATION_UNTIL * epochs[-1], side="right"))
    frames = np.unique(np.linspace(0, last - 1, min(ANIMATION_FRAMES, last)).round().astype(int))
    keys = a["s0.key_freqs"]
    key_idx = {i for k in keys for i in (2 * k - 1, 2 * k)}
    colors = ["C3" if i in key_idx else "C0" for i in range(cfg.p)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    bars = []
    for ax, name, title in ((axes[0], "s0.ckpt_W_E_norms", "Embedding W_E"), (axes[1], "s0.ckpt_W_L_norms",
                                                                                 "Neuron-logit map W_L")):
        norms = a[name]
        bars.append(ax.bar(np.arange(cfg.p), norms[0], color=colors, width=1.0))
        ax.set_ylim(0, 1.05 * norms[frames].max())
        ax.set_xticks([0] + [2 * k - 1 for k in keys], ["const"] + [f"cos {k}" for k in keys], rotation=90,
                      fontsize=7)
        ax.set_xlabel("Fourier component (red: final key frequencies)")
        ax.set_ylabel("norm")
        ax.set_title(title)
    e = np.arange(a["log_loss"].shape[1])
    test = ~np.isnan(a["log_test_loss"][0])
    axes[2].plot(e, a["log_loss"][0], color="C0", lw=1, label="train")
    axes[2].plot(e[test], a["log_test_loss"][0][test], color="C3", lw=1, label="test")
    axes[2].set_yscale("log")
    axes[2].set_xlim(0, epochs[frames[-1]])
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("cross-entropy loss")
    axes[2].set_title("Loss")
    axes[2].legend(loc="lower left", fontsize=8)
    cursor = axes[2].axvline(0, color="k", lw=1)
    fig.suptitle("Grokking: the weights' Fourier spectra sharpen onto a few key frequencies")
    fig.tight_layout(rect=(0, 0, 1, 0.95))

    def update(i: int):
        t = frames[i]
        for bar, name in zip(bars, ("s0.ckpt_W_E_norms", "s0.ckpt_W_L_norms")):
            for rect, h in zip(bar, a[name][t]):
                rect.set_height(h)
        cursor.set_xdata([epochs[t], epochs[t]])
        axes[2].set_title(f"Loss (epoch {int(epochs[t]):,})")
        return [*(rect for bar in bars for rect in bar), cursor, axes[2].title]

    return save_animation(fig, update, len(frames), path)


FIGURES = [
    ("loss", fig_loss, "Train (blue) and test (red) loss and accuracy, log scale. The model memorises its 30% in "
     "a few hundred epochs while test loss rises far above chance; long after, test loss falls suddenly: "
     "grokking. Shading: memorisation (ends at the test-loss peak), circuit formation (until test loss < 1), "
     "cleanup (until the weight norm settles)."),
    ("fourier", fig_fourier, "Norms of the Fourier components of the embedding (left) and of the map from "
     "neurons to logits (right) in the final model. A handful of frequencies carry all the weight: the model "
     "represents numbers as waves cos(w_k a), sin(w_k a) at those key frequencies."),
    ("activations", fig_activations, "Attention from '=' to a for each head (top) and MLP neurons (bottom) over "
     "every input (a, b): periodic stripes and checkerboards, i.e. functions of a few frequencies."),
    ("logits", fig_logits, "Left: one neuron in the 2-D Fourier basis, nonzero only at one frequency's const, "
     "linear and product terms. Right: the logits in the same basis: only the key frequencies' product terms "
     "survive, as cos(w_k(a+b-c)) needs; the title gives the share of variance those terms explain (paper: 95%)."),
    ("neurons", fig_neurons, "Each neuron's frequency and the share of its variance that frequency explains "
     "(left); neurons above 0.85 cluster by key frequency (right)."),
    ("progress", fig_progress, "Progress measures over all checkpoints. Restricted loss (only the key-frequency "
     "terms kept) falls during circuit formation, well before test loss; excluded loss (those terms removed) "
     "rises as the model comes to rely on them. Gini jumps and the weight norm drops in cleanup."),
    ("ablations", fig_ablations, "Loss of the final model when the MLP neurons keep only their cos/sin(w_k(a+b)) "
     "components (green: lower than the original) or lose one key frequency (red: orders of magnitude worse)."),
    ("dla", fig_dla, "Direct logit attribution at '=' over every input. Left: the mean attribution of each "
     "component to the correct answer's logit (minus the mean logit); the MLP carries almost all of it, and the "
     "components add up to the logits exactly (no LayerNorm). Right: for one input, each key-frequency cluster "
     "of neurons' attribution to every candidate c: a wave peaking at the answer, as the algorithm predicts."),
    ("probes", fig_probes, "Left: ridge probes for cos and sin of w_k(a+b), fitted on the training pairs and "
     "scored on the test pairs: R^2 is high only at the key frequencies, and near zero (or below) on the "
     "untrained model, before the layer, and with shuffled labels. Right: the key-frequency R^2 over training "
     "rises during circuit formation, while test loss is still high: a probe-based progress measure."),
    ("steering", fig_steering, "Steering the MLP output so the model answers a + b + delta. The mean "
     "difference of the activations for 'answer + delta' over the full grid is exactly zero, so adding it "
     "leaves the answer where it was (blue: accurate only at delta = 0). Rotating each key-frequency plane by "
     "w_k delta moves the answer by delta (red)."),
    ("attribution", fig_attribution, "Attribution patching (two forward passes, one backward) against exact "
     "activation patching, per head and per neuron. The MLP neurons' outputs lie on y = x (a linear path to "
     "the logits); through the ReLU the estimate misses where a neuron switches on or off (red)."),
    ("sae", fig_sae, "A TopK SAE on the MLP neurons over all inputs. Left: most alive latents act on the logits "
     "within one frequency (purity near 1). Right: the pure latents' phases per key frequency: several latents "
     "tile each circle, a feature manifold rather than a list of discrete features."),
    ("training.gif", anim_training, "Animation over the first 40% of training: the Fourier spectra of W_E (left) "
     "and W_L (middle) start flat (random weights), sharpen onto the key frequencies (red) during circuit "
     "formation while test loss is still high, and the rest dies away in cleanup, as the test loss falls (right)."),
]


def fig_phases(cfg: Config, sw, points: list, summaries: list, path: Path) -> None:
    """The phase diagram: weight decay x training fraction, each cell's phase (a strip per seed), and the
    epochs to generalise."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap, LogNorm
    from matplotlib.patches import Patch

    if set(sw.fields[:2]) != {"weight_decay", "frac_train"}:
        return _empty(path, "the phase diagram needs a sweep over weight_decay and frac_train")
    wds, fracs = sorted({p.weight_decay for p in points}), sorted({p.frac_train for p in points})
    S = cfg.n_seeds
    code = np.full((len(wds), len(fracs) * S), np.nan)
    t_gen = np.full((len(wds), len(fracs)), np.nan)
    for p, s in zip(points, summaries):
        i, j = wds.index(p.weight_decay), fracs.index(p.frac_train)
        code[i, j * S:(j + 1) * S] = [PHASES.index(x) for x in s["phase"]]
        if not np.any(np.isnan(s["epoch_generalise"])):
            t_gen[i, j] = np.mean(s["epoch_generalise"])
    colors = ["#2ca02c", "#1f77b4", "#ff7f0e", "#d62728"]
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(12, 4.6))
    a0.imshow(code, cmap=ListedColormap(colors), vmin=-0.5, vmax=3.5, origin="lower", aspect="auto",
              extent=(-0.5, len(fracs) - 0.5, -0.5, len(wds) - 0.5), interpolation="nearest")
    for j in range(1, len(fracs)):
        a0.axvline(j - 0.5, color="white", lw=2)
    a0.set_title(f"Phase of each model ({S} seed{'s' * (S > 1)} side by side in a cell)")
    a0.legend(handles=[Patch(color=c, label=n) for c, n in zip(colors, PHASES)], loc="upper left",
              bbox_to_anchor=(1.0, 1.0), fontsize=8)
    im = a1.imshow(t_gen, origin="lower", aspect="auto", cmap="viridis_r",
                   norm=LogNorm(vmin=max(10, np.nanmin(t_gen)) if np.isfinite(t_gen).any() else 10,
                                vmax=cfg.n_steps))
    a1.set_title("Epochs until test accuracy reaches 90% (blank: never)")
    fig.colorbar(im, ax=a1, label="epochs (seed mean)")
    for ax in (a0, a1):
        ax.set_xticks(range(len(fracs)), [f"{f:g}" for f in fracs])
        ax.set_yticks(range(len(wds)), [f"{w:g}" for w in wds])
        ax.set_xlabel("training fraction")
        ax.set_ylabel("weight decay")
    fig.suptitle(f"Grokking phase diagram: (a + b) mod {cfg.p}, {cfg.n_steps:,} epochs, lr {cfg.lr:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _empty(path: Path, text: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_axis_off()
    ax.set_title("phase diagram")
    fig.savefig(path)
    plt.close(fig)


SWEEP_FIGURES = [
    ("phases", fig_phases,
     "Left: the phase of every model over weight decay (up) and training fraction (across), by the rules in "
     "the report's config (90% accuracy: fitted, generalised; grokking when generalising is at least twice as "
     "late as fitting). Look for the papers' picture: comprehension with much data, grokking along its edge, "
     "memorisation with little data or no weight decay, confusion at the largest weight decay. Right: how long "
     "generalising takes; it shortens as the fraction grows."),
]


def plot(cfg: Config, run: Run) -> list[report.Figure]:
    """Render every figure from ``analysis.npz``, without retraining."""
    return experiment.render(cfg, run, FIGURES)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

# The reading group's exercises (``make exercises``): shorter runs of the paper's model.


def _final_test(a: dict[str, np.ndarray]) -> tuple[float, float]:
    """Seed 0's last logged test accuracy and test loss."""
    acc, loss = a["log_test_acc"][0], a["log_test_loss"][0]
    return float(acc[~np.isnan(acc)][-1]), float(loss[~np.isnan(loss)][-1])


def _check_no_wd(rep: dict, a: dict[str, np.ndarray]) -> report.Check:
    acc, loss = _final_test(a)
    train_loss = float(a["log_loss"][0][-1])
    return report.Check("no weight decay, epoch 6,000: train loss; test accuracy; test loss",
                        [float(f"{train_loss:.3g}"), round(acc, 3), round(loss, 2)],
                        "memorised (train loss < 1e-3) but not generalised: test accuracy < 0.5 (with weight "
                        "decay 1: 0.85 at epoch 6,000)", bool(train_loss < 1e-3 and acc < 0.5))


def _check_more_data(rep: dict, a: dict[str, np.ndarray]) -> report.Check:
    epochs = np.arange(a["log_test_loss"].shape[1])
    grok = first_below(a["log_test_loss"][0], epochs, 1.0)
    acc, _ = _final_test(a)
    return report.Check("50% of pairs: first epoch test loss < 1; test accuracy at the end", [grok, round(acc, 3)],
                        "generalises within 2,000 epochs, test accuracy > 0.99 (with 30% of pairs: test loss < 1 "
                        "only after epoch 5,000)", bool(grok < 2000 and acc > 0.99))


EXERCISES = [
    Exercise(
        name="grokking-no-weight-decay", experiment="grokking", title="no weight decay",
        question="Train the same model on the same 30% of pairs, with weight decay 0 instead of 1, for 6,000 epochs "
                 "(with weight decay 1, the test accuracy is 0.85 by then, and 1.0 by 7,000). Will it memorise? Will it "
                 "generalise?",
        args=("--weight-decay", "0", "--n-steps", "6000"),
        smoke_args=("--weight-decay", "0"),
        check_text="the training set memorised, the test set not: test accuracy below 0.5 at epoch 6,000",
        check=_check_no_wd,
        answer="It memorises as fast as before, and the test accuracy stays where memorisation left it (when this "
               "exercise was written: 0.065 from epoch 3,000 on). Nothing pushes it off the "
               "memorising solution: both solutions fit the training set, and only weight decay prefers the "
               "general algorithm's smaller weight norm. Nanda et al. 2023 (appendix) report no grokking at "
               "weight decay 0 within their 40,000 epochs, and the excluded loss never rising. (Power et al. "
               "2022 did see grokking without weight decay, but after about a million steps.)",
        minutes=9),
    Exercise(
        name="grokking-more-data", experiment="grokking", title="more training data",
        question="Train on 50% of all pairs instead of 30%, for 2,000 epochs. With 30%, the test loss falls below 1 "
                 "only after epoch 5,000. Sooner, later, or never?",
        args=("--frac-train", "0.5", "--n-steps", "2000"),
        smoke_args=("--frac-train", "0.5"),
        check_text="test loss below 1 before epoch 2,000, and test accuracy above 0.99 at the end",
        check=_check_more_data,
        answer="Much sooner: when this exercise was written, the test loss fell below 1 at epoch 480 and the test "
               "accuracy reached 1.0 by epoch 1,500, hardly a delay after memorisation. Memorising half of all pairs costs far more weight norm than memorising 30%, while the "
               "general algorithm costs the same; weight decay tips the balance earlier. Nanda et al. 2023 "
               "(appendix) sweep the fraction: from 60% the model generalises almost at once, 30 to 50% groks, "
               "and 10 to 20% does not generalise within 40,000 epochs.",
        minutes=5),
]


main = experiment.main_for(name="grokking", doc=__doc__, Config=Config, presets=PRESETS, train=train,
                           analyze=analyze, check=check, plot=plot, figures=FIGURES,
                           guide_template=Path(__file__).parent / "guides" / "grokking.md", exercises=EXERCISES,
                           summarize=summarize, sweep_check=sweep_check, sweep_figures=SWEEP_FIGURES,
                           preset_sweeps=PRESET_SWEEPS)

if __name__ == "__main__":
    config.main_guard(main)
