"""Fast calibration vs the full one: time, and DyMo's decisions on the validation split.

One run, one trained backbone. Calibration statistics are computed on the training split with
every sample for every subset (``full``, ``samples_per_class=None``) and with a per-(subset,
class) sample of ``n`` training samples for each ``--per-class n``, and, with ``--lazy``, as a
:class:`~dymo.selection.LazyCalibration` (statistics computed for the subsets the selection
reaches). Each fast variant is timed twice (before and after the full one, median taken) so
that load from other processes falls on both sides.

Then DyMo (method ``dymo``) runs on the validation split under ``random:ETA`` missingness for
each calibration, on the same recovered inputs (tokens encoded once): the missing slots are
filled by an oracle recovery degraded at random (``--p-noise`` low-fidelity, ``--p-misaligned``
from another class; :class:`~dymo.recovery.quality.ControlledQualityRecoverer`), so that
there are recoveries worth rejecting. Reported per fast variant: time ratio full/fast, the
share of validation samples whose decisions (final subset and prediction) are identical to the
full calibration's, and both accuracies::

    .venv/bin/python benchmarks/bench_calibration.py --run runs/poly10k --threads 1 \\
        --per-class 128 256 512 1024 --eta 0.4 0.8 --lazy

What a faster calibration would have to beat (``--fractions``, ``--encode-only``, ``--bf16``):

- ``frac=f``: the full calibration of a seeded random fraction ``f`` of the training split
  (every subset, every sampled tuple): how far DyMo's decisions move when the statistics come
  from fewer training tuples, whatever the estimator;
- ``encode only``: encoding every training tuple once and nothing else, the cost any
  calibration that looks at every tuple pays, as a share of the full calibration;
- ``bf16``: the full calibration with the backbone in bfloat16 (every tuple and subset, lower
  precision; fast only on CPUs with bf16 matrix units).

Writes ``benchmarks/results/calibration_speed.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dymo.evaluation.pipeline import scenario_mask
from dymo.selection import (
    LazyCalibration,
    SelectionConfig,
    compute_calibration,
    select_with_backbone,
)
from dymo.selection.calibration import calibration_plan
from dymo.utils.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def recovered_inputs(backbone: Any, train: Any, val: Any, eta: float, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens of the validation split with degraded-oracle recoveries, and the observed mask."""
    from dymo.recovery.oracle import OracleRecoverer
    from dymo.recovery.quality import ControlledQualityRecoverer

    pool = train.subset(np.arange(min(len(train), 10_000)))  # misaligned copies come from here
    rec = ControlledQualityRecoverer(OracleRecoverer(), p_noise=args.p_noise, p_misaligned=args.p_misaligned, seed=args.seed)
    rec.fit(pool, progress=False)
    observed = scenario_mask(f"random:{eta}", len(val), val.modalities, seed=args.seed)
    parts = []
    with torch.no_grad():
        for lo in range(0, len(val), 512):
            idx = np.arange(lo, min(lo + 512, len(val)))
            batch = val.batch(idx)
            batch = type(batch)(data=batch.data, observed=observed[idx], modalities=batch.modalities, labels=batch.labels)
            filled = rec.recover(batch)
            parts.append(backbone.encode(filled.data, torch.ones_like(filled.observed)))
    return torch.cat(parts), observed


def bf16_copy(backbone: Any) -> Any:
    """A bfloat16 copy of ``backbone`` whose ``encode`` casts float inputs to bfloat16."""
    import copy

    low = copy.deepcopy(backbone).to(torch.bfloat16).eval()
    encode = low.encode

    def cast_encode(data: dict[str, torch.Tensor], available: Any = None) -> torch.Tensor:
        return encode({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in data.items()}, available)

    low.encode = cast_encode
    return low


@torch.no_grad()
def encode_all(backbone: Any, train: Any, batch_size: int = 512) -> None:
    """Encode every training tuple once (what any calibration that sees every tuple pays)."""
    for lo in range(0, len(train), batch_size):
        batch = train.batch(np.arange(lo, min(lo + batch_size, len(train))))
        backbone.encode(batch.data, batch.observed)


