"""Tests run on 2 fake CPU devices, so sharding is exercised on any machine.

Compiled programs are cached on disk for the session (JAX's persistent compilation
cache, in a fresh temporary folder): the subprocesses of the resume tests and the
smoke runs compile the same programs again and again, and reading them back is much
faster than compiling. Each experiment's smoke run is made once per session, in a
subprocess on a background thread started with the session (``smoke_run``), and shared by
the tests that read it; those tests run last.
"""

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

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

ROOT = Path(__file__).resolve().parents[1]


SLOWEST_FIRST = ("induction", "sae", "grokking", "superposition")  # smoke runs, longest first


class _SmokeRuns:
    """Each experiment's smoke run (``all`` stages) in a subprocess, one after another on a background
    thread from the start of the session, so they use the second core while the other tests run; the
    tests that read them are ordered last (``pytest_collection_modifyitems``)."""

    def __init__(self, base):
        from experiments import EXPERIMENTS

        self.names = [n for n in SLOWEST_FIRST if n in EXPERIMENTS] + [n for n in EXPERIMENTS if n not in SLOWEST_FIRST]
        self.base, self.done, self.results = base, {n: threading.Event() for n in self.names}, {}
        threading.Thread(target=lambda: [self._run(n) for n in self.names], daemon=True).start()

    def _run(self, name: str) -> None:
        run = self.base / f"smoke-{name}" / "run"
        try:
            proc = subprocess.run(
                [sys.executable, "-m", f"experiments.{name}", "all", "--preset", "smoke", "--out", str(run),
                 "--figures", f"{run}-figures"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
            self.results[name] = (run, proc.returncode, proc.stdout[-2000:] + proc.stderr[-4000:])
        except Exception as e:  # noqa: BLE001  (reported by the test that waits for it)
            self.results[name] = (run, -1, repr(e))
        self.done[name].set()

    def get(self, name: str):
        self.done[name].wait()
        run, code, out = self.results[name]
        assert code == 0, f"smoke run of {name} failed:\n{out}"
        return run


@pytest.fixture(scope="session")
def smoke_run(_smoke_runs):
    """``smoke_run(name)``: the run directory of experiment ``name``'s smoke preset (``all`` stages, made once),
    with its figures also copied to ``<run>-figures``."""
    return _smoke_runs.get


@pytest.fixture(scope="session", autouse=True)
def _smoke_runs(tmp_path_factory):
    return _SmokeRuns(tmp_path_factory.mktemp("smoke"))


def pytest_collection_modifyitems(items):
    """Tests that read a smoke run go last, so the runs have the whole session to finish."""
    items.sort(key=lambda item: "smoke_run" in getattr(item, "fixturenames", ()))
