"""Induction heads form in a 2-layer attention-only transformer (Olsson et al. 2022; Elhage et al. 2021).

Sequences of random tokens, each holding one repeated span of varying length and
offset. A 2-layer attention-only model sits on a plateau, then its loss on the
repeated tokens drops abruptly: at that moment a previous-token head appears in
layer 0 and an induction head in layer 1, joined by K-composition. A 1-layer model
trained the same way never leaves the plateau. The analysis also reads the circuit
with the lab's interpretability verbs: DLA, the logit lens and a previous-token probe
over training, attribution patching (``toolbox``), steering and an SAE before layer 1
(``steer_and_sae``).

    python -m experiments.induction all --preset paper --out runs/induction

Recipe (a synthesis of the public CPU-scale reproductions of Olsson et al. 2022,
 since Olsson's models are 768 wide and trained on 10B tokens): tokens
1..64 uniform, BOS = 0 first; in every sequence a span of length L ~ U[8, 24] is
copied from a random start to a random later start; fresh data every step, made
inside the compiled step. 2 layers, attention only, d_model 64, 2 heads of 16 (the
public reproductions use 4: see "heads per layer" in the README), rotary positions (Su et
al. 2021; positions enter queries and keys only, as Olsson's Shortformer-like ones do),
no LayerNorm, no biases,
init N(0, (0.8 / sqrt(d_model))^2). AdamW lr 1e-3 after 100 warm-up steps, betas
(0.9, 0.98), weight decay 0.01, gradient clipping at 1.0. The ``markov`` preset fills
the non-repeated tokens from a random bigram table instead.

Why rotary, not learned Shortformer positions: a learned position is trained only where
the data uses it. First copies fall mostly in the first half of the context, so with
learned positions the previous-token head attended one back over the first half only
(0.8 there, 0.0 after) and, with both copies at the end, the repeated loss was at chance
in every seed. Rotary attention depends on the distance between positions alone, so the
same head attends one back everywhere (0.93 in both halves).
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

from toylab import config, experiment, lens, patching, probes, report, steering, sweep
from toylab import sae as saes
from toylab import transformer as tf
from toylab.analysis.attention import (composition_baseline, composition_scores, copying_scores, induction_score,
                                       prev_token_score)
from toylab.config import require
from toylab.exercise import Exercise
from toylab.runs import Run
from toylab.train import Schedule, model_keys, on_cpu, train_models

# ---------------------------------------------------------------------------
# Config, with presets
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    n_tokens: int = 64  # ordinary tokens 1..n_tokens (BOS is 0); chance loss is ln(n_tokens)
    seq_len: int = 64  # tokens per sequence, BOS included
    repeat_min: int = 8  # shortest repeated span (varied per sequence, so no fixed-offset shortcut)
    repeat_max: int = 24  # longest repeated span; longer ones are held out to test generalisation
    markov: bool = False  # non-repeated tokens from a random bigram table instead of uniform (spans stay uniform)
    markov_concentration: float = 0.3  # Dirichlet concentration of the bigram table's rows (small: peaked)
    d_model: int = 64  # residual stream width
    n_heads: int = 2  # heads per layer (public reproductions: 4; 2 halves the attention cost and the circuit's redundancy)
    d_head: int = 16  # width per head
    init_scale: float = 0.8  # weights ~ N(0, (init_scale / sqrt(d_model))^2) (TransformerLens's 0.8)
    lr: float = 1e-3  # AdamW peak learning rate (3e-3 gave positional shortcuts in public CPU-scale runs)
    warmup_steps: int = 100  # linear warm-up from 0
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # global gradient-norm clip
    batch_size: int = 32  # sequences per step
    n_steps: int = 8_000  # optimisation steps per model (the phase change falls at ~4.7k-6.5k steps)
    checkpoint_every: int = 100  # steps between snapshots: the time resolution of every metric
    resume_every: int = 10  # snapshots per full-state checkpoint (1: every one); a killed run repeats at most these
    log_every: int = 20  # training loss is averaged over this many steps and logged
    n_seeds: int = 4  # 2-layer models trained side by side
    n_control_seeds: int = 2  # 1-layer controls (they only have to stay on the plateau; 4 would add a minute)
    eval_batch: int = 64  # sequences in the fixed evaluation sets
    seed: int = 0  # root seed: model k's key is (seed, group, k); the evaluation sets use seed + 1000

    # Fields a sweep varies inside one compiled program (arrays with a model axis); others are structural.
    PER_MODEL: ClassVar[tuple[str, ...]] = ("lr", "weight_decay", "init_scale")

    def __post_init__(self) -> None:
        for f in ("n_tokens", "seq_len", "repeat_min", "d_model", "n_heads", "d_head", "batch_size", "n_steps",
                  "checkpoint_every", "resume_every", "log_every", "n_seeds", "n_control_seeds", "eval_batch"):
            require(getattr(self, f) > 0, f, "a positive integer", getattr(self, f))
        require(self.n_tokens >= 2, "n_tokens", ">= 2", self.n_tokens)
        require(self.repeat_min <= self.repeat_max, "repeat_max", f">= repeat_min={self.repeat_min}",
                self.repeat_max)
        require(1 + 2 * self.repeat_max <= self.seq_len, "repeat_max",
                f"at most (seq_len - 1) / 2 = {(self.seq_len - 1) // 2} so both copies fit", self.repeat_max)
        require(self.markov_concentration > 0, "markov_concentration", "positive", self.markov_concentration)
        for f in ("lr", "init_scale", "grad_clip"):
            require(getattr(self, f) > 0, f, "positive", getattr(self, f))
        require(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        require(self.warmup_steps >= 0, "warmup_steps", ">= 0", self.warmup_steps)
        require(self.n_steps % self.checkpoint_every == 0, "n_steps",
                f"a multiple of checkpoint_every={self.checkpoint_every}", self.n_steps)
        require(self.checkpoint_every % self.log_every == 0, "checkpoint_every",
                f"a multiple of log_every={self.log_every}", self.checkpoint_every)


PRESETS: dict[str, Config] = {
    "paper": Config(),
    # Non-repeated tokens follow a random bigram table: the 1-layer model has something to learn
    # (the bigrams) and the 2-layer loss curve leaves the 1-layer one later (t50 6.4k..6.8k, with a
    # tail to 10k in one seed), hence the longer run; 4 controls, as its committed figures.
    "markov": Config(markov=True, n_steps=15_000, n_control_seeds=4),
    # Seconds: every stage runs, nothing is expected to form.
    "smoke": Config(n_tokens=16, seq_len=24, repeat_min=3, repeat_max=8, d_model=16, n_heads=2, d_head=8,
                    batch_size=8, n_steps=200, checkpoint_every=50, log_every=10, n_seeds=2, n_control_seeds=1,
                    eval_batch=8),
}

GROUPS = {"2L": 2, "1L": 1}  # group name -> layers; the 1-layer group is the control


def n_models(cfg: Config, group: str) -> int:
    """Seeds of a group: ``n_seeds`` 2-layer models, ``n_control_seeds`` 1-layer controls."""
    return cfg.n_seeds if group == "2L" else cfg.n_control_seeds


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

BOS = 0


def bigram_table(cfg: Config) -> jax.Array:
    """Row-stochastic ``[n_tokens, n_tokens]`` next-token table (fixed by the seed), for the markov preset."""
    return jax.random.dirichlet(jax.random.key(cfg.seed + 2000), jnp.full(cfg.n_tokens, cfg.markov_concentration),
                                (cfg.n_tokens,))


def base_tokens(key: jax.Array, cfg: Config, batch: int) -> jax.Array:
    """``[batch, seq_len]`` tokens in 1..n_tokens before any span is copied."""
    if not cfg.markov:
        return jax.random.randint(key, (batch, cfg.seq_len), 1, cfg.n_tokens + 1)
    logits = jnp.log(bigram_table(cfg))
    k0, k1 = jax.random.split(key)
    first = jax.random.randint(k0, (batch,), 0, cfg.n_tokens)

    def step(prev, k):
        nxt = jax.random.categorical(k, logits[prev])
        return nxt, nxt

    _, rest = jax.lax.scan(step, first, jax.random.split(k1, cfg.seq_len - 1))
    return jnp.concatenate([first[:, None], rest.T], axis=1) + 1


def copy_span(base: jax.Array, length: jax.Array, src: jax.Array, dst: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Copy ``base[src:src+length]`` to ``dst`` in each row; BOS first.

    Returns tokens ``[batch, T]`` and ``repeated [batch, T-1]``: whether the target
    at t+1 is predictable by induction (inside the second copy, after its first token).
    """
    pos = jnp.arange(base.shape[1])
    in_copy = (pos >= dst[:, None]) & (pos < (dst + length)[:, None])
    idx = jnp.where(in_copy, pos - dst[:, None] + src[:, None], pos)
    toks = jnp.take_along_axis(base, idx, axis=1).at[:, 0].set(BOS)
    target = pos[1:]
    repeated = (target > dst[:, None]) & (target < (dst + length)[:, None])
    return toks, repeated


