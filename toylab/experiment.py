"""The command line every experiment shares: stages, the run, the report.

An experiment module defines ``Config``, ``PRESETS``, ``train``, ``analyze``,
``check``, ``plot`` and ``FIGURES`` and ends with ``main = experiment.main_for(...)``.
This module does the rest the same way for all of them:

- the run directory is a ``toylab.runs.Run``, held by this process for the whole
  command (a second process on it is refused at once);
- ``train(cfg, run)`` trains into it; the run's ``config.json`` is written first, and a
  run directory holds one config: a different one is refused, so nothing written is
  overwritten by other settings;
- ``analyze(cfg, run)`` returns arrays, which this module saves as the run's analysis;
  ``check(cfg, analysis)`` and the figures read them back, never the checkpoints;
- ``analyze`` and ``plot`` use the config saved with the run, not the command line;
- every stage ends by writing ``report.json`` and ``report.md`` and printing the checks.

Test hook: ``TOYLAB_KILL_AFTER_CHUNKS=k`` SIGKILLs the process after k training chunks
(through ``toylab.train.on_chunk``), so tests can prove that a resumed run ends with
exactly the parameters of an uninterrupted one.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from toylab import config, guide, report, runs
from toylab import train as training
from toylab.runs import Run


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def main_for(*, name: str, doc: str, Config: type, presets: dict[str, Any],
             train: Callable[..., dict[str, float]], analyze: Callable[[Any, Run], dict[str, Any]],
             check: Callable[[Any, Any], list[report.Check]], plot: Callable[[Any, Run], list[report.Figure]],
             figures: Sequence[tuple[str, Callable, str]], guide_template: Path | None = None,
             exercises: Sequence[Any] = ()) -> Callable[[Sequence[str] | None], int]:
    """The ``main(argv)`` of experiment ``name``: ``STAGE --preset P --out DIR [--strict] [--figures DIR]``.

    With ``--figures DIR`` the report's JSON is copied there too, and for the paper preset
    the reading-group guide ``DIR/README.md`` is rendered from ``guide_template`` with it.
    """

    def main(argv: Sequence[str] | None = None) -> int:
        args, cfg = config.parse_cli(Config, presets, argv, f"experiments.{name}", doc.split("\n\n")[0])
        run = Run(args.out)
        # Refusals first, touching nothing: no run to analyse, or a run of another config.
        if args.stage not in ("train", "all"):
            runs.open(run.root)
        elif run.exists() and run.config(Config) != cfg:
            run.start(Config, cfg, args.preset)  # raises the one-line "different config" error
        with run.lock():
            return _stages(run, args, cfg)

    def _stages(run: Run, args: config.RunArgs, cfg: Any) -> int:
        if args.stage in ("train", "all"):
            cfg = run.start(Config, cfg, args.preset)
        else:
            cfg = run.config(Config)
        preset = run.preset(args.preset)
        times = _read_json(run.path("wall_time.json"), {})
        if args.stage in ("train", "all"):
            t = time.perf_counter()
            kill = os.environ.get("TOYLAB_KILL_AFTER_CHUNKS")
            with training.on_chunk(training.kill_after(int(kill))) if kill else contextlib.nullcontext():
                times.update(train(cfg, run))
            times["train"] = time.perf_counter() - t
            run.path("provenance.json").write_text(json.dumps(report.provenance(times["train"]), indent=2) + "\n")
        if args.stage in ("analyze", "all"):
            t = time.perf_counter()
            run.save_analysis(analyze(cfg, run))
            times["analyze"] = time.perf_counter() - t
            checks = check(cfg, run.analysis())
            run.path("checks.json").write_text(json.dumps([dataclasses.asdict(c) for c in checks], indent=2,
                                                          default=float) + "\n")
        if args.stage in ("plot", "all"):
            t = time.perf_counter()
            figs = plot(cfg, run)
            times["plot"] = time.perf_counter() - t
            if args.figures:
                args.figures.mkdir(parents=True, exist_ok=True)
                for f in figs:
                    shutil.copyfile(run.path(f.path), args.figures / Path(f.path).name)
        run.path("wall_time.json").write_text(json.dumps(times, indent=2) + "\n")
        checks_path = run.path("checks.json")
        if not checks_path.exists():
            return 0
        checks = [report.Check(**c) for c in json.loads(checks_path.read_text())]
        figs = [report.Figure(f"figures/{figure_file(fig)}", cap) for fig, _, cap in figures
                if (run.figures / figure_file(fig)).exists()]
        rep = report.write(run.root, experiment=name, preset=preset, config=config.to_dict(cfg), checks=checks,
                           figures=figs, wall_time_s=times,
                           extra={"provenance": _read_json(run.path("provenance.json"), None)})
        if args.figures and args.stage in ("plot", "all"):
            # The committed copy of the report, which the reading-group guide's numbers come from.
            shutil.copyfile(run.path("report.json"), args.figures / "report.json")
            if preset == "paper" and guide_template is not None:
                guide.write(guide_template, args.figures, exercises)
        print(report.table(rep))
        print(f"report: {run.path('report.md')} (and report.html: open it in a browser)")
        return 1 if args.strict and rep["n_passed"] < rep["n_checks"] else 0

    return main


def figure_file(name: str) -> str:
    """A FIGURES entry's file name: ``"loss"`` is a PNG, ``"training.gif"`` an animation."""
    return name if "." in name else f"{name}.png"


def render(cfg: Any, run: Run, figures: Sequence[tuple[str, Callable, str]]) -> list[report.Figure]:
    """Render every figure ``fn(cfg, analysis, path)`` from the saved analysis, without retraining."""
    from toylab.plotting import style

    a = run.analysis()
    out = []
    with style():
        for fig, fn, caption in figures:
            fn(cfg, a, run.figures / figure_file(fig))
            out.append(report.Figure(f"figures/{figure_file(fig)}", caption))
    return out
