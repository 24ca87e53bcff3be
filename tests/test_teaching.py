"""The reading-group kit: HTML reports, animations, guides whose numbers come from the reports, exercises."""

import base64
import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from experiments import EXPERIMENTS
from experiments import exercises as runner
from toylab import experiment, guide, report
from toylab.exercise import Exercise

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def module(name):
    return importlib.import_module(f"experiments.{name}")


# -- report.html -------------------------------------------------------------------------------


@pytest.mark.reads_smoke("superposition")
def test_html_report_is_self_contained(smoke_run):
    run = smoke_run("superposition")
    rep = json.loads((run / "report.json").read_text())
    page = (run / "report.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == len(rep["figures"]) and all(s.startswith("data:image/") for s in srcs)  # nothing external
    for f, src in zip(rep["figures"], srcs):  # each image is its figure's file, byte for byte
        assert base64.b64decode(src.split(",", 1)[1]) == (run / f["path"]).read_bytes()
    assert page.count('<tr class="pass">') == rep["n_passed"]
    assert page.count('<tr class="fail">') == rep["n_checks"] - rep["n_passed"]
    assert all(f["caption"].replace("'", "&#x27;")[:40] in page for f in rep["figures"])
    assert "<h2>Config</h2>" in page and "git_commit" in page


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian package 'chromium')")
@pytest.mark.reads_smoke("superposition")
def test_html_report_images_load_in_a_browser(smoke_run, tmp_path):
    """Headless Chromium opens the report from disk; the page's own script counts the images that decoded."""
    run = smoke_run("superposition")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom"]
    dom = subprocess.run([CHROMIUM, *flags, (run / "report.html").resolve().as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    m = re.search(r'data-images="(\d+)" data-images-loaded="(\d+)"', dom)
    assert m, dom[:500]
    n_figures = len(json.loads((run / "report.json").read_text())["figures"])
    assert int(m.group(1)) == n_figures and int(m.group(2)) == n_figures


def test_html_marks_a_failed_check():
    rep = {"experiment": "x", "preset": "p", "config": {}, "wall_time_s": {}, "figures": [], "n_passed": 1,
           "n_checks": 2, "checks": [{"name": "a", "measured": 1.0, "expected": "1", "passed": True},
                                     {"name": "b <i>", "measured": 2.0, "expected": "1", "passed": False}]}
    page = report.to_html(rep, Path("."))
    assert '<tr class="fail"><td>b &lt;i&gt;</td>' in page and page.count('class="pass"') == 1


# -- animations --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_animates_its_transition(name, smoke_run):
    from PIL import Image

    gifs = [f for f, _, _ in module(name).FIGURES if f.endswith(".gif")]
    assert gifs, f"{name} has no animation"
    run = smoke_run(name)
    for g in gifs:
        with Image.open(run / "figures" / g) as im:
            assert im.format == "GIF" and im.n_frames >= 2  # smoke runs keep few snapshots


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_committed_animations_are_small(name):
    for g in (ROOT / "figures" / name).glob("*.gif"):
        assert g.stat().st_size < 4_000_000, g


# -- guides ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_guide_numbers_come_from_the_committed_report(name):
    """figures/<name>/README.md is exactly its template rendered with the committed report.json."""
    folder = ROOT / "figures" / name
    template = ROOT / "experiments" / "guides" / f"{name}.md"
    rep = json.loads((folder / "report.json").read_text())
    assert rep["experiment"] == name and rep["preset"] == "paper"
    assert (folder / "README.md").read_text() == guide.render(template.read_text(), rep, module(name).EXERCISES)
    page = (folder / "README.md").read_text()
    for f in rep["figures"]:  # every figure of the report is shown, from this folder
        assert f"]({Path(f['path']).name})" in page, f["path"]
    assert "{{" not in page and "../shared" not in page


def test_a_guide_placeholder_must_name_one_check():
    rep = {"experiment": "x", "config": {"lr": 0.001}, "figures": [], "n_passed": 1, "n_checks": 2,
           "checks": [{"name": "loss at end", "measured": [0.5, 0.25], "expected": "< 1", "passed": True},
                      {"name": "loss peak", "measured": 3.0, "expected": "> 1", "passed": False}]}
    assert guide.render("{{measured:loss at end[1]|.1f}} {{result:loss peak}} {{config:lr}}", rep).endswith(
        "0.2 FAIL 0.001")
    with pytest.raises(guide.GuideError):
        guide.render("{{measured:loss}}", rep)  # two checks start with "loss"
    with pytest.raises(guide.GuideError):
        guide.render("{{measured:accuracy}}", rep)  # none


# -- exercises ---------------------------------------------------------------------------------


def test_exercises_are_named_once_and_documented():
    exs = runner.all_exercises()
    assert len({ex.name for ex in exs}) == len(exs)
    for name in EXPERIMENTS:
        mine = [ex for ex in exs if ex.experiment == name]
        assert 2 <= len(mine) <= 4, name
        assert all(isinstance(ex, Exercise) and ex.question.endswith("?") and ex.answer and ex.minutes <= 10
                   for ex in mine)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_exercise_checks_read_a_real_run(name, smoke_run):
    """Each check runs on the smoke run's report and analysis and gives a Check with a verdict."""
    run = smoke_run(name)
    rep = json.loads((run / "report.json").read_text())
    with np.load(run / "analysis.npz") as f:
        a = dict(f)
    for ex in module(name).EXERCISES:
        c = ex.check(rep, a)
        assert isinstance(c, report.Check) and isinstance(c.passed, bool) and c.expected


def test_an_exercise_runs_at_smoke_scale(tmp_path, capsys):
    ex = module("superposition").EXERCISES[0]
    check, seconds = runner.run_one(ex, tmp_path, smoke=True)
    assert isinstance(check.passed, bool) and (tmp_path / ex.name / "report.json").exists()
    cfg = json.loads((tmp_path / ex.name / "config.json").read_text())
    assert cfg["intro_importance_decay"] == 1.0  # the exercise's change reached the run
    assert ex.name in runner.table([(ex, check, seconds)])


def test_an_unknown_exercise_is_refused(capsys):
    assert runner.main(["no-such-exercise"]) == 2
    assert "no exercise named no-such-exercise" in capsys.readouterr().err


def test_figure_files():
    assert experiment.figure_file("loss") == "loss.png" and experiment.figure_file("training.gif") == "training.gif"


def test_readme_check_tables_come_from_the_committed_reports():
    reports = guide.committed_reports(ROOT / "figures")
    text = (ROOT / "README.md").read_text()
    assert text.count("<!-- checks: ") == len(reports) and set(EXPERIMENTS) <= set(reports)
    assert guide.fill_readme(text, reports) == text  # python -m experiments.exercises --write-guides refreshes them
    assert "<!-- costs: grokking -->" in text and "<!-- costs: induction -->" in text  # what each analysis costs
    for name in EXPERIMENTS:  # the gallery links every guide and shows an animation
        assert f"(figures/{name}/README.md)" in text and any(f"(figures/{name}/{g.name})" in text
                                                             for g in (ROOT / "figures" / name).glob("*.gif"))


def test_costs_line_says_each_stage_and_its_parts():
    rep = {"wall_time_s": {"train": 1571.4, "analyze": 66.2, "analyze.dla_and_patching": 27.4,
                           "analyze.steering_and_sae": 20.0, "plot": 8.0},
           "provenance": {"cpu": "AMD EPYC, 2 cores"}}
    assert guide.costs_line(rep) == ("Wall times of the committed run (AMD EPYC, 2 cores): training 26 min 11 s; "
                                     "analysis 1 min 6 s (DLA and patching 27 s, steering and SAE 20 s); figures 8 s.")
