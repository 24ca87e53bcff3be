"""Predict, then run: every experiment's reading-group exercises, with their predictions checked.

    python -m experiments.exercises                  # all of them, one after another
    python -m experiments.exercises grokking-no-weight-decay   # one, by name
    python -m experiments.exercises --list           # names and questions
    python -m experiments.exercises --smoke NAME     # the same change at smoke scale (seconds; tests)
    python -m experiments.exercises --write-guides   # re-render figures/*/README.md from the committed reports

Each exercise is defined beside its experiment (``EXERCISES`` in the experiment module)
and runs into ``runs/exercises/<name>`` (resuming like any run); after it, the
exercise's check reads the run's report and analysis and prints the outcome:
measured, predicted band, pass or FAIL. A FAIL is a finding, not a crash: the
exercise's answer in the guide says what was measured when it was written.
"""

import importlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments import EXPERIMENTS
from toylab import guide, report
from toylab.exercise import Exercise


def all_exercises() -> list[Exercise]:
    """Every experiment's exercises, in the guides' order."""
    return [ex for name in EXPERIMENTS for ex in importlib.import_module(f"experiments.{name}").EXERCISES]


def run_one(ex: Exercise, root: Path = Path("runs/exercises"), smoke: bool = False) -> tuple[report.Check, float]:
    """Run one exercise and check its prediction; returns the check and the wall time in seconds."""
    module = importlib.import_module(f"experiments.{ex.experiment}")
    out = root / ex.name
    t = time.perf_counter()
    rc = module.main(ex.argv(str(out), smoke=smoke))
    if rc != 0:
        raise RuntimeError(f"exercise {ex.name}: the run exited with {rc}")
    rep = json.loads((out / "report.json").read_text())
    with np.load(out / "analysis.npz") as f:
        analysis = dict(f)
    return ex.check(rep, analysis), time.perf_counter() - t


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    smoke = "--smoke" in args
    exercises = all_exercises()
    by_name = {ex.name: ex for ex in exercises}
    if "--write-guides" in args:
        for name in EXPERIMENTS:
            mod = importlib.import_module(f"experiments.{name}")
            print(guide.write(Path(mod.__file__).parent / "guides" / f"{name}.md", Path("figures") / name,
                              mod.EXERCISES))
        readme = Path("README.md")
        reports = guide.committed_reports(Path("figures"))
        readme.write_text(guide.fill_readme(readme.read_text(), reports))
        print(readme)
        return 0
    if "--list" in args:
        for ex in exercises:
            print(f"{ex.name:34s} {ex.question}")
        return 0
    names = [a for a in args if not a.startswith("--")]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        print(f"error: no exercise named {', '.join(unknown)}; choose from {', '.join(by_name)}", file=sys.stderr)
        return 2
    chosen = [by_name[n] for n in names] or exercises
    root = Path("runs/exercises-smoke" if smoke else "runs/exercises")
    rows = []
    for ex in chosen:
        print(f"\n=== {ex.name}: {ex.question}\n    {ex.command(str(root / ex.name), smoke=smoke)}\n", flush=True)
        check, seconds = run_one(ex, root, smoke)
        rows.append((ex, check, seconds))
        print(f"\n{ex.name}: {check.name}: measured {report.fmt(check.measured)}; predicted {check.expected}: "
              f"{'as predicted' if check.passed else 'NOT as predicted'}", flush=True)
    print("\n" + table(rows))
    return 0


def table(rows: list[tuple[Exercise, report.Check, float]]) -> str:
    """The outcomes as a plain-text table."""
    head = ("exercise", "prediction checked", "measured", "outcome", "wall")
    body = [(ex.name, c.expected, report.fmt(c.measured), "as predicted" if c.passed else "NOT as predicted",
             f"{s / 60:.1f} min") for ex, c, s in rows]
    widths = [min(70, max(len(r[i]) for r in [head, *body])) for i in range(len(head))]
    line = lambda r: "  ".join(str(x)[:w].ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


if __name__ == "__main__":
    raise SystemExit(main())
