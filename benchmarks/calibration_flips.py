"""Are the decisions that a sampled calibration changes near-ties? (Analysis for bench_calibration.)

Full calibration on the first ``--n-train`` training tuples vs a sample of ``--per-class`` per
(subset, class); DyMo on the first ``--n-val`` validation tuples under ``random:ETA`` with the
degraded-oracle recovery of ``bench_calibration.py``. For the samples whose decisions differ,
the smallest |reward| each met in the full-calibration run (all steps, all evaluated
candidates), counted below thresholds::

    .venv/bin/python benchmarks/calibration_flips.py --run runs/poly10k
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from dymo.selection import compute_calibration, select_with_backbone


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--per-class", type=int, default=256)
    p.add_argument("--eta", type=float, default=0.8)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_calibration import recovered_inputs

    from dymo.data.registry import open_dataset
    from dymo.training.run import load_backbone

    bb = load_backbone(args.run).eval()
    d = open_dataset("polymnist")
    train, val = d["train"].subset(np.arange(args.n_train)), d["val"].subset(np.arange(args.n_val))
    full = compute_calibration(bb, train, progress=False, samples_per_class=None)
    samp = compute_calibration(bb, train, progress=False, samples_per_class=args.per_class)
    tok, obs = recovered_inputs(bb, train, val, args.eta, argparse.Namespace(p_noise=0.25, p_misaligned=0.25, seed=0))
    a = select_with_backbone(bb, tok, obs, ~obs, full)
    b = select_with_backbone(bb, tok, obs, ~obs, samp)
    diff = ~((a.used == b.used).all(1) & (a.predictions == b.predictions))
    print(f"differ: {int(diff.sum())} of {len(diff)}")
    smallest = a.reward_history.abs().nan_to_num(nan=float("inf")).amin(dim=(0, 2))
    for thr in (1e-6, 1e-4, 1e-3, 1e-2, 1e-1):
        print(f"min |R| < {thr:g}: {int((diff & (smallest < thr)).sum())} differing, {int((smallest < thr).sum())} in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
