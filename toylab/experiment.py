"""The command line every experiment shares: stages, run directory, report.

An experiment module defines ``Config``, ``PRESETS``, ``train``, ``analyze``,
``check``, ``plot`` and ``FIGURES`` and ends with ``main = experiment.main_for(...)``.
This module does the rest the same way for all of them:

- ``train`` writes the run's ``config.json`` (a run directory holds one config: a
  different one is refused, so nothing written is overwritten by other settings),
  its preset, provenance and wall time;
- ``analyze`` and ``plot`` read the config saved with the run, not the command line;
- every stage ends by writing ``report.json`` and ``report.md`` and printing the checks.
"""

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from toylab import checkpoint, config, report
from toylab.config import ConfigError


def prepare_run_dir(cls: type, cfg: Any, run_dir: Path, stage: str) -> Any:
    """The run's config: a new run writes it; an existing run must have been made with the same one."""
    path = run_dir / "config.json"
    if path.exists():
        try:
            saved = config.from_dict(cls, json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ConfigError) as e:
            raise ConfigError(f"{path} is unreadable ({e}); delete it or use another --out") from None
        if stage in ("train", "all") and saved != cfg:
            raise ConfigError(f"{run_dir} holds a run with a different config ({'; '.join(config.diff(saved, cfg))}); "
                              "use another --out")
        return saved
    if stage not in ("train", "all"):
        raise checkpoint.CheckpointError(f"no run in {run_dir} (no config.json); run the train stage first")
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_dict(cfg), indent=2) + "\n")
    return cfg


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def main_for(*, name: str, doc: str, Config: type, presets: dict[str, Any],
             train: Callable[..., dict[str, float]], analyze: Callable[[Any, Path], Any],
             check: Callable[[Any, Any], list[report.Check]], plot: Callable[[Any, Path], list[report.Figure]],
             figures: Sequence[tuple[str, Callable, str]]) -> Callable[[Sequence[str] | None], int]:
    """The ``main(argv)`` of experiment ``name``: ``STAGE --preset P --out DIR [--strict] [--figures DIR]``."""

    def main(argv: Sequence[str] | None = None) -> int:
        args, cfg = config.parse_cli(Config, presets, argv, f"experiments.{name}", doc.split("\n\n")[0])
        run_dir = args.out
        cfg = prepare_run_dir(Config, cfg, run_dir, args.stage)
        preset_path = run_dir / "preset.txt"  # the report names the preset the run was made with
        if args.stage in ("train", "all") and not preset_path.exists():
            preset_path.write_text(args.preset + "\n")
        preset = preset_path.read_text().strip() if preset_path.exists() else args.preset
        times = _read_json(run_dir / "wall_time.json", {})
        if args.stage in ("train", "all"):
            t = time.perf_counter()
            stop = os.environ.get("TOYLAB_KILL_AFTER_CHUNKS")  # test hook: SIGKILL mid-run to test resume
            times.update(train(cfg, run_dir, stop_after_chunks=int(stop) if stop else None))
            times["train"] = time.perf_counter() - t
            (run_dir / "provenance.json").write_text(json.dumps(report.provenance(times["train"]), indent=2) + "\n")
        if args.stage in ("analyze", "all"):
            t = time.perf_counter()
            a = analyze(cfg, run_dir)
            times["analyze"] = time.perf_counter() - t
            checks = check(cfg, a)
            (run_dir / "checks.json").write_text(json.dumps([dataclasses.asdict(c) for c in checks], indent=2,
                                                            default=float) + "\n")
        if args.stage in ("plot", "all"):
            t = time.perf_counter()
            figs = plot(cfg, run_dir)
            times["plot"] = time.perf_counter() - t
            if args.figures:
                args.figures.mkdir(parents=True, exist_ok=True)
                for f in figs:
                    shutil.copyfile(run_dir / f.path, args.figures / Path(f.path).name)
        (run_dir / "wall_time.json").write_text(json.dumps(times, indent=2) + "\n")
        checks_path = run_dir / "checks.json"
        if not checks_path.exists():
            return 0
        checks = [report.Check(**c) for c in json.loads(checks_path.read_text())]
        figs = [report.Figure(f"figures/{fig}.png", cap) for fig, _, cap in figures
                if (run_dir / "figures" / f"{fig}.png").exists()]
        rep = report.write(run_dir, experiment=name, preset=preset, config=config.to_dict(cfg), checks=checks,
                           figures=figs, wall_time_s=times,
                           extra={"provenance": _read_json(run_dir / "provenance.json", None)})
        print(report.table(rep))
        print(f"report: {run_dir / 'report.md'}")
        return 1 if args.strict and rep["n_passed"] < rep["n_checks"] else 0

    return main


def render(cfg: Any, run_dir: Path, figures: Sequence[tuple[str, Callable, str]], npz: str = "analysis.npz"
           ) -> list[report.Figure]:
    """Render every figure ``fn(cfg, analysis, path)`` from the saved analysis, without retraining."""
    import numpy as np

    from toylab.plotting import style

    path = run_dir / npz
    if not path.exists():
        raise checkpoint.CheckpointError(f"no {path}; run the analyze stage first")
    a = dict(np.load(path))
    out = []
    with style():
        for fig, fn, caption in figures:
            fn(cfg, a, run_dir / "figures" / f"{fig}.png")
            out.append(report.Figure(f"figures/{fig}.png", caption))
    return out