def make_batch(key: jax.Array, cfg: Config, batch: int, lengths: tuple[int, int] | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """A batch of the training distribution: one span of length L ~ U[repeat_min, repeat_max]
    (or ``lengths``) copied to ``dst`` ~ U[L + 1, T - L] from ``src`` ~ U[1, dst - L].

    Why the copy's position is drawn first: drawing ``src`` first and then a later ``dst``
    puts most second copies late in the sequence, and the model then learned an
    induction head that only switches on late (measured: chance-level loss on repeats
    ending before position ~20).
    """
    lo, hi = lengths or (cfg.repeat_min, cfg.repeat_max)
    kb, kl, ks, kd = jax.random.split(key, 4)
    T = cfg.seq_len
    length = jax.random.randint(kl, (batch,), lo, hi + 1)
    dst = length + 1 + jnp.floor(jax.random.uniform(kd, (batch,)) * (T - 2 * length)).astype(jnp.int32)
    src = 1 + jnp.floor(jax.random.uniform(ks, (batch,)) * (dst - length)).astype(jnp.int32)
    base = base_tokens(kb, cfg, batch)
    if cfg.markov:
        # Only the non-repeated tokens follow the bigram table: the span (both copies) is
        # uniform, so predicting its second copy needs induction, not bigram statistics.
        pos = jnp.arange(T)
        in_src = (pos >= src[:, None]) & (pos < (src + length)[:, None])
        uniform = jax.random.randint(jax.random.fold_in(kb, 1), (batch, T), 1, cfg.n_tokens + 1)
        base = jnp.where(in_src, uniform, base)
    return copy_span(base, length, src, dst)


def repeated_random(key: jax.Array, cfg: Config, batch: int, length: int, start: int = 1
                    ) -> tuple[jax.Array, jax.Array]:
    """Random tokens with R copied right after itself from ``start``: with ``start=1``, ``[BOS] + R + R``
    (+ random filler to seq_len), the standard sequence for induction scores."""
    base = jax.random.randint(key, (batch, cfg.seq_len), 1, cfg.n_tokens + 1)
    ones = jnp.ones(batch, jnp.int32)
    return copy_span(base, length * ones, start * ones, (start + length) * ones)


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def model_config(cfg: Config, n_layers: int) -> tf.TransformerConfig:
    return tf.TransformerConfig(d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head, d_mlp=0,
                                d_vocab=cfg.n_tokens + 1, d_vocab_out=cfg.n_tokens + 1, n_ctx=cfg.seq_len,
                                n_layers=n_layers, attn_only=True, positional_embedding="rotary",
                                use_attn_bias=False, use_unembed_bias=False)


def token_losses(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Next-token cross-entropy at every position: ``[batch, T-1]``."""
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def repeated_loss(logits: jax.Array, tokens: jax.Array, rep: jax.Array) -> jax.Array:
    """Mean next-token loss over the positions ``rep [batch, T-1]`` marks (the repeated tokens)."""
    return jnp.sum(token_losses(logits, tokens) * rep) / rep.sum()


# ---------------------------------------------------------------------------
# Train
# ---------------------------------------------------------------------------


def make_train(cfg: Config, n_layers: int):
    """Pure ``init(key, hp)`` and ``step(state, hp, t)`` of one model; data for step t from (key, t)."""
    mc = model_config(cfg, n_layers)

    def optimizer(hp: dict) -> optax.GradientTransformation:
        # A swept per-model field (Config.PER_MODEL) comes from the model's hp row as an array; others are constants.
        lr, wd = hp.get("lr", cfg.lr), hp.get("weight_decay", cfg.weight_decay)
        schedule = optax.linear_schedule(0.0, lr, cfg.warmup_steps) if cfg.warmup_steps else lr
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                           optax.adamw(schedule, b1=0.9, b2=0.98, eps=1e-8, weight_decay=wd))

    def init(key: jax.Array, hp) -> dict:
        scale = hp.get("init_scale", cfg.init_scale)
        model = tf.init(jax.random.fold_in(key, 0), mc, std=lambda name: scale / cfg.d_model**0.5)
        return {"params": model, "opt_state": optimizer(hp).init(model),
                "key": jax.random.key_data(jax.random.fold_in(key, 1))}

    def loss_fn(model, tokens, repeated):
        losses = token_losses(tf.forward(model, tokens), tokens)
        return losses.mean(), jnp.sum(losses * repeated) / jnp.maximum(repeated.sum(), 1)

    def step(state: dict, hp, t: jax.Array) -> tuple[dict, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), t)  # depends on t alone
        tokens, repeated = make_batch(key, cfg, cfg.batch_size)
        (loss, rep), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], tokens, repeated)
        updates, opt_state = optimizer(hp).update(grads, state["opt_state"], state["params"])
        new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state, "key": state["key"]}
        return new, {"loss": loss, "repeated_loss": rep}

    return init, step


def group_keys(cfg: Config, group: str) -> jax.Array:
    """Key of model k of a group: a pure function of (seed, group, k)."""
    return model_keys(cfg.seed, list(GROUPS).index(group), n_models(cfg, group))


def train(cfg: Config, run: Run, points: Sequence[Config] = (), *, devices=None, progress=True) -> dict[str, float]:
    """Train the 2-layer models and the 1-layer controls of each point (``cfg`` alone by default) side by
    side; params snapshot every ``checkpoint_every``. Points differ from ``cfg`` in ``PER_MODEL`` fields only."""
    points = list(points) or [cfg]
    times = {}
    for group, n_layers in GROUPS.items():
        init, step = make_train(cfg, n_layers)
        n = n_models(cfg, group)
        hp = sweep.per_model(points, Config.PER_MODEL, n)
        t = time.perf_counter()
        train_models(
            directory=run.checkpoints(group), init=init, step=step,
            keys=jnp.concatenate([group_keys(pt, group) for pt in points]),
            per_model={"model": jnp.arange(n * len(points))} | jax.tree.map(jnp.asarray, hp),
            schedule=Schedule(cfg.n_steps, cfg.checkpoint_every, cfg.log_every, resume_every=cfg.resume_every,
                              keep_last=2),
            meta={"config_hash": sweep.points_hash(points), "group": group},
            devices=devices, progress=progress, desc=f"induction/{group} ({n * len(points)} models)",
            snapshot=lambda state: state["params"], snapshot_dir=run.params(group), models_per_call=on_cpu(1),
        )
        times[f"train.{group}"] = time.perf_counter() - t
    return times


# ---------------------------------------------------------------------------
# Analyse
# ---------------------------------------------------------------------------

# Repeat lengths of the generalisation test: those outside the training range (8..24 by
# default) are held out, the others give the in-distribution curve to compare with.
EVAL_LENGTHS = (4, 6, 8, 12, 16, 20, 24, 28, 31)


def eval_sets(cfg: Config) -> dict[str, jax.Array]:
    """Fixed evaluation data: the training distribution, and [BOS] + R + R at a mid-range length."""
    k_train, k_rrt = jax.random.split(jax.random.key(cfg.seed + 1000))
    train_toks, train_rep = make_batch(k_train, cfg, cfg.eval_batch)
    rrt_len = (cfg.repeat_min + cfg.repeat_max) // 2
    rrt_toks, rrt_rep = repeated_random(k_rrt, cfg, cfg.eval_batch, rrt_len)
    return {"train": train_toks, "train_rep": train_rep, "rrt": rrt_toks, "rrt_rep": rrt_rep,
            "rrt_len": jnp.int32(rrt_len)}


def head_scores(model: tf.Transformer, ev: dict[str, jax.Array], cfg: Config) -> dict[str, jax.Array]:
    """Losses and every head's scores for one model on the evaluation sets (Olsson et al. 2022; Elhage et al. 2021)."""
    T = cfg.seq_len
    logits, cache = tf.run_with_cache(model, ev["train"], lambda n: n.endswith("hook_pattern"))
    losses = token_losses(logits, ev["train"])
    rep = ev["train_rep"]
    early, late = slice(0, T // 5), slice(T - 1 - T // 5, T - 1)
    patterns = jnp.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(model.cfg.n_layers)], 1)
    boundaries = lens.lens_boundaries(model.cfg)
    rrt_logits, rrt_cache = tf.run_with_cache(model, ev["rrt"], lambda n: n.endswith("hook_pattern") or n in boundaries)
    lensed = lens.logit_lens(model, lens.accumulated_resid(rrt_cache, model.cfg))  # [boundaries, batch, T, vocab]
    rp = jnp.stack([rrt_cache[f"blocks.{l}.attn.hook_pattern"] for l in range(model.cfg.n_layers)], 1)
    prev, induction = prev_token_score(patterns), induction_score(rp, int(ev["rrt_len"]))
    rrt_losses = token_losses(rrt_logits, ev["rrt"])
    return {
        "loss": losses.mean(),
        "repeated_loss": jnp.sum(losses * rep) / rep.sum(),
        "other_loss": jnp.sum(losses * ~rep) / (~rep).sum(),
        "icl_score": losses[:, late].mean() - losses[:, early].mean(),
        "rrt_repeated_loss": jnp.sum(rrt_losses * ev["rrt_rep"]) / ev["rrt_rep"].sum(),
        "rrt_loss_by_position": rrt_losses.mean(0),
        # logit lens: repeated-token loss read at each residual boundary
        "lens_loss": jax.vmap(lambda lg: repeated_loss(lg, ev["rrt"], ev["rrt_rep"]))(lensed),
        "prev_token_score": prev,
        "induction_score": induction,
        "copying_score": copying_scores(model),
    }


def load_snapshots(cfg: Config, run: Run, group: str) -> tuple[np.ndarray, tf.Transformer]:
    """Steps ``[T]`` of every snapshot of a group and its models, stacked ``[T, seeds, ...]``."""
    like = jax.eval_shape(lambda: tf.init(jax.random.key(0), model_config(cfg, GROUPS[group])))  # shapes only
    return run.snapshots(like, group)


def _final(x: np.ndarray) -> float:
    """Mean of the last 5% of a logged curve."""
    return float(np.mean(x[-max(len(x) // 20, 1):]))


def plateau(a: dict[str, np.ndarray]) -> float:
    """The repeated-token loss one layer reaches: the 1-layer controls' final value, mean over seeds.

    Both models first learn to bet on tokens already seen (an in-context unigram, from
    ln V to ~3.7 nats here); the phase change is the drop below what one layer can do.
    """
    return float(np.mean([_final(x) for x in a["1L.log_repeated_loss"]]))


def transition(steps: np.ndarray, rep_loss: np.ndarray, start: float, chance: float) -> dict[str, float]:
    """When the repeated-token loss fell 10%, 50% and 90% of the way from ``start`` (the plateau)
    to its final value; ``drop`` is measured from chance."""
    final = _final(rep_loss)
    out = {"final": final, "drop": chance - final}
    for f in (0.1, 0.5, 0.9):
        hit = np.flatnonzero(rep_loss < start - f * (start - final))
        out[f"t{int(f * 100)}"] = float(steps[hit[0]]) if hit.size and final < start else float("inf")
    return out


PLACEMENTS = ("start", "middle", "end")  # where both copies of [R][R] sit in the context


def placed(key: jax.Array, cfg: Config, batch: int, length: int, where: str) -> tuple[jax.Array, jax.Array]:
    """Random tokens with R copied right after itself, both copies at the start, middle or end of the context."""
    frac = PLACEMENTS.index(where) / (len(PLACEMENTS) - 1)
    return repeated_random(key, cfg, batch, length, start=1 + int(round(frac * (cfg.seq_len - 1 - 2 * length))))


def resampled_first_copy(key: jax.Array, cfg: Config, tokens: jax.Array, length: int) -> jax.Array:
    """[BOS] + R + R with the first R replaced by fresh tokens: the corrupted run of attribution patching."""
    fresh = jax.random.randint(key, tokens.shape, 1, cfg.n_tokens + 1)
    pos = jnp.arange(tokens.shape[1])
    return jnp.where((pos >= 1) & (pos <= length), fresh, tokens)


def toolbox(cfg: Config, model: tf.Transformer, ev: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Direct logit attribution and attribution patching of one final model on [BOS] + R + R
    (the logit lens runs on every snapshot, in ``head_scores``)."""
    rrt, rep, L = ev["rrt"], ev["rrt_rep"], int(ev["rrt_len"])
    mc = model.cfg
    out = {}
    # DLA of each component to the correct next token (minus the mean logit), per position: [components, T-1]
    _, cache = tf.run_with_cache(model, rrt, lens.resid_hooks(mc))
    stack = lens.resid_stack(model, cache)[:, :, :-1]
    out["dla"] = lens.logit_attrs(model, stack, rrt[:, 1:]).mean(1)
    # Attribution patching against activation patching, per (position, head) of each site. Clean: [BOS] + R + R;
    # corrupted: its first R resampled; metric: the correct token's logit minus the mean logit on the second copy.
    corrupt = resampled_first_copy(jax.random.key(cfg.seed + 4000), cfg, rrt, L)

    def metric(lg):
        d = jnp.take_along_axis(lg[:, :-1], rrt[:, 1:, None], -1)[..., 0] - lg[:, :-1].mean(-1)
        return jnp.sum(d * rep) / rep.sum()

    sites = [f"blocks.{l}.attn.hook_{n}" for l in range(mc.n_layers) for n in ("z", "q", "k", "v", "pattern")]
    rot = [f"blocks.{l}.attn.hook_rot_{n}" for l in range(mc.n_layers) for n in "qk"]
    attr, clean, corr, grads = patching.attribution_patch(model, rrt, corrupt, metric, sites + rot)
    for site in sites:
        axes = (2, 1) if site.endswith("pattern") else (1, 2)  # (query position, head) for every site
        est = patching.sum_units(attr[site], axes)
        out[f"atp.{site}"] = est.T if site.endswith("pattern") else est
        out[f"ap.{site}"] = patching.patch_units(model, corrupt, clean, metric, site, axes)
    # AtP*: queries and keys with the softmax recomputed (Kramar et al. 2024); rotary is linear per
    # position, so patching hook_q equals patching hook_rot_q
    for l in range(mc.n_layers):
        b = f"blocks.{l}.attn"
        out[f"atp_star.{b}.hook_q"], out[f"atp_star.{b}.hook_k"] = patching.atp_star_qk(
            clean[f"{b}.hook_rot_q"], clean[f"{b}.hook_rot_k"], corr[f"{b}.hook_rot_q"], corr[f"{b}.hook_rot_k"],
            corr[f"{b}.hook_pattern"], grads[f"{b}.hook_pattern"])
    return out


PROBE_EVERY = 8  # the previous-token probe on every 8th snapshot (and the last); its controls on the last only


def probe_set(cfg: Config) -> dict[str, jax.Array]:
    """Random sequences for the previous-token probe, and one fixed train/held-out split of their positions."""
    toks = jax.random.randint(jax.random.key(cfg.seed + 6000), (cfg.eval_batch, cfg.seq_len), 1, cfg.n_tokens + 1)
    toks = toks.at[:, 0].set(BOS)
    n = cfg.eval_batch * (cfg.seq_len - 2)  # positions 2.. (position 1's previous token is BOS)
    train, test = probes.split(jax.random.key(cfg.seed + 6001), n)
    return {"tokens": toks, "train": train, "test": test}


def prev_token_probe(cfg: Config, model: tf.Transformer, ps: dict[str, jax.Array], controls: bool = True
                     ) -> jax.Array:
    """Held-out accuracy of a logistic probe for the previous token x_{t-1} at position t, in a 2-layer model:
    ``[before layer 0, before layer 1, before layer 1 on shuffled labels]`` (chance 1/n_tokens), or only
    ``[before layer 1]`` without the controls (each fit is 100 L-BFGS steps: the analysis's largest cost)."""
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    _, cache = tf.run_with_cache(model, ps["tokens"], hooks)
    labels = (ps["tokens"][:, 1:-1] - 1).reshape(-1)
    tr, te = ps["train"], ps["test"]

    def acc(x, y):
        x = x[:, 2:].reshape(-1, x.shape[-1])
        return probes.accuracy(probes.fit_logistic(x[tr], y[tr], cfg.n_tokens), x[te], y[te])

    if not controls:
        return acc(cache[hooks[1]], labels)[None]
    shuffled = probes.shuffled(jax.random.key(cfg.seed + 6002), labels)
    return jnp.stack([acc(cache[hooks[0]], labels), acc(cache[hooks[1]], labels), acc(cache[hooks[1]], shuffled)])


STEER_PAIRS = 8  # token pairs (A, B) the "previous token = A" vector is built and tested for
STEER_SCALES = (0.0, 0.5, 1.0, 1.5, 2.0)  # doses of the vector (1: the mean difference itself)
SAE_HOOK = "blocks.1.hook_resid_pre"  # the residual stream the layer-1 heads read
SAE_WIDTH = 4  # SAE latents per residual dimension (the circuit predicts 2 x n_tokens directions)
SAE_K = 4  # TopK SAE's active latents per position (the circuit predicts about 2: token and previous token)
SAE_EPOCHS = 32  # SAE training passes over its positions (batches of 256, lr 1e-3; 2,000 steps in the paper preset)


def steer_set(cfg: Config) -> dict[str, jax.Array]:
    """Sequences for steering: per pair (A, B), random tokens with x_{J-1} = B and x_Q = A (``base``), the real
    edit x_{J-1} = A (``real``: the induction head should then predict x_J at Q), and an off-target query
    x_Q = C (``off``). A, B and C appear nowhere else. Shapes ``[pairs, eval_batch, seq_len]``."""
    T, N = cfg.seq_len, cfg.eval_batch
    J, Q = T // 4, (3 * T) // 4
    k_perm, k_tok = jax.random.split(jax.random.key(cfg.seed + 7000))
    perm = jax.vmap(lambda k: jax.random.permutation(k, cfg.n_tokens))(jax.random.split(k_perm, STEER_PAIRS)) + 1
    A, B, C = perm[:, 0, None], perm[:, 1, None], perm[:, 2, None]
    idx = jax.random.randint(k_tok, (STEER_PAIRS, N, T), 0, cfg.n_tokens - 3)
    base = jax.vmap(lambda rest, i: rest[i])(perm[:, 3:], idx).at[:, :, 0].set(BOS)
    base = base.at[:, :, J - 1].set(B).at[:, :, Q].set(A)
    return {"base": base, "real": base.at[:, :, J - 1].set(A), "off": base.at[:, :, Q].set(C), "A": perm[:, 0],
            "J": J, "Q": Q}


def sae_set(cfg: Config) -> jax.Array:
    """Random sequences whose positions 1.. train the SAE on ``SAE_HOOK``."""
    toks = jax.random.randint(jax.random.key(cfg.seed + 8000), (4 * cfg.eval_batch, cfg.seq_len), 1, cfg.n_tokens + 1)
    return toks.at[:, 0].set(BOS)


def steer_and_sae(cfg: Config, model: tf.Transformer, ev: dict[str, jax.Array], st: dict[str, jax.Array],
                  sae_tokens: jax.Array, prev_head: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
    """On one 2-layer model: steer with a "previous token = A" vector, and an SAE on the residual before layer 1
    (its dictionary against the circuit's directions, its spliced loss, and ablating its "previous token = A"
    latent). Attention and log-probabilities are read at query Q about key / answer position J."""
    J, Q = st["J"], st["Q"]
    N = cfg.eval_batch

    def reads(tokens, hooks):
        logits, cache = tf.run_with_cache(model, tokens, ["blocks.1.attn.hook_pattern"], fwd_hooks=hooks)
        att = cache["blocks.1.attn.hook_pattern"][:, :, Q, J].mean(0)  # [heads]
        lp = jax.nn.log_softmax(logits[:, Q])[jnp.arange(N), tokens[:, J]].mean()
        return att, lp

    def steer_pair(base, real, off):
        _, cb = tf.run_with_cache(model, base, [SAE_HOOK])
        _, cr = tf.run_with_cache(model, real, [SAE_HOOK])
        v = steering.mean_difference(cr[SAE_HOOK][:, J], cb[SAE_HOOK][:, J])
        dose = jax.vmap(lambda c: reads(base, [steering.add_hook(SAE_HOOK, v, c, position=J)]))(
            jnp.array(STEER_SCALES))
        return dose, reads(real, []), reads(off, []), reads(off, [steering.add_hook(SAE_HOOK, v, 1.0, position=J)])

    (d_att, d_lp), (r_att, r_lp), (o_att, o_lp), (o1_att, o1_lp) = jax.vmap(steer_pair)(
        st["base"], st["real"], st["off"])
    out = {"steer_att": d_att, "steer_lp": d_lp,  # [pairs, scales, heads], [pairs, scales]
           "steer_real_att": r_att, "steer_real_lp": r_lp,  # [pairs, heads], [pairs]
           "steer_off_att": jnp.stack([o_att, o1_att], 1), "steer_off_lp": jnp.stack([o_lp, o1_lp], 1)}  # [pairs, 2, ...]

    # The SAE, and the circuit's directions: token embeddings and the previous-token head's writes of them.
    x = saes.collect(model, sae_tokens, SAE_HOOK, slice(1, None))
    scfg = saes.SAEConfig(d_in=cfg.d_model, d_sae=SAE_WIDTH * cfg.d_model, architecture="topk", k=SAE_K)
    sae, _ = saes.fit(key, scfg, x, SAE_K, n_steps=int(max(200, round(SAE_EPOCHS * x.shape[0] / 256, -2))), batch_size=256)
    W_E = model.embed.W_E[1:]
    attn0 = model.blocks[0].attn
    prev_writes = jnp.einsum("vd,de,em->vm", W_E, attn0.W_V[prev_head], attn0.W_O[prev_head])
    ev_ = saes.evaluate(sae, x)
    rrt, rep = ev["rrt"], ev["rrt_rep"]

    sc = saes.splice_scores(model, rrt, SAE_HOOK, sae, lambda lg: repeated_loss(lg, rrt, rep))
    out |= {"sae_scores": jnp.stack([sc["clean"], sc["spliced"], sc["zero_ablated"], ev_["l0"], ev_["fvu"],
                                     ev_["dead"].astype(jnp.float32), saes.mmcs(sae.W_dec, W_E),
                                     saes.mmcs(sae.W_dec, prev_writes)])}
    # Ablate, at J, the latent closest to "previous token = A" (the SAE's error term kept) in the real-edit
    # sequences, where the induction head predicts x_J at Q; control: the latent for another token's write.
    cos = saes.cosines(sae.W_dec, prev_writes)  # [n_tokens, d_sae]
    matched = cos[st["A"] - 1].argmax(-1)  # [pairs]
    other = cos[(st["A"] % cfg.n_tokens)].argmax(-1)  # the next token id's latent: a latent for a different write

    def ablate(real, latent):
        return reads(real, [saes.ablate_latent_hook(SAE_HOOK, sae, latent, position=J)])[1]

    out["sae_ablation_lp"] = jnp.stack([jax.vmap(ablate)(st["real"], matched), jax.vmap(ablate)(st["real"], other)], 1)
    out["sae_matched_cos"] = cos[st["A"] - 1].max(-1)  # [pairs]
    return out


def analyze(cfg: Config, run: Run) -> dict[str, np.ndarray]:
    """Scores over every snapshot of every model, and the final models' circuits; saved to ``analysis.npz``."""
    ev = eval_sets(cfg)
    out: dict[str, np.ndarray] = {"chance": np.array(np.log(cfg.n_tokens)),
                                  "composition_baseline": np.array(composition_baseline(cfg.d_model, cfg.d_head, seed=cfg.seed))}
    for group in GROUPS:
        lap = experiment.laps()  # each part's seconds go into the report's wall times
        steps, models = load_snapshots(cfg, run, group)
        logs = run.logs(group)
        lap("snapshots")
        out[f"{group}.log_steps"] = np.arange(1, logs["loss"].shape[1] + 1) * cfg.log_every
        out[f"{group}.log_loss"], out[f"{group}.log_repeated_loss"] = logs["loss"], logs["repeated_loss"]
        out[f"{group}.steps"] = steps
        # Snapshots and seeds one model at a time (lax.map): vmapping the seeds took 1.7x as long, and
        # vmapping both 2.5x longer again (cached attention patterns for many models spill the caches).
        scores = jax.jit(lambda ms: jax.lax.map(lambda mm: jax.lax.map(lambda m: head_scores(m, ev, cfg), mm), ms))(
            models)  # [T, seeds, ...]
        for k, v in scores.items():
            out[f"{group}.{k}"] = np.asarray(v)
        lap("head_scores_and_lens")
        final = jax.tree.map(lambda x: x[-1], models)
        rrt, rep = ev["rrt"], ev["rrt_rep"]
        if GROUPS[group] == 2:  # the circuit's analyses; the control's lens is in head_scores
            # the toolbox on the final models: DLA, attribution vs activation patching
            for k, v in jax.jit(jax.vmap(lambda m: toolbox(cfg, m, ev)))(final).items():
                out[f"{group}.{k}"] = np.asarray(v)
            lap("dla_and_patching")
            # previous-token probe before layer 1 on the untrained models (row 0) and over training, in one
            # compiled call; with its controls (before layer 0, shuffled labels) on the final models
            ps = probe_set(cfg)
            idx = sorted(set(range(0, len(steps), PROBE_EVERY)) | {len(steps) - 1})
            if steps[0] == 0:  # the step-0 snapshot is the initialisation, bit for bit
                untrained = jax.tree.map(lambda x: x[0], models)
            else:
                init, _ = make_train(cfg, GROUPS[group])
                # lax.map, not vmap: the same bits, and a batched random draw compiles about 3x slower (7.5 s)
                untrained = jax.jit(lambda ks: jax.lax.map(lambda k: init(k, {})["params"], ks))(
                    group_keys(cfg, group))
            some = jax.tree.map(lambda u, x: jnp.concatenate([u[None], x[np.array(idx)]]), untrained, models)
            # one model at a time (lax.map, not vmap): a vmapped L-BFGS steps every model until the slowest
            # one's line search ends, and batched small matmuls run slower on a CPU (2x here)
            pr = np.asarray(jax.jit(lambda ms: jax.lax.map(lambda mm: jax.lax.map(
                lambda m: prev_token_probe(cfg, m, ps, controls=False), mm), ms))(some))[..., 0]
            out[f"{group}.probe_steps"] = steps[idx]
            out[f"{group}.probe"], out[f"{group}.probe_untrained"] = pr[1:], pr[0]  # [snapshots, seeds], [seeds]
            out[f"{group}.probe_final"] = np.asarray(jax.jit(lambda ms: jax.lax.map(
                lambda m: prev_token_probe(cfg, m, ps), ms))(final))
            lap("probes")
            # steering and an SAE before layer 1, with each seed's previous-token head
            st, sae_tokens = steer_set(cfg), sae_set(cfg)
            prev_heads = jnp.asarray(scores["prev_token_score"][-1, :, 0].argmax(-1))
            sae_keys = jax.random.split(jax.random.key(cfg.seed + 8001), n_models(cfg, group))
            more = jax.jit(jax.vmap(lambda m, h, k: steer_and_sae(cfg, m, ev, st, sae_tokens, h, k)))(
                final, prev_heads, sae_keys)
            out.update({f"{group}.{k}": np.asarray(v) for k, v in more.items()})
            lap("steering_and_sae")

        def rep_loss(logits):
            return repeated_loss(logits, rrt, rep)

        # zero-ablate each head's output (hook_z) on [BOS] + R + R: one vmapped grid per model
        out[f"{group}.ablation"] = np.asarray(jax.jit(jax.vmap(
            lambda m: patching.patch_grid(m, rrt, rep_loss, mode="zero")))(final))
        # and every head of a layer at once: [seeds, layers]
        out[f"{group}.layer_ablation"] = np.asarray(jax.jit(jax.vmap(lambda m: jax.vmap(
            lambda l: rep_loss(patching.patch_heads(m, rrt, l, None, mode="zero")))(jnp.arange(GROUPS[group]))))(final))
        # Held-out repeat lengths, two ways: placed as in training (a span copied from a random
        # start to a random later start), and as [BOS] + R + R at the very start, where short
        # spans also put the second copy at positions no training repeat reaches (dst >= repeat_min + 1).
        fits = [L for L in EVAL_LENGTHS if 1 + 2 * L <= cfg.seq_len]
        rep_losses = jax.jit(jax.vmap(jax.vmap(  # [seeds, token sets]
            lambda m, t, r: repeated_loss(tf.forward(m, t), t, r), (None, 0, 0)), (0, None, None)))
        for where in ("length_loss", "length_start_loss"):
            held = np.full((n_models(cfg, group), len(EVAL_LENGTHS)), np.nan)
            out[f"{group}.{where}"] = held  # [seeds, lengths]; NaN where a length does not fit
            if not fits:
                continue
            sets = [make_batch(jax.random.key(cfg.seed + 3000 + L), cfg, cfg.eval_batch, lengths=(L, L))
                    if where == "length_loss" else repeated_random(jax.random.key(cfg.seed + 3000 + L), cfg,
                                                                    cfg.eval_batch, L) for L in fits]
            toks, r = jnp.stack([t for t, _ in sets]), jnp.stack([m for _, m in sets])
            held[:, [EVAL_LENGTHS.index(L) for L in fits]] = np.asarray(rep_losses(final, toks, r))
        # Both copies of R right after each other at the start, middle and end of the context
        L = int(ev["rrt_len"])
        sets = [placed(jax.random.key(cfg.seed + 5000 + i), cfg, cfg.eval_batch, L, w) for i, w in enumerate(PLACEMENTS)]
        out[f"{group}.placement_loss"] = np.asarray(rep_losses(final, jnp.stack([t for t, _ in sets]),
                                                               jnp.stack([m for _, m in sets])))  # [seeds, 3]
        lap("ablation_and_generalisation")
        _, cache = jax.jit(jax.vmap(lambda m: tf.run_with_cache(m, rrt[:1], lambda n: n.endswith("hook_pattern"))))(final)
        if GROUPS[group] == 2:  # seed 0's attention over training on the same sequence, for the animation
            seed0 = jax.tree.map(lambda x: x[:, 0], models)
            _, hist = jax.jit(jax.vmap(lambda m: tf.run_with_cache(m, rrt[:1], lambda n: n.endswith("hook_pattern"))))(
                seed0)
            out[f"{group}.pattern_history"] = np.stack([np.asarray(hist[f"blocks.{l}.attn.hook_pattern"])[:, 0]
                                                        for l in range(GROUPS[group])], 1).astype(np.float16)
        out[f"{group}.final_patterns"] = np.stack([np.asarray(cache[f"blocks.{l}.attn.hook_pattern"])[:, 0]
                                                   for l in range(GROUPS[group])], 1)  # [seeds, layers, heads, q, k]
        out[f"{group}.rrt_tokens"] = np.asarray(rrt[0])
        if GROUPS[group] == 2:
            comp = jax.jit(jax.vmap(jax.vmap(composition_scores)))(models)  # [T, seeds, heads0, heads1]
            for name in ("Q", "K", "V"):
                out[f"{group}.comp_{name}"] = np.asarray(comp[name][-1])  # the final models
                out[f"{group}.comp_{name}_history"] = np.asarray(comp[name])
        lap("patterns_and_composition")
    out["eval_lengths"] = np.array(EVAL_LENGTHS)
    out["rrt_len"] = np.asarray(ev["rrt_len"])
    return out


def circuit_heads(a: dict[str, np.ndarray], s: int) -> tuple[int, int]:
    """Seed s's induction head (layer 1, highest final induction score) and previous-token head (layer 0)."""
    return int(np.argmax(a["2L.induction_score"][-1, s, 1])), int(np.argmax(a["2L.prev_token_score"][-1, s, 0]))


def check(cfg: Config, a: dict[str, np.ndarray]) -> list[report.Check]:
    """Checks against Olsson et al. 2022 and public reproductions, each band stated before the run."""
    chance = float(a["chance"])
    S = cfg.n_seeds
    checks = []
    start = plateau(a)
    tr = {g: [transition(a[f"{g}.log_steps"], a[f"{g}.log_repeated_loss"][s], start, chance)
              for s in range(n_models(cfg, g))] for g in GROUPS}
    two = [[t["t10"], t["t50"], t["t90"], round(t["drop"], 2)] for t in tr["2L"]]
    checks.append(report.Check(
        "2-layer: repeated-token loss plateau, then drop [t10, t50, t90, drop in nats] per seed", two,
        "every seed: drop from chance >= 2 nats; t10 >= 5% of training; window t90 - t10 <= t50 (public runs: "
        "0.3..0.7 x t50); t10..t90 measured from the 1-layer plateau to the final loss",
        all(t["drop"] >= 2 and t["t10"] >= 0.05 * cfg.n_steps and t["t90"] - t["t10"] <= t["t50"] for t in tr["2L"])))
    one = [round(t["drop"], 2) for t in tr["1L"]]
    checks.append(report.Check(
        "1-layer control: drop in repeated-token loss (nats) per seed", one,
        f"every seed < 2 nats (no induction without composition; chance ln {cfg.n_tokens} = {chance:.2f})",
        all(d < 2 for d in one)))
    ind = [round(float(a["2L.induction_score"][-1, s, 1].max()), 3) for s in range(S)]
    prev = [round(float(a["2L.prev_token_score"][-1, s, 0].max()), 3) for s in range(S)]
    checks.append(report.Check(
        "final best layer-1 induction score and layer-0 previous-token score per seed", [ind, prev],
        "both >= 0.4 in every seed (ARENA's detectors flag 0.3..0.4; public CPU-scale runs end at 0.57..0.64)",
        all(i >= 0.4 and p >= 0.4 for i, p in zip(ind, prev))))
    base = float(a["composition_baseline"])
    kc = []
    for s in range(S):
        h1, h0 = circuit_heads(a, s)
        K = a["2L.comp_K"][s]
        kc.append([round(float(K[h0, h1]), 3), round(float(K[:, h1].max()), 3)])
    checks.append(report.Check(
        f"K-composition previous-token head -> induction head, and the largest into it (baseline {base:.3f})", kc,
        "the pair's is the largest into the induction head, and above the random baseline (Elhage et al. 2021)",
        all(v >= mx - 1e-9 and v > base for v, mx in kc)))
    abl = []
    for s in range(S):
        h1, h0 = circuit_heads(a, s)
        clean = float(a["2L.rrt_repeated_loss"][-1, s])
        abl.append([round(clean, 3), round(float(a["2L.ablation"][s, 0, h0]), 3), round(float(a["2L.ablation"][s, 1, h1]), 3)])
    checks.append(report.Check(
        "repeated-token loss on [BOS]+R+R: clean, previous-token head ablated, induction head ablated", abl,
        f"clean <= half of chance (there is induction to undo), and each ablation recovers >= half the gap from "
        f"clean to chance ({chance:.2f}) (redundant heads can hold it lower, as public reproductions found)",
        all(c <= 0.5 * chance and p >= c + 0.5 * (chance - c) and i >= c + 0.5 * (chance - c) for c, p, i in abl)))
    lengths = a["eval_lengths"]
    out_of_range = (lengths < cfg.repeat_min) | (lengths > cfg.repeat_max)
    held = [[round(float(x), 3) for x in a["2L.length_loss"][s][out_of_range]] for s in range(S)]
    checks.append(report.Check(
        f"repeated-token loss at held-out repeat lengths {[int(x) for x in lengths[out_of_range]]}, "
        "spans placed as in training", held,
        f"at least one fits the context, and every one that does <= {0.5 * chance:.2f} = half of chance "
        "(a public varied-offset reproduction: 0.35..0.98 at lengths 8..32)",
        all(np.isfinite(h).any() and np.all(np.asarray(h)[np.isfinite(h)] <= 0.5 * chance) for h in held)))
    place = [[round(float(x), 2) for x in a["2L.placement_loss"][s]] for s in range(S)]
    checks.append(report.Check(
        f"repeated-token loss with R + R at the {', '.join(PLACEMENTS)} of the context, per seed", place,
        f"every one <= {0.5 * chance:.2f} = half of chance (Olsson et al. 2022: induction heads work at any position)",
        all(x <= 0.5 * chance for row in place for x in row)))
    checks += toolbox_checks(cfg, a)
    return checks


def copy_halves(a: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Targets (index t predicts t+1) in the first copy and in the second copy of [BOS] + R + R."""
    L = int(a["rrt_len"])
    t = np.arange(a["2L.dla"].shape[-1])
    return (t >= 1) & (t < L), (t > L) & (t < 2 * L)


def toolbox_checks(cfg: Config, a: dict[str, np.ndarray]) -> list[report.Check]:
    """DLA, logit lens, probe and attribution patching on the final models, bands stated before the run."""
    S, chance, checks = cfg.n_seeds, float(a["chance"]), []
    labels = lens.resid_labels(model_config(cfg, 2))
    first, second = copy_halves(a)
    dla = []
    for s in range(S):
        h1, h0 = circuit_heads(a, s)
        d = a["2L.dla"][s]
        ind, prev = d[labels.index(f"L1H{h1}"), second].mean(), d[labels.index(f"L0H{h0}"), second].mean()
        dla.append([round(float(ind), 2), round(float(prev), 2), round(float(np.abs(d[:, first].mean(1)).max()), 2),
                    labels[int(np.argmax(d[:, second].mean(1)))]])
    checks.append(report.Check(
        "DLA to the correct token on [BOS]+R+R: induction head on the 2nd copy, prev-token head's direct term there, "
        "largest |mean| of any component on the 1st copy, the largest component on the 2nd copy", dla,
        "the induction head is the largest on the 2nd copy; the prev-token head's direct term and every 1st-copy "
        "mean below 1/4 of it (it acts through K-composition; Elhage et al. 2021)",
        all(top == f"L1H{circuit_heads(a, s)[0]}" and abs(prev) < ind / 4 and f1 < ind / 4
            for s, (ind, prev, f1, top) in enumerate(dla))))
    lens_final = [[round(float(x), 2) for x in a["2L.lens_loss"][-1, s]] for s in range(S)]
    checks.append(report.Check(
        "logit lens: repeated-token loss read before layer 0, before layer 1, at the output (final models)",
        lens_final, f"the first two >= chance - 0.1 = {chance - 0.1:.2f} (the next token is independent of the "
        f"current and previous ones), the output <= {0.5 * chance:.2f}",
        all(x0 >= chance - 0.1 and x1 >= chance - 0.1 and x2 <= 0.5 * chance for x0, x1, x2 in lens_final)))
    pr = [[round(float(x), 3) for x in a["2L.probe_final"][s]] + [round(float(a["2L.probe_untrained"][s]), 3)]
          for s in range(S)]
    lvl = 3 / cfg.n_tokens
    checks.append(report.Check(
        "previous-token probe accuracy (held out): before layer 0, before layer 1, shuffled labels, untrained model",
        pr, f"before layer 1 >= 0.8; before layer 0 and shuffled <= {lvl:.3f} (3x chance; before layer 0 the "
        "residual holds the current token only); untrained at least 0.3 below trained",
        all(b1 >= 0.8 and b0 <= lvl and sh <= lvl and un <= b1 - 0.3 for b0, b1, sh, un in pr)))
    site = lambda l, n: f"blocks.{l}.attn.hook_{n}"  # noqa: E731
    err = []
    for s in range(S):
        ap1 = a[f"2L.ap.{site(1, 'z')}"][s]
        scale = float(np.abs(ap1).max())
        e_z1 = float(np.abs(a[f"2L.atp.{site(1, 'z')}"][s] - ap1).max()) / scale
        e_star = max(float(np.abs(a[f"2L.atp_star.{site(1, n)}"][s] - a[f"2L.ap.{site(1, n)}"][s]).max())
                     for n in "qk") / scale
        rho = patching.spearman(a[f"2L.atp.{site(0, 'z')}"][s].ravel(), a[f"2L.ap.{site(0, 'z')}"][s].ravel())
        err.append([f"{e_z1:.1e}", f"{e_star:.1e}", round(rho, 3)])
    checks.append(report.Check(
        "attribution vs activation patching per (position, head): max error / max effect on layer-1 z (linear path) "
        "and layer-1 q, k by AtP*; rank correlation on layer-0 z (through layer 1's softmax)", err,
        "layer-1 errors <= 1e-3 (exact up to float32; Nanda 2023, Kramar et al. 2024); layer-0 rank correlation >= 0.5",
        all(float(e1) <= 1e-3 and float(e2) <= 1e-3 and r >= 0.5 for e1, e2, r in err)))
    return checks + steer_sae_checks(cfg, a)


def steer_gains(a: dict[str, np.ndarray], s: int) -> dict[str, float]:
    """Seed s's log-probability of x_J at Q, averaged over pairs: gains over the unsteered base sequences."""
    lp = a["2L.steer_lp"][s].mean(0)  # [scales]
    one = STEER_SCALES.index(1.0)
    real = float(a["2L.steer_real_lp"][s].mean()) - lp[0]
    off = a["2L.steer_off_lp"][s].mean(0)
    abl = a["2L.sae_ablation_lp"][s].mean(0)  # [matched, control]
    rl = float(a["2L.steer_real_lp"][s].mean())
    return {"real": real, "steer": float(lp[one] - lp[0]), "off": float(off[1] - off[0]),
            "matched": (rl - float(abl[0])) / real, "control": (rl - float(abl[1])) / real}


def steer_sae_checks(cfg: Config, a: dict[str, np.ndarray]) -> list[report.Check]:
    """Steering with a "previous token = A" vector and an SAE before layer 1, bands stated before the run."""
    S, checks = cfg.n_seeds, []
    r2 = lambda x: round(float(x), 2)  # noqa: E731
    st = []
    for s in range(S):
        g, h1 = steer_gains(a, s), circuit_heads(a, s)[0]
        att = a["2L.steer_att"][s].mean(0)[:, h1]  # [scales]
        st.append([r2(g["steer"]), r2(g["real"]), r2(att[STEER_SCALES.index(1.0)]),
                   r2(a["2L.steer_real_att"][s].mean(0)[h1])])
    checks.append(report.Check(
        "steering 'previous token = A' into position J (scale 1): log-prob gain of x_J at an A-query, the real "
        "edit's gain; induction head's attention Q->J, steered and real", st,
        "steered gain >= half the real edit's, real gain >= 1 nat (the vector stands in for the previous-token "
        "head's write; Turner et al. 2023's activation addition)",
        all(sg >= 0.5 * rg and rg >= 1 for sg, rg, _, _ in st)))
    off = [[r2(steer_gains(a, s)["off"]), r2(steer_gains(a, s)["real"])] for s in range(S)]
    checks.append(report.Check(
        "off-target: the same vector with a C-query (C != A): log-prob change of x_J at Q; the real edit's gain",
        off, "|change| <= 0.1 x the real gain (only A-queries look for 'previous token = A')",
        all(abs(o) <= 0.1 * rg for o, rg in off)))
    sae = []
    for s in range(S):
        clean, spliced, zero, l0, fvu, dead, m_tok, m_prev = a["2L.sae_scores"][s]
        sae.append([r2(spliced), r2(clean), r2(zero), round(float(fvu), 3), r2(l0)])
    checks.append(report.Check(
        f"SAE on {SAE_HOOK} spliced in: repeated-token loss (clean, zero-ablated); FVU; L0", sae,
        "loss recovered (zero - spliced) / (zero - clean) >= 0.9 and FVU <= 0.1 (SAELens's CE loss score)",
        all((z - sp) >= 0.9 * (z - c) and f <= 0.1 for sp, c, z, f, _ in sae)))
    mm = [[r2(a["2L.sae_scores"][s][6]), r2(a["2L.sae_scores"][s][7])] for s in range(S)]
    checks.append(report.Check(
        "SAE dictionary vs the circuit's directions: MMCS to the token embeddings, to the previous-token head's writes",
        mm, ">= 0.8 each (two features per position: the token and the previous token; Elhage et al. 2021)",
        all(t >= 0.8 and pw >= 0.8 for t, pw in mm)))
    ab = [[r2(steer_gains(a, s)["matched"]), r2(steer_gains(a, s)["control"])] for s in range(S)]
    checks.append(report.Check(
        "ablating at J the SAE latent for 'previous token = A' (error term kept): share of the induction gain removed;"
        " a latent for another token", ab, "matched >= 0.5, control <= 0.1",
        all(m >= 0.5 and c <= 0.1 for m, c in ab)))
    return checks


# ---------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------


def _window(a: dict[str, np.ndarray], cfg: Config) -> tuple[float, float]:
    """The phase-change window over the 2-layer seeds: earliest t10 to latest t90."""
    ts = [transition(a["2L.log_steps"], a["2L.log_repeated_loss"][s], plateau(a), float(a["chance"]))
          for s in range(cfg.n_seeds)]
    return min(t["t10"] for t in ts), max(t["t90"] for t in ts)


def _shade(ax, a, cfg, label=True) -> None:
    t0, t1 = _window(a, cfg)
    if np.isfinite(t0) and np.isfinite(t1):
        ax.axvspan(t0, t1, color="#f4d8c8", alpha=0.6, lw=0,
                   label="phase change (2L seeds, t10..t90 below the 1L plateau)" if label else None)


def fig_loss(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, key, title in ((axes[0], "log_loss", "Training loss, all tokens"),
                           (axes[1], "log_repeated_loss", "Loss on repeated tokens (predictable by induction)")):
        _shade(ax, a, cfg, label=ax is axes[0])
        for g, c in (("2L", "C3"), ("1L", "C0")):
            for s in range(n_models(cfg, g)):
                ax.plot(a[f"{g}.log_steps"], a[f"{g}.{key}"][s], color=c, lw=1, alpha=0.8,
                        label=f"{g[0]}-layer ({n_models(cfg, g)} seeds)" if s == 0 else None)
        ax.axhline(float(a["chance"]), color="grey", ls=":", lw=1, label=f"chance, ln {cfg.n_tokens}")
        ax.set_xlabel("training step")
        ax.set_title(title)
        ax.legend(loc="lower left", fontsize=8)
    axes[0].set_ylabel("cross-entropy (nats)")
    fig.suptitle(f"Training loss of the 2-layer models ({cfg.n_seeds} seeds) and the 1-layer controls "
                 f"({cfg.n_control_seeds} seeds)")
    return savefig(fig, path)


def fig_icl(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    _shade(ax, a, cfg)
    for g, c in (("2L", "C3"), ("1L", "C0")):
        for s in range(n_models(cfg, g)):
            ax.plot(a[f"{g}.steps"], a[f"{g}.icl_score"][:, s], color=c, lw=1,
                    label=f"{g[0]}-layer" if s == 0 else None)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("training step")
    ax.set_ylabel("late-token loss - early-token loss (nats)")
    ax.set_title(f"In-context learning score (last vs first {cfg.seq_len // 5} positions, fixed eval set)")
    ax.legend(fontsize=8)
    return savefig(fig, path)


def fig_head_scores(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.9), sharey=True)
    steps = a["2L.steps"]
    for ax, key, title in zip(axes, ("prev_token_score", "induction_score", "copying_score"),
                              ("Previous-token score", "Induction score ([BOS]+R+R)", "Copying (OV eigenvalue positivity)")):
        _shade(ax, a, cfg, label=False)
        for l, ls in ((0, "-"), (1, "--")):
            for h in range(cfg.n_heads):
                for s in range(cfg.n_seeds):
                    ax.plot(steps, a[f"2L.{key}"][:, s, l, h], color=f"C{l}", ls=ls, lw=1,
                            alpha=1 if s == 0 else 0.25, label=f"layer {l} heads" if s == 0 and h == 0 else None)
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("score (seed 0 solid, other seeds faint)")
    fig.suptitle("Every head of the 2-layer models over training")
    return savefig(fig, path)


def fig_patterns(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    h1, h0 = circuit_heads(a, 0)
    P = a["2L.final_patterns"][0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, (l, h, name) in zip(axes, ((0, h0, "previous-token head"), (1, h1, "induction head"))):
        im = ax.imshow(P[l, h], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"{l}.{h}: {name}")
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"Attention on [BOS] + R + R (|R| = {(cfg.repeat_min + cfg.repeat_max) // 2}), seed 0, final model")
    return savefig(fig, path)


def fig_loss_by_position(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    t0, _ = _window(a, cfg)
    steps = a["2L.steps"]
    before = int(np.flatnonzero(steps <= t0)[-1]) if np.isfinite(t0) and (steps <= t0).any() else 0
    fig, (ax, hm) = plt.subplots(1, 2, figsize=(14, 4), gridspec_kw={"width_ratios": [1, 1.1]})
    L = (cfg.repeat_min + cfg.repeat_max) // 2
    for idx, lab, c in ((before, f"before (step {steps[before]})", "C0"), (-1, f"after (step {steps[-1]})", "C3")):
        ax.plot(np.arange(1, cfg.seq_len), a["2L.rrt_loss_by_position"][idx, 0], color=c, label=lab)
    ax.axvspan(L + 1.5, 2 * L + 0.5, color="#eeeeee", label="second copy of R")
    ax.axhline(float(a["chance"]), color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("position of the predicted token")
    ax.set_ylabel("loss (nats), mean over the eval batch")
    ax.set_title("Before and after the phase change")
    ax.legend(fontsize=8)
    # Olsson's 2-D view: every snapshot (rows) by position (columns).
    im = hm.imshow(a["2L.rrt_loss_by_position"][:, 0], aspect="auto", origin="lower", cmap="magma",
                   extent=(0.5, cfg.seq_len - 0.5, steps[0], steps[-1]), vmin=0, vmax=1.3 * float(a["chance"]))
    t0, t1 = _window(a, cfg)
    for t in (t0, t1):
        if np.isfinite(t):
            hm.axhline(t, color="w", ls="--", lw=0.8)
    hm.set_xlabel("position of the predicted token")
    hm.set_ylabel("training step")
    hm.set_title("Every snapshot (dashed: the phase-change window)")
    fig.colorbar(im, ax=hm, fraction=0.046, label="loss (nats)")
    fig.suptitle("Per-token loss on [BOS] + R + R (+ random filler), 2-layer seed 0")
    return savefig(fig, path)


def fig_composition(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    base = float(a["composition_baseline"])
    fig, axes = plt.subplots(1, 4, figsize=(19, 4), gridspec_kw={"width_ratios": [1, 1, 1, 1.6]})
    fig.subplots_adjust(wspace=0.45)
    lim = max(float(np.abs(a[f"2L.comp_{n}"][0] - base).max()) for n in "QKV")
    for ax, n in zip(axes, "QKV"):
        im = ax.imshow(a[f"2L.comp_{n}"][0] - base, cmap="coolwarm", vmin=-lim, vmax=lim)
        ax.set_title(f"{n}-composition minus baseline")
        ax.set_xlabel("layer-1 head")
        ax.set_ylabel("layer-0 head")
        ax.set_xticks(range(cfg.n_heads))
        ax.set_yticks(range(cfg.n_heads))
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[3]
    _shade(ax, a, cfg)
    for s in range(cfg.n_seeds):
        h1, h0 = circuit_heads(a, s)
        K = a["2L.comp_K_history"][:, s]  # [T, heads0, heads1]
        others = np.delete(K[:, :, h1], h0, axis=1).max(1) if cfg.n_heads > 1 else None
        ax.plot(a["2L.steps"], K[:, h0, h1], color="C3", lw=1.2, alpha=1 if s == 0 else 0.5,
                label="previous-token head -> induction head" if s == 0 else None)
        if others is not None:
            ax.plot(a["2L.steps"], others, color="grey", lw=1, alpha=1 if s == 0 else 0.5,
                    label="best other layer-0 head -> induction head" if s == 0 else None)
    ax.axhline(base, color="k", ls=":", lw=1, label="random-matrix baseline")
    ax.set_xlabel("training step")
    ax.set_ylabel("K-composition")
    ax.set_title("K-composition over training (every seed)")
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.45 * (hi - lo))  # room for the legend above the curves
    ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Composition scores: heatmaps for seed 0's final model (random-matrix baseline {base:.3f} "
                 "subtracted); right, the circuit's K-composition over training")
    return savefig(fig, path)


def fig_copying(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig, ax = plt.subplots(figsize=(7, 3.6))
    c = a["2L.copying_score"][-1]  # [seeds, layers, heads]
    x = np.arange(2 * cfg.n_heads)
    ax.bar(x, c.reshape(cfg.n_seeds, -1).mean(0), color=["C0"] * cfg.n_heads + ["C1"] * cfg.n_heads, alpha=0.7,
           label="mean over seeds")
    for s in range(cfg.n_seeds):
        ax.plot(x, c[s].ravel(), "k.", ms=4, label="one seed" if s == 0 else None)
    ax.set_xticks(x, [f"{l}.{h}" for l in range(2) for h in range(cfg.n_heads)])
    ax.set_xlabel("head (layer.head)")
    ax.set_ylabel("sum(lambda) / sum(|lambda|)")
    ax.set_ylim(-1.05, 1.05)
    ax.set_title("OV circuit W_E W_V W_O W_U: eigenvalue positivity (+1 = copying)")
    ax.legend(fontsize=8)
    return savefig(fig, path)


def fig_ablation(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    grid = np.concatenate([a["2L.ablation"][0], a["2L.layer_ablation"][0][:, None]], axis=1)  # last column: all heads
    im = ax.imshow(grid, cmap="magma", vmin=0, vmax=float(a["chance"]))
    for (l, h), v in np.ndenumerate(grid):
        ax.text(h, l, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 * float(a["chance"]) else "k")
    ax.axvline(cfg.n_heads - 0.5, color="w", lw=3)
    ax.set_xticks(range(cfg.n_heads + 1), [str(h) for h in range(cfg.n_heads)] + ["all"])
    ax.set_yticks(range(2))
    ax.set_xlabel("head zero-ablated (all: every head of the layer)")
    ax.set_ylabel("layer")
    ax.set_title(f"Repeated-token loss on [BOS]+R+R, seed 0 (clean {float(a['2L.rrt_repeated_loss'][-1, 0]):.2f}, "
                 f"chance {float(a['chance']):.2f})", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="nats")
    return savefig(fig, path)


def fig_generalisation(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    lengths = a["eval_lengths"]
    for g, c in (("2L", "C3"), ("1L", "C0")):
        for s in range(n_models(cfg, g)):
            ax.plot(lengths, a[f"{g}.length_loss"][s], "o-", color=c, lw=1, ms=4,
                    label=f"{g[0]}-layer, span placed as in training" if s == 0 else None)
            ax.plot(lengths, a[f"{g}.length_start_loss"][s], "x--", color=c, lw=0.8, ms=4, alpha=0.7,
                    label=f"{g[0]}-layer, [BOS] + R + R at the start" if s == 0 else None)
    ax.axvspan(cfg.repeat_min, cfg.repeat_max, color="#dddddd", label="lengths seen in training")
    ax.axhline(float(a["chance"]), color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("repeat length |R|")
    ax.set_ylabel("loss on repeated tokens (nats)")
    ax.set_title("Loss by repeat length; outside the grey band, lengths never seen in training")
    ax.legend(fontsize=8)
    return savefig(fig, path)


def fig_dla(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    labels = lens.resid_labels(model_config(cfg, 2))
    d = a["2L.dla"][0]  # [components, positions]
    first, second = copy_halves(a)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11.5, 3.4), gridspec_kw={"width_ratios": [2.2, 1], "wspace": 0.35})
    lim = float(np.abs(d).max())
    im = ax.imshow(d, aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_yticks(range(len(labels)), ["direct (W_E)" if n == "embed" else n for n in labels])
    L = int(a["rrt_len"])
    for x in (L - 0.5, 2 * L - 0.5):
        ax.axvline(x, color="k", lw=0.8, ls="--")
    ax.set_xlabel("position t (predicting token t+1); dashed: copy boundaries")
    ax.set_title("Seed 0: each component's logit for the correct next token (minus the mean logit)")
    fig.colorbar(im, ax=ax, fraction=0.03, label="logit")
    x = np.arange(len(labels))
    for s in range(cfg.n_seeds):
        bx.plot(x - 0.15, a["2L.dla"][s][:, first].mean(1), "o", color="C0", ms=4, label="1st copy" if s == 0 else None)
        bx.plot(x + 0.15, a["2L.dla"][s][:, second].mean(1), "o", color="C3", ms=4, label="2nd copy" if s == 0 else None)
    bx.axhline(0, color="grey", lw=0.6)
    bx.set_xticks(x, ["W_E" if n == "embed" else n for n in labels])
    bx.set_ylabel("mean DLA (logit)")
    bx.set_title("Mean over each copy, every seed")
    bx.legend(fontsize=8)
    return savefig(fig, path)


def fig_lens(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig, ax = plt.subplots(figsize=(7, 3.4))
    for g, ls in (("2L", "-"), ("1L", ":")):
        names = lens.lens_boundaries(model_config(cfg, GROUPS[g]))
        for b, name in enumerate(names):
            y = a[f"{g}.lens_loss"][:, :, b]  # [T, seeds]
            for s in range(y.shape[1]):
                ax.plot(a[f"{g}.steps"], y[:, s], ls, color=f"C{b}", lw=0.9, alpha=0.8,
                        label=f"{g[0]}-layer, read at {name.replace('hook_', '')}" if s == 0 else None)
    _shade(ax, a, cfg)
    ax.axhline(float(a["chance"]), color="grey", ls="--", lw=0.8, label="chance")
    ax.set_ylim(0, 2 * float(a["chance"]))
    ax.set_xlabel("training step")
    ax.set_ylabel("loss on the 2nd copy (nats)")
    ax.set_title("Logit lens on [BOS]+R+R: only the output beats chance, from the phase change on")
    ax.legend(fontsize=7, ncol=2)
    return savefig(fig, path)


def fig_probe(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig, ax = plt.subplots(figsize=(7, 3.4))
    steps, pr = a["2L.probe_steps"], a["2L.probe"]
    for s in range(cfg.n_seeds):
        kw = lambda i: {"label": i if s == 0 else None}  # noqa: E731
        ax.plot(steps, pr[:, s], "-", color="C3", lw=1, **kw("probe before layer 1"))
        ax.plot([0], [a["2L.probe_untrained"][s]], "o", color="C3", ms=4, **kw("... on the untrained model"))
        ax.plot([steps[-1]], [a["2L.probe_final"][s, 0]], "s", color="C0", ms=4,
                **kw("probe before layer 0 (control, final)"))
        ax.plot([steps[-1]], [a["2L.probe_final"][s, 2]], "^", color="C7", ms=4, **kw("shuffled labels (control, final)"))
        ax.plot(a["2L.steps"], a["2L.prev_token_score"][:, s, 0].max(-1), "--", color="k", lw=0.8,
                **kw("previous-token score (best layer-0 head)"))
    ax.axhline(1 / cfg.n_tokens, color="grey", ls=":", lw=0.8, label=f"chance 1/{cfg.n_tokens}")
    _shade(ax, a, cfg)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out accuracy / score")
    ax.set_title("Is the previous token linearly readable at position t? (logistic probe, every seed)")
    ax.legend(fontsize=7)
    return savefig(fig, path)


def fig_attribution(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    names = ("z", "q", "k", "v", "pattern")
    fig, axes = plt.subplots(2, len(names), figsize=(13, 5.6), gridspec_kw={"hspace": 0.45, "wspace": 0.35})
    for l in range(2):
        for j, n in enumerate(names):
            ax = axes[l, j]
            site = f"blocks.{l}.attn.hook_{n}"
            ap, atp = a[f"2L.ap.{site}"].ravel(), a[f"2L.atp.{site}"].ravel()
            ax.plot(ap, atp, ".", ms=3, color="C0", label="AtP")
            if n in ("q", "k"):
                ax.plot(ap, a[f"2L.atp_star.{site}"].ravel(), ".", ms=3, color="C3", label="AtP*")
            lim = max(float(np.abs(ap).max()), 1e-6)
            ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.7, label="y = x")
            ax.set_title(f"layer {l} {n}", fontsize=9)
            ax.locator_params(axis="x", nbins=3)
            ax.tick_params(axis="x", labelsize=7)
            if l == 1:
                ax.set_xlabel("activation patching")
            if j == 0:
                ax.set_ylabel("attribution estimate")
            if (l, j) == (0, 1):
                ax.legend(fontsize=7)
    fig.suptitle("Attribution patching vs activation patching, each (position, head), every seed: exact where "
                 "the path to the logits is linear", fontsize=10)
    return savefig(fig, path)


FIGURES = [
    ("loss", fig_loss, "Training loss of the 2-layer models (red) and 1-layer controls (blue), every seed. Both "
     "sit near chance on the repeated tokens; then the 2-layer loss drops within a few hundred steps (shaded) "
     "while the 1-layer one never does."),
    ("icl", fig_icl, "In-context learning score: loss late in the sequence minus loss early. It turns negative at "
     "the phase change for the 2-layer models only: later tokens become predictable from earlier ones."),
    ("head_scores", fig_head_scores, "Previous-token, induction and copying scores of every head over training. "
     "A layer-0 head becomes a previous-token head and a layer-1 head an induction head at the same moment, "
     "the phase change."),
    ("patterns", fig_patterns, "Attention on a repeated random sequence: the previous-token head attends one "
     "position back (sub-diagonal); the induction head attends, in the second copy, to the token after the "
     "current token's first occurrence (the stripe |R| - 1 below the diagonal), and to BOS otherwise."),
    ("loss_by_position", fig_loss_by_position, "Per-token loss on [BOS] + R + R before and after the phase change: "
     "the first copy stays at chance; after it, the second copy is predicted well, and the filler just after "
     "it gets worse than chance (the model bets the repeat goes on). Right: the same for every snapshot "
     "(Olsson's 2-D view): the second copy darkens abruptly inside the phase-change window."),
    ("composition", fig_composition, "Q-, K- and V-composition from each layer-0 head into each layer-1 head, "
     "minus the random-matrix baseline. The previous-token head feeds the induction head's keys: K-composition. "
     "Right: that K-composition over training (heads picked on the final model) rises during the phase change."),
    ("copying", fig_copying, "OV-circuit eigenvalue positivity per head: +1 means the head copies the token it "
     "attends to into the logits. Induction heads copy."),
    ("ablation", fig_ablation, "Loss on the repeated tokens with one head's output zero-ablated (through the "
     "patching verb, one vmapped grid), and with every head of a layer at once (right column). Ablating the "
     "previous-token head undoes induction; when both layer-1 heads do induction, removing one leaves the "
     "other, and only removing both sends the loss to chance."),
    ("generalisation", fig_generalisation, "Loss on the repeated tokens by repeat length, inside the training "
     "range (grey band) and outside it: a real induction circuit does not care about the length; a positional shortcut would. "
     "Circles: spans placed as in training; crosses: [BOS] + R + R at the start, where a short span's second "
     "copy also sits at positions no training repeat reached."),
]


ANIMATION_FRAMES = 50  # frames of the training animation (snapshots, evenly spaced)


def anim_training(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    """GIF: seed 0's previous-token and induction heads' attention on [BOS] + R + R over training, the loss
    on the repeated tokens with a cursor."""
    import matplotlib.pyplot as plt

    from toylab.plotting import save_animation

    steps, P = a["2L.steps"], a["2L.pattern_history"].astype(np.float32)  # [T, layers, heads, q, k]
    frames = np.unique(np.linspace(0, len(steps) - 1, min(ANIMATION_FRAMES, len(steps))).round().astype(int))
    h1, h0 = circuit_heads(a, 0)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1, 1, 1.2]})
    ims = []
    for ax, (l, h, name) in zip(axes, ((0, h0, "previous-token head"), (1, h1, "induction head"))):
        ims.append(ax.imshow(P[0, l, h], cmap="viridis", vmin=0, vmax=1))
        ax.set_title(f"{l}.{h}: {name}")
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    _shade(axes[2], a, cfg)
    axes[2].plot(a["2L.log_steps"], a["2L.log_repeated_loss"][0], color="C3", lw=1, label="2-layer, seed 0")
    axes[2].axhline(float(a["chance"]), color="grey", ls=":", lw=1, label="chance")
    axes[2].set_xlabel("training step")
    axes[2].set_ylabel("loss on repeated tokens (nats)")
    axes[2].legend(loc="lower left", fontsize=8)
    cursor = axes[2].axvline(0, color="k", lw=1)
    fig.suptitle(f"Induction heads form: attention on [BOS] + R + R (|R| = {int(a['rrt_len'])}) over training")
    fig.tight_layout(rect=(0, 0, 1, 0.94))

    def update(i: int):
        t = frames[i]
        for im, (l, h) in zip(ims, ((0, h0), (1, h1))):
            im.set_data(P[t, l, h])
        cursor.set_xdata([steps[t], steps[t]])
        axes[2].set_title(f"step {int(steps[t]):,}")
        return [*ims, cursor, axes[2].title]

    return save_animation(fig, update, len(frames), path)


def fig_steering(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    sc = np.array(STEER_SCALES)
    for s in range(cfg.n_seeds):
        kw = lambda i: {"label": i if s == 0 else None}  # noqa: E731
        h1 = circuit_heads(a, s)[0]
        axes[0].plot(sc, a["2L.steer_lp"][s].mean(0), "o-", color=f"C{s}", lw=1, ms=3, label=f"seed {s}")
        axes[0].axhline(a["2L.steer_real_lp"][s].mean(), color=f"C{s}", lw=0.8, ls="--", **kw("real edit x_(J-1) = A"))
        axes[0].plot([1.0], [a["2L.steer_off_lp"][s].mean(0)[1]], "x", color=f"C{s}", ms=7, **kw("off-target C-query"))
        axes[1].plot(sc, a["2L.steer_att"][s].mean(0)[:, h1], "o-", color=f"C{s}", lw=1, ms=3, label=f"seed {s}")
        axes[1].axhline(a["2L.steer_real_att"][s].mean(0)[h1], color=f"C{s}", lw=0.8, ls="--",
                        **kw("real edit"))
    axes[0].set_ylabel("log-prob of x_J at query Q (token A)")
    axes[0].set_title("Dose-response: the induction prediction")
    axes[1].set_ylabel("induction head's attention Q -> J")
    axes[1].set_title("Dose-response: where the induction head looks")
    for ax in axes:
        ax.set_xlabel("scale of the 'previous token = A' vector added at J")
        ax.legend(fontsize=7)
    return savefig(fig, path)


def fig_sae(cfg: Config, a: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from toylab.plotting import savefig

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    S = cfg.n_seeds
    x = np.arange(S)
    sc = a["2L.sae_scores"]
    axes[0].bar(x - 0.2, sc[:, 6], 0.4, color="C0", label="token embeddings W_E[v]")
    axes[0].bar(x + 0.2, sc[:, 7], 0.4, color="C3", label="previous-token head's writes W_E[v] W_OV")
    axes[0].set_xticks(x, [f"seed {s}" for s in range(S)])
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel("MMCS (best decoder cosine, mean)")
    axes[0].set_title(f"TopK SAE on {SAE_HOOK} vs the circuit's directions")
    axes[0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    base = a["2L.steer_lp"][:, :, 0].mean(1)
    real = a["2L.steer_real_lp"].mean(1)
    abl = a["2L.sae_ablation_lp"].mean(1)  # [seeds, 2]
    for i, (vals, name, c) in enumerate(zip([base, real, abl[:, 0], abl[:, 1]],
                                           ["x_(J-1) = B (no induction)", "x_(J-1) = A", "A, its latent ablated at J",
                                            "A, another token's latent ablated"], ["C7", "C2", "C3", "C0"])):
        axes[1].bar(x + (i - 1.5) * 0.2, vals, 0.2, color=c, label=name)
    axes[1].set_xticks(x, [f"seed {s}" for s in range(S)])
    axes[1].set_ylabel("log-prob of x_J at query Q")
    axes[1].set_title("Ablating the 'previous token = A' latent at J (error term kept)")
    axes[1].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    return savefig(fig, path)


FIGURES += [
    ("dla", fig_dla, "Direct logit attribution on [BOS] + R + R: each component's contribution to the correct next "
     "token's logit (minus the mean logit), exact because the model has no LayerNorm. On the second copy the "
     "layer-1 induction head writes the answer; the previous-token head's direct term is small (it acts through "
     "the induction head's keys); on the first copy nothing is systematic."),
    ("lens", fig_lens, "Logit lens over training: the loss on the second copy read through the unembedding at each "
     "residual boundary. Before layer 0 and before layer 1 it cannot beat chance (the next token is independent of "
     "the current and previous tokens); at the output it falls at the phase change, in the 2-layer models only."),
    ("probe", fig_probe, "A logistic probe for the previous token at position t, held-out accuracy over training. "
     "Before layer 1 it rises with the previous-token head (dashed), from chance on the untrained model (dot); "
     "on the final models, before layer 0 and on shuffled labels it is at chance, as it must be."),
    ("attribution", fig_attribution, "Attribution patching (two forward passes, one backward) against activation "
     "patching (one forward per point), first R resampled as the corruption. Layer 1's outputs (z, v, pattern) "
     "reach the logits linearly, so the estimate is exact; queries and keys pass a softmax, and AtP* (red) "
     "recomputes it and lands on the line; layer 0 acts through layer 1's softmax, so there it is approximate."),
    ("steering", fig_steering, "Steering: the mean difference of the residual before layer 1 at position J between "
     "sequences with x_(J-1) = A and = B, added at J with a growing scale, in sequences where x_(J-1) = B. A later "
     "A-query then attends to J and predicts x_J (left: log-prob; right: the induction head's attention), "
     "approaching the real edit (dashed) near scale 1; a C-query (crosses) is unmoved."),
    ("sae", fig_sae, "A TopK SAE on the residual before layer 1. Left: its decoder rows match the two kinds of "
     "directions the circuit predicts there, the token embeddings and the previous-token head's writes. Right: "
     "ablating the latent for 'previous token = A' at J (keeping the SAE's error) lowers the induction "
     "prediction at a later A-query where that latent matches the write well (seeds 0 and 1); ablating another "
     "token's latent does nothing."),
    ("training.gif", anim_training, "Animation over training, seed 0: on the plateau both heads attend diffusely "
     "(mostly to BOS); at the phase change (shaded) the layer-0 head snaps onto the previous token (the "
     "sub-diagonal) and, at the same moment, the layer-1 head onto the token after the current token's earlier "
     "occurrence (the off-diagonal stripe in the second copy), as the repeated-token loss falls (right)."),
]


def plot(cfg: Config, run: Run) -> list[report.Figure]:
    """Render every figure from the saved analysis, without retraining."""
    return experiment.render(cfg, run, FIGURES)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

# The reading group's exercises (``make exercises``): two 2-layer seeds and one control, to fit 10 minutes.
_FEWER = ("--n-seeds", "2", "--n-control-seeds", "1")


def _drops(rep: dict) -> list[float]:
    """Each 2-layer seed's drop in repeated-token loss (nats), from the report's plateau check."""
    return [round(float(r[3]), 2) for r in report.find(rep, "2-layer: repeated-token loss plateau")["measured"]]


def _check_one_head(rep: dict, a: dict[str, np.ndarray]) -> report.Check:
    drops = _drops(rep)
    ablated = [round(float(min(r[1], r[2])), 2) for r in report.find(rep, "repeated-token loss on [BOS]+R+R")["measured"]]
    chance = float(a["chance"])
    return report.Check("one head per layer: drop in repeated-token loss per seed; loss with either head ablated "
                        "(the lower of the two) per seed", [drops, ablated],
                        f"the circuit forms (drop >= 2 nats in every seed) and has no backup: ablating either head "
                        f"gives >= 90% of chance ({0.9 * chance:.2f} nats)",
                        bool(min(drops) >= 2 and min(ablated) >= 0.9 * chance))


def _check_low_lr(rep: dict, a: dict[str, np.ndarray]) -> report.Check:
    drops = _drops(rep)
    scores = [round(float(x), 3) for x in report.find(rep, "final best layer-1 induction score")["measured"][0]]
    return report.Check("lr 3e-4, step 8,000: drop in repeated-token loss per seed; best induction score per seed",
                        [drops, scores], "still on the plateau: drop < 1 nat and induction score < 0.2 in every "
                        "seed (with lr 1e-3: drops of 3.6 nats, scores 0.5..0.6)",
                        bool(max(drops) < 1 and max(scores) < 0.2))


EXERCISES = [
    Exercise(
        name="induction-one-head", experiment="induction", title="one head per layer",
        question="The circuit needs a previous-token head and an induction head. Give the 2-layer model one head "
                 "per layer instead of two. Will the circuit still form? If it does, what happens to the loss "
                 "when you ablate either head?",
        args=("--n-heads", "1", *_FEWER),
        smoke_args=("--n-heads", "1"),
        check_text="the repeated-token loss drops by at least 2 nats in every seed, and ablating either head sends "
                   "it back to (near) chance",
        check=_check_one_head,
        answer="It forms: two heads are all the circuit needs, one in each layer (Elhage et al. 2021 find the same "
               "circuit in their two-layer attention-only models). The phase change comes somewhat later than "
               "with two heads per layer, and the circuit has no redundancy: with two heads per layer, both "
               "layer-1 heads often become induction heads and ablating one leaves the other; here, ablating "
               "either head undoes in-context learning completely.",
        minutes=8),
    Exercise(
        name="induction-lower-learning-rate", experiment="induction", title="a third of the learning rate",
        question="With learning rate 1e-3 the phase change comes at about step 5,000 of 8,000. Train with 3e-4 "
                 "instead, for the same 8,000 steps. Will the phase change come at the same step, later but "
                 "within the run, or not at all?",
        args=("--lr", "3e-4", *_FEWER),
        smoke_args=("--lr", "3e-4"),
        check_text="no phase change within 8,000 steps: the repeated-token loss drops by less than 1 nat and no "
                   "layer-1 head scores above 0.2 as an induction head",
        check=_check_low_lr,
        answer="Not at all within the run: when this exercise was written, both seeds were still on the plateau "
               "at step 8,000 (drops of about 0.2 nats, induction scores 0.06). The plateau is a stretch of "
               "slow progress that the optimiser has to cross, and with smaller steps it crosses it more slowly; "
               "so the step at which a phase change appears says as much about the optimiser as about the task. "
               "Olsson et al. 2022 see their phase change at about the same point of training across model "
               "sizes, for one training setup; a different learning rate is a different setup.",
        minutes=5),
]


main = experiment.main_for(name="induction", doc=__doc__, Config=Config, presets=PRESETS, train=train,
                           analyze=analyze, check=check, plot=plot, figures=FIGURES,
                           guide_template=Path(__file__).parent / "guides" / "induction.md", exercises=EXERCISES)

if __name__ == "__main__":
    config.main_guard(main)
