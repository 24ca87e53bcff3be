"""Predict, then run: an exercise changes one or two hyperparameters and checks the prediction.

An exercise is data: the question a reading group answers before running, the command
line that tests it, and a check on the run's report and analysis, made with the same
``report.Check`` machinery as every report (measured value, the predicted band, pass or
fail). ``experiments/exercises.py`` runs them (``make exercises``).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

from toylab import report


@dataclasses.dataclass(frozen=True)
class Exercise:
    name: str  # what `make exercises NAME=...` selects; also the run directory runs/exercises/<name>
    experiment: str  # the experiment module it runs
    title: str  # a few words for the guide's heading
    question: str  # what the group predicts before running
    args: tuple[str, ...]  # the changed flags, after `all --preset paper`
    check_text: str  # the prediction that the check tests, in words
    check: Callable[[dict[str, Any], dict[str, Any]], report.Check]  # (report, analysis) -> the outcome
    answer: str  # what happens and why, folded away in the guide
    minutes: int  # measured wall time on 2 CPU cores, rounded up
    smoke_args: tuple[str, ...] | None = None  # the same change on the smoke preset (None: args), for tests

    def flags(self, smoke: bool = False) -> list[str]:
        return ["--preset", "smoke" if smoke else "paper",
                *(self.smoke_args if smoke and self.smoke_args is not None else self.args)]

    def command(self, out: str | None = None, smoke: bool = False) -> str:
        out = out or f"runs/exercises/{self.name}"
        return " ".join([f"python -m experiments.{self.experiment} all --out {out}", *self.flags(smoke)])

    def argv(self, out: str, smoke: bool = False) -> list[str]:
        return ["all", "--out", out, *self.flags(smoke)]

