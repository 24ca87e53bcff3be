"""The run's report: checks against the paper's numbers, figures with captions, provenance.

A ``Check`` holds what was measured, what the paper says (a value or a band, as text
and as the rule applied) and whether it passed. Bands come from each paper (cited in
the check's text) and are fixed before a run; they are never adjusted to make a run pass.
"""

import dataclasses
import json
import platform
import subprocess
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Check:
    name: str  # what is checked, in words
    measured: Any  # the value this run measured (a number, or a short list)
    expected: str  # the paper's value or band, and where it comes from
    passed: bool  # measured falls in the band


@dataclasses.dataclass(frozen=True)
class Figure:
    path: str  # relative to the run directory
    caption: str  # what to see in it


def provenance(wall_s: float | None = None) -> dict[str, Any]:
    """Git commit, package versions, device and wall time of this run."""
    import jax

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    pkgs = {}
    for p in ("jax", "jaxlib", "equinox", "optax", "orbax-checkpoint", "numpy", "matplotlib", "tyro"):
        try:
            pkgs[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pkgs[p] = None
    return {
        "git_commit": git("rev-parse", "HEAD") or None,
        "git_dirty": bool(git("status", "--porcelain")),
        "packages": pkgs,
        "python": platform.python_version(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "wall_time_s": wall_s,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def write(
    run_dir: Path,
    *,
    experiment: str,
    preset: str,
    config: dict[str, Any],
    checks: Sequence[Check],
    figures: Sequence[Figure],
    wall_time_s: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``report.json`` and ``report.md`` into ``run_dir`` and return the report."""
    report = {
        "experiment": experiment,
        "preset": preset,
        "config": config,
        "wall_time_s": wall_time_s,
        "figures": [dataclasses.asdict(f) for f in figures],
        "checks": [dataclasses.asdict(c) for c in checks],
        "n_passed": sum(c.passed for c in checks),
        "n_checks": len(checks),
        **(extra or {}),
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=_fmt) + "\n")
    lines = [f"# {experiment}: report ({preset} preset)", "",
             f"{report['n_passed']} of {len(checks)} checks against the paper passed.", "",
             "| check | measured | paper | result |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {_fmt(c.measured)} | {c.expected} | {'pass' if c.passed else 'FAIL'} |" for c in checks]
    lines += ["", "## Figures", ""]
    for f in figures:
        lines += [f"![{Path(f.path).stem}]({f.path})", "", f"*{f.caption}*", ""]
    lines += ["## Config", "", "```json", json.dumps(config, indent=2), "```", "",
              "## Wall time (s)", "", *(f"- {k}: {v:.1f}" for k, v in wall_time_s.items()), ""]
    (run_dir / "report.md").write_text("\n".join(lines))
    return report


def table(report: dict[str, Any]) -> str:
    """The checks as a plain-text table for the terminal."""
    rows = [(c["name"], _fmt(c["measured"]), c["expected"], "pass" if c["passed"] else "FAIL") for c in report["checks"]]
    head = ("check", "measured", "paper", "result")
    widths = [min(60, max(len(r[i]) for r in [head, *rows])) for i in range(4)]
    def line(r: Sequence[str]) -> str:
        return "  ".join(str(x)[:w].ljust(w) for x, w in zip(r, widths))
    out = [line(head), line(["-" * w for w in widths]), *map(line, rows)]
    out.append(f"{report['n_passed']}/{report['n_checks']} checks passed")
    return "\n".join(out)
