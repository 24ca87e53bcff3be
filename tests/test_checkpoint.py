"""Checkpoints: round trip, atomic resume after a hard kill, refusals with one-line errors."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import superposition as exp
from toylab import checkpoint, config, runs

ROOT = Path(__file__).resolve().parents[1]


def test_round_trip(tmp_path):
    state = {"params.W": np.random.default_rng(0).normal(size=(3, 5, 2)).astype(np.float32),
             "opt_state.0.count": np.arange(3, dtype=np.int32)}
    checkpoint.save(tmp_path / "c", 7, state, {"hello": [1, 2], **checkpoint.describe(state)})
    assert checkpoint.steps(tmp_path / "c") == [7]
    back, meta = checkpoint.restore(tmp_path / "c")
    assert meta["hello"] == [1, 2]
    for k, v in state.items():
        np.testing.assert_array_equal(back[k], v)
        assert back[k].dtype == v.dtype


def test_flatten_names():
    tree = {"params": {"W": np.zeros(2)}, "opt": (np.ones(1), {"mu": np.ones(3)})}
    flat = checkpoint.flatten(tree)
    assert set(flat) == {"params.W", "opt.0", "opt.1.mu"}
    back = checkpoint.unflatten(tree, flat)
    np.testing.assert_array_equal(back["opt"][1]["mu"], np.ones(3))


def cli(out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.superposition", *extra, "--preset", "smoke",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})


def final_states(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    return {g: runs.open(run_dir).final(g)[0] for g in exp.GROUPS}


def test_kill_and_resume_is_bitwise_identical(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert exp.main(["train", "--preset", "smoke", "--out", str(whole)]) == 0  # here: the same 2 devices
    cfg = exp.PRESETS["smoke"]
    # the intro group runs in chunks of intro_snapshot_every steps and writes its full state every
    # checkpoint_every: SIGKILL right after that first full checkpoint
    chunks = cfg.checkpoint_every // cfg.intro_snapshot_every
    r = cli(killed, "train", env={"TOYLAB_KILL_AFTER_CHUNKS": str(chunks)})
    assert r.returncode == -9, r.stderr[-500:]
    assert checkpoint.steps(runs.Run(killed).checkpoints("intro")) == [cfg.checkpoint_every]
    assert not runs.Run(killed).checkpoints("basic").exists()
    assert exp.main(["train", "--preset", "smoke", "--out", str(killed)]) == 0  # the same command again resumes
    a, b = final_states(whole), final_states(killed)
    for g in exp.GROUPS:
        assert set(a[g]) == set(b[g])
        for k in a[g]:
            np.testing.assert_array_equal(a[g][k], b[g][k], err_msg=f"{g}/{k}")


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as e:
        config.main_guard(lambda: exp.main(argv))
    return e.value.code, capsys.readouterr().err.strip()


@pytest.mark.reads_smoke("superposition")
def test_missing_and_corrupt_checkpoints_are_one_line_errors(tmp_path, capsys, smoke_run):
    run = tmp_path / "run"
    code, err = run_main(["analyze", "--preset", "smoke", "--out", str(run)], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "run the train stage first" in err
    shutil.copytree(smoke_run("superposition"), run)
    capsys.readouterr()  # the shared smoke run may have been made just now: drop its progress output
    step_dir = runs.Run(run).checkpoints("basic") / str(exp.PRESETS["smoke"].n_steps)
    for f in (step_dir / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\x00garbage" * 8)
    code, err = run_main(["analyze", "--preset", "smoke", "--out", str(run)], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "corrupt" in err and "basic" in err


@pytest.mark.reads_smoke("superposition")
def test_different_config_is_refused_and_nothing_is_overwritten(capsys, smoke_run):
    run = smoke_run("superposition")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    code, err = run_main(["train", "--preset", "smoke", "--out", str(run), "--n-steps", "400"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "different config" in err and "n_steps" in err
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert before == after
