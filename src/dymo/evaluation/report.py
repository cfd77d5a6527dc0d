"""Report folders: a Markdown report with the comparison table, an accuracy plot and an image
of selected test samples (observed, recovered, accepted/rejected with rewards)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from dymo.evaluation.metrics import MethodMetrics
from dymo.utils.io import atomic_replace_from, atomic_write


def metrics_markdown(metrics: Mapping[str, MethodMetrics]) -> str:
    ks = sorted({k for r in metrics.values() for k in r.accuracy_by_num_observed})
    head = "| method | accuracy | balanced acc | macro-F1 | steps/sample | recovered used | " + " | ".join(f"acc, {k} observed" for k in ks) + " |"
    sep = "|" + "---|" * (6 + len(ks))
    rows = [head, sep]
    for m, r in metrics.items():
        acc_by = " | ".join(f"{100 * r.accuracy_by_num_observed[k]:.2f}" if k in r.accuracy_by_num_observed else "-" for k in ks)
        accepted = "-" if r.acceptance_rate is None else f"{100 * r.acceptance_rate:.1f}%"
        scores = " | ".join("-" if v is None else f"{100 * v:.2f}" for v in (r.balanced_accuracy, r.macro_f1))
        rows.append(f"| {m} | {100 * r.accuracy:.2f} | {scores} | {r.avg_steps:.2f} | {accepted} | {acc_by} |")
    return "\n".join(rows)


def plot_accuracy_by_observed(metrics: Mapping[str, MethodMetrics], path: str | os.PathLike, title: str = "") -> Path:
    fig = Figure(figsize=(6.5, 3.8), dpi=110)
    ax = fig.subplots()
    ks = sorted({k for r in metrics.values() for k in r.accuracy_by_num_observed})
    width = 0.8 / max(1, len(metrics))
    for j, (m, r) in enumerate(metrics.items()):
        xs = [k + (j - (len(metrics) - 1) / 2) * width for k in ks]
        ax.bar(xs, [100 * r.accuracy_by_num_observed.get(k, float("nan")) for k in ks], width, label=f"{m} ({100 * r.accuracy:.1f}%)")
    ax.set_xlabel("observed modalities per test sample")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(ks)
    lo = min(100 * v for r in metrics.values() for v in r.accuracy_by_num_observed.values())
    ax.set_ylim(max(0, lo - 10), 100)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    atomic_replace_from(lambda tmp: fig.savefig(tmp, format="png"), path)
    return path


def write_report(
    folder: str | os.PathLike,
    title: str,
    metrics: Mapping[str, MethodMetrics],
    intro: Sequence[str] = (),
    images: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``report.md`` (table + linked images) into ``folder``; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", *intro, "", metrics_markdown(metrics), ""]
    for caption, rel in (images or {}).items():
        lines += [f"**{caption}**", "", f"![{caption}]({rel})", ""]
    lines += list(notes)
    path = folder / "report.md"
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")
    return path
