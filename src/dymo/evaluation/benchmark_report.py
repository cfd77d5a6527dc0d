"""The benchmark's reports: results.csv/.md, ablation.md, selection_stats.md, the quality sweep,
the accuracy-vs-missing plot and the self-contained report.html."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dymo.data.dataset import SplitDataset
from dymo.data.scenarios import parse_scenario
from dymo.evaluation.benchmark_plan import (
    ABLATION,
    NO_RECOVERY,
    SWEEP_LEVELS,
    SWEEP_SCENARIO,
    BenchmarkConfig,
    MethodSpec,
    parse_sweep_label,
)
from dymo.selection.selector import SEARCHING
from dymo.utils.io import atomic_replace_from, atomic_write

# -- reports -------------------------------------------------------------------------------------


@dataclass
class Table:
    """A table rendered both as Markdown and as HTML."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    marked: list[bool] = field(default_factory=list)  # rows drawn as upper bounds in HTML

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "---|" * len(self.header))
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        e = html.escape
        parts = [f"<h3>{e(self.title)}</h3>"]
        if self.note:
            parts.append(f"<p class='note'>{e(self.note)}</p>")
        parts.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in self.header) + "</tr></thead><tbody>")
        for i, r in enumerate(self.rows):
            cls = " class='upper'" if i < len(self.marked) and self.marked[i] else ""
            parts.append(f"<tr{cls}>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>")
        parts.append("</tbody></table>")
        return "\n".join(parts)


UPPER_NOTE = (
    "EXPERIMENT-ONLY upper bounds, not methods: oracle-complete reads the true data of the missing "
    "modalities; oracle-selection reads the labels to pick the best subset of recovered modalities "
    "per sample; oracle-selection-shuffled does the same on recoveries of other samples of the batch, "
    "so only the gap between the two is what the recoveries carry."
)
SEEDS_NOTE = (
    "Every model is trained once; the seeds vary the missing-modality masks (and the random draws of the "
    "experiment-only shuffled / controlled-quality recoveries), so ± is the spread over masks (population std), "
    "not over training runs."
)


def _label(row: pd.Series, multi_rec: bool) -> str:
    if row["recoverer"] == NO_RECOVERY or not multi_rec:
        return str(row["method"])
    return f"{row['method']} [{row['recoverer']}]"


