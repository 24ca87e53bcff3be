import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from toylab.tms import make_batch
from toylab import rng


def test_threefry_matches_jax():
    key = jnp.array([0x12345678, 0x9ABCDEF0], jnp.uint32)
    count = jnp.arange(64, dtype=jnp.uint32)
    a, b = rng.threefry2x32(key, count[:32], count[32:])
    np.testing.assert_array_equal(np.concatenate([a, b]), threefry_2x32(key, count))


@pytest.mark.parametrize("split_axis", [0, 1])
def test_uniform_range_and_moments(split_axis):
    u = np.asarray(rng.uniform(jax.random.key(0), (1000, 101), split_axis))
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    assert len(np.unique(u)) > 0.99 * u.size  # no repeated stream
    v = np.asarray(rng.uniform(jax.random.key(1), (1000, 101)))
    assert abs(np.corrcoef(u.ravel(), v.ravel())[0, 1]) < 0.01


def test_batch_distribution():
    """Feature on with probability p; when on, uniform on [0, 1) whatever p is."""
    for p in (1.0, 0.3, 0.02):
        x = np.asarray(make_batch(jax.random.key(3), jnp.float32(p), 200, 4096))
        on = x[x > 0]
        assert abs((x > 0).mean() - p) < 4 * np.sqrt(p * (1 - p) / x.size) + 1e-6
        assert abs(on.mean() - 0.5) < 0.01 and abs(on.var() - 1 / 12) < 0.005
        assert on.max() < 1
        xt = np.asarray(make_batch(jax.random.key(3), jnp.float32(p), 200, 4096, features_first=True))
        assert xt.shape == (200, 4096) and abs((xt > 0).mean() - (x > 0).mean()) < 8 * np.sqrt(p * (1 - p) / x.size) + 1e-6
        assert abs(np.corrcoef(xt.ravel(), x.T.ravel())[0, 1]) < 0.01  # another layout, not a transpose of the same numbers

