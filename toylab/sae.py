"""Sparse autoencoders as Equinox modules, with SAELens names, five architectures, and metrics.

Row-vector convention, as SAELens and TransformerLens: pre-activations
z = (x - b_dec) W_enc + b_enc (or x W_enc + b_enc without ``apply_b_dec_to_input``),
latents f = sparsify(z), reconstruction x_hat = f W_dec + b_dec, so **row i of W_dec
is latent i's direction**. Shapes: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, ``threshold [d_sae]``.

Architectures (``SAEConfig.architecture``), each with its paper's loss and dead-latent remedy;
the reconstruction term is the squared error summed over ``d_in``, mean over the batch
(SAELens' convention, so an ``l1_coefficient`` means what it means there):

- ``standard``: Towards Monosemanticity (Bricken et al. 2023): f = ReLU(z), loss
  ||x - x_hat||^2 + lambda ||f||_1, decoder rows kept at unit norm (the radial part of
  their gradient removed before the step, rows renormalised after it), dead latents
  resampled from badly reconstructed inputs, their Adam moments reset.
- ``april``: Anthropic's April-2024 update (and Templeton et al. 2024): no pre-encoder
  bias, L1 weighted by decoder-row norms, lambda Sum_i f_i ||W_dec,i||, no norm
  constraint, no resampling; decoder rows start at norm 0.1, W_enc = W_dec^T at init.
- ``topk``: Gao et al. 2024: keep the k largest z per example (then ReLU); loss is the
  MSE normalised by the batch's variance plus alpha AuxK (alpha = 1/32): the k_aux
  largest pre-activations of dead latents reconstruct the detached residual.
- ``batchtopk``: Bussmann et al. 2024: the B k largest ReLU(z) over a batch of B; AuxK as
  TopK; at inference a single threshold (an EMA of the smallest kept activation).
- ``jumprelu``: Rajamanoharan et al. 2024: f = z H(z - theta), loss ||x - x_hat||^2 +
  lambda Sum_i H(z_i - theta_i) (an L0 penalty); theta learns through straight-through
  pseudo-derivatives with a rectangle kernel of width ``jumprelu_bandwidth``, stored as
  theta itself (a log-parameterised threshold froze under Adam: SAELens issue #718).

The sparsity coefficient (lambda, or k for the TopK family) is per model: it enters the
compiled program as an array, so a grid of coefficients x seeds is one vmapped program.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

ARCHITECTURES = ("standard", "april", "topk", "batchtopk", "jumprelu")
UNIT_NORM = ("standard", "topk", "batchtopk", "jumprelu")  # decoder rows held at unit norm


@dataclasses.dataclass(frozen=True, kw_only=True)
class SAEConfig:
    d_in: int  # width of the activations the SAE reads
    d_sae: int  # number of latents (the dictionary size)
    architecture: str = "standard"  # one of ARCHITECTURES
    apply_b_dec_to_input: bool = True  # subtract b_dec before encoding (SAELens default; april: False)
    k: int = 8  # TopK / BatchTopK: the largest k a model of the grid may use (a model's own k is per-model)
    aux_k: int = 0  # AuxK: dead latents that reconstruct the residual (0: d_in // 2, Gao et al.'s heuristic)
    aux_coefficient: float = 1 / 32  # AuxK's weight (Gao et al.)
    dead_window: int = 1000  # steps without firing after which a latent counts as dead (SAELens' window)
    resample_every: int = 2500  # standard: resample dead latents every this many steps (ARENA's toy schedule)
    resample_until: float = 0.8  # standard: no resampling in the last 20% of training, so it can settle
    jumprelu_bandwidth: float = 0.05  # JumpReLU: width of the rectangle kernel of the pseudo-derivative
    jumprelu_init_threshold: float = 0.01  # JumpReLU: initial theta (SAELens default)
    decoder_init_norm: float = 0.1  # april: initial norm of the decoder rows (SAELens default)
    l1_warm_up_steps: int = 0  # the sparsity coefficient rises linearly from 0 over these steps
    normalize_activations: str = "none"  # "none" or "expected_average_only_in" (scale so E||x|| = sqrt(d_in))

    def __post_init__(self) -> None:
        from toylab.config import require

        require(self.architecture in ARCHITECTURES, "architecture", f"one of {', '.join(ARCHITECTURES)}",
                self.architecture)
        for f in ("d_in", "d_sae", "k", "dead_window", "resample_every"):
            require(getattr(self, f) > 0, f, "a positive integer", getattr(self, f))
        require(self.aux_k >= 0, "aux_k", ">= 0", self.aux_k)
        require(self.jumprelu_bandwidth > 0, "jumprelu_bandwidth", "positive", self.jumprelu_bandwidth)
        require(self.normalize_activations in ("none", "expected_average_only_in"), "normalize_activations",
                "none or expected_average_only_in", self.normalize_activations)

    @property
    def n_aux(self) -> int:
        return min(self.aux_k or max(self.d_in // 2, 1), self.d_sae)


class SAE(eqx.Module):
    """A sparse autoencoder (SAELens names and shapes)."""

    W_enc: jax.Array  # [d_in, d_sae]
    b_enc: jax.Array  # [d_sae]
    W_dec: jax.Array  # [d_sae, d_in]: row i is latent i's direction
    b_dec: jax.Array  # [d_in]
    threshold: jax.Array  # [d_sae]: JumpReLU's theta, BatchTopK's inference threshold (else unused, 0)
    cfg: SAEConfig = eqx.field(static=True)


def init(key: jax.Array, cfg: SAEConfig) -> SAE:
    """Tied init (W_enc = W_dec^T), zero biases; decoder rows unit norm, or 0.1 for ``april``."""
    d = jax.random.normal(key, (cfg.d_sae, cfg.d_in))
    norm = cfg.decoder_init_norm if cfg.architecture == "april" else 1.0
    W_dec = norm * d / jnp.linalg.norm(d, axis=-1, keepdims=True)
    # float32, not a weakly typed Python float: after a step the state is strongly typed, and a jitted
    # loop given a state whose types change compiles again (train_models also guards against it)
    theta = jnp.full(cfg.d_sae, cfg.jumprelu_init_threshold if cfg.architecture == "jumprelu" else 0.0, jnp.float32)
    return SAE(W_dec.T, jnp.zeros(cfg.d_sae), W_dec, jnp.zeros(cfg.d_in), theta, cfg)


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


@jax.custom_vjp
def _centred_matmul(x: jax.Array, b: jax.Array, W: jax.Array) -> jax.Array:
    """(x - b) W, for ``x [..., d_in]``, ``b [d_in]``, ``W [d_in, d_sae]``.

    Why a custom gradient: autodiff takes b's gradient as -Sum_batch (g W^T), a full matmul whose
    rows are summed afterwards (XLA does not reorder them); -(Sum_batch g) W^T is one
    vector-matrix product. On 2 CPU cores that matmul was an eighth of a standard SAE's step.
    """
    return (x - b) @ W


def _centred_fwd(x, b, W):
    x_in = x - b
    return x_in @ W, (x_in, W)


def _centred_bwd(res, g):
    x_in, W = res
    g_rows, x_rows = g.reshape(-1, g.shape[-1]), x_in.reshape(-1, x_in.shape[-1])
    # x's cotangent is computed only if something needs it (XLA drops it when x is data)
    return g @ W.T, -(g_rows.sum(0) @ W.T), x_rows.T @ g_rows


_centred_matmul.defvjp(_centred_fwd, _centred_bwd)


@jax.custom_vjp
def _decode_matmul(f: jax.Array, W: jax.Array) -> jax.Array:
    """f W, for latents ``f [..., d_sae]`` and a decoder ``W [d_sae, d_in]``.

    Why a custom gradient: W's gradient f^T g contracts the batch, the leading axis of both
    operands, and XLA's CPU backend runs that product 1.7x slower than g^T f (the same numbers
    laid out ``[d_in, d_sae]``). So g^T f is computed and transposed; the barrier stops XLA from
    folding the transpose back into the slow product (docs/sae-speed.md).
    """
    return f @ W


def _decode_fwd(f, W):
    return f @ W, (f, W)


def _decode_bwd(res, g):
    f, W = res
    g_rows, f_rows = g.reshape(-1, g.shape[-1]), f.reshape(-1, f.shape[-1])
    return g @ W.T, jax.lax.optimization_barrier(g_rows.T @ f_rows).T


_decode_matmul.defvjp(_decode_fwd, _decode_bwd)


def pre_acts(sae: SAE, x: jax.Array) -> jax.Array:
    """z (``hook_sae_acts_pre``): ``[..., d_in] -> [..., d_sae]``."""
    if sae.cfg.apply_b_dec_to_input:
        return _centred_matmul(x, sae.b_dec, sae.W_enc) + sae.b_enc
    return x @ sae.W_enc + sae.b_enc


FLOAT_COUNT_LIMIT = 2**24  # rows shorter than this count in float32 (exact), longer ones in int32


def kth_largest(z: jax.Array, k: jax.Array) -> jax.Array:
    """``[..., 1]``: the k-th largest entry of each row of z counting ties, as
    ``lax.top_k(z, k)[0][..., k - 1]``, for a traced k.

    Why not ``lax.top_k``: XLA's CPU backend sorts every row, so its cost grows with the row
    and with k; here 32 bisection steps on the floats' bit patterns (as integers ordered like
    the floats) each count a row once, whatever k. Measured on 2 CPU cores: 1.1x to 2.5x faster
    for TopK's rows, 2x for AuxK's k = 32, and the synthetic TopK and BatchTopK grids train in
    428 s instead of 638 s (docs/sae-speed.md).
    """
    bits = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(z), jnp.int32)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: flip the magnitude bits
    k = jnp.asarray(k, jnp.int32)
    # Counts summed in float32, exact below 2^24 (any order of summation gives the same integer): XLA's CPU
    # backend sums a float32 row with a vectorised reduction, 1.3x to 1.4x faster than an int32 one. Not a
    # bfloat16 mask: 1.3x faster again on a CPU with AVX-512's bfloat16 instructions, 6x slower on one
    # without (docs/sae-speed.md).
    exact = z.shape[-1] < FLOAT_COUNT_LIMIT

    def count(m: jax.Array) -> jax.Array:
        return (jnp.sum(m, -1, keepdims=True, dtype=jnp.float32) if exact
                else jnp.sum(m, -1, keepdims=True, dtype=jnp.int32))

    k = k.astype(jnp.float32) if exact else k
    lo = jnp.full(z.shape[:-1] + (1,), jnp.iinfo(jnp.int32).min, jnp.int32)
    hi = jnp.full_like(lo, jnp.iinfo(jnp.int32).max)

    def body(_, lo_hi):  # invariant: count(key >= lo) >= k > count(key > hi)
        lo, hi = lo_hi
        mid = (lo >> 1) + (hi >> 1) + ((lo | hi) & 1)  # ceil((lo + hi) / 2) without overflow
        ok = count(key >= mid) >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    lo, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
    return jax.lax.bitcast_convert_type(lo ^ ((lo >> 31) & 0x7FFFFFFF), z.dtype)


def topk_mask(z: jax.Array, k: jax.Array, k_max: int) -> jax.Array:
    """Where z is among its row's k largest (k may be traced, in [1, the static ``k_max``])."""
    return z >= kth_largest(z, jnp.clip(k, 1, k_max))