def compare_full(args: argparse.Namespace) -> int:
    """The full calibration with this tree's backbone against the backbone (fusion) of
    ``--baseline-commit`` with the same weights, interleaved twice; the statistics must agree."""
    import sys

    from dymo.data.registry import open_dataset
    from dymo.training.run import load_backbone

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from profile_selection import baseline_backbone

    new = load_backbone(args.run).eval()
    old = baseline_backbone(new, args.baseline_commit)
    train = open_dataset(args.data)["train"]
    if args.n_train is not None and args.n_train < len(train):
        train = train.subset(np.arange(args.n_train))
    times: dict[str, list[float]] = {"old": [], "new": []}
    cals = {}
    for r in range(2):
        for k in (("old", "new") if r == 0 else ("new", "old")):
            t0 = time.perf_counter()
            cals[k] = compute_calibration(new if k == "new" else old, train, progress=False, samples_per_class=None)
            times[k].append(time.perf_counter() - t0)
            print(f"{k}: {times[k][-1]:.1f} s", flush=True)
    diff_p = float((cals["old"].prototypes - cals["new"].prototypes).abs().max())
    diff_s = float(((cals["old"].sigma - cals["new"].sigma).abs() / cals["old"].sigma).max())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"full calibration of {len(train)} samples, {args.threads} thread(s): fusion of {args.baseline_commit} "
          f"{med['old']:.1f} s, this tree {med['new']:.1f} s: {med['old'] / med['new']:.2f}x; "
          f"max |prototype difference| {diff_p:.1e}, max relative sigma difference {diff_s:.1e}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "calibration_full_vs_baseline.json", {"seconds": times, "baseline_commit": args.baseline_commit,
               "train_samples": len(train), "max_prototype_diff": diff_p, "max_rel_sigma_diff": diff_s})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="trained backbone run folder")
    p.add_argument("--data", default="polymnist")
    p.add_argument("--n-train", type=int, default=None, help="use the first N training samples (default all)")
    p.add_argument("--per-class", type=int, nargs="+", default=[128, 256, 512, 1024])
    p.add_argument("--lazy", action="store_true", help="also a LazyCalibration with the largest --per-class")
    p.add_argument("--eta", type=float, nargs="+", default=[0.4, 0.8])
    p.add_argument("--p-noise", type=float, default=0.25)
    p.add_argument("--p-misaligned", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    p.add_argument("--fractions", type=float, nargs="*", default=[],
                   help="also the full calibration of a seeded random fraction of the training split")
    p.add_argument("--encode-only", action="store_true", help="also time encoding every training tuple once")
    p.add_argument("--save-full", default=None, help="write the full calibration to this file (safetensors)")
    p.add_argument("--bf16", action="store_true", help="also the full calibration with a bfloat16 copy of the backbone")
    p.add_argument("--baseline-commit", default=None,
                   help="only time the full calibration with this tree's fusion against the fusion of an earlier commit")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.baseline_commit:
        return compare_full(args)

    from dymo.data.registry import open_dataset
    from dymo.training.run import load_backbone

    backbone = load_backbone(args.run).eval()
    data = open_dataset(args.data)
    train, val = data["train"], data["val"]
    if args.n_train is not None and args.n_train < len(train):
        train = train.subset(np.arange(args.n_train))

    def timed(fn: Any) -> tuple[float, Any]:
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    cals: dict[str, Any] = {}
    seconds: dict[str, list[float]] = {}
    fast = {f"n={k}": (lambda k=k: compute_calibration(backbone, train, progress=False, samples_per_class=k, seed=args.seed)) for k in args.per_class}
    for name, fn in fast.items():
        t, cals[name] = timed(fn)
        seconds[name] = [t]
        print(f"{name}: {t:.1f} s", flush=True)
    t, cals["full"] = timed(lambda: compute_calibration(backbone, train, progress=False, samples_per_class=None))
    seconds["full"] = [t]
    print(f"full: {t:.1f} s", flush=True)
    if args.save_full:
        cals["full"].save(args.save_full)
    rng = np.random.default_rng(args.seed)
    for f in args.fractions:
        part = train.subset(np.sort(rng.permutation(len(train))[: int(round(f * len(train)))]))
        name = f"frac={f:g}"
        t, cals[name] = timed(lambda part=part: compute_calibration(backbone, part, progress=False, samples_per_class=None))
        seconds[name] = [t]
        print(f"{name}: {t:.1f} s ({len(part)} tuples)", flush=True)
    if args.bf16:
        low = bf16_copy(backbone)
        t, cal = timed(lambda: compute_calibration(low, train, progress=False, samples_per_class=None))
        cals["bf16"] = cal
        seconds["bf16"] = [t]
        print(f"bf16: {t:.1f} s", flush=True)
    if args.encode_only:
        t, _ = timed(lambda: encode_all(backbone, train))
        seconds["encode only"] = [t]
        print(f"encode only: {t:.1f} s", flush=True)
    for name, fn in fast.items():
        t, _ = timed(fn)
        seconds[name].append(t)
        print(f"{name} (again): {t:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in seconds.items()}

    rows = []
    labels_val = torch.from_numpy(np.asarray(val.labels, dtype=np.int64))
    for eta in args.eta:
        tokens, observed = recovered_inputs(backbone, train, val, eta, args)
        results = {name: select_with_backbone(backbone, tokens, observed, ~observed, cal, SelectionConfig()) for name, cal in cals.items()}
        lazy_row = None
        if args.lazy:
            k = max(args.per_class)
            t0 = time.perf_counter()
            lazy = LazyCalibration(backbone, train, samples_per_class=k, seed=args.seed)
            res = select_with_backbone(backbone, tokens, observed, ~observed, lazy, SelectionConfig())
            lazy_s = time.perf_counter() - t0
            results[f"lazy n={k}"] = res
            lazy_row = {"seconds_calibration_and_selection": lazy_s, "subsets_computed": lazy.computed_subsets}
        ref = results["full"]
        per = {}
        for name, res in results.items():
            same = (res.used == ref.used).all(1) & (res.predictions == ref.predictions)
            per[name] = {
                "identical_decisions": float(same.float().mean()),
                "samples_different": int((~same).sum()),
                "accuracy": float((res.predictions == labels_val).float().mean()),
                "avg_steps": float(res.steps.float().mean()),
            }
        rows.append({"scenario": f"random:{eta}", "per_calibration": per, "lazy": lazy_row})
        print(f"random:{eta}: " + ", ".join(f"{k} {v['identical_decisions']:.4f} acc {v['accuracy']:.4f}" for k, v in per.items()), flush=True)

    # The work of each variant on the whole training split, from the model-free plan: samples
    # encoded and (sample, subset) rows fused. Time follows these counts.
    full_train = data["train"]
    work = {}
    for name, k in [("full", None)] + [(f"n={k}", k) for k in args.per_class]:
        plan = calibration_plan(full_train, k, args.seed)
        work[name] = {"samples": int(sum(len(it.samples) for it in plan)), "rows": int(sum(len(it.codes) for it in plan))}
    print(f"work on all {len(full_train)} training samples: "
          + ", ".join(f"{k}: {v['samples']} samples / {v['rows']} rows (full/this {work['full']['rows'] / v['rows']:.1f}x)"
                      for k, v in work.items()), flush=True)
    result = {
        "bench": "calibration_speed",
        "work_on_whole_training_split": work,
        "run": args.run,
        "train_samples": len(train),
        "val_samples": len(val),
        "threads": args.threads,
        "seconds": seconds,
        "median_seconds": med,
        "speedup_full_over_fast": {k: med["full"] / v for k, v in med.items() if k != "full"},
        "fused_rows_note": "fast: about n x classes samples x 31 subsets",
        "recovery": f"oracle degraded: p_noise {args.p_noise}, p_misaligned {args.p_misaligned}",
        "results": rows,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs visible",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"calibration_speed{('_' + args.tag) if args.tag else ''}.json"
    write_json(out, result)
    print()
    print(f"{len(train)} training samples, {args.threads} thread(s); full calibration {med['full']:.1f} s")
    print("| calibration | seconds | full / this | " + " | ".join(f"identical {r['scenario']} | acc {r['scenario']}" for r in rows) + " |")
    print("|---|---|---|" + "---|---|" * len(rows))
    if "encode only" in med:
        print(f"encode only: {med['encode only']:.1f} s = {100 * med['encode only'] / med['full']:.1f}% of the full calibration")
    for name in results:
        s = med.get(name)
        cells = [f"{s:.1f}" if s is not None else "-", f"{med['full'] / s:.1f}x" if s is not None else "-"]
        for r in rows:
            v = r["per_calibration"][name]
            cells += [f"{100 * v['identical_decisions']:.2f}% ({v['samples_different']})", f"{100 * v['accuracy']:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
