"""DyMo trained on incomplete data vs trained on the complete rows only (docs/results.md §5).

For each training missing rate p and seed s: the train and val splits get a ``random:p`` mask
(seed s; each modality missing independently with probability p, a sample left with none gets
one back), then

- ``all rows``: backbone + recoverer + calibration trained on every sample, on what it observes;
- ``complete rows``: the same, trained on the samples that observe every modality only;

and both are tested on the complete test split under ``random:0.6`` (seed s). p = 0 is the
complete-data reference (both variants are the same model). Each cell is cached as JSON in
``--out``, so the run can be split into pieces (``--missing 0.3 --seeds 0``) and resumed;
``--report`` writes the table.

    python benchmarks/incomplete_training.py --data mfeat --missing 0,0.3,0.6 --seeds 0,1,2 \
        --epochs 20 --out results/incomplete-mfeat
    python benchmarks/incomplete_training.py --out results/incomplete-mfeat --report

``--max-train-samples`` / ``--max-val-samples`` / ``--max-test-samples`` take seeded subsets
first (PolyMNIST at a CPU budget). DyMo's acceptance rule is tuned on the (masked) validation
split, as ``DyMoClassifier.fit`` does by default.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

_CACHE: dict[tuple, object] = {}


def run_cell(args: argparse.Namespace, p: float, seed: int, mode: str) -> dict:
    from dymo import DyMoClassifier
    from dymo.data.dataset import SplitDataset
    from dymo.data.registry import open_dataset
    from dymo.data.scenarios import parse_scenario
    from dymo.models.backbone import BackboneConfig
    from dymo.selection.selector import SelectionConfig
    from dymo.training.run import TrainConfig

    data = open_dataset(args.data)
    if args.max_train_samples or args.max_val_samples or args.max_test_samples:
        from dymo.evaluation.benchmark_plan import BenchmarkConfig, scale_dataset

        data = scale_dataset(data, BenchmarkConfig(
            max_train_samples=args.max_train_samples, max_val_samples=args.max_val_samples, max_test_samples=args.max_test_samples,
        ))
    splits = dict(data.splits)
    for name in ("train", "val"):
        ds = splits[name]
        if p > 0:
            mask = np.asarray(parse_scenario(f"random:{p}").sample(len(ds), len(ds.specs), seed=seed, names=ds.modalities))
            ds = ds.with_observed(mask)
        if mode == "complete":
            keep = np.nonzero(ds.observed.all(1))[0]
            if len(keep) == 0:
                return {"p": p, "seed": seed, "mode": mode, "train_samples": 0, "error": f"no complete {name} sample"}
            ds = ds.subset(keep)
        splits[name] = ds
    data = SplitDataset(data.name, data.specs, data.class_names, splits)
    n_train = len(data["train"])
    out = {"p": p, "seed": seed, "mode": mode, "train_samples": n_train,
           "train_missing": float(1 - data["train"].observed.mean())}
    t0 = time.perf_counter()
    key = (p, mode) if p == 0 else (p, seed, mode)  # p = 0: one model (the seed only moves the test mask)
    try:
        if key not in _CACHE:
            _CACHE[key] = DyMoClassifier.fit(
                data, args.recovery, recovery_options={"epochs": args.epochs},
                backbone=BackboneConfig(metric="cosine"), train=TrainConfig(epochs=args.epochs), progress=False,
            )
        clf = _CACHE[key]
    except Exception as e:  # noqa: BLE001 - too few complete rows is a result, reported as such
        out["error"] = f"{type(e).__name__}: {e}"[:300]
        return out
    test = data["test"]
    mask = np.asarray(parse_scenario("random:0.6").sample(len(test), len(test.specs), seed=seed, names=test.modalities))
    batch = test.all().with_observed(torch.from_numpy(mask))
    for method in ("dymo", "discard"):
        pred = clf.predict(batch, SelectionConfig(method=method))
        out[method] = float((pred.class_index == batch.labels).float().mean())
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def report(folder: Path) -> str:
    cells = [json.loads(f.read_text()) for f in sorted(folder.glob("cell-*.json"))]
    rates = sorted({c["p"] for c in cells})

    def stat(mode: str, p: float, key: str) -> str:
        rows = [c for c in cells if c["p"] == p and (c["mode"] == mode or p == 0)]
        ok = [100 * c[key] for c in rows if key in c]
        if not rows:
            return "-"
        if len(ok) < len(rows):
            n = min(c["train_samples"] for c in rows)
            return f"fails ({n} complete rows)"
        sd = np.std(ok, ddof=0)
        return f"{np.mean(ok):.2f} ± {sd:.2f} (n={len(ok)})"

    lines = [
        "| training modalities missing | samples trained on (all / complete) | DyMo, all rows | DyMo, complete rows only | discard, all rows | discard, complete rows only |",
        "|---|---|---|---|---|---|",
    ]
    for p in rates:
        n_all = sorted({c["train_samples"] for c in cells if c["p"] == p and c["mode"] == "all"} | ({c["train_samples"] for c in cells if c["p"] == 0}))
        n_cmp = sorted({c["train_samples"] for c in cells if c["p"] == p and (c["mode"] == "complete" or p == 0)})
        lines.append(
            f"| {p:.0%} | {'/'.join(map(str, n_all))} / {'/'.join(map(str, n_cmp))} | {stat('all', p, 'dymo')} | {stat('complete', p, 'dymo')} "
            f"| {stat('all', p, 'discard')} | {stat('complete', p, 'discard')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="mfeat")
    ap.add_argument("--missing", default="0,0.3,0.6")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--modes", default="all,complete")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--recovery", default="retrieval")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-train-samples", type=int, default=None, help="seeded random subset of each split (as dymo benchmark)")
    ap.add_argument("--max-val-samples", type=int, default=None)
    ap.add_argument("--max-test-samples", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("results/incomplete-mfeat"))
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report:
        text = report(args.out)
        (args.out / "results.md").write_text(text)
        print(text)
        return
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    for p in [float(v) for v in args.missing.split(",")]:
        for seed in [int(v) for v in args.seeds.split(",")]:
            for mode in args.modes.split(","):
                if p == 0 and mode == "complete":
                    continue  # the same model as "all"
                path = args.out / f"cell-{p}-{seed}-{mode}.json"
                if path.exists():
                    continue
                cell = run_cell(args, p, seed, mode)
                path.write_text(json.dumps(cell, indent=1))
                print(json.dumps(cell), flush=True)


if __name__ == "__main__":
    main()
