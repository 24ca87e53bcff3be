"""Reading-group guides: a page per experiment whose numbers come from its committed report.

A guide is a Markdown template (``experiments/guides/<experiment>.md``) rendered with
the paper-preset run's ``report.json`` into ``figures/<experiment>/README.md``, which
GitHub shows as the folder opens. Every number in it is a placeholder, so the page
cannot drift from the figures beside it:

    {{measured:<check>}}          the check's measured value; ``<check>`` is the start
                                  of its name and must match exactly one check
    {{measured:<check>|.2f}}      the same with a format spec (applied to each number)
    {{measured:<check>[1]}}       one element of a list-valued measurement ([1][0] nests)
    {{expected:<check>}}          the band the check applied (the paper's number)
    {{result:<check>}}            pass or FAIL
    {{config:<field>}}            a config field of the run
    {{caption:<figure>}}          a figure's caption: ``loss`` for loss.png, ``training.gif``
    {{n_passed}} {{n_checks}}     the report's totals
    {{exercises}}                 the experiment's predict-then-run exercises

A placeholder that matches nothing, or more than one check, is an error, so renaming a
check breaks the guide loudly rather than silently.
"""

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toylab.report import find

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)(?::([^}|\[]+))?((?:\[-?\d+\])*)(?:\|([^}]+))?\s*\}\}")


class GuideError(ValueError):
    """A template placeholder that the report cannot fill; one line."""


def _number(v: Any, spec: str | None) -> str:
    if isinstance(v, list | tuple):
        return ", ".join(_number(x, spec) for x in v)
    if spec and isinstance(v, int | float) and not isinstance(v, bool):
        if spec == ",":
            return f"{v:,.0f}"
        return format(v, spec)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _check(report: dict[str, Any], prefix: str) -> dict[str, Any]:
    try:
        return find(report, prefix.strip())
    except KeyError as e:
        raise GuideError(f"guide placeholder {prefix!r}: {e.args[0]}") from None


def render(template: str, report: dict[str, Any], exercises: Sequence[Any] = ()) -> str:
    """The guide's Markdown: every placeholder filled from ``report``."""

    def fill(m: re.Match) -> str:
        kind, arg, index, spec = m.group(1), m.group(2), m.group(3), m.group(4)
        if kind in ("measured", "expected", "result"):
            c = _check(report, arg or "")
            v: Any = {"measured": c["measured"], "expected": c["expected"],
                      "result": "pass" if c["passed"] else "FAIL"}[kind]
        elif kind == "config":
            if arg not in report["config"]:
                raise GuideError(f"guide placeholder config:{arg} is not a config field of {report['experiment']}")
            v = report["config"][arg]
        elif kind == "caption":
            hits = [f["caption"] for f in report["figures"] if Path(f["path"]).name in (arg, f"{arg}.png")]
            if len(hits) != 1:
                raise GuideError(f"guide placeholder caption:{arg} names no figure of {report['experiment']}")
            v = hits[0]
        elif kind in ("n_passed", "n_checks"):
            v = report[kind]
        elif kind == "exercises":
            return exercises_markdown(exercises)
        else:
            raise GuideError(f"unknown guide placeholder {m.group(0)}")
        for i in re.findall(r"\[(-?\d+)\]", index or ""):
            v = v[int(i)]
        return _number(v, spec)

    header = (f"<!-- Generated from experiments/guides/{report['experiment']}.md and report.json in this folder "
              f"by toylab.guide; edit the template, not this page. -->\n")
    return header + _PLACEHOLDER.sub(fill, template)


def exercises_markdown(exercises: Sequence[Any]) -> str:
    """The predict-then-run section: question, command, the answer folded away."""
    out = []
    for i, ex in enumerate(exercises, 1):
        out += [f"### Exercise {i}: {ex.title}", "", ex.question, "",
                "```bash", f"make exercises NAME={ex.name}", "```", "",
                f"Runs `{ex.command()}` (about {ex.minutes} min on 2 CPU cores) and then checks the prediction: "
                f"*{ex.check_text}*", "",
                "<details><summary>What happens, and why</summary>", "", ex.answer, "", "</details>", ""]
    return "\n".join(out).rstrip() + "\n"


def checks_table(report: dict[str, Any]) -> str:
    """The report's checks as a Markdown table (the README's per-experiment tables are these)."""
    rows = ["| check | measured | paper | result |", "|---|---|---|---|"]
    for c in report["checks"]:
        rows.append(f"| {c['name']} | {_number(c['measured'], None)} | {c['expected']} | "
                    f"{'pass' if c['passed'] else '**FAIL**'} |")
    return "\n".join(rows)


_BLOCK = re.compile(r"(<!-- checks: (\S+) -->\n)(.*?)(<!-- /checks -->)", re.S)


def committed_reports(figures: Path) -> dict[str, dict[str, Any]]:
    """Every committed ``figures/NAME/report.json``, by NAME (an experiment, or a sweep such as grokking-phases)."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(figures.glob("*/report.json"))}


_COSTS = re.compile(r"(<!-- costs: (\S+) -->\n)(.*?)(<!-- /costs -->)", re.S)
_STAGES = {"train": "training", "analyze": "analysis", "plot": "figures"}


def costs_line(report: dict[str, Any]) -> str:
    """The report's wall times in one sentence: each stage, and in brackets what its parts cost."""
    walls = report["wall_time_s"]

    def part(name: str) -> str:
        return " ".join(w.upper() if w in ("dla", "sae") else w for w in name.split("_"))

    stages = []
    for stage, label in _STAGES.items():
        if stage not in walls:
            continue
        parts = [f"{part(k.split('.', 1)[1])} {v:.0f} s" for k, v in walls.items() if k.startswith(f"{stage}.")]
        stages.append(f"{label} {_duration(walls[stage])}" + (f" ({', '.join(parts)})" if parts else ""))
    cpu = (report.get("provenance") or {}).get("cpu")
    return f"Wall times of the committed run{f' ({cpu})' if cpu else ''}: {'; '.join(stages)}."


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def fill_readme(text: str, reports: dict[str, dict[str, Any]]) -> str:
    """Replace every ``<!-- checks: NAME -->...<!-- /checks -->`` block with NAME's checks table, and every
    ``<!-- costs: NAME -->...<!-- /costs -->`` block with its wall times (``costs_line``)."""
    def fill(m: re.Match) -> str:
        rep = reports[m.group(2)]
        return (f"{m.group(1)}{rep['n_passed']} of {rep['n_checks']} checks pass on the {rep['preset']} preset "
                f"(committed run):\n\n{checks_table(rep)}\n{m.group(4)}")

    def costs(m: re.Match) -> str:
        return f"{m.group(1)}{costs_line(reports[m.group(2)])}\n{m.group(4)}"

    return _COSTS.sub(costs, _BLOCK.sub(fill, text))


def write(template: Path, figures_dir: Path, exercises: Sequence[Any] = ()) -> Path:
    """Render ``template`` with ``figures_dir/report.json`` into ``figures_dir/README.md``."""
    report = json.loads((figures_dir / "report.json").read_text())
    out = figures_dir / "README.md"
    out.write_text(render(template.read_text(), report, exercises))
    return out
