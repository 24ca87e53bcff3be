"""Tests run on 2 fake CPU devices, so sharding is exercised on any machine.

Compiled programs are cached on disk for the session (JAX's persistent compilation
cache, in a fresh temporary folder): the subprocesses of the resume tests and the
smoke runs compile the same programs again and again, and reading them back is much
faster than compiling. Each experiment's smoke run is made once per session
(``smoke_run``) and shared by the tests that read it.
"""

import os
import tempfile

_CACHE = tempfile.mkdtemp(prefix="toylab-jax-cache-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE  # inherited by the tests' subprocesses
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """``smoke_run(name)``: the run directory of experiment ``name``'s smoke preset (``all`` stages, made once),
    with its figures also copied to ``<run>-figures``."""
    import importlib

    made = {}

    def get(name: str):
        if name not in made:
            run = tmp_path_factory.mktemp(f"smoke-{name}") / "run"
            exp = importlib.import_module(f"experiments.{name}")
            code = exp.main(["all", "--preset", "smoke", "--out", str(run), "--figures", f"{run}-figures"])
            assert code == 0
            made[name] = run
        return made[name]

    return get
