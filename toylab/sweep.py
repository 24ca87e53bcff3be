"""Sweeps: any hyperparameter over a list of values, as one run.

``--sweep FIELD=v1,v2,...`` (repeatable; ``FIELD=log:LO:HI:N`` and ``FIELD=lin:LO:HI:N``
for N log- or evenly spaced values) makes the product of the lists; every point of it
trains ``n_seeds`` models. A Config says which of its fields are per-model
(``PER_MODEL``: a learning rate, a weight decay, a training fraction, a seed): points
that differ only in those train side by side in one compiled, vmapped, sharded program,
each swept value entering it as an array with a model axis. Every other field is
structural (a width, a step count, the modulus): one program per value, one after
another. Fields a sweep cannot vary (``n_seeds``: it multiplies every point) are refused.

A sweep's run directory::

    sweep.json        the swept fields and values, and every point's config
    config.json       the base config (the point the sweep varies from)
    groups/<g>/       one run per compiled program: its checkpoints and snapshots
    points/<i>/       one view per point: its config, which models of which group are its
                      own; with ``--point i`` its analysis, report and figures as a single run's
    summary.json      each point's outcomes, read from its training logs
    report.md, figures/sweep.png   the sweep table and the outcome over the swept fields
"""

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from toylab import config
from toylab.config import ConfigError

NOT_SWEPT = {"n_seeds": "every point trains n_seeds models: set it with --n-seeds"}


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Swept fields and their values, in command-line order; the points are their product."""

    fields: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]

    def points(self, base: Any) -> list[Any]:
        """Every point's Config (the last field varies fastest); each is validated as it is built."""
        return [dataclasses.replace(base, **dict(zip(self.fields, combo))) for combo in itertools.product(*self.values)]

    def labels(self, base: Any) -> list[str]:
        return [", ".join(f"{f}={config_value(getattr(p, f))}" for f in self.fields) for p in self.points(base)]

    def to_dict(self) -> dict[str, list]:
        return {f: list(v) for f, v in zip(self.fields, self.values)}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> "Sweep":
        return cls(tuple(d), tuple(tuple(v) for v in d.values()))


