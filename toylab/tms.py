"""The toy model of superposition (Elhage et al. 2022): data, model, loss, training step.

Anthropic's notebook recipe: features are 0 with probability S, else uniform in
[0, 1]; the model maps n features to m hidden dimensions and back,
x' = ReLU(W^T W x + b) (or without the ReLU, the linear model); the loss is the
importance-weighted squared error, mean over batch and features; AdamW with fresh
data every step.

Per-model hyperparameters (a dict ``hp`` with a model axis when vmapped):
``density`` (1 - S, a scalar), ``importance`` (``[n_features]``) and ``relu``
(1.0 for the ReLU model, 0.0 for the linear one). ``W`` is ``[n_features, n_hidden]``
as in the notebook: row ``W[i]`` is feature i's direction in the hidden space (the
paper's column ``W_i``).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from toylab import rng

Params = dict[str, jax.Array]


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def make_batch(key: jax.Array, density: jax.Array, n_features: int, batch_size: int,
               features_first: bool = False) -> jax.Array:
    """Features that are 0 with probability S = 1 - density, else uniform in [0, 1).

    One uniform u per feature does both jobs: the feature is on when u < density, and
    then u / density is itself uniform on [0, 1), independent of the mask (the same
    distribution as the notebook's two draws, with half the random numbers).
    ``features_first`` lays the batch out as ``[n_features, batch]``, which the training
    step uses (drawn from the same generator, with another layout of its counters).
    """
    if features_first:
        u = rng.uniform(key, (n_features, batch_size), split_axis=1)
    else:
        u = rng.uniform(key, (batch_size, n_features))
    return jnp.where(u < density, u / density, 0.0)


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def init_params(key: jax.Array, n_features: int, n_hidden: int) -> Params:
    """W ``[n_features, n_hidden]`` (row i = feature i's direction) and b_final ``[n_features]``.

    Xavier normal of one model: the notebook's torch init scales with the number of
    models trained together, so a model would depend on its neighbours.
    """
    std = (2.0 / (n_features + n_hidden)) ** 0.5
    return {"W": std * jax.random.normal(key, (n_features, n_hidden)), "b_final": jnp.zeros(n_features)}


def hidden(params: Params, x: jax.Array) -> jax.Array:
    """h = W x (``hook_hidden``): ``[batch, n_features] -> [batch, n_hidden]``; what an SAE reads."""
    return x @ params["W"]


def readout(params: Params, h: jax.Array, relu: jax.Array) -> jax.Array:
    """x' = ReLU(W^T h + b) from the hidden activations (``hook_out``), or without the ReLU."""
    out = h @ params["W"].T + params["b_final"]
    return jnp.where(relu, jax.nn.relu(out), out)


def forward(params: Params, x: jax.Array, relu: jax.Array) -> jax.Array:
    """x' = ReLU(W^T W x + b) for the ReLU model, W^T W x + b for the linear one."""
    return readout(params, hidden(params, x), relu)


def loss_fn(params: Params, x: jax.Array, hp: dict[str, jax.Array]) -> jax.Array:
    """Importance-weighted squared error, mean over batch and features (the notebook's convention)."""
    return jnp.mean(hp["importance"] * (x - forward(params, x, hp["relu"])) ** 2)


def loss_and_grad(params: Params, xt: jax.Array, hp: dict[str, jax.Array]) -> tuple[jax.Array, Params]:
    """``jax.value_and_grad(loss_fn)`` written out by hand, on a feature-major batch ``xt = x.T``.

    Why: on a CPU these feature-major contractions run 1.4x faster than the batch-major
    ones autodiff emits, and for the phase diagram's thousands of tiny vmapped models
    the hand-written form also avoids autodiff's transposed batched matmuls (a test
    holds the two equal). With err = x' - x and d = dL/d(out), dL/dW = x^T (d W) + d^T h
    and dL/db = sum over the batch of d.
    """
    W = params["W"]
    h = jnp.einsum("fh,fb->hb", W, xt)
    out = jnp.einsum("fh,hb->fb", W, h) + params["b_final"][:, None]
    importance = hp["importance"][:, None]
    err = jnp.where(hp["relu"], jax.nn.relu(out), out) - xt
    loss = jnp.mean(importance * err * err)
    d_out = jnp.where((out > 0) | (hp["relu"] == 0), (2.0 / xt.size) * importance * err, 0.0)
    d_hidden = jnp.einsum("fh,fb->hb", W, d_out)
    grad_W = jnp.einsum("fb,hb->fh", xt, d_hidden) + jnp.einsum("fb,hb->fh", d_out, h)
    return loss, {"W": grad_W, "b_final": d_out.sum(1)}


def expected_loss(params: Params, hp: dict[str, jax.Array], key: jax.Array, n_samples: int = 2**20,
                  batch: int = 2**14) -> tuple[jax.Array, jax.Array]:
    """A precise Monte Carlo estimate of the expected loss of one model: (mean, batch means ``[k]``).

    Why: the logged training loss averages a moving model over ~10^5 noisy samples,
    too noisy to tell two fits of the same cell apart. Here the parameters are fixed,
    the sample is ~10^6, and models called with the same ``key`` and density see the
    same inputs (common random numbers), so the noise of a *difference* between two
    fits is far smaller than that of either loss: compare fits by their batch means,
    paired, whose spread gives the standard error of the difference.
    """
    n_features = params["W"].shape[0]

    def one(i: jax.Array) -> jax.Array:
        x = make_batch(jax.random.fold_in(key, i), hp["density"], n_features, batch)
        return loss_fn(params, x, hp)

    means = jax.lax.map(one, jnp.arange(n_samples // batch))
    return means.mean(), means


# ---------------------------------------------------------------------------
# Training step
# ---------------------------------------------------------------------------


def make_train(*, n_features: int, n_hidden: int, batch_size: int, lr: float, weight_decay: float,
               sample: Callable[[jax.Array, dict, int], jax.Array] | None = None) -> tuple[Callable, Callable]:
    """Pure ``init(key, hp)`` and ``step(state, hp, t)`` of one model, for ``toylab.train.train_models``.

    AdamW (torch's betas and eps); the batch of step t depends on (the model's key, t) alone.
    ``hp["lr"]`` and ``hp["weight_decay"]``, where present, override ``lr`` and ``weight_decay`` per model.
    ``sample(key, hp, batch) -> [batch, n_features]`` replaces the paper's independent
    sparse features (``make_batch`` at ``hp["density"]``) with another distribution.
    """
    def opt(hp: dict[str, jax.Array]) -> optax.GradientTransformation:
        # hp["lr"] / hp["weight_decay"], when a sweep varies them per model; else the constants
        return optax.adamw(hp.get("lr", lr), b1=0.9, b2=0.999, eps=1e-8, weight_decay=hp.get("weight_decay", weight_decay))

    def init(key: jax.Array, hp: dict[str, jax.Array]) -> dict:
        params = init_params(key, n_features, n_hidden)
        return {"params": params, "opt_state": opt(hp).init(params), "key": rng.key_words(jax.random.fold_in(key, 1))}

    def step(state: dict, hp: dict[str, jax.Array], t: jax.Array) -> tuple[dict, dict]:
        data_key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), t)  # depends on t alone
        xt = (make_batch(data_key, hp["density"], n_features, batch_size, features_first=True) if sample is None
              else sample(data_key, hp, batch_size).T)
        loss, grads = loss_and_grad(state["params"], xt, hp)
        updates, opt_state = opt(hp).update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt_state": opt_state, "key": state["key"]}, {"loss": loss}

    return init, step
