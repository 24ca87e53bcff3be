"""Grokking modular addition (Nanda et al. 2023), with Fourier analysis and progress measures.

A one-layer transformer learns (a + b) mod 113 from 30% of all pairs. It memorises
first (train loss falls, test loss rises), then forms a Fourier-multiplication circuit
while test loss stays flat, then cleans the memorisation up and test loss falls
suddenly: grokking. The analysis reads the circuit out of the weights and measures
it over every checkpoint.

    python -m experiments.grokking all --preset paper --out runs/grokking

Recipe (the paper's, see ../shared/reference/grokking.md §1.1, §7): tokens [a, b, =]
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
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from toylab import checkpoint, config, experiment, report
from toylab import transformer as tf

from toylab.config import require
from toylab.train import train_models

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
    n_epochs: int = 40_000  # full-batch steps (paper: 40,000)
    checkpoint_every: int = 100  # epochs between checkpoints, the analysis's time resolution (paper: 100)
    eval_every: int = 10  # epochs between test-loss evaluations (paper: 1; see the module docstring)
    n_seeds: int = 1  # models trained side by side in one vmapped program (paper's figures: 1)
    seed: int = 0  # seed s trains split random.seed(seed + s) and initialisation key (seed + s)

    def __post_init__(self) -> None:
        require(self.p >= 3 and all(self.p % d for d in range(2, int(self.p**0.5) + 1)), "p", "a prime >= 3", self.p)
        require(0 < self.frac_train < 1, "frac_train", "in (0, 1)", self.frac_train)
        for f in ("d_model", "n_heads", "d_head", "d_mlp", "n_epochs", "checkpoint_every", "eval_every", "n_seeds"):
            require(getattr(self, f) > 0, f, "a positive integer", getattr(self, f))
        require(self.lr > 0, "lr", "positive", self.lr)
        require(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        require(0 <= self.beta2 < 1, "beta2", "in [0, 1)", self.beta2)
        require(self.warmup_steps >= 0, "warmup_steps", ">= 0", self.warmup_steps)
        require(self.n_epochs % self.checkpoint_every == 0, "n_epochs",
                f"a multiple of checkpoint_every={self.checkpoint_every}", self.n_epochs)
        require(self.checkpoint_every % self.eval_every == 0, "checkpoint_every",
                f"a multiple of eval_every={self.eval_every}", self.checkpoint_every)
        n_train = int(self.frac_train * self.p**2)
        require(0 < n_train < self.p**2, "frac_train", f"leaving train and test pairs non-empty at p={self.p}",
                self.frac_train)


PRESETS: dict[str, Config] = {
    "paper": Config(),
    # Seconds on a laptop: a small prime, a small model; every stage runs, nothing groks.
    "smoke": Config(p=23, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_epochs=200, checkpoint_every=50,
                    eval_every=10),
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


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy in float64: in float32, log-softmax can only return multiples of
    ~1.2e-7, so late losses of order 1e-7 are noise and the loss spikes (the paper's note)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float64), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def loss_and_accuracy(model: tf.Transformer, tokens: jax.Array, p: int) -> tuple[jax.Array, jax.Array]:
    logits = tf.forward(model, tokens, last_only=True)[:, -1]
    y = labels(tokens, p)
    return cross_entropy(logits, y), jnp.mean(jnp.argmax(logits, -1) == y)


# ---------------------------------------------------------------------------
# Train
# ---------------------------------------------------------------------------


def optimizer(cfg: Config) -> optax.GradientTransformation:
    """torch AdamW + LambdaLR(min(step/10, 1)): lr is 0 at the first step, decay scaled by lr."""
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
    return optax.adamw(warmup, b1=0.9, b2=cfg.beta2, eps=1e-8, weight_decay=cfg.weight_decay)


def make_train(cfg: Config):
    """Pure ``init(key, hp)`` and ``step(state, hp, t)`` of one model, for ``train_models``.

    ``hp`` holds the model's own data: its train and test tokens (full batch).
    """
    opt = optimizer(cfg)

    def init(key: jax.Array, hp: dict) -> dict:
        model = init_model(key, cfg)
        return {"params": model, "opt_state": opt.init(model)}

    def step(state: dict, hp: dict, t: jax.Array) -> tuple[dict, dict]:
        model = state["params"]
        (loss, acc), grads = jax.value_and_grad(loss_and_accuracy, has_aux=True)(model, hp["train"], cfg.p)
        test_loss, test_acc = jax.lax.cond(  # t is shared by all models, so this stays a real branch
            t % cfg.eval_every == 0, lambda: loss_and_accuracy(model, hp["test"], cfg.p),
            lambda: (jnp.float64(jnp.nan), jnp.float32(jnp.nan)))
        updates, opt_state = opt.update(grads, state["opt_state"], model)
        metrics = {"loss": loss, "train_acc": acc, "test_loss": test_loss, "test_acc": test_acc}
        return {"params": optax.apply_updates(model, updates), "opt_state": opt_state}, metrics

    return init, step


def seed_data(cfg: Config) -> dict[str, np.ndarray]:
    """Per-seed train and test tokens, stacked on a leading model axis."""
    pairs = all_pairs(cfg.p)
    splits = [split(cfg.p, cfg.frac_train, cfg.seed + s) for s in range(cfg.n_seeds)]
    return {"train": np.stack([pairs[tr] for tr, _ in splits]), "test": np.stack([pairs[te] for _, te in splits])}


def train(cfg: Config, run_dir: Path, *, devices=None, progress=True, stop_after_chunks: int | None = None
          ) -> dict[str, float]:
    """Train ``n_seeds`` models side by side; params every ``checkpoint_every`` epochs."""
    init, step = make_train(cfg)
    keys = jax.vmap(jax.random.key)(cfg.seed + jnp.arange(cfg.n_seeds))
    t = time.perf_counter()
    with jax.enable_x64(True):  # float64 exists only for the cross-entropy; every weight is float32
        train_models(
            directory=run_dir / "checkpoints", init=init, step=step, keys=keys,
            hparams=jax.tree.map(jnp.asarray, seed_data(cfg)), n_steps=cfg.n_epochs,
            chunk_steps=cfg.checkpoint_every, log_every=1, meta={"config_hash": config.config_hash(cfg)},
            devices=devices, progress=progress, desc=f"grokking ({cfg.n_seeds} seed{'s' * (cfg.n_seeds > 1)})",
            stop_after_chunks=stop_after_chunks, snapshot=lambda state: state["params"],
            snapshot_dir=run_dir / "params", keep_last=2,
        )
    return {"train": time.perf_counter() - t}


# ---------------------------------------------------------------------------
# Analyse
# ---------------------------------------------------------------------------


def analyze(cfg, run_dir):
    raise NotImplementedError


def check(cfg, a):
    raise NotImplementedError


FIGURES = []


def plot(cfg, run_dir):
    raise NotImplementedError


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

main = experiment.main_for(name="grokking", doc=__doc__, Config=Config, presets=PRESETS, train=train,
                           analyze=analyze, check=check, plot=plot, figures=FIGURES)

if __name__ == "__main__":
    config.main_guard(main)