def config_value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def parse(specs: Sequence[str], cls: type, base: Any) -> Sweep:
    """``["weight_decay=0,0.3,1", "lr=log:1e-4:1e-2:5"]`` as a Sweep; one-line ConfigError on any problem.

    Every point is built (so validated by the Config) here, before anything compiles.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names, values = [], []
    for spec in specs:
        name, eq, text = spec.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if not eq or not text:
            raise ConfigError(f"--sweep {spec!r} is not allowed: write FIELD=v1,v2,... or FIELD=log:LO:HI:N")
        if name not in fields:
            import difflib

            close = difflib.get_close_matches(name, sorted(fields), n=1)
            raise ConfigError(f"--sweep {spec!r}: no config field {name!r}" + (f" (did you mean {close[0]}?)" if close else ""))
        if name in NOT_SWEPT or name in getattr(cls, "NOT_SWEPT", {}):
            reason = {**NOT_SWEPT, **getattr(cls, "NOT_SWEPT", {})}[name]
            raise ConfigError(f"--sweep {spec!r} is not allowed: {name} cannot be swept ({reason})")
        if name in names:
            raise ConfigError(f"--sweep {spec!r}: {name} is swept twice; give all its values in one --sweep")
        if _kind(fields[name].type) is None:
            raise ConfigError(f"--sweep {spec!r} is not allowed: {name} is a {fields[name].type} field; "
                              "only number, bool and string fields can be swept")
        vals = _values(name, text, fields[name].type)
        if len(set(vals)) != len(vals):
            raise ConfigError(f"--sweep {spec!r}: a value is repeated")
        names.append(name)
        values.append(tuple(vals))
    sweep = Sweep(tuple(names), tuple(values))
    for combo in itertools.product(*sweep.values):
        try:
            dataclasses.replace(base, **dict(zip(sweep.fields, combo)))
        except ConfigError as e:
            raise ConfigError(f"--sweep: {e}") from None
    return sweep


def _kind(typ: Any) -> type | None:
    """int, float, bool or str for a field of that type; None for any other (a tuple, say)."""
    kinds = {"int": int, "float": float, "bool": bool, "str": str}
    return typ if typ in kinds.values() else kinds.get(str(typ))


def _values(name: str, text: str, typ: Any) -> list[Any]:
    kind = _kind(typ)
    parts = text.split(":")
    try:
        if parts[0] in ("log", "lin"):
            if len(parts) != 4:
                raise ValueError("range form")
            lo, hi, n = float(parts[1]), float(parts[2]), int(parts[3])
            if n < 2 or (parts[0] == "log" and (lo <= 0 or hi <= 0)):
                raise ValueError("range form")
            raw = np.geomspace(lo, hi, n) if parts[0] == "log" else np.linspace(lo, hi, n)
            vals = [float(f"{v:.6g}") for v in raw]  # readable values, the same on every machine
        else:
            vals = [v.strip() for v in text.split(",") if v.strip()]
        if kind is bool:
            table = {"true": True, "1": True, "false": False, "0": False}
            return [table[str(v).lower()] for v in vals]
        if kind is int:
            return [int(round(float(v))) if isinstance(v, float) else int(v) for v in vals]
        return [kind(v) for v in vals]
    except (ValueError, KeyError):
        raise ConfigError(f"--sweep {name}={text!r} is not allowed: {name} takes {kind.__name__} values, "
                          f"as v1,v2,... or log:LO:HI:N or lin:LO:HI:N (N >= 2, log bounds > 0)") from None


def groups(points: Sequence[Any], per_model: Sequence[str]) -> list[list[int]]:
    """Indices of the points that share one compiled program: equal in every structural field."""
    out: dict[str, list[int]] = {}
    for i, p in enumerate(points):
        d = config.to_dict(p)
        key = json.dumps({k: v for k, v in d.items() if k not in per_model}, sort_keys=True)
        out.setdefault(key, []).append(i)
    return list(out.values())


def per_model(points: Sequence[Any], fields: Sequence[str], repeat: int, exclude: Sequence[str] = ()) -> dict:
    """The per-model fields that differ between ``points``, as arrays ``[len(points) * repeat]``.

    A field all points share stays out (the program keeps it as a constant), so a single run
    compiles exactly as it did before sweeps existed.
    """
    out = {}
    for f in fields:
        vals = [getattr(p, f) for p in points]
        if f in exclude or len(set(vals)) == 1:
            continue
        dtype = np.int32 if isinstance(vals[0], int) and not isinstance(vals[0], bool) else np.float32
        out[f] = np.repeat(np.asarray(vals, dtype), repeat)
    return out


def points_hash(points: Sequence[Any]) -> str:
    """The checkpoint guard of a group: its one config's hash, or a hash over all its points."""
    if len(points) == 1:
        return config.config_hash(points[0])
    blob = json.dumps([config.to_dict(p) for p in points], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


# -- the sweep's outcome ---------------------------------------------------------------------


def summarize_logs(cfg: Any, run: Any) -> dict[str, list]:
    """The default outcome of a point: each group's last logged value of every metric, per model."""
    out = {}
    for g in run.groups():
        for k, v in run.logs(g).items():
            last = [float(row[~np.isnan(row)][-1]) if np.any(~np.isnan(row)) else float("nan")
                    for row in np.asarray(v, float).reshape(v.shape[0], -1)]
            out[f"{g + '.' if g else ''}{k}"] = [float(f"{x:.4g}") for x in last]
    return out


def table(sweep: Sweep, points: Sequence[Any], summaries: Sequence[dict[str, Any]],
          point_checks: dict[int, list[dict]] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the sweep table: a point per row; its outcomes, then its analysed checks."""
    from toylab.report import fmt

    keys = list(dict.fromkeys(k for s in summaries for k in s))
    checks = sorted({c["name"] for cs in (point_checks or {}).values() for c in cs})
    head = ["point", *sweep.fields, *keys, *checks]
    rows = []
    for i, s in enumerate(summaries):
        by_name = {c["name"]: c for c in (point_checks or {}).get(i, [])}
        cells = [fmt(by_name[c]["measured"]) + (" ✓" if by_name[c]["passed"] else " ✗") if c in by_name else ""
                 for c in checks]
        rows.append([str(i), *(config_value(getattr(points[i], f)) for f in sweep.fields),
                     *(fmt(s.get(k, "")) for k in keys), *cells])
    return head, rows


def plot_outcome(sweep: Sweep, points: Sequence[Any], summaries: Sequence[dict[str, Any]], path: Path,
                 title: str) -> None:
    """The default sweep figure: every numeric outcome (seed mean) over the swept fields.

    One field: a line per outcome against it. Two or more: a heatmap per outcome over the
    first two fields (further fields take their first value).
    """
    import matplotlib.pyplot as plt

    keys = [k for k in dict.fromkeys(k for s in summaries for k in s)
            if all(_numeric(s.get(k)) for s in summaries)]
    keys = keys[:6]
    ncol = min(3, max(1, len(keys)))
    nrow = max(1, math.ceil(len(keys) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.6 * nrow), squeeze=False)
    f0 = sweep.fields[0]
    log0 = _is_log(sweep.values[0])
    for ax, k in zip(axes.flat, keys):
        if len(sweep.fields) == 1:
            x = [getattr(p, f0) for p in points]
            y = [np.mean(np.asarray(s[k], float)) for s in summaries]
            ax.plot(x, y, "o-")
            if log0:
                ax.set_xscale("log")
            ax.set_xlabel(f0)
            ax.set_ylabel(k)
        else:
            f1 = sweep.fields[1]
            rest = {f: v[0] for f, v in zip(sweep.fields[2:], sweep.values[2:])}
            grid = np.full((len(sweep.values[1]), len(sweep.values[0])), np.nan)
            for p, s in zip(points, summaries):
                if all(getattr(p, f) == v for f, v in rest.items()):
                    grid[sweep.values[1].index(getattr(p, f1)), sweep.values[0].index(getattr(p, f0))] = \
                        np.mean(np.asarray(s[k], float))
            im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
            ax.set_xticks(range(len(sweep.values[0])), [config_value(v) for v in sweep.values[0]], rotation=45)
            ax.set_yticks(range(len(sweep.values[1])), [config_value(v) for v in sweep.values[1]])
            ax.set_xlabel(f0)
            ax.set_ylabel(f1)
            fig.colorbar(im, ax=ax, label=k)
        ax.set_title(k)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _numeric(v: Any) -> bool:
    try:
        np.asarray(v, float)
    except (TypeError, ValueError):
        return False
    return True


def _is_log(vals: Sequence[Any]) -> bool:
    v = np.asarray(vals, float)
    return v.size >= 3 and bool(np.all(v > 0)) and v.max() / v.min() >= 20
