"""Tests run on 2 fake CPU devices, so sharding is exercised on any machine."""

import jax

jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_platforms", "cpu")
