"""Single-modality test accuracy: the DyMo backbone (discard policy) vs a late-fusion baseline's
dedicated unimodal classifiers, on the same test tuples. Explains where DyMo's ceiling lies when
only one modality is observed (docs/results.md, section 2d)::

    .venv/bin/python benchmarks/single_modality.py --backbone runs/polymnist-cosine \\
        --baseline results/bench-polymnist-full/models/baseline-late-fusion --n 2000
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dymo.baselines import load_baseline
from dymo.baselines.dymo_backbone import DiscardBaseline
from dymo.data.registry import open_dataset
from dymo.training.run import load_backbone


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="polymnist")
    p.add_argument("--backbone", required=True, help="a backbone run folder")
    p.add_argument("--baseline", required=True, help="a saved baseline folder (late-fusion, unimodal, qmf ...)")
    p.add_argument("--n", type=int, default=2000, help="first N test tuples")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    test = open_dataset(args.data)["test"]
    idx = np.arange(min(args.n, len(test)))
    batch = test.batch(idx)
    discard = DiscardBaseline.from_backbone(load_backbone(args.backbone)).to(args.device)
    other = load_baseline(args.baseline).to(args.device)
    print(f"| modality | backbone alone | {other.name} |\n|---|---|---|")
    for j, name in enumerate(test.modalities):
        obs = torch.zeros(len(idx), len(test.modalities), dtype=torch.bool)
        obs[:, j] = True
        only = batch.with_observed(obs).with_missing_filled()
        acc = [100 * float((m.predict(only) == batch.labels).float().mean()) for m in (discard, other)]
        print(f"| {name} | {acc[0]:.2f} | {acc[1]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
