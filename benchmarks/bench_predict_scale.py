"""`dymo predict` on many generated samples: peak memory, and 2 processes against 1.

Generates (once, in ``--root``) a bundle with ``--modalities`` vector modalities (an untrained
backbone of the default width, calibrated; mean recovery) and an input folder of ``--n``
samples, each modality absent with probability 0.5 (at least one present). Then runs, as
separate commands under ``/usr/bin/time -v``, ``python -m dymo.cli.main predict`` with one process
and with ``--devices 2 --strategy ddp`` (CPU, gloo), ``OMP_NUM_THREADS=1`` for both, and
reports wall time, peak resident memory (the largest process) and whether the two outputs are
byte-identical::

    .venv/bin/python benchmarks/bench_predict_scale.py --n 100000
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dymo.utils.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"


def make_inputs(root: Path, n: int, m: int, dim: int, seed: int = 0) -> Path:
    from dymo.data.synthetic import make_synthetic_splits
    from dymo.inference import DyMoClassifier
    from dymo.models import BackboneConfig, FlexibleBackbone
    from dymo.recovery.registry import get_recoverer
    from dymo.selection import compute_calibration

    bundle = root / "bundle"
    if not (bundle / "bundle.json").exists():
        data = make_synthetic_splits(1000, 10, 10, kinds=("vector",) * m, vector_dim=dim, seed=seed)
        torch.manual_seed(seed)
        backbone = FlexibleBackbone(data.specs, data.num_classes, BackboneConfig(metric="cosine")).eval()
        cal = compute_calibration(backbone, data["train"], progress=False)
        rec = get_recoverer("mean").fit(data["train"], progress=False)
        DyMoClassifier(backbone, cal, rec, data.class_names).save_pretrained(bundle)
    inp = root / f"input{n}"
    if not (inp / "done").exists():
        from dymo.inference import DyMoClassifier

        specs = DyMoClassifier.from_pretrained(bundle).specs
        rng = np.random.default_rng(seed)
        present = rng.random((n, m)) >= 0.5
        present[np.arange(n), rng.integers(0, m, n)] = True
        inp.mkdir(parents=True, exist_ok=True)
        for j, s in enumerate(specs):
            x = rng.normal(size=(n, dim))
            with open(inp / f"{s.name}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["id", *[f"f{k}" for k in range(dim)]])
                for i in np.nonzero(present[:, j])[0]:
                    w.writerow([f"s{i:07d}", *[f"{v:.4f}" for v in x[i]]])
        (inp / "done").write_text("")
    return inp


def timed_predict(bundle: Path, inp: Path, out: Path, extra: list[str], batch_size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "dymo.cli.main", "predict", str(bundle), str(inp),
           "--out", str(out), "--batch-size", str(batch_size), *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stdout + r.stderr[-3000:])
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    return {"command": " ".join(cmd[2:]), "wall_seconds": wall, "peak_rss_mb": rss / 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--modalities", type=int, default=5)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--root", default="runs/predict-scale")
    args = p.parse_args(argv)
    root = Path(args.root)
    t0 = time.perf_counter()
    inp = make_inputs(root, args.n, args.modalities, args.dim)
    gen_s = time.perf_counter() - t0
    one = timed_predict(root / "bundle", inp, root / "one.csv", [], args.batch_size)
    print(f"1 process: {one['wall_seconds']:.1f} s, peak {one['peak_rss_mb']:.0f} MB", flush=True)
    two = timed_predict(root / "bundle", inp, root / "two.csv", ["--devices", "2", "--strategy", "ddp"], args.batch_size)
    print(f"2 processes: {two['wall_seconds']:.1f} s, peak {two['peak_rss_mb']:.0f} MB (largest process)", flush=True)
    identical = (root / "one.csv").read_bytes() == (root / "two.csv").read_bytes()
    with open(root / "one.csv") as f:
        rows = sum(1 for _ in f) - 1
    result = {"bench": "predict_scale", "samples": args.n, "rows_written": rows, "modalities": args.modalities,
              "generate_seconds": gen_s, "one_process": one, "two_processes": two,
              "byte_identical": identical, "ratio_wall_one_over_two": one["wall_seconds"] / two["wall_seconds"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "predict_scale.json", result)
    print(f"{args.n} samples ({rows} rows written): byte-identical outputs: {identical}; "
          f"wall 1 / 2 processes = {result['ratio_wall_one_over_two']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
