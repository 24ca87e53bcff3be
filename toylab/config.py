"""Configs: one frozen dataclass per experiment, named presets, validation, CLI.

An experiment defines ``Config`` (a frozen, keyword-only dataclass whose every field
has a one-line comment, which tyro turns into ``--help`` text) and ``PRESETS``.
``parse_cli`` reads ``STAGE --preset NAME --out DIR [--strict] [--field value ...]``.
Every problem with the command line or the values ends in ``ConfigError``: a single
line naming the field and what is allowed, raised before anything is compiled.
"""

import dataclasses
import difflib
import hashlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

STAGES = ("train", "analyze", "plot", "all")


class ConfigError(Exception):
    """A bad command line or hyperparameter; its message is one line."""


def require(ok: bool, field: str, allowed: str, value: Any) -> None:
    """Raise a one-line ConfigError unless ``ok``: names the field and what is allowed."""
    if not ok:
        raise ConfigError(f"{field}={value!r} is not allowed: {field} must be {allowed}")


def to_dict(cfg: Any) -> dict[str, Any]:
    return {f.name: _jsonable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _jsonable(v: Any) -> Any:
    return list(_jsonable(x) for x in v) if isinstance(v, tuple | list) else v


def from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            v = d[f.name]
            kw[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kw)


def config_hash(cfg: Any) -> str:
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def diff(a: Any, b: Any) -> list[str]:
    da, db = to_dict(a), to_dict(b)
    return [f"{k}: {da.get(k)!r} vs {db.get(k)!r}" for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)]


@dataclasses.dataclass(frozen=True)
class RunArgs:
    stage: str  # train, analyze, plot or all
    preset: str  # name of the preset the config starts from
    out: Path  # run directory: checkpoints, analysis, report, figures
    strict: bool  # exit non-zero when a check against the paper fails
    figures: Path | None  # where to copy the figures as well (make refreshes figures/)
    sweep: tuple[str, ...] = ()  # --sweep FIELD=v1,v2,... specs (toylab.sweep), in order
    point: str | None = None  # --point I (or all): analyse and draw point I of a sweep as a single run
    distributed: dict[str, Any] | None = None  # jax.distributed.initialize's arguments ({} detects a cluster)


def _flag_names(cls: type) -> set[str]:
    names = set()
    for f in dataclasses.fields(cls):
        names.add("--" + f.name.replace("_", "-"))
        names.add("--" + f.name)
        if f.type in (bool, "bool"):
            names.add("--no-" + f.name.replace("_", "-"))
            names.add("--no_" + f.name)
    return names


def parse_cli(
    cls: type, presets: Mapping[str, Any], argv: Sequence[str] | None, prog: str, description: str
) -> tuple[RunArgs, Any]:
    """Parse ``STAGE --preset NAME --out DIR [--strict] [--figures DIR] [--field v ...]``."""
    import tyro  # imported here: only the command line needs it

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: python -m {prog} {{{','.join(STAGES)}}} [--preset NAME] [--out DIR] [--strict] "
              f"[--figures DIR] [--FIELD VALUE ...]\n\n{description}\n")
        print(f"  --preset   one of {', '.join(presets)} (default: paper)")
        print("  --out      run directory (default: runs/<experiment>/<preset>)")
        print("  --strict   exit with status 1 if any check against the paper fails")
        print("  --figures  also copy the figures into this folder")
        print("  --sweep    FIELD=v1,v2,... or FIELD=log:LO:HI:N or FIELD=lin:LO:HI:N (repeatable): one run of")
        print("             the product of the lists, n_seeds models per point")
        print("  --point    I or all: also analyse and draw sweep point I (or every point) as a single run")
        print("  --coordinator HOST:PORT --num-processes N --process-id I: one of N processes of a jax.distributed")
        print("             run (the model axis spans every process's devices); --distributed: detect them (SLURM, ...)\n")
        print("Config fields (override any preset value):")
        tyro.cli(cls, args=["--help"], prog=prog, default=presets["paper"])
        raise SystemExit(0)

    run: dict[str, Any] = {"stage": None, "preset": "paper", "out": None, "strict": False, "figures": None,
                           "point": None}
    sweeps: list[str] = []
    dist: dict[str, Any] = {}
    rest: list[str] = []
    allowed = _flag_names(cls)
    it = iter(argv)
    for a in it:
        name, eq, val = a.partition("=")
        if name == "--distributed":
            dist.setdefault("auto", True)
        elif name in ("--preset", "--out", "--figures", "--sweep", "--point", "--coordinator", "--num-processes",
                      "--process-id"):
            if not eq:
                val = next(it, None)
                if val is None:
                    raise ConfigError(f"{name} needs a value")
            if name == "--sweep":
                sweeps.append(val)
            elif name in ("--coordinator", "--num-processes", "--process-id"):
                dist[name[2:].replace("-", "_")] = val
            else:
                run[name[2:]] = val
        elif a == "--strict":
            run["strict"] = True
        elif a.startswith("-") and not _is_number(a):
            if name not in allowed:
                close = difflib.get_close_matches(name, sorted(allowed), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ConfigError(f"unknown flag {name}{hint}; see --help for the fields")
            rest.append(a)
        elif run["stage"] is None and not rest:
            run["stage"] = a
        else:
            rest.append(a)
    if run["stage"] not in STAGES:
        raise ConfigError(f"stage={run['stage']!r} is not allowed: stage must be one of {', '.join(STAGES)}")
    if run["preset"] not in presets:
        raise ConfigError(f"preset={run['preset']!r} is not allowed: preset must be one of {', '.join(presets)}")
    default = presets[run["preset"]]
    try:
        cfg = tyro.cli(cls, args=rest, prog=prog, default=default, console_outputs=False)
    except SystemExit as e:
        raise ConfigError(f"could not parse {' '.join(rest)!r} as config overrides; see --help") from e
    out = Path(run["out"]) if run["out"] else Path("runs") / prog.split(".")[-1] / run["preset"]
    figs = Path(run["figures"]) if run["figures"] else None
    point = run["point"]
    if point is not None and point != "all" and not point.isdigit():
        raise ConfigError(f"point={point!r} is not allowed: point must be a point's number or all")
    if dist:
        dist.pop("auto", None)
        for k in ("num_processes", "process_id"):
            if k in dist:
                require(str(dist[k]).isdigit(), k, "a non-negative integer", dist[k])
                dist[k] = int(dist[k])
        if "coordinator_address" not in dist and "coordinator" in dist:
            dist["coordinator_address"] = dist.pop("coordinator")
    return RunArgs(run["stage"], run["preset"], out, run["strict"], figs, tuple(sweeps), point,
                   dist if dist or "--distributed" in argv else None), cfg


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def main_guard(main: Callable[[], int]) -> None:
    """Run ``main``; a ConfigError or a CheckpointError becomes one line on stderr and exit 2."""
    from toylab.checkpoint import CheckpointError
    from toylab.train import full_float32_matmuls, use_cpu_cores

    use_cpu_cores()
    full_float32_matmuls()
    try:
        code = main()
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(code)
