"""The contract every experiment keeps (README, "Adding an experiment"), held for each one in EXPERIMENTS."""

import ast
import dataclasses
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

from experiments import EXPERIMENTS
from toylab import config, experiment, runs

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["Config", "Data", "Model", "Train", "Analyse", "Plot", "Main"]


def module(name):
    return importlib.import_module(f"experiments.{name}")


def test_every_experiment_module_is_listed():
    modules = {p.stem for p in (ROOT / "experiments").glob("*.py")} - {"__init__", "bench", "bench_torch", "exercises"}
    assert modules == set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_module_shape(name):
    exp = module(name)
    for attr in ("Config", "PRESETS", "train", "analyze", "check", "plot", "FIGURES", "main"):
        assert hasattr(exp, attr), f"{name} lacks {attr}"
    assert {"paper", "smoke"} <= set(exp.PRESETS)
    assert exp.PRESETS["paper"] == exp.Config()  # the defaults are the paper's recipe
    src = (ROOT / "experiments" / f"{name}.py").read_text()
    heads = [m.group(1).split()[0].rstrip(",:") for m in re.finditer(r"^# ([A-Z][a-z]+.*)$", src, re.M)
             if m.group(1).split()[0].rstrip(",:") in SECTIONS]
    assert heads == SECTIONS, f"{name}: sections {heads}"  # the same order in every module
    assert "shared/reference" not in src and "../shared" not in src  # cite papers, not files users lack


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_per_model_fields_are_fields_and_train_takes_points(name):
    """A sweep varies a Config's PER_MODEL fields inside one program: they must name fields, and train
    must accept the points (README, "Sweeps"); an experiment without them runs each point alone."""
    exp = module(name)
    per_model = getattr(exp.Config, "PER_MODEL", ())
    assert set(per_model) <= {f.name for f in dataclasses.fields(exp.Config)}
    assert "n_seeds" not in per_model
    if per_model:
        assert list(inspect.signature(exp.train).parameters)[:3] == ["cfg", "run", "points"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_no_experiment_imports_another(name):
    tree = ast.parse((ROOT / "experiments" / f"{name}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    assert not {f"experiments.{e}" for e in EXPERIMENTS} & imported


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_config_field_has_a_comment(name):
    src = inspect.getsource(module(name).Config).splitlines()
    fields = {f.name for f in dataclasses.fields(module(name).Config)}
    lines = [ln for ln in src if re.match(r"^    (\w+): .+ = ", ln) and ln.split(":")[0].strip() in fields]
    assert len(lines) == len(fields)
    assert all("  # " in ln for ln in lines), [ln for ln in lines if "  # " not in ln]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_help_lists_every_field(name, capsys):
    exp = module(name)
    with pytest.raises(SystemExit) as e:
        exp.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(exp.Config):
        assert f.name.replace("_", "-") in out, f.name


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_smoke_run_end_to_end(name, smoke_run):
    """Train, analyse, plot: a report of checks, every figure with a caption, a resumable run."""
    exp = module(name)
    run = runs.open(smoke_run(name))
    rep = json.loads(run.path("report.json").read_text())
    assert rep["experiment"] == name and rep["preset"] == "smoke"
    assert rep["n_checks"] >= 5 and all({"name", "measured", "expected", "passed"} <= set(c) for c in rep["checks"])
    assert all(c["expected"] and "§" not in c["expected"] or "et al." in c["expected"] for c in rep["checks"])
    assert [Path(f["path"]).name for f in rep["figures"]] == [experiment.figure_file(f) for f, _, _ in exp.FIGURES]
    for f in rep["figures"]:
        assert f["caption"] and run.path(f["path"]).stat().st_size > 10_000
        assert (Path(f"{run.root}-figures") / Path(f["path"]).name).exists()
    assert run.config(exp.Config) == exp.PRESETS["smoke"]
    assert set(run.analysis())  # what analyze returned, saved by the runner
    walls = rep["wall_time_s"]
    assert [k.split(".")[0] for k in walls if "." not in k] == ["train", "analyze", "plot"]
    parts = {k: v for k, v in walls.items() if k.startswith("analyze.")}
    assert sum(parts.values()) <= walls["analyze"]  # disjoint pieces of the stage
    if name in ("grokking", "induction", "sae"):  # the report says what each of its analyses costs
        assert len(parts) >= 4 and all(v > 0 for v in parts.values())


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_a_run_in_use_is_refused_in_one_line(name, smoke_run, capsys):
    """A second process on the same run directory stops at once with one line, and writes nothing."""
    run = runs.Run(smoke_run(name))
    before = {p: p.stat().st_mtime_ns for p in run.root.rglob("*") if p.is_file()}
    with run.lock():  # as if another process were training there
        with pytest.raises(SystemExit) as e:
            config.main_guard(lambda: module(name).main(["all", "--preset", "smoke", "--out", str(run.root)]))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "in use" in err, err
    after = {p: p.stat().st_mtime_ns for p in run.root.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == {p: t for p, t in before.items() if p.name != ".lock"}


def test_laps_join_their_stage_and_replace_an_earlier_runs():
    experiment.laps()("outside a stage")  # records nothing, fails nothing
    times = {"plot": 2.0, "train": 1.0, "analyze": 9.0, "analyze.gone": 5.0}
    with experiment._parts(times, "analyze"):
        lap = experiment.laps()
        lap("a")
        lap("b")
        lap("a")  # a name that comes back adds up
    assert "analyze.gone" not in times and set(times) == {"plot", "train", "analyze", "analyze.a", "analyze.b"}
    assert 0 <= times["analyze.a"] < 1 and 0 <= times["analyze.b"] < 1
    assert list(experiment._ordered(times)) == ["train", "analyze", "analyze.a", "analyze.b", "plot"]
    lap("after the stage")
    assert "analyze.after the stage" not in times
