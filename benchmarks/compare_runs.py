"""Markdown tables (accuracy, AUC, ECE; mean +- std over mask seeds) from one or more finished
`dymo benchmark` folders, each given as LABEL=FOLDER, for docs/results.md::

    .venv/bin/python benchmarks/compare_runs.py new=results/bench-10k-strat paper=results/bench-10k-paper \\
        --methods dymo,dymo-paper,discard,fuse-all,late-fusion,qmf,mtl,concat

Rows are (label, method, recoverer); columns the scenarios. Reads each folder's results.csv
(and quality_sweep.csv with --sweep).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def _cell(values: pd.Series, scale: float, digits: int) -> str:
    v = values.dropna()
    if v.empty:
        return "-"
    if len(v) == 1:
        return f"{scale * v.iloc[0]:.{digits}f}"
    return f"{scale * v.mean():.{digits}f} ± {scale * v.std(ddof=0):.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=BENCHMARK_FOLDER")
    ap.add_argument("--methods", default="", help="Comma-separated methods to show, in order (default: all).")
    ap.add_argument("--value", default="accuracy", help="accuracy, auc, ece, steps, acceptance")
    ap.add_argument("--sweep", action="store_true", help="The quality sweep (quality_sweep.csv) instead.")
    args = ap.parse_args(argv)
    frames = []
    for item in args.runs:
        label, _, folder = item.partition("=")
        path = Path(folder) / ("quality_sweep.csv" if args.sweep else "results.csv")
        if not path.exists():
            sys.exit(f"error: {path} not found")
        df = pd.read_csv(path)
        df["run"] = label
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    if args.value not in df.columns:
        sys.exit(f"error: no {args.value!r} column in these files (columns: {', '.join(df.columns)})")
    wanted = [m for m in args.methods.split(",") if m]
    if wanted:
        df = df[df["method"].isin(wanted)]
        df["order"] = df["method"].map({m: i for i, m in enumerate(wanted)})
    else:
        df["order"] = 0
    pct = args.value in ("accuracy", "auc", "ece", "acceptance")
    scale, digits = (100.0, 2) if pct else (1.0, 2)
    if args.sweep:
        cols = ["sweep", "p"]
        df["col"] = df["sweep"] + " " + df["p"].map(lambda p: f"{p:g}")
        keys = ["run", "order", "method"]
    else:
        df["col"] = df["scenario"]
        keys = ["run", "order", "method", "recoverer"]
    columns = list(dict.fromkeys(df.sort_values(cols if args.sweep else ["col"])["col"]))
    print("| run | method | " + ("" if args.sweep else "recovery | ") + " | ".join(columns) + " |")
    print("|---|---|" + ("" if args.sweep else "---|") + "---|" * len(columns))
    for key, g in df.groupby(keys, sort=True):
        run, _, method = key[:3]
        rec = "" if args.sweep else f"{key[3] if key[3] != 'none' else '-'} | "
        cells = [_cell(g[g["col"] == c][args.value], scale, digits) for c in columns]
        print(f"| {run} | {method} | {rec}" + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
