"""The smoke preset end to end: train, analyze, plot; report and figures written."""

import json
from pathlib import Path

import pytest

from experiments import superposition as exp


@pytest.mark.reads_smoke("superposition")
def test_smoke_end_to_end(smoke_run):
    run = smoke_run("superposition")
    figs = Path(f"{run}-figures")
    rep = json.loads((run / "report.json").read_text())
    assert rep["experiment"] == "superposition" and rep["preset"] == "smoke"
    assert rep["config"]["n_steps"] == exp.PRESETS["smoke"].n_steps
    assert rep["n_checks"] >= 6 and all({"name", "measured", "expected", "passed"} <= set(c) for c in rep["checks"])
    assert len(rep["figures"]) == 5 and all(f["caption"] for f in rep["figures"])
    assert rep["provenance"]["packages"]["jax"]
    for f in rep["figures"]:
        assert (run / f["path"]).stat().st_size > 10_000
        assert (figs / f["path"].split("/")[-1]).exists()
    md = (run / "report.md").read_text()
    assert "| check | measured | paper | result |" in md
    assert "cores" in rep["provenance"]["cpu"] and f"Trained on: {rep['provenance']['cpu']}." in md

    # plot re-renders from saved analysis, byte for byte, without touching checkpoints
    ckpts = {p: p.stat().st_mtime_ns for p in (run / "checkpoints").rglob("*") if p.is_file()}
    first = {f["path"]: (run / f["path"]).read_bytes() for f in rep["figures"]}
    assert exp.main(["plot", "--out", str(run)]) == 0
    assert {p: (run / p).read_bytes() for p in first} == first
    assert json.loads((run / "report.json").read_text())["preset"] == "smoke"  # the run's, not the default
    assert ckpts == {p: p.stat().st_mtime_ns for p in (run / "checkpoints").rglob("*") if p.is_file()}


@pytest.mark.reads_smoke("superposition")
def test_strict_fails_on_failed_checks(smoke_run, capsys):
    # 200 smoke steps cannot reproduce the paper, so --strict must turn that into exit 1
    run = smoke_run("superposition")
    assert exp.main(["analyze", "--out", str(run), "--strict"]) == 1
    assert "checks passed" in capsys.readouterr().out
    assert exp.main(["analyze", "--out", str(run)]) == 0
