"""Fast uniform random numbers for data generated inside a training step.

Why this exists: the superposition workload draws a fresh batch of sparse features
every step (20 models x 1024 x 200 = 4.1M numbers at the geometry configuration).
On a CPU, ``jax.random.bits`` costs about 35 ms for that many numbers, more than
the whole forward and backward pass. The same Threefry-2x32 (20 rounds, the
generator ``jax.random`` uses by default) written as plain ``jnp`` integer ops
fuses into one vectorised XLA loop and costs about 3 ms. ``threefry2x32`` below is
bit-for-bit the function of ``jax.extend.random.threefry_2x32`` (a test checks it);
only the way counters are laid out differs, so the streams are not those of
``jax.random.uniform``, but they are drawn from the same generator.
"""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, UInt32

_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)


def _rotl(x: UInt32[Array, "..."], r: int) -> UInt32[Array, "..."]:
    return (x << jnp.uint32(r)) | (x >> jnp.uint32(32 - r))


def threefry2x32(
    key: UInt32[Array, "2"], x0: UInt32[Array, "..."], x1: UInt32[Array, "..."]
) -> tuple[UInt32[Array, "..."], UInt32[Array, "..."]]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), as in ``jax.random``."""
    k0, k1 = key[0], key[1]
    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for r in range(20):
        x0 = x0 + x1
        x1 = _rotl(x1, _ROTATIONS[r % 8]) ^ x0
        if r % 4 == 3:
            i = r // 4 + 1
            x0 = x0 + ks[i % 3]
            x1 = x1 + ks[(i + 1) % 3] + jnp.uint32(i)
    return x0, x1


def key_words(key: jax.Array) -> UInt32[Array, "2"]:
    """The two uint32 words of a typed ``jax.random.key`` (default threefry impl)."""
    return jax.random.key_data(key).astype(jnp.uint32).reshape(2)


def uniform(key: jax.Array, shape: tuple[int, ...], split_axis: int = 0) -> Float[Array, "..."]:
    """Uniform float32 in [0, 1), 23 random mantissa bits, like ``jax.random.uniform``.

    Each Threefry call yields two words: the first half of ``split_axis`` takes the
    first word of each counter, the second half the second word. (Laying counters out
    in the array's own shape, rather than flat, lets XLA fuse this with its consumer;
    ``split_axis`` picks the layout that fuses best with it, and changes which numbers
    land where, not their distribution.)
    """
    if not shape:
        return uniform(key, (1,))[0]
    axis = split_axis % len(shape)
    half_shape = shape[:axis] + ((shape[axis] + 1) // 2,) + shape[axis + 1:]
    counter = jax.lax.iota(jnp.uint32, math.prod(half_shape)).reshape(half_shape)
    a, b = threefry2x32(key_words(key), counter, jnp.zeros_like(counter))
    bits = jnp.stack([a, b], axis=axis)  # [..., 2, half, ...]
    bits = bits.reshape(shape[:axis] + (2 * half_shape[axis],) + shape[axis + 1:])
    bits = jax.lax.slice_in_dim(bits, 0, shape[axis], axis=axis)
    # Put 23 random bits in the mantissa of a float in [1, 2), then shift to [0, 1).
    one_to_two = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32)
    return one_to_two - 1.0
