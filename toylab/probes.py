"""Linear probes: is a quantity linearly present in an activation?

Two probes, both deterministic and cheap at toy widths, so a probe is fitted for every
hook, position and snapshot in one ``vmap``:

* ``fit_ridge``: ridge regression for continuous targets, in closed form;
* ``fit_logistic``: L2-regularised multinomial logistic regression for classes, by a
  fixed number of L-BFGS steps from zero (the loss is convex: one optimum).

Activations are standardised with the training split's statistics, as ARENA's probing
exercises do, so one ridge strength suits every hook. A probe's score means little on its
own (Li et al. 2023 and Nanda et al. 2023 on Othello; Hewitt & Liang 2019 on control
tasks): always report it beside its controls, e.g. the same probe on an untrained model,
at a hook where the information cannot exist yet, and on shuffled labels (``shuffled``).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class Probe(NamedTuple):
    """``predict(x) = ((x - mean) / std) @ W + b``."""

    W: jax.Array  # [d, n_targets] (ridge) or [d, n_classes] (logistic)
    b: jax.Array  # [n_targets] or [n_classes]
    mean: jax.Array  # [d] training activations' mean
    std: jax.Array  # [d] training activations' std (1 where constant)


def _standardise(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    mean = x.mean(0)
    std = x.std(0)
    return mean, jnp.where(std > 1e-6 * (jnp.abs(mean).max() + 1e-12), std, 1.0)


def predict(probe: Probe, x: jax.Array) -> jax.Array:
    """Targets (ridge) or class logits (logistic) ``[n, k]`` for activations ``x [n, d]``."""
    return ((x - probe.mean) / probe.std) @ probe.W + probe.b


def fit_ridge(x: jax.Array, y: jax.Array, alpha: float = 1e-3) -> Probe:
    """Ridge regression of ``y [n, k]`` on ``x [n, d]``: ``W = (X'X + alpha n I)^-1 X'Y`` on standardised X.

    ``alpha`` is per sample, so it means the same for any number of samples.
    """
    mean, std = _standardise(x)
    xs = (x - mean) / std
    y_mean = y.mean(0)
    n, d = xs.shape
    W = jnp.linalg.solve(xs.T @ xs + alpha * n * jnp.eye(d, dtype=x.dtype), xs.T @ (y - y_mean))
    return Probe(W, y_mean, mean, std)


def r2(y: jax.Array, y_hat: jax.Array) -> jax.Array:
    """Coefficient of determination per target ``[k]``: 1 - SSE / SST about the targets' own mean."""
    sse = ((y - y_hat) ** 2).sum(0)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    return 1.0 - sse / jnp.maximum(sst, 1e-30)


def fit_logistic(x: jax.Array, labels: jax.Array, n_classes: int, l2: float = 1e-3, steps: int = 100) -> Probe:
    """Multinomial logistic regression of int ``labels [n]`` on ``x [n, d]``, L2 penalty ``l2 |W|^2 / 2``."""
    mean, std = _standardise(x)
    xs = (x - mean) / std
    onehot = jax.nn.one_hot(labels, n_classes, dtype=x.dtype)

    def loss(p):
        W, b = p
        return optax.softmax_cross_entropy(xs @ W + b, onehot).mean() + 0.5 * l2 * (W * W).sum()

    opt = optax.lbfgs()
    params = (jnp.zeros((xs.shape[1], n_classes), x.dtype), jnp.zeros(n_classes, x.dtype))
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return Probe(params[0], params[1], mean, std)


def accuracy(probe: Probe, x: jax.Array, labels: jax.Array) -> jax.Array:
    """Share of ``x`` whose most likely class is its label."""
    return (predict(probe, x).argmax(-1) == labels).mean()


def split(key: jax.Array, n: int, train_fraction: float = 0.8) -> tuple[jax.Array, jax.Array]:
    """A random train/held-out split of ``n`` indices (sizes fixed by ``n``, so it can be vmapped over)."""
    perm = jax.random.permutation(key, n)
    k = int(round(train_fraction * n))
    return perm[:k], perm[k:]


def shuffled(key: jax.Array, y: jax.Array) -> jax.Array:
    """The labels permuted across samples: the control a probe must fail (Hewitt & Liang 2019)."""
    return y[jax.random.permutation(key, y.shape[0])]
