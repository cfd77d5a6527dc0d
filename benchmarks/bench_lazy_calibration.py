"""Calibration that does not grow as 2^M: 12 modalities, lazy statistics vs the full table.

A synthetic dataset (``dymo.data.synthetic``) with ``--modalities`` vector modalities of
graded signal, a flexible backbone trained briefly on it (a validation split of 20 tuples only:
training validates on every one of the 4,095 subsets), and random missingness
``random:ETA`` on the test split with an oracle recovery degraded at random (as in
``bench_calibration.py``). In one run:

- ``lazy``: :class:`~dymo.selection.LazyCalibration` (``--per-class`` samples per class, the
  overall prototypes from ``--overall-subsets`` subsets drawn at random) + DyMo on the test
  split: statistics are computed only for the subsets the search reaches;
- ``full``: :func:`~dymo.selection.compute_calibration` (default: every training sample) would
  fuse every training sample with all ``2^M - 1`` subsets; it is timed on ``--full-probe``
  samples per class only and its full cost extrapolated linearly in the number of fused rows
  (said so in the output), because running it is the impractical thing this script is about::

    .venv/bin/python benchmarks/bench_lazy_calibration.py --threads 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from dymo.data.synthetic import make_synthetic_splits
from dymo.evaluation.pipeline import scenario_mask
from dymo.models import BackboneConfig
from dymo.selection import (
    LazyCalibration,
    SelectionConfig,
    compute_calibration,
    select_with_backbone,
)
from dymo.utils.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modalities", type=int, default=12)
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--per-class", type=int, default=64)
    p.add_argument("--overall-subsets", type=int, default=64)
    p.add_argument("--full-probe", type=int, default=4, help="samples per class for timing the full table")
    p.add_argument("--eta", type=float, default=0.6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/lazy12")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from dymo.recovery.oracle import OracleRecoverer
    from dymo.recovery.quality import ControlledQualityRecoverer
    from dymo.training import TrainConfig, load_backbone, train_backbone

    m = args.modalities
    signal = np.linspace(0.15, 0.6, m)
    data = make_synthetic_splits(args.n_train, 20, args.n_test, kinds=("vector",) * m, num_classes=args.classes,
                                 vector_dim=8, signal=signal, seed=args.seed)
    t0 = time.perf_counter()
    run = Path(args.out)
    if not (run / "backbone.safetensors").exists():  # else reuse the backbone trained by an earlier run
        train_backbone(data, run, BackboneConfig(dim=64, heads=4, depth=2, proj_dim=32),
                       TrainConfig(epochs=args.epochs, batch_size=128, proto_start_epoch=1, seed=args.seed),
                       progress=False, evaluate_test=False)
    train_s = time.perf_counter() - t0
    backbone = load_backbone(run).eval()
    train, test = data["train"], data["test"]

    rec = ControlledQualityRecoverer(OracleRecoverer(), p_noise=0.25, p_misaligned=0.25, seed=args.seed).fit(train, progress=False)
    observed = scenario_mask(f"random:{args.eta}", len(test), test.modalities, seed=args.seed)
    batch = test.all()
    batch = type(batch)(data=batch.data, observed=observed, modalities=batch.modalities, labels=batch.labels)
    with torch.no_grad():
        tokens = backbone.encode(rec.recover(batch).data, torch.ones_like(observed))

    def lazy_run(seed: int) -> tuple[float, float, LazyCalibration, object]:
        t0 = time.perf_counter()
        lazy = LazyCalibration(backbone, train, samples_per_class=args.per_class, seed=seed,
                               overall_subsets=args.overall_subsets)
        t1 = time.perf_counter()
        res = select_with_backbone(backbone, tokens, observed, ~observed, lazy, SelectionConfig())
        return t1 - t0, time.perf_counter() - t1, lazy, res

    cal_s, sel_s, lazy, res = lazy_run(args.seed)
    from dymo.utils.subsets import masks_to_codes

    reached = len(set(masks_to_codes(observed).tolist()))  # distinct observed subsets (search starts)

    # the full table, on a probe of the training set
    labels = np.asarray(train.labels)
    probe = np.concatenate([np.nonzero(labels == k)[0][: args.full_probe] for k in range(args.classes)])
    t0 = time.perf_counter()
    compute_calibration(backbone, train.subset(probe), progress=False, samples_per_class=None)
    probe_s = time.perf_counter() - t0
    subsets = 2**m - 1
    full_rows = len(train) * subsets  # compute_calibration's default: every training sample
    full_s = probe_s * len(train) / len(probe)
    acc = float((res.predictions == batch.labels).float().mean())
    full_fuse = select_with_backbone(backbone, tokens, observed, ~observed, lazy, SelectionConfig(method="discard"))
    acc_discard = float((full_fuse.predictions == batch.labels).float().mean())
    result = {
        "bench": "lazy_calibration",
        "modalities": m,
        "subsets": subsets,
        "train_samples": len(train),
        "test_samples": len(test),
        "threads": args.threads,
        "train_seconds": train_s,
        "lazy": {
            "pool_samples": lazy.pool_size,
            "subsets_computed": lazy.computed_subsets,
            "fused_rows": lazy.fused_rows,
            "seconds_calibration": cal_s,
            "seconds_selection_including_lazy_statistics": sel_s,
            "accuracy": acc,
            "avg_steps": float(res.steps.float().mean()),
        },
        "discard_accuracy": acc_discard,
        "distinct_observed_subsets_in_test": reached,
        "full_extrapolated": {"probe_samples": len(probe), "probe_seconds": probe_s, "fused_rows": full_rows,
                              "seconds": full_s, "note": "linear extrapolation from the probe"},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "lazy_calibration.json", result)
    lz = result["lazy"]
    print(f"{m} modalities ({subsets} subsets), {args.classes} classes, {len(train)} train / {len(test)} test, "
          f"{args.threads} thread(s); backbone trained in {train_s:.0f} s")
    print(f"lazy: pool {lz['pool_samples']} samples, {lz['subsets_computed']} subsets computed "
          f"({lz['fused_rows']} fused rows); calibration {cal_s:.1f} s + selection {sel_s:.1f} s "
          f"= {cal_s + sel_s:.1f} s; accuracy {100 * acc:.2f} (discard {100 * acc_discard:.2f}), {lz['avg_steps']:.2f} steps")
    print(f"full table (every training sample x {subsets} subsets): {full_rows} fused rows; a probe of {len(probe)} "
          f"samples took {probe_s:.1f} s -> about {full_s / 60:.0f} min (extrapolated), "
          f"{full_s / (cal_s + sel_s):.0f}x the lazy calibration + selection")
    print(f"the test split starts from {reached} distinct observed subsets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