def batch_topk_mask(z: jax.Array, k: jax.Array, k_max: int) -> tuple[jax.Array, jax.Array]:
    """Where ReLU(z) is among the B k largest of the whole batch ``[B, d_sae]``; and the smallest kept value."""
    B = z.shape[0]
    kth = kth_largest(jax.nn.relu(z).reshape(1, -1), B * jnp.clip(k, 1, k_max))[0, 0]
    return (z >= kth) & (z > 0), kth


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _jump(z: jax.Array, theta: jax.Array, eps: float) -> jax.Array:
    return z * (z > theta)


def _jump_fwd(z, theta, eps):
    return _jump(z, theta, eps), (z, theta)


def _rect(u: jax.Array) -> jax.Array:
    return (jnp.abs(u) < 0.5).astype(u.dtype)


def _jump_bwd(eps, res, g):
    z, theta = res
    d_theta = -(theta / eps) * _rect((z - theta) / eps) * g  # Rajamanoharan et al. 2024, eq. 11
    return g * (z > theta), d_theta.reshape(-1, theta.shape[-1]).sum(0)


_jump.defvjp(_jump_fwd, _jump_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _step(z: jax.Array, theta: jax.Array, eps: float) -> jax.Array:
    return (z > theta).astype(z.dtype)


def _step_fwd(z, theta, eps):
    return _step(z, theta, eps), (z, theta)


def _step_bwd(eps, res, g):
    z, theta = res
    d_theta = -(1.0 / eps) * _rect((z - theta) / eps) * g  # the L0 term's pseudo-derivative; none to z
    return jnp.zeros_like(z), d_theta.reshape(-1, theta.shape[-1]).sum(0)


_step.defvjp(_step_fwd, _step_bwd)


def encode(sae: SAE, x: jax.Array, k: jax.Array | None = None) -> jax.Array:
    """Latents f (``hook_sae_acts_post``) at inference: ``[..., d_in] -> [..., d_sae]``.

    TopK keeps each example's k largest; BatchTopK and JumpReLU use their thresholds.
    """
    z = pre_acts(sae, x)
    arch = sae.cfg.architecture
    if arch in ("standard", "april"):
        return jax.nn.relu(z)
    if arch == "topk":
        return jnp.where(topk_mask(z, sae.cfg.k if k is None else k, sae.cfg.k), jax.nn.relu(z), 0.0)
    return jnp.where(z > sae.threshold, z, 0.0)  # jumprelu, batchtopk


def decode(sae: SAE, f: jax.Array) -> jax.Array:
    """x_hat (``hook_sae_recons``): ``[..., d_sae] -> [..., d_in]``."""
    return _decode_matmul(f, sae.W_dec) + sae.b_dec


def forward(sae: SAE, x: jax.Array, k: jax.Array | None = None) -> jax.Array:
    return decode(sae, encode(sae, x, k))


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------


def loss(sae: SAE, x: jax.Array, coefficient: jax.Array, dead: jax.Array | None = None, *,
         aux_select: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The architecture's training loss on a batch ``x [B, d_in]`` and its parts.

    ``coefficient``: lambda (standard, april, jumprelu) or k (topk, batchtopk).
    ``dead``: ``[d_sae]`` bool, the latents AuxK may use (TopK family; None: none).
    ``aux_select``: False when at most ``n_aux`` latents are dead, so AuxK takes them all (the same
    latents as the selection would, without its cost).
    Returns (loss, aux) where aux holds ``mse_loss``, ``sparsity_loss``, ``aux_loss``,
    the latents ``f`` ``[B, d_sae]`` and ``kth`` (BatchTopK's smallest kept value).
    """
    cfg = sae.cfg
    arch = cfg.architecture
    z = pre_acts(sae, x)
    kth = jnp.float32(0.0)
    if arch == "jumprelu":
        f = _jump(z, sae.threshold, cfg.jumprelu_bandwidth)
    elif arch == "topk":
        f = jnp.where(topk_mask(z, coefficient, cfg.k), jax.nn.relu(z), 0.0)
    elif arch == "batchtopk":
        mask, kth = batch_topk_mask(z, coefficient, cfg.k)
        f = jnp.where(mask, z, 0.0)
    else:
        f = jax.nn.relu(z)
    x_hat = decode(sae, f)
    sq = jnp.sum((x - x_hat) ** 2, axis=-1)  # per example, summed over d_in
    aux_loss = jnp.float32(0.0)
    if arch in ("topk", "batchtopk"):
        norm = jnp.mean(jnp.sum((x - x.mean(0)) ** 2, -1))  # Gao et al.: MSE over the data's variance
        mse = sq.mean() / norm
        if dead is not None:
            aux_mask = dead
            if aux_select:
                z_dead = jnp.where(dead, z, -jnp.inf)
                aux_mask = (z_dead >= kth_largest(z_dead, cfg.n_aux)) & dead
            e = jax.lax.stop_gradient(x - x_hat)
            e_hat = _decode_matmul(jnp.where(aux_mask, jax.nn.relu(z), 0.0), sae.W_dec)  # no bias (Gao et al. A.2)
            aux_loss = jnp.where(dead.any(), jnp.mean(jnp.sum((e - e_hat) ** 2, -1)) / norm, 0.0)
        sparsity = jnp.float32(0.0)
        total = mse + cfg.aux_coefficient * aux_loss
    else:
        mse = sq.mean()
        if arch == "jumprelu":
            sparsity = coefficient * _step(z, sae.threshold, cfg.jumprelu_bandwidth).sum(-1).mean()
        elif arch == "april":
            sparsity = coefficient * (f * jnp.linalg.norm(sae.W_dec, axis=-1)).sum(-1).mean()
        else:
            sparsity = coefficient * f.sum(-1).mean()
        total = mse + sparsity
    return total, {"mse_loss": mse, "sparsity_loss": sparsity, "aux_loss": aux_loss, "f": f, "kth": kth}


# ---------------------------------------------------------------------------
# Training step (for toylab.train.train_models)
# ---------------------------------------------------------------------------


def _unit_rows(W: jax.Array) -> jax.Array:
    return W / jnp.maximum(jnp.linalg.norm(W, axis=-1, keepdims=True), 1e-8)


def _project_out_radial(grad_W: jax.Array, W: jax.Array) -> jax.Array:
    """Remove from each decoder row's gradient its component along the row (unit-norm rows)."""
    u = _unit_rows(W)
    return grad_W - jnp.sum(grad_W * u, -1, keepdims=True) * u


def make_train(cfg: SAEConfig, sample: Callable[[jax.Array, Any, int], jax.Array], *, n_steps: int,
               batch_size: int, lr: float = 1e-3, grad_clip: float | None = None,
               data_key: jax.Array | None = None, grid_axis: str | None = None) -> tuple[Callable, Callable]:
    """Pure ``init(key, hp)`` and ``step(state, hp, t)`` of one SAE, for ``train_models``.

    ``sample(key, hp, batch) -> [batch, d_in]``: the activations of step t are drawn
    from (a data key, t) alone, so a resumed run is bitwise the same. The data key is
    ``data_key`` when given: every SAE of a vmapped grid then reads the same batch at
    step t, drawn once per step rather than once per SAE (and the encoder's matmul
    becomes one wide matmul over the grid); seeds then differ in their initialisation
    and resampling only. Without it, each SAE draws from its own key. ``hp``
    holds ``coefficient`` (lambda or k), optionally ``scale`` (the activation
    normalisation; absent for none) and whatever ``sample`` reads. Adam (0.9, 0.999), no weight decay.

    ``grid_axis``: the name of the vmapped axis of a grid of SAEs trained together (``train.MODEL_AXIS``
    under ``train_models``). TopK and BatchTopK then choose AuxK's work for the whole grid from its
    largest number of dead latents: none dead, no AuxK (its loss is exactly 0); at most ``n_aux``, AuxK
    on every dead latent without the selection (the same latents); more, the full AuxK. One choice per
    step for the grid keeps ``lax.switch`` a real branch (per SAE, vmap would run all three).
    """
    chain = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
    opt = optax.chain(*chain, optax.adam(lr, b1=0.9, b2=0.999))
    resample_stop = int(cfg.resample_until * n_steps)

    def init_state(key: jax.Array, hp: Any) -> dict:
        sae = init(jax.random.fold_in(key, 0), cfg)
        return {"sae": sae, "opt_state": opt.init(sae), "key": jax.random.key_data(jax.random.fold_in(key, 1)),
                "since_fired": jnp.zeros(cfg.d_sae, jnp.int32)}

    def step(state: dict, hp: Any, t: jax.Array) -> tuple[dict, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), t)
        x_key = jax.random.fold_in(key, 0) if data_key is None else jax.random.fold_in(data_key, t)
        x = sample(x_key, hp, batch_size)
        if "scale" in hp:  # absent when 1: a shared batch then stays one array, not one per SAE
            x = x * hp["scale"]
        sae = state["sae"]
        dead = state["since_fired"] >= cfg.dead_window
        warm = jnp.minimum(1.0, (t + 1) / cfg.l1_warm_up_steps) if cfg.l1_warm_up_steps else 1.0
        coef = hp["coefficient"] if cfg.architecture in ("topk", "batchtopk") else hp["coefficient"] * warm
        grad_fn = jax.value_and_grad(loss, has_aux=True)
        if cfg.architecture in ("topk", "batchtopk"):
            # Branches: 0 no AuxK, 1 AuxK on every dead latent, 2 the full AuxK. The index must be the same
            # for every SAE of a vmapped grid (else vmap runs all three): without grid_axis it comes from t
            # (no latent can be dead before step dead_window), with it from the grid's largest dead count.
            if grid_axis is None:
                branch = jnp.where(t >= cfg.dead_window, 2, 0)
            else:
                most = jax.lax.pmax(jnp.sum(dead, dtype=jnp.int32), grid_axis)
                branch = jnp.where(most == 0, 0, jnp.where(most <= cfg.n_aux, 1, 2))
            (total, aux), grads = jax.lax.switch(branch, [lambda: grad_fn(sae, x, coef, None),
                                                          lambda: grad_fn(sae, x, coef, dead, aux_select=False),
                                                          lambda: grad_fn(sae, x, coef, dead)])
        else:
            (total, aux), grads = grad_fn(sae, x, coef, dead)
        if cfg.architecture in UNIT_NORM:
            grads = eqx.tree_at(lambda s: s.W_dec, grads, _project_out_radial(grads.W_dec, sae.W_dec))
        updates, opt_state = opt.update(grads, state["opt_state"], sae)
        sae = eqx.apply_updates(sae, updates)
        if cfg.architecture in UNIT_NORM:
            sae = eqx.tree_at(lambda s: s.W_dec, sae, _unit_rows(sae.W_dec))
        if cfg.architecture == "jumprelu":
            sae = eqx.tree_at(lambda s: s.threshold, sae, jnp.maximum(sae.threshold, 1e-6))
        if cfg.architecture == "batchtopk":  # inference threshold: EMA (rate 0.01, SAELens) of the smallest kept
            theta = jnp.where(t == 0, aux["kth"], 0.99 * sae.threshold + 0.01 * aux["kth"])
            sae = eqx.tree_at(lambda s: s.threshold, sae, theta)
        fired = (aux["f"] > 0).any(0)
        since = jnp.where(fired, 0, state["since_fired"] + 1)
        if cfg.architecture == "standard":
            def do_resample(args):
                sae, opt_state, since = args
                err = jnp.sum((x - decode(sae, encode(sae, x))) ** 2, -1)
                return resample(sae, opt_state, since, x, err, jax.random.fold_in(key, 1), dead, opt)

            # t is the same for every model of a vmapped grid, so this stays a real branch: the
            # resampling pass costs nothing on the other steps.
            now = (t > 0) & (t % cfg.resample_every == 0) & (t < resample_stop)
            sae, opt_state, since = jax.lax.cond(now, do_resample, lambda args: args, (sae, opt_state, since))
        new = {"sae": sae, "opt_state": opt_state, "key": state["key"], "since_fired": since}
        return new, {"loss": total, "mse_loss": aux["mse_loss"], "l0": (aux["f"] > 0).sum(-1).mean(),
                     "dead_features": dead.mean()}

    return init_state, step


def resample(sae: SAE, opt_state: Any, since: jax.Array, x: jax.Array, err: jax.Array, key: jax.Array,
             which: jax.Array, opt: optax.GradientTransformation) -> tuple[SAE, Any, jax.Array]:
    """Towards Monosemanticity's resampling of the latents in ``which`` ``[d_sae]``.

    Each gets an input drawn with probability proportional to its squared
    reconstruction error; its decoder row becomes that input (minus b_dec), unit norm;
    its encoder column the same direction at 0.2 x the alive latents' mean encoder
    norm; its b_enc 0; and its Adam moments are reset.
    """
    idx = jax.random.choice(key, x.shape[0], (sae.cfg.d_sae,), p=err**2 / jnp.maximum(jnp.sum(err**2), 1e-30))
    u = _unit_rows(x[idx] - sae.b_dec)
    enc_norm = jnp.linalg.norm(sae.W_enc, axis=0)
    alive = ~which
    scale = 0.2 * jnp.sum(enc_norm * alive) / jnp.maximum(alive.sum(), 1)
    col = which[None, :]
    sae = eqx.tree_at(lambda s: (s.W_dec, s.W_enc, s.b_enc), sae,
                      (jnp.where(which[:, None], u, sae.W_dec), jnp.where(col, scale * u.T, sae.W_enc),
                       jnp.where(which, 0.0, sae.b_enc)))

    def reset(moment: Any) -> Any:
        return eqx.tree_at(lambda s: (s.W_dec, s.W_enc, s.b_enc), moment,
                           (jnp.where(which[:, None], 0.0, moment.W_dec), jnp.where(col, 0.0, moment.W_enc),
                            jnp.where(which, 0.0, moment.b_enc)))

    opt_state = optax.tree_utils.tree_map_params(opt, reset, opt_state, is_leaf=lambda v: isinstance(v, SAE),
                                                 transform_non_params=lambda v: v)
    return sae, opt_state, jnp.where(which, 0, since)


def activation_scale(x: jax.Array, mode: str) -> float:
    """SAELens' ``normalize_activations``: the scalar that makes E||x|| = sqrt(d_in), or 1 for none."""
    if mode == "none":
        return 1.0
    return float(np.sqrt(x.shape[-1]) / np.mean(np.linalg.norm(np.asarray(x), axis=-1)))


def fold_activation_norm_scaling_factor(sae: SAE, scale: float) -> SAE:
    """An SAE trained on ``scale * x`` as one that reads and writes ``x`` (SAELens' fold)."""
    return eqx.tree_at(lambda s: (s.W_enc, s.W_dec, s.b_dec, s.threshold), sae,
                       (sae.W_enc * scale, sae.W_dec / scale, sae.b_dec / scale, sae.threshold))


# ---------------------------------------------------------------------------
# Metrics (exact definitions: SAELens and the papers)
# ---------------------------------------------------------------------------


def l0(f: jax.Array) -> jax.Array:
    """Mean number of active latents per example."""
    return jnp.mean(jnp.sum(f > 0, -1))


def fvu(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Fraction of variance unexplained, at dataset level: Sum ||x - x_hat||^2 / Sum ||x - mean(x)||^2."""
    return jnp.sum((x - x_hat) ** 2) / jnp.sum((x - x.mean(0)) ** 2)


def dead_latents(f: jax.Array) -> jax.Array:
    """Latents that never fire on the given sample ``[N, d_sae]`` (state the window: N examples)."""
    return ~(f > 0).any(0)


def cosines(W_dec: jax.Array, truth: jax.Array) -> jax.Array:
    """cos(g_i, u_j): ``[n_true, d_sae]`` between true directions ``[n, d]`` and decoder rows."""
    return _unit_rows(truth) @ _unit_rows(W_dec).T


def mmcs(W_dec: jax.Array, truth: jax.Array) -> jax.Array:
    """Mean over true features of the best signed cosine to any decoder row (Sharkey et al. 2022)."""
    return cosines(W_dec, truth).max(-1).mean()


def recovered(W_dec: jax.Array, truth: jax.Array, tau: float) -> jax.Array:
    """How many true features have a decoder row at cosine > tau."""
    return jnp.sum(cosines(W_dec, truth).max(-1) > tau)


def evaluate(sae: SAE, x: jax.Array, truth: jax.Array | None = None, k: jax.Array | None = None
             ) -> dict[str, jax.Array]:
    """L0, FVU, dead latents (never firing on ``x``), and recovery of ``truth`` ``[n, d_in]`` if given."""
    f = encode(sae, x, k)
    out = {"l0": l0(f), "fvu": fvu(x, decode(sae, f)), "dead": dead_latents(f).sum()}
    if truth is not None:
        out |= {"mmcs": mmcs(sae.W_dec, truth), "recovered_90": recovered(sae.W_dec, truth, 0.9),
                "recovered_99": recovered(sae.W_dec, truth, 0.99)}
    return out


def random_mmcs(n_true: int, d: int, d_sae: int, draws: int = 20, seed: int = 0) -> float:
    """MMCS of random unit decoder rows against random unit truths: the baseline MMCS must beat."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(draws):
        g, u = rng.normal(size=(n_true, d)), rng.normal(size=(d_sae, d))
        vals.append(float(mmcs(jnp.asarray(u), jnp.asarray(g))))
    return float(np.mean(vals))


# ---------------------------------------------------------------------------
# SAEs on a trained model's activations
# ---------------------------------------------------------------------------
# A lab model is small enough that every activation of interest fits in memory, so an SAE
# on it trains in one ``lax.scan`` over a fixed activation set (``fit``), in seconds, with no
# checkpoints; ``make_train`` with ``train.train_models`` is for long runs. Splicing follows
# SAELens: the activation is replaced by the SAE's reconstruction (``splice_hook``) and the
# model's loss is compared with the clean run and with the activation zero-ablated
# (``splice_scores``: SAELens's ``ce_loss_with_sae`` / ``ce_loss_without_sae`` /
# ``ce_loss_with_ablation``); a latent is ablated with the SAE's error term kept, so only
# that latent's write changes (``ablate_latent_hook``).


def collect(model: Any, tokens: jax.Array, name: str, positions: Any = slice(None), *,
            last_only: bool = False) -> jax.Array:
    """The activations ``[n, d]`` of hook ``name`` (shaped ``[batch, pos, d]``) at ``positions``, rows
    ordered batch-major, from ``transformer.run_with_cache``."""
    from toylab import transformer as tf

    _, cache = tf.run_with_cache(model, tokens, [name], last_only=last_only)
    x = cache[name]
    if x.ndim != 3:
        raise ValueError(f"collect reads [batch, pos, d] hooks; {name} is {x.shape}")
    return x[:, positions].reshape(-1, x.shape[-1])


def fit(key: jax.Array, cfg: SAEConfig, x: jax.Array, coefficient: jax.Array, *, n_steps: int, batch_size: int,
        lr: float = 1e-3) -> tuple[SAE, dict[str, jax.Array]]:
    """Train one SAE on the fixed activations ``x [n, d_in]`` (batches drawn with replacement) in one scan.

    Returns the SAE (reading and writing ``x``'s own scale: a normalisation is folded back in)
    and its per-step logs. Pure: ``vmap`` it over keys and coefficients for a grid.
    """
    scale = (jnp.sqrt(x.shape[-1]) / jnp.mean(jnp.linalg.norm(x, axis=-1))
             if cfg.normalize_activations != "none" else None)
    init_state, step = make_train(cfg, lambda k, hp, b: x[jax.random.randint(k, (b,), 0, x.shape[0])],
                                  n_steps=n_steps, batch_size=batch_size, lr=lr)
    hp = {"coefficient": coefficient} | ({} if scale is None else {"scale": scale})
    state, logs = jax.lax.scan(lambda s, t: step(s, hp, t), init_state(key, hp), jnp.arange(n_steps))
    sae = state["sae"]
    return (sae if scale is None else fold_activation_norm_scaling_factor(sae, scale)), logs


def splice_hook(name: str, sae: SAE, k: jax.Array | None = None) -> tuple[str, Callable]:
    """A forward hook replacing hook ``name``'s activation by the SAE's reconstruction."""
    return name, lambda x, _: forward(sae, x, k)


def ablate_latent_hook(name: str, sae: SAE, latent: jax.Array, k: jax.Array | None = None,
                       position: Any = None) -> tuple[str, Callable]:
    """A forward hook removing one latent's write ``f_i(x) W_dec[i]`` from the activation (at ``position`` of
    axis 1, or everywhere); the SAE's reconstruction error stays in, so nothing else changes."""

    def hook(x: jax.Array, _: str) -> jax.Array:
        new = x - encode(sae, x, k)[..., latent, None] * sae.W_dec[latent]
        if position is None:
            return new
        at = (jnp.arange(x.shape[1]) == position).reshape((1, -1) + (1,) * (x.ndim - 2))
        return jnp.where(at, new, x)

    return name, hook


def splice_scores(model: Any, tokens: jax.Array, name: str, sae: SAE, loss_fn: Callable[[jax.Array], jax.Array],
                  k: jax.Array | None = None, *, last_only: bool = False) -> dict[str, jax.Array]:
    """``loss_fn(logits)`` clean, with the SAE spliced in at ``name``, and with the activation zero-ablated;
    ``recovered`` = (zero - spliced) / (zero - clean), SAELens's "CE loss score" (1: as good as clean)."""
    from toylab import transformer as tf

    clean = loss_fn(tf.forward(model, tokens, last_only=last_only))
    spliced = loss_fn(tf.run_with_hooks(model, tokens, [splice_hook(name, sae, k)], last_only=last_only))
    zero = loss_fn(tf.run_with_hooks(model, tokens, [(name, lambda x, _: jnp.zeros_like(x))], last_only=last_only))
    return {"clean": clean, "spliced": spliced, "zero_ablated": zero, "recovered": (zero - spliced) / (zero - clean)}