def _fmt(mean: float, std: float, n: int, scale: float = 100.0, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if n > 1 and not math.isnan(std):
        return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"
    return f"{scale * mean:.{digits}f}"


def _pivot(df: pd.DataFrame, value: str, columns: str, order: list[str], col_order: list[Any], scale: float = 100.0, digits: int = 2) -> list[list[str]]:
    rows = []
    for label in order:
        sub = df[df["label"] == label]
        cells = [label]
        for col in col_order:
            vals = pd.to_numeric(sub[sub[columns] == col][value], errors="coerce").dropna()
            cells.append(_fmt(float(vals.mean()), float(vals.std(ddof=0)), len(vals), scale, digits) if len(vals) else "-")
        rows.append(cells)
    return rows


#: The scores shown beside accuracy (results.md, report.html), when the cells hold them (cells
#: written before balanced accuracy and macro-F1 existed show "-").
SCORE_TABLES = (
    ("balanced_accuracy", "Balanced accuracy (%; mean recall over the classes)"),
    ("macro_f1", "Macro-F1 (%)"),
    ("auc", "AUC (%; macro one-vs-rest when multi-class)"),
    ("ece", "ECE (%; expected calibration error of the top-class confidence, 15 bins; lower is better)"),
)


def write_reports(
    out: Path,
    df: pd.DataFrame,
    sweep: pd.DataFrame,
    methods: list[MethodSpec],
    config: BenchmarkConfig,
    data: SplitDataset,
    model_info: dict[str, str],
) -> dict[str, Path]:
    """results.csv/.md, accuracy_vs_missing.png, ablation.md, selection_stats.md,
    quality_sweep.* (when swept) and the self-contained report.html."""
    files: dict[str, Path] = {}
    scenarios = list(config.missing)
    multi_rec = df["recoverer"][df["recoverer"] != NO_RECOVERY].nunique() > 1 if len(df) else False
    df = df.copy()
    df["label"] = [_label(r, multi_rec) for _, r in df.iterrows()]
    order = list(dict.fromkeys(df["label"]))
    upper = {lab for lab, k in zip(df["label"], df["kind"], strict=True) if k == "upper"}
    main_order = [lab for lab in order if lab not in upper]
    upper_order = [lab for lab in order if lab in upper]

    csv_cols = ["method", "kind", "metric", "recoverer", "scenario", "seed", "n", "accuracy", "balanced_accuracy", "macro_f1", "auc", "ece", "steps", "acceptance", "seconds", "missing_rate"]
    _write_csv(out / "results.csv", df[csv_cols].rename(columns={"kind": "family"}))
    files["results.csv"] = out / "results.csv"

    nseeds = len(config.seeds)
    acc_title = f"Accuracy (%), mean ± std over {nseeds} seed(s)" if nseeds > 1 else "Accuracy (%)"
    main = Table(acc_title, ["method", *scenarios], _pivot(df, "accuracy", "scenario", main_order, scenarios), SEEDS_NOTE)
    tables = [main]
    if upper_order:
        tables.append(
            Table(
                "Upper bounds (EXPERIMENT-ONLY), accuracy (%)", ["upper bound", *scenarios],
                _pivot(df, "accuracy", "scenario", upper_order, scenarios), UPPER_NOTE, [True] * len(upper_order),
            )
        )
    for col, title in SCORE_TABLES:
        if col in df and df[col].notna().any():
            tables.append(Table(title, ["method", *scenarios], _pivot(df, col, "scenario", main_order, scenarios)))
    tables.append(Table("Seconds per cell (method + its share of recovery/encoding)", ["method", *scenarios], _pivot(df, "seconds", "scenario", order, scenarios, 1.0, 1)))
    header = _header_lines(config, data, model_info)
    _write_md(out / "results.md", f"Benchmark: {data.name}", header, tables)
    files["results.md"] = out / "results.md"

    fig_path = out / "accuracy_vs_missing.png"
    _plot_vs_missing(df, scenarios, main_order, upper_order, fig_path, f"{data.name}: accuracy vs missing scenario")
    files["accuracy_vs_missing.png"] = fig_path

    ablation = _ablation_tables(df, methods, scenarios, multi_rec)
    _write_md(out / "ablation.md", f"Ablation: {data.name}", ["DyMo's ablation (docs/method.md §6): fuse all recovered, add all positive-reward at once, "
              "iterative without ICS, iterative with ICS (dymo). discard (no recovery) for reference.", SEEDS_NOTE], ablation)
    files["ablation.md"] = out / "ablation.md"

    stats = _selection_tables(df, methods, scenarios, data.modalities, multi_rec)
    _write_md(out / "selection_stats.md", f"Selection statistics: {data.name}", [
        "steps/sample = recovered modalities added per sample (simultaneous adds several in one step); "
        "acceptance = added / offered (missing, hence recovered) modalities. Means over seeds."], stats)
    files["selection_stats.md"] = out / "selection_stats.md"

    sweep_tables: list[Table] = []
    sweep_png = None
    if len(sweep):
        sweep_tables, sweep_png = _quality_sweep(out, sweep, files)
    html_path = out / "report.html"
    _write_html(html_path, data.name, config, data, model_info, tables, fig_path, ablation, stats, sweep_tables, sweep_png)
    files["report.html"] = html_path
    return files


def _header_lines(config: BenchmarkConfig, data: SplitDataset, model_info: dict[str, str]) -> list[str]:
    sizes = ", ".join(f"{s} {len(data[s])}" for s in ("train", "val", "test"))
    return [
        f"Command: `{config.command or '(Python API: run_benchmark)'}`",
        "",
        f"Scale: {sizes} samples; training budget {config.epochs} epoch(s) for what this run trains; "
        f"seeds {list(config.seeds)}; recovery {list(config.recovery)}.",
        "",
        *(f"- {k}: {v}" for k, v in model_info.items()),
    ]


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    with atomic_write(path) as f:
        f.write(buf.getvalue())


def _write_md(path: Path, title: str, intro: list[str], tables: list[Table]) -> None:
    text = "\n".join([f"# {title}", "", *intro, ""]) + "\n" + "\n".join(t.markdown() for t in tables)
    with atomic_write(path) as f:
        f.write(text)


def _selection_groups(df: pd.DataFrame, methods: list[MethodSpec], multi_rec: bool) -> list[tuple[str, str]]:
    """(metric, recoverer) pairs for which selection methods were benchmarked."""
    sel = df[df["kind"] == "selection"]
    pairs = []
    for metric in dict.fromkeys(m.metric for m in methods if m.kind == "selection"):
        for rec in dict.fromkeys(sel[(sel["metric"] == metric) & (sel["recoverer"] != NO_RECOVERY)]["recoverer"]):
            pairs.append((str(metric), str(rec)))
    return pairs


def _ablation_tables(df: pd.DataFrame, methods: list[MethodSpec], scenarios: list[str], multi_rec: bool) -> list[Table]:
    tables = []
    multi_metric = len({m.metric for m in methods if m.kind == "selection"}) > 1
    for metric, rec in _selection_groups(df, methods, multi_rec):
        labels = []
        for base in ("discard", *ABLATION):
            spec = next((m for m in methods if m.kind == "selection" and m.base == base and m.metric == metric), None)
            if spec is None:
                continue
            r = NO_RECOVERY if base == "discard" else rec
            hit = df[(df["method"] == spec.name) & (df["recoverer"] == r)]
            if len(hit):
                labels.append(hit["label"].iloc[0])
        if len(labels) < 2:
            continue
        where = f"{metric} backbone, recovery {rec}" if (multi_metric or multi_rec) else f"recovery {rec}"
        tables.append(Table(f"Ablation accuracy (%), {where}", ["variant", *scenarios], _pivot(df, "accuracy", "scenario", labels, scenarios)))
        tables.append(Table(f"Ablation steps per sample, {where}", ["variant", *scenarios], _pivot(df, "steps", "scenario", labels, scenarios, 1.0, 2)))
    return tables


def _selection_tables(df: pd.DataFrame, methods: list[MethodSpec], scenarios: list[str], mods: Sequence[str], multi_rec: bool) -> list[Table]:
    tables = []
    for spec in methods:
        if spec.kind != "selection" or spec.base not in SEARCHING:
            continue
        for rec in dict.fromkeys(df[(df["method"] == spec.name) & (df["recoverer"] != NO_RECOVERY)]["recoverer"]):
            sub = df[(df["method"] == spec.name) & (df["recoverer"] == rec)]
            max_steps = max((len(h) for h in sub["steps_hist"]), default=1)
            kcols = [f"{k} added" for k in range(max_steps)]
            rows = []
            for s in scenarios:
                part = sub[sub["scenario"] == s]
                if not len(part):
                    continue
                hist = np.zeros(max_steps)
                for h in part["steps_hist"]:
                    hist[: len(h)] += np.asarray(h)
                hist /= len(part)
                acc_mod = []
                for name in mods:
                    vals = [d.get(name) for d in part["acceptance_per_modality"] if d.get(name) is not None]
                    acc_mod.append(f"{100 * np.mean(vals):.1f}%" if vals else "-")
                accept = pd.to_numeric(part["acceptance"], errors="coerce").dropna()
                rows.append([
                    s, f"{part['steps'].astype(float).mean():.2f}", *(f"{100 * v:.1f}%" for v in hist),
                    f"{100 * accept.mean():.1f}%" if len(accept) else "-", *acc_mod,
                ])
            title = f"{spec.name}" + (f" [{rec}]" if multi_rec else "")
            tables.append(Table(f"{title}: steps and acceptance", ["scenario", "steps/sample", *kcols, "acceptance", *(f"accept {m}" for m in mods)], rows))
    return tables


def _scenario_x(scenarios: list[str]) -> tuple[list[float], str, list[str]]:
    parsed = [parse_scenario(s) for s in scenarios]
    if all(p.kind == "random" for p in parsed):
        return [p.eta for p in parsed], "missing rate eta (random:ETA)", [f"{p.eta:g}" for p in parsed]
    return list(range(len(scenarios))), "missing scenario", scenarios


def _plot_vs_missing(df: pd.DataFrame, scenarios: list[str], main_order: list[str], upper_order: list[str], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    xs, xlabel, ticks = _scenario_x(scenarios)
    import matplotlib

    labels = [*main_order, *upper_order]
    fig = Figure(figsize=(9.0, max(4.5, 0.2 * len(labels) + 1.0)), dpi=110)
    ax = fig.subplots()
    if len(labels) > 10:  # the default cycle repeats after 10 colours
        cmap = matplotlib.colormaps["tab20"]
        ax.set_prop_cycle(color=[cmap(i % 20) for i in range(len(labels))])
    for label in labels:
        sub = df[df["label"] == label]
        means, stds = [], []
        for s in scenarios:
            v = sub[sub["scenario"] == s]["accuracy"].astype(float)
            means.append(100 * v.mean() if len(v) else np.nan)
            stds.append(100 * v.std(ddof=0) if len(v) > 1 else 0.0)
        is_upper = label in upper_order
        ax.errorbar(
            xs, means, yerr=stds, marker="o", ms=3, capsize=2, lw=1.2,
            ls="--" if is_upper else "-", alpha=0.7 if is_upper else 1.0,
            label=f"{label} (upper bound)" if is_upper else label,
        )
    ax.set_xticks(xs)
    ax.set_xticklabels(ticks, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    # "tight" grows the canvas to the legend, which sits outside the axes
    atomic_replace_from(lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"), path)


def _quality_sweep(out: Path, sweep: pd.DataFrame, files: dict[str, Path]) -> tuple[list[Table], Path]:
    from matplotlib.figure import Figure

    rows = []
    for _, r in sweep.iterrows():
        if r["recoverer"] == NO_RECOVERY:
            points = [("misaligned", p) for p in SWEEP_LEVELS] + [("noise", p) for p in SWEEP_LEVELS]
        else:
            p_noise, p_mis = parse_sweep_label(r["recoverer"])
            points = [("misaligned", p_mis)] if p_noise == 0 else []
            points += [("noise", p_noise)] if p_mis == 0 else []
        for kind, p in points:
            rows.append({"sweep": kind, "p": p, **{k: r[k] for k in ("method", "seed", "accuracy", "auc", "ece", "steps", "acceptance", "seconds")}})
    tab = pd.DataFrame(rows)
    _write_csv(out / "quality_sweep.csv", tab)
    files["quality_sweep.csv"] = out / "quality_sweep.csv"
    tables = []
    fig = Figure(figsize=(9, 3.6), dpi=110)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, kind, what in zip(axes, ("misaligned", "noise"), ("p_misaligned (p_noise 0)", "p_noise (p_misaligned 0)"), strict=True):
        part = tab[tab["sweep"] == kind].rename(columns={"method": "label"})
        order = list(dict.fromkeys(part["label"]))
        tables.append(Table(f"Accuracy (%) vs {what}, oracle recovery degraded, {SWEEP_SCENARIO}", ["method", *(f"{p:g}" for p in SWEEP_LEVELS)],
                            _pivot(part, "accuracy", "p", order, list(SWEEP_LEVELS))))
        for label in order:
            g = part[part["label"] == label].groupby("p")["accuracy"]
            ax.errorbar(list(g.mean().index), 100 * g.mean().values, yerr=100 * g.std(ddof=0).fillna(0).values, marker="o", ms=3, capsize=2, label=label)
        ax.set_xlabel(what)
        ax.set_title(f"{kind} recoveries", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    png = out / "quality_sweep.png"
    atomic_replace_from(lambda tmp: fig.savefig(tmp, format="png"), png)
    files["quality_sweep.png"] = png
    _write_md(out / "quality_sweep.md", "Quality sweep", [
        f"The oracle recoverer (true data) wrapped in ControlledQualityRecoverer at {SWEEP_SCENARIO}: a recovered "
        "modality is misaligned (a training sample of another class) or low-fidelity (heavy noise) with the given "
        "probability. EXPERIMENT-ONLY (the wrapper reads the labels to misalign).", SEEDS_NOTE], tables)
    files["quality_sweep.md"] = out / "quality_sweep.md"
    return tables, png


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}thead{background:#f0f0f0}tr.upper{background:#fff4e0;font-style:italic}
pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap}.note{color:#555;font-size:.9em}img{max-width:100%}
"""


def _png_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _write_html(
    path: Path, name: str, config: BenchmarkConfig, data: SplitDataset, model_info: dict[str, str],
    tables: list[Table], fig: Path, ablation: list[Table], stats: list[Table], sweep: list[Table], sweep_png: Path | None,
) -> None:
    e = html.escape
    sizes = "".join(f"<tr><td>{s}</td><td>{len(data[s])}</td></tr>" for s in ("train", "val", "test"))
    models = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in model_info.items())
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>dymo benchmark: {e(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Benchmark: {e(name)}</h1>",
        "<h2>Command</h2>", f"<pre>{e(config.command or '(Python API: run_benchmark)')}</pre>",
        "<h2>Scale</h2>",
        f"<table><thead><tr><th>split</th><th>samples</th></tr></thead><tbody>{sizes}</tbody></table>",
        f"<p>Training budget: {config.epochs} epoch(s) for what this run trains; seeds {e(str(list(config.seeds)))}; "
        f"scenarios {e(', '.join(config.missing))}; recovery {e(', '.join(config.recovery))}; batch size {config.batch_size}.</p>",
        f"<p class='note'>{e(SEEDS_NOTE)}</p>",
        "<h3>Models</h3>",
        f"<table><thead><tr><th>model</th><th>source</th></tr></thead><tbody>{models}</tbody></table>",
        "<h2>Results</h2>", *(t.html() for t in tables),
        "<h3>Accuracy vs missing</h3>", _png_tag(fig, "accuracy vs missing"),
        "<h2>Ablation</h2>", *(t.html() for t in ablation),
        "<h2>Selection statistics</h2>", *(t.html() for t in stats),
    ]
    if sweep:
        parts += ["<h2>Quality sweep</h2>", *(t.html() for t in sweep)]
        if sweep_png is not None:
            parts.append(_png_tag(sweep_png, "quality sweep"))
    parts.append("<p class='note'>Files: results.csv, results.md, ablation.md, selection_stats.md, accuracy_vs_missing.png"
                 + (", quality_sweep.*" if sweep else "") + "; one JSON per finished cell in cells/.</p></body></html>")
    with atomic_write(path) as f:
        f.write("\n".join(parts) + "\n")
