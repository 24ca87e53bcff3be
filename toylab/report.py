"""The run's report: checks against the paper's numbers, figures with captions, provenance.

A ``Check`` holds what was measured, what the paper says (a value or a band, as text
and as the rule applied) and whether it passed. Bands come from each paper (cited in
the check's text) and are fixed before a run; they are never adjusted to make a run pass.
"""

import base64
import dataclasses
import html
import json
import os
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


@dataclasses.dataclass(frozen=True)
class Table:
    title: str  # the section's heading
    head: list[str]  # column names
    rows: list[list[str]]  # cells, already formatted
    caption: str  # how to read it


def cpu() -> str:
    """This machine's processor: model, x86 family and model, cores, widest vector instructions.

    Why: a 2-core machine of one name can be of two CPU generations (AMD EPYC of family 25, model 1
    (Zen 3, AVX2) or model 17 (Zen 4, AVX-512)); their matmul rates and some ops' costs differ by 1.3x
    to 6x, so a wall time means little without it (docs/sae-speed.md).
    """
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]  # the first core's entry
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in block.splitlines() if ":" in line)}
    flags = set(info.get("flags", "").split())
    isa = ("AVX-512" + (" with bfloat16" if "avx512_bf16" in flags else "") if "avx512f" in flags
           else "AVX2" if "avx2" in flags else "")
    where = f" (family {info['cpu family']}, model {info['model']})" if "cpu family" in info else ""
    return ", ".join(x for x in (info.get("model name", platform.machine()) + where, f"{os.cpu_count()} cores", isa)
                     if x)


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
        "cpu": cpu(),
        "wall_time_s": wall_s,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def fmt(v: Any) -> str:
    """A measured value as the tables print it (4 significant digits, lists in brackets)."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
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
    tables: Sequence["Table"] = (),
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
    if tables:
        report["tables"] = [dataclasses.asdict(t) for t in tables]
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=fmt) + "\n")
    lines = [f"# {experiment}: report ({preset} preset)", "",
             f"{report['n_passed']} of {len(checks)} checks against the paper passed.", "",
             "| check | measured | paper | result |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {fmt(c.measured)} | {c.expected} | {'pass' if c.passed else 'FAIL'} |" for c in checks]
    for t in tables:
        lines += ["", f"## {t.title}", "", t.caption, "", "| " + " | ".join(t.head) + " |",
                  "|" + "---|" * len(t.head), *("| " + " | ".join(r) + " |" for r in t.rows)]
    lines += ["", "## Figures", ""]
    for f in figures:
        lines += [f"![{Path(f.path).stem}]({f.path})", "", f"*{f.caption}*", ""]
    lines += ["## Config", "", "```json", json.dumps(config, indent=2), "```", "",
              "## Wall time (s)", "", *(f"- {k}: {v:.1f}" for k, v in wall_time_s.items()), ""]
    machine = (report.get("provenance") or {}).get("cpu")
    if machine:  # training's machine (provenance.json), the one the times above mostly measure
        lines += [f"Trained on: {machine}.", ""]
    (run_dir / "report.md").write_text("\n".join(lines))
    (run_dir / "report.html").write_text(to_html(report, run_dir))
    return report


_CSS = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 980px;
       margin: 2em auto; padding: 0 1em; color: #1f2328; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tr.pass td.result { background: #dafbe1; color: #116329; font-weight: 600; }
tr.fail td.result { background: #ffebe9; color: #a40e26; font-weight: 600; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-style: italic; color: #424a53; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 12px; }
.summary { font-size: 1.1em; }
"""

# Counts the images that decoded, so a headless browser can tell that every one loads.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute("data-images", imgs.length);
  document.body.setAttribute("data-images-loaded", ok);
});
"""

_MIME = {".png": "image/png", ".gif": "image/gif", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}


def to_html(report: dict[str, Any], run_dir: Path) -> str:
    """The report as one self-contained HTML page (images embedded), to open from disk or mail."""
    e = html.escape
    rows = "\n".join(
        f'<tr class="{"pass" if c["passed"] else "fail"}"><td>{e(c["name"])}</td><td>{e(fmt(c["measured"]))}</td>'
        f'<td>{e(c["expected"])}</td><td class="result">{"pass" if c["passed"] else "FAIL"}</td></tr>'
        for c in report["checks"])
    figs = []
    for f in report["figures"]:
        path = Path(run_dir) / f["path"]
        if not path.exists():
            continue
        data = base64.b64encode(path.read_bytes()).decode()
        mime = _MIME.get(path.suffix, "application/octet-stream")
        figs.append(f'<figure><img alt="{e(path.stem)}" src="data:{mime};base64,{data}">'
                    f'<figcaption>{e(f["caption"])}</figcaption></figure>')
    extra = {k: v for k, v in report.items()
             if k not in ("experiment", "preset", "config", "wall_time_s", "figures", "checks", "n_passed", "n_checks",
                          "tables", "summaries")}
    tables = "".join(
        f"<h2>{e(t['title'])}</h2><p>{e(t['caption'])}</p><table><thead><tr>"
        + "".join(f"<th>{e(h)}</th>" for h in t["head"]) + "</tr></thead><tbody>"
        + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in t["rows"]) + "</tbody></table>"
        for t in report.get("tables", []))
    walls = "".join(f"<li>{e(k)}: {v:.1f} s</li>" for k, v in report["wall_time_s"].items())
    title = f"{report['experiment']}: report ({report['preset']} preset)"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body><h1>{e(title)}</h1>
<p class="summary"><b>{report["n_passed"]} of {report["n_checks"]}</b> checks against the paper passed.</p>
<h2>Checks</h2>
<table><thead><tr><th>check</th><th>measured</th><th>paper</th><th>result</th></tr></thead>
<tbody>
{rows}
</tbody></table>
{tables}
<h2>Figures</h2>
{"".join(figs)}
<h2>Config</h2>
<pre>{e(json.dumps(report["config"], indent=2))}</pre>
<h2>Wall time</h2>
<ul>{walls}</ul>
<h2>Provenance</h2>
<pre>{e(json.dumps(extra, indent=2, default=fmt))}</pre>
<script>{_SCRIPT}</script>
</body></html>
"""


def find(report: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The one check of a saved report whose name starts with ``prefix``; a KeyError (one line) otherwise."""
    hits = [c for c in report["checks"] if c["name"].startswith(prefix)]
    if len(hits) != 1:
        raise KeyError(f"{len(hits)} checks of the {report['experiment']} report start with {prefix!r} "
                       "(exactly one must)")
    return hits[0]


def table(report: dict[str, Any]) -> str:
    """The checks as a plain-text table for the terminal."""
    rows = [(c["name"], fmt(c["measured"]), c["expected"], "pass" if c["passed"] else "FAIL") for c in report["checks"]]
    head = ("check", "measured", "paper", "result")
    widths = [min(60, max(len(r[i]) for r in [head, *rows])) for i in range(4)]
    def line(r: Sequence[str]) -> str:
        return "  ".join(str(x)[:w].ljust(w) for x, w in zip(r, widths))
    out = [line(head), line(["-" * w for w in widths]), *map(line, rows)]
    out.append(f"{report['n_passed']}/{report['n_checks']} checks passed")
    return "\n".join(out)
