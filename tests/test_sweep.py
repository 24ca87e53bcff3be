"""Sweeps: parsing and refusals, a sweep point equals its single run bitwise, a killed sweep resumes."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import SWEEP_ARGS
from experiments import grokking as g
from toylab import checkpoint, runs, sweep
from toylab import train as training
from toylab.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = dataclasses.replace(g.PRESETS["smoke"], n_steps=40, checkpoint_every=20)
SMOKE_ARGS = ["--preset", "smoke", "--n-steps", "40", "--checkpoint-every", "20"]


def test_parse_lists_and_ranges():
    sw = sweep.parse(["weight_decay=0,0.3,1", "lr=log:1e-4:1e-2:3", "d_mlp=lin:32:64:3"], g.Config, SMOKE)
    assert sw.values == ((0.0, 0.3, 1.0), (1e-4, 1e-3, 1e-2), (32, 48, 64))
    points = sw.points(SMOKE)
    assert len(points) == 27 and points[1].d_mlp == 48 and points[3].lr == 1e-3  # the last field varies fastest
    assert sweep.groups(points, g.Config.PER_MODEL) == [list(range(j, 27, 3)) for j in range(3)]  # d_mlp: 3 programs
    hp = sweep.per_model(points[:3 * 3:3], g.Config.PER_MODEL, repeat=2)  # 3 learning rates, 2 seeds each
    assert list(hp) == ["lr"] and hp["lr"].tolist() == pytest.approx([1e-4, 1e-4, 1e-3, 1e-3, 1e-2, 1e-2])


def test_a_tuple_field_is_refused():
    from experiments import superposition

    with pytest.raises(ConfigError, match="only number, bool and string fields"):
        sweep.parse(["intro_densities=1,0.5"], superposition.Config, superposition.PRESETS["smoke"])


@pytest.mark.parametrize("spec, words", [
    ("lr=-1", "lr"), ("weight_decay=0,x", "float"), ("n_seeds=1,2", "--n-seeds"), ("nope=1", "no config field"),
    ("lr=log:1:0:3", "log bounds"), ("lr", "FIELD=v1"), ("p=23,24", "prime"), ("lr=1,1", "repeated"),
])
def test_bad_sweeps_are_refused_before_compiling(tmp_path, spec, words):
    traces = dict(training.TRACE_COUNT)
    with pytest.raises(ConfigError, match=words) as e:
        g.main(["train", *SMOKE_ARGS, "--out", str(tmp_path / "run"), "--sweep", spec])
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists() and training.TRACE_COUNT == traces  # nothing written, nothing compiled


def test_a_sweep_point_equals_its_single_run_bitwise(tmp_path):
    """Per-model fields enter one program as arrays; a point ends with its single run's exact bits (on the same
    devices: XLA compiles a program for 1 device and one sharded over 2 with different rounding). The point
    checked is the second, whose values both differ from the preset's: a single run compiles its own program
    (its values are constants), so each point checked costs a compile."""
    dev = jax.devices()[:1]
    points = [dataclasses.replace(SMOKE, weight_decay=wd, lr=lr) for wd, lr in ((1.0, 1e-3), (0.3, 3e-3))]
    both = runs.Run(tmp_path / "both")
    both.start(g.Config, points[0], "smoke")
    g.train(points[0], both, points, devices=dev, progress=False)
    swept, _ = both.final()
    for i, pt in list(enumerate(points))[1:]:
        one = runs.Run(tmp_path / str(i))
        one.start(g.Config, pt, "smoke")
        g.train(pt, one, devices=dev, progress=False)
        single, _ = one.final()
        for k, v in single.items():
            np.testing.assert_array_equal(swept[k][i:i + 1], v, err_msg=k)


def test_a_killed_sweep_resumes_to_the_same_bits(tmp_path, whole_sweep):
    """SIGKILL in the sweep's second program; the same command resumes; every group ends as the
    uninterrupted sweep's."""
    args, whole, killed = SWEEP_ARGS, whole_sweep, tmp_path / "killed"
    r = subprocess.run([sys.executable, "-m", "experiments.grokking", "train", *args, "--out", str(killed)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "TOYLAB_KILL_AFTER_CHUNKS": "3"})
    assert r.returncode == -9, r.stderr[-800:]
    assert checkpoint.steps(runs.Run(killed / "groups" / "1").params())[-1] == 20  # died in the second program
    assert g.main(["all", *args, "--out", str(killed)]) == 0  # the same sweep again: resumes, then summarises
    saved = json.loads((killed / "sweep.json").read_text())
    assert saved["groups"] == [[0, 2], [1, 3]]
    for grp in ("0", "1"):  # every snapshot and every kept checkpoint, bit for bit
        for where in ("params", "checkpoints"):
            a_dir = getattr(runs.Run(whole / "groups" / grp), where)()
            b_dir = getattr(runs.Run(killed / "groups" / grp), where)()
            assert checkpoint.steps(a_dir) == checkpoint.steps(b_dir)
            for t in checkpoint.steps(a_dir):
                a, b = checkpoint.restore(a_dir, t)[0], checkpoint.restore(b_dir, t)[0]
                assert set(a) == set(b)
                for k in a:
                    np.testing.assert_array_equal(a[k], b[k], err_msg=f"group {grp}, {where}/{t}/{k}")
    # a point reads its own rows of its group's models
    point = runs.open(killed / "points" / "2")
    assert point.config(g.Config).weight_decay == 0.3 and point.config(g.Config).d_mlp == 32
    np.testing.assert_array_equal(point.final()[0]["params.unembed.W_U"],
                                  runs.Run(killed / "groups" / "0").final()[0]["params.unembed.W_U"][1:2])
    rep = json.loads((killed / "report.json").read_text())
    assert [len(r) for r in rep["tables"][0]["rows"]] == [len(rep["tables"][0]["head"])] * 4
    assert (killed / "figures" / "sweep.png").exists()
    with pytest.raises(ConfigError, match="another sweep"):
        g.main(["train", "--sweep", "weight_decay=1,0.5", "--sweep", "d_mlp=32,64", *SMOKE_ARGS, "--out", str(killed)])


def test_phase_rules():
    assert g.phase(float("nan"), float("nan")) == "confusion"
    assert g.phase(100.0, float("nan")) == "memorisation"
    assert g.phase(100.0, 250.0) == "comprehension"  # 150 epochs later: too soon to call grokking
    assert g.phase(100.0, 2000.0) == "grokking"
    assert g.phase(1000.0, 1500.0) == "comprehension"  # less than twice as late


def test_preset_sweeps_parse_and_fit_their_presets():
    for preset, specs in g.PRESET_SWEEPS.items():
        points = sweep.parse(specs, g.Config, g.PRESETS[preset]).points(g.PRESETS[preset])
        assert len(sweep.groups(points, g.Config.PER_MODEL)) == 1  # the whole phase diagram is one program
    assert len(points) * g.PRESETS["phases-paper"].n_seeds == 96
