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
- every stage ends by writing ``report.json`` and ``report.md`` and printing the checks;
- ``--sweep`` makes the run a sweep (``toylab.sweep``): one program per group of points, a view
  per point, a sweep table and figure; ``--point I`` analyses and draws point I as a single run;
- under ``jax.distributed`` process 0 does all of the above, the others train alongside it;
- a stage's wall time goes into the report, and so does each part of ``analyze`` that it times with
  ``laps`` (as ``analyze.name``), so a run says what each of its analyses cost.

Test hook: ``TOYLAB_KILL_AFTER_CHUNKS=k`` SIGKILLs the process after k training chunks
(through ``toylab.train.on_chunk``), so tests can prove that a resumed run ends with
exactly the parameters of an uninterrupted one.
"""

import contextlib
import contextvars
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from toylab import config, guide, report, runs, sweep
from toylab import train as training
from toylab.runs import Run


_PARTS: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("toylab_parts", default=None)


def laps() -> Callable[[str], None]:
    """``lap = laps()``, then ``lap("name")`` after each part of the running stage: the seconds since the
    previous lap (or since ``laps()``) join the run's wall times as ``<stage>.<name>``, summed if a name
    comes back. Outside a stage it records nothing.

    Why: the report should say what each analysis costs, not only the stage's total. JAX dispatches
    asynchronously, so a part's time is only right if the part ends by reading its results (``np.asarray``).
    """
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        parts = _PARTS.get()
        if parts is not None:
            parts[name] = parts.get(name, 0.0) + now - t
        t = now

    return lap


@contextlib.contextmanager
def _parts(times: dict[str, float], stage: str):
    """Collect the ``laps`` of one stage into ``times``."""
    parts: dict[str, float] = {}
    token = _PARTS.set(parts)
    try:
        yield
    finally:
        _PARTS.reset(token)
        for k in [k for k in times if k.startswith(f"{stage}.")]:
            del times[k]  # a re-run stage replaces the parts of the previous one
        times.update({f"{stage}.{k}": v for k, v in parts.items()})


def _ordered(times: dict[str, float]) -> dict[str, float]:
    """Wall times by stage, each stage's total before its parts (a re-run stage's parts were added last)."""
    stages = ["train", "analyze", "plot"]

    def key(k: str) -> tuple[int, int]:
        stage = k.split(".")[0]
        return (stages.index(stage) if stage in stages else len(stages), k != stage)

    return dict(sorted(times.items(), key=lambda kv: key(kv[0])))


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def main_for(*, name: str, doc: str, Config: type, presets: dict[str, Any],
             train: Callable[..., dict[str, float]], analyze: Callable[[Any, Run], dict[str, Any]],
             check: Callable[[Any, Any], list[report.Check]], plot: Callable[[Any, Run], list[report.Figure]],
             figures: Sequence[tuple[str, Callable, str]], guide_template: Path | None = None,
             exercises: Sequence[Any] = (), summarize: Callable[[Any, Run], dict[str, Any]] | None = None,
             sweep_check: Callable[..., list[report.Check]] | None = None,
             sweep_figures: Sequence[tuple[str, Callable, str]] = (),
             preset_sweeps: dict[str, tuple[str, ...]] | None = None) -> Callable[[Sequence[str] | None], int]:
    """The ``main(argv)`` of experiment ``name``: ``STAGE --preset P --out DIR [--strict] [--figures DIR]
    [--sweep FIELD=v1,v2 ...] [--point I]``.

    With ``--figures DIR`` the report's JSON is copied there too, and for the paper preset
    the reading-group guide ``DIR/README.md`` is rendered from ``guide_template`` with it.

    Sweeps (``toylab.sweep``): ``train(cfg, run, points)`` trains points that differ from
    ``cfg`` in ``Config.PER_MODEL`` fields only, in one program (an experiment whose Config
    has no ``PER_MODEL`` runs every point as its own program); ``summarize(cfg, run)``
    gives a point's outcomes from its training logs, for the sweep table and the default
    figure; ``sweep_check(base_cfg, sweep, points, summaries)`` its checks;
    ``sweep_figures`` entries ``(name, fn(base_cfg, sweep, points, summaries, path), caption)``
    more figures; ``preset_sweeps`` a preset's own sweep, used when no ``--sweep`` is given.
    """

    def main(argv: Sequence[str] | None = None) -> int:
        args, cfg = config.parse_cli(Config, presets, argv, f"experiments.{name}", doc.split("\n\n")[0])
        run = Run(args.out)
        if args.distributed is not None:
            training.init_distributed(**args.distributed)
        if not args.sweep and (preset_sweeps or {}).get(args.preset) and args.stage in ("train", "all"):
            args = dataclasses.replace(args, sweep=preset_sweeps[args.preset])
        if not training.leader():
            return _follow(run, args, cfg)
        if args.sweep or run.path("sweep.json").exists():
            return _sweep_main(run, args, cfg)
        if args.point is not None:
            raise config.ConfigError("--point needs a sweep: add --sweep FIELD=v1,v2,... or point --out at a sweep's run")
        # Refusals first, touching nothing: no run to analyse, or a run of another config.
        if args.stage not in ("train", "all"):
            runs.open(run.root)
        elif run.exists() and run.config(Config) != cfg:
            run.start(Config, cfg, args.preset)  # raises the one-line "different config" error
        with run.lock():
            return _stages(run, args, cfg)

    def _stages(run: Run, args: config.RunArgs, cfg: Any, trained: bool = False) -> int:
        if args.stage in ("train", "all") and not trained:
            cfg = run.start(Config, cfg, args.preset)
        else:
            cfg = run.config(Config)
        preset = run.preset(args.preset)
        times = _read_json(run.path("wall_time.json"), {})
        if args.stage in ("train", "all") and not trained:
            t = time.perf_counter()
            with training_ctx(os.environ.get("TOYLAB_KILL_AFTER_CHUNKS")):
                times.update(train(cfg, run))
            times["train"] = time.perf_counter() - t
            run.path("provenance.json").write_text(json.dumps(report.provenance(times["train"]), indent=2) + "\n")
        if args.stage in ("analyze", "all"):
            t = time.perf_counter()
            with _parts(times, "analyze"):
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
        times = _ordered(times)
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

    def _follow(run: Run, args: config.RunArgs, cfg: Any) -> int:
        """A process other than 0 of a jax.distributed run: it trains its share of the same programs, in
        step with process 0, and writes nothing (process 0 writes the checkpoints, analysis and report)."""
        if args.stage not in ("train", "all"):
            return 0
        if not args.sweep:
            train(cfg, run)
            return 0
        points = sweep.parse(args.sweep, Config, cfg).points(cfg)
        for g, idx in enumerate(sweep.groups(points, getattr(Config, "PER_MODEL", ()))):
            _train_group(Run(run.root / "groups" / str(g)), [points[i] for i in idx])
        return 0

    def _train_group(grun: Run, points: list) -> None:
        """One compiled program of a sweep: points equal in every structural field."""
        if getattr(Config, "PER_MODEL", ()):
            train(points[0], grun, points)
        else:
            train(points[0], grun)

    def _sweep_main(run: Run, args: config.RunArgs, cfg: Any) -> int:
        # Every refusal first, touching nothing: a bad sweep, a run of another sweep, a bad point.
        saved = _read_json(run.path("sweep.json"), None)
        trains = args.stage in ("train", "all")
        if saved is None and not trains:
            raise config.ConfigError(f"no sweep in {run.root} (no sweep.json); run the train stage with --sweep first")
        if not trains or (saved is not None and not args.sweep):
            base = config.from_dict(Config, saved["base"])
            if trains and base != cfg:
                raise config.ConfigError(f"{run.root} holds a sweep from a different config "
                                         f"({'; '.join(config.diff(base, cfg))}); use another --out")
            cfg = base
        sw = sweep.parse(args.sweep, Config, cfg) if args.sweep else sweep.Sweep.from_dict(saved["sweep"])
        if saved is not None and (saved["sweep"] != sw.to_dict() or config.from_dict(Config, saved["base"]) != cfg):
            raise config.ConfigError(f"{run.root} holds another sweep ({saved['sweep']}); use another --out")
        if saved is None and run.exists():
            raise config.ConfigError(f"{run.root} holds a single run; use another --out for the sweep")
        points = sw.points(cfg)
        chosen = [] if args.point is None else range(len(points)) if args.point == "all" else [int(args.point)]
        if any(i >= len(points) for i in chosen):
            raise config.ConfigError(f"point={args.point} is not allowed: the sweep has points 0..{len(points) - 1}")
        per_model = getattr(Config, "PER_MODEL", ())
        groups = sweep.groups(points, per_model)
        labels = sw.labels(cfg)
        with run.lock():
            times = _read_json(run.path("wall_time.json"), {})
            if trains:
                if saved is None:
                    run.start(Config, cfg, args.preset)
                    run.path("sweep.json").write_text(json.dumps(
                        {"sweep": sw.to_dict(), "base": config.to_dict(cfg), "per_model": list(per_model),
                         "groups": groups, "points": labels}, indent=2) + "\n")
                t = time.perf_counter()
                kill = os.environ.get("TOYLAB_KILL_AFTER_CHUNKS")
                with training_ctx(kill):
                    for g, idx in enumerate(groups):
                        grun = Run(run.root / "groups" / str(g))
                        grun.start(Config, points[idx[0]], args.preset)
                        print(f"sweep program {g + 1} of {len(groups)}: {len(idx)} point(s)"
                              + (f" ({labels[idx[0]]})" if len(idx) == 1 else ""))
                        _train_group(grun, [points[i] for i in idx])
                        for j, i in enumerate(idx):
                            Run.view(run.root / "points" / str(i), grun, j, len(idx)).start(
                                Config, points[i], args.preset)
                times["train"] = time.perf_counter() - t
                run.path("provenance.json").write_text(json.dumps(report.provenance(times["train"]), indent=2)
                                                       + "\n")
            point_runs = [Run(run.root / "points" / str(i)) for i in range(len(points))]
            if args.stage in ("analyze", "all") or not run.path("summary.json").exists():
                t = time.perf_counter()
                summaries = [(summarize or sweep.summarize_logs)(points[i], point_runs[i]) for i in range(len(points))]
                run.path("summary.json").write_text(json.dumps(summaries, indent=1, default=float) + "\n")
                checks = sweep_check(cfg, sw, points, summaries) if sweep_check else []
                run.path("checks.json").write_text(json.dumps([dataclasses.asdict(c) for c in checks], indent=2,
                                                              default=float) + "\n")
                times["analyze"] = time.perf_counter() - t
            summaries = json.loads(run.path("summary.json").read_text())
            for i in chosen:  # single-run analysis, checks and figures of the chosen points
                print(f"point {i}: {labels[i]}")
                stage = "plot" if args.stage == "plot" else "all"  # a chosen point is analysed and drawn
                _stages(point_runs[i], dataclasses.replace(args, stage=stage, figures=None, strict=False), points[i],
                        trained=True)
            sweep_figs = [("sweep", lambda c, s, p, m, path: sweep.plot_outcome(
                s, p, m, path, f"{name}: outcome of each point over the swept fields (mean over its models)"),
                "Each outcome of the sweep table (a seed mean) over the swept fields: the first field across, "
                "the second up."), *sweep_figures]
            if args.stage in ("plot", "all"):
                t = time.perf_counter()
                from toylab.plotting import style

                run.figures.mkdir(parents=True, exist_ok=True)
                with style():
                    for fig, fn, _ in sweep_figs:
                        fn(cfg, sw, points, summaries, run.figures / figure_file(fig))
                times["plot"] = time.perf_counter() - t
                if args.figures:
                    args.figures.mkdir(parents=True, exist_ok=True)
                    for fig, _, _ in sweep_figs:
                        shutil.copyfile(run.figures / figure_file(fig), args.figures / figure_file(fig))
            run.path("wall_time.json").write_text(json.dumps(times, indent=2) + "\n")
            checks = [report.Check(**c) for c in _read_json(run.path("checks.json"), [])]
            point_checks = {i: _read_json(r.path("checks.json"), []) for i, r in enumerate(point_runs)
                            if r.path("checks.json").exists()}
            head, rows = sweep.table(sw, points, summaries, point_checks)
            figs = [report.Figure(f"figures/{figure_file(f)}", cap) for f, _, cap in sweep_figs
                    if (run.figures / figure_file(f)).exists()]
            rep = report.write(run.root, experiment=name, preset=run.preset(args.preset), config=config.to_dict(cfg),
                               checks=checks, figures=figs, wall_time_s=times,
                               extra={"sweep": sw.to_dict(), "per_model": [f for f in sw.fields if f in per_model],
                                      "programs": len(groups), "summaries": summaries,
                                      "provenance": _read_json(run.path("provenance.json"), None)},
                               tables=[report.Table(
                                   "Sweep", head, rows,
                                   f"{len(points)} points ({_seeds(cfg)} each), in {len(groups)} compiled "
                                   f"program(s). Outcomes from each point's training logs (a list: a value per model, its seeds side by side); "
                                   f"checks (✓ pass, ✗ fail) for the points analysed with --point.")])
            if args.figures and args.stage in ("plot", "all"):
                shutil.copyfile(run.path("report.json"), args.figures / "report.json")
            print(report.table(rep))
            print(f"sweep table and figures: {run.path('report.md')} (points' own reports: {run.root / 'points'})")
            return 1 if args.strict and rep["n_passed"] < rep["n_checks"] else 0

    return main


def _seeds(cfg: Any) -> str:
    n = getattr(cfg, "n_seeds", None)
    return f"{n} seed{'s' * (n != 1)}" if n is not None else "the preset's models"


def training_ctx(kill: str | None):
    """The kill switch of the resume tests (``TOYLAB_KILL_AFTER_CHUNKS``), or nothing."""
    return training.on_chunk(training.kill_after(int(kill))) if kill else contextlib.nullcontext()


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
