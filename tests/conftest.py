"""Tests run on 2 fake CPU devices, so sharding is exercised on any machine, compiled without LLVM
optimisation (faster to compile; every comparison in the tests is between runs at the same level).

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
# Tests are mostly compiling, not computing: XLA's CPU backend without LLVM optimisation compiles
# the suite's programs about a third faster (measured: 125 s -> 84 s for the SAE and toolbox tests).
OPT_FLAG = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {OPT_FLAG}".strip()  # inherited by subprocesses

os.environ["TOYLAB_CPU_DEVICES"] = "2"  # subprocesses see the same 2 devices as the tests, on any machine
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
    tests that read them are ordered last (``pytest_collection_modifyitems``). Only the runs some
    selected test reads are made (its ``name`` parameter, its ``reads_smoke`` marker, or its module
    ``test_<experiment>``); a run still going when the session ends is stopped."""

    def __init__(self, base, names):
        self.base, self.names = base, [n for n in SLOWEST_FIRST if n in names] + sorted(set(names) - set(SLOWEST_FIRST))
        self.done, self.results, self.proc, self.stopped = {n: threading.Event() for n in self.names}, {}, None, False
        threading.Thread(target=lambda: [self._run(n) for n in self.names], daemon=True).start()

    def _run(self, name: str) -> None:
        run = self.base / f"smoke-{name}" / "run"
        try:
            if self.stopped:
                raise RuntimeError("session over")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"experiments.{name}", "all", "--preset", "smoke", "--out", str(run),
                 "--figures", f"{run}-figures"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, "JAX_PLATFORMS": "cpu",
                     "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=2"})
            out, _ = self.proc.communicate(timeout=900)
            self.results[name] = (run, self.proc.returncode, out[-6000:])
        except Exception as e:  # noqa: BLE001  (reported by the test that waits for it)
            self.results[name] = (run, -1, repr(e))
        self.done[name].set()

    def get(self, name: str):
        if name not in self.done:
            raise KeyError(f"no smoke run of {name} was scheduled (is it in experiments.EXPERIMENTS?)")
        self.done[name].wait()
        run, code, out = self.results[name]
        assert code == 0, f"smoke run of {name} failed:\n{out}"
        return run

    def stop(self) -> None:
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


_WANTED: set[str] = set()  # experiments whose smoke run a selected test reads (filled at collection)


@pytest.fixture(scope="session")
def smoke_run(_smoke_runs):
    """``smoke_run(name)``: the run directory of experiment ``name``'s smoke preset (``all`` stages, made once),
    with its figures also copied to ``<run>-figures``."""
    return _smoke_runs.get


@pytest.fixture(scope="session", autouse=True)
def _smoke_runs(tmp_path_factory):
    runs = _SmokeRuns(tmp_path_factory.mktemp("smoke"), _WANTED)
    yield runs
    runs.stop()


def pytest_collection_modifyitems(items):
    """Tests that read a smoke run go last, so the runs have the whole session to finish; note which runs
    are wanted."""
    from experiments import EXPERIMENTS

    # then, just before them, tests that start several processes of their own (``processes`` marker): by
    # then the background smoke runs are done and leave them both cores (measured: 30 s early, 22 s late)
    items.sort(key=lambda item: ("smoke_run" in getattr(item, "fixturenames", ()),
                                 item.get_closest_marker("processes") is not None))
    for item in items:
        if "smoke_run" in getattr(item, "fixturenames", ()):
            marker = item.get_closest_marker("reads_smoke")
            callspec = getattr(item, "callspec", None)
            stem = item.module.__name__.split(".")[-1].removeprefix("test_")
            name = (marker.args[0] if marker else callspec.params.get("name") if callspec and "name" in callspec.params
                    else stem)
            _WANTED.update([name] if name in EXPERIMENTS else EXPERIMENTS)  # unknown: make them all


def pytest_configure(config):
    config.addinivalue_line("markers", "reads_smoke(name): the test reads experiment name's smoke run")
    config.addinivalue_line("markers", "processes: the test starts several processes; it runs late")


# A grokking sweep of two programs (d_mlp is structural) of two points each (weight decay is per-model).
SWEEP_ARGS = ["--sweep", "weight_decay=1,0.3", "--sweep", "d_mlp=32,64", "--preset", "smoke", "--n-steps", "40",
              "--checkpoint-every", "20"]


@pytest.fixture(scope="session")
def whole_sweep(tmp_path_factory) -> Path:
    """SWEEP_ARGS trained uninterrupted, here, on the tests' two devices: the reference of the sweep's
    resume test and of the multi-process test."""
    from experiments import grokking

    whole = tmp_path_factory.mktemp("sweep") / "whole"
    assert grokking.main(["train", *SWEEP_ARGS, "--out", str(whole)]) == 0
    return whole
