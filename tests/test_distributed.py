"""Across processes: two CPU processes under jax.distributed (gloo collectives), killed and resumed, train
a sweep to exactly the bits one process with two devices gets."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SWEEP_ARGS
from toylab import runs

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.processes
def test_two_processes_equal_one_process_with_two_devices(tmp_path, whole_sweep):
    """Killed after their first chunk and started again, two processes end with the bits of one process
    with two devices; each process wrote its own shards of every checkpoint (Orbax's multi-process save)."""
    two = tmp_path / "two"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TOYLAB_CPU_DEVICES": "1"}  # one device per process
    # the whole sweep's first program alone: its two weight decays at d_mlp 32
    assert SWEEP_ARGS[:4] == ["--sweep", "weight_decay=1,0.3", "--sweep", "d_mlp=32,64"]
    # a full state after every chunk (--resume-every 1), so the first chunk's is the one each process writes
    args = ["--sweep", "weight_decay=1,0.3", "--d-mlp", "32", *SWEEP_ARGS[4:], "--resume-every", "1"]

    def launch(extra_env: dict) -> list[subprocess.CompletedProcess]:
        port = _free_port()
        procs = [subprocess.Popen([sys.executable, "-m", "experiments.grokking", "train", *args, "--out", str(two),
                                   "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id",
                                   str(i)], cwd=ROOT, env={**env, **extra_env}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for i in range(2)]
        return [(p, p.communicate(timeout=300)[0]) for p in procs]

    for p, out in launch({"TOYLAB_KILL_AFTER_CHUNKS": "1"}):  # one is killed; its partner aborts
        assert p.returncode != 0, out[-1500:]
    ckpt = two / "groups" / "0" / "checkpoints"
    assert [c.name for c in ckpt.iterdir() if c.name.isdigit()] == ["20"]
    assert {p.name for p in (ckpt / "20" / "state").glob("ocdbt.process_*")} == {"ocdbt.process_0", "ocdbt.process_1"}
    for p, out in launch({}):  # the same command resumes
        assert p.returncode == 0, out[-1500:]
    a, b = runs.open(whole_sweep / "groups" / "0").final()[0], runs.open(two / "groups" / "0").final()[0]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (two / "report.md").exists() and (two / "sweep.json").exists()  # written by process 0 alone
