"""End to end per sample: recovery + selection + prediction, for each recoverer, in one run.

One trained PolyMNIST backbone and its calibration, the first ``--n`` test samples, random
missingness ``random:ETA`` (:func:`dymo.evaluation.pipeline.scenario_mask`), batches of
``--batch-size``. For each recoverer (fitted once, before any timing, on ``--fit-samples``
training samples) four pipelines run on the same batches, interleaved batch by batch (order
rotated every batch), each timed from the incomplete batch to the predicted classes:

- ``discard``: no recovery; encode the observed modalities, fuse them (the same for every
  recoverer, timed with each);
- ``impute-all``: recover every missing modality, encode all, fuse all;
- ``dymo``: recover, encode all once, ``select_with_backbone`` (method ``dymo``);
- ``reference``: recover, then the re-encode-per-candidate search of ``bench_selection.py``
  (every encoder + fusion per candidate and again for the "before" mask, per-sample ICS
  loop, one more pass for the prediction).

Reported: ms/sample (sum over batches, median over ``--repeats``), the ratios dymo/discard,
dymo/impute-all and reference/dymo, whether dymo and the reference make the same decisions,
and (labels used only to score) the accuracies::

    .venv/bin/python benchmarks/bench_end_to_end.py --run runs/poly10k --threads 1 --n 512
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dymo.evaluation.engine import poison_missing
from dymo.evaluation.pipeline import scenario_mask
from dymo.selection import Calibration, select_with_backbone
from dymo.utils.io import write_json

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _bench_selection() -> Any:
    spec = importlib.util.spec_from_file_location("bench_selection", HERE / "bench_selection.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_selection"] = module
    spec.loader.exec_module(module)
    return module


def make_recoverer(name: str, train: Any, fit_samples: int, seed: int) -> Any:
    from dymo.recovery.registry import get_recoverer

    pool = train.subset(np.arange(min(fit_samples, len(train))))
    if name == "shuffled":  # true data of another sample of the batch: misaligned recoveries
        from dymo.recovery.oracle import OracleRecoverer

        return get_recoverer("shuffled", inner=OracleRecoverer(), seed=seed).fit(pool, progress=False)
    kwargs: dict[str, Any] = {"retrieval": {"epochs": 1, "seed": seed}}.get(name, {})
    return get_recoverer(name, **kwargs).fit(pool, progress=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--calibration", default=None, help="default: RUN/calibration.safetensors")
    p.add_argument("--data", default="polymnist")
    p.add_argument("--recoverers", nargs="+", default=["oracle", "shuffled", "retrieval"])
    p.add_argument("--fit-samples", type=int, default=5000)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--eta", type=float, default=0.6)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from dymo.data.registry import open_dataset
    from dymo.training.run import load_backbone

    bench = _bench_selection()
    backbone = load_backbone(args.run).eval()
    cal = Calibration.load(args.calibration or Path(args.run) / "calibration.safetensors")
    data = open_dataset(args.data)
    test = data["test"]
    n = min(args.n, len(test))
    observed = scenario_mask(f"random:{args.eta}", n, test.modalities, seed=args.seed)
    batches = [test.batch(np.arange(lo, min(lo + args.batch_size, n))).with_observed(observed[lo : lo + args.batch_size])
               for lo in range(0, n, args.batch_size)]
    labels = torch.cat([b.labels for b in batches])

    def recover(rec: Any, full: Any) -> Any:
        hidden = poison_missing(full)
        if hasattr(rec, "reset"):  # seeded wrappers: the same draws for every pipeline
            rec.reset()
        return rec.recover(full if getattr(rec, "reads_missing", False) else hidden), hidden.observed

    @torch.no_grad()
    def discard(rec: Any, full: Any) -> torch.Tensor:
        hidden = poison_missing(full)
        return backbone.fuse(backbone.encode(hidden.data, hidden.observed), hidden.observed).logits.argmax(1)

    @torch.no_grad()
    def impute_all(rec: Any, full: Any) -> torch.Tensor:
        filled, obs = recover(rec, full)
        every = torch.ones_like(obs)
        return backbone.fuse(backbone.encode(filled.data, every), every).logits.argmax(1)

    @torch.no_grad()
    def dymo(rec: Any, full: Any) -> Any:
        filled, obs = recover(rec, full)
        tokens = backbone.encode(filled.data, torch.ones_like(obs))
        return select_with_backbone(backbone, tokens, obs, ~obs, cal)

    @torch.no_grad()
    def reference(rec: Any, full: Any) -> Any:
        filled, obs = recover(rec, full)
        return bench.reference_select(backbone, filled.data, obs, ~obs, cal)

    pipelines = {"discard": discard, "impute-all": impute_all, "dymo": dymo, "reference": reference}
    rows = []
    for name in args.recoverers:
        t0 = time.perf_counter()
        rec = make_recoverer(name, data["train"], args.fit_samples, args.seed)
        fit_s = time.perf_counter() - t0
        for fn in pipelines.values():  # warm-up
            fn(rec, batches[0].index(list(range(8))))
        seconds: dict[str, list[float]] = {k: [] for k in pipelines}
        outs: dict[str, list[Any]] = {k: [] for k in pipelines}
        names = list(pipelines)
        for r in range(args.repeats):
            acc = dict.fromkeys(names, 0.0)
            for j, full in enumerate(batches):
                k0 = (r * len(batches) + j) % len(names)
                for k in names[k0:] + names[:k0]:
                    t1 = time.perf_counter()
                    out = pipelines[k](rec, full)
                    acc[k] += time.perf_counter() - t1
                    if r == 0:
                        outs[k].append(out)
            for k in names:
                seconds[k].append(acc[k])
        med = {k: statistics.median(v) for k, v in seconds.items()}
        used_b = torch.cat([o.used for o in outs["dymo"]])
        used_c = torch.cat([o.used for o in outs["reference"]])
        pred = {
            "discard": torch.cat(outs["discard"]),
            "impute-all": torch.cat(outs["impute-all"]),
            "dymo": torch.cat([o.predictions for o in outs["dymo"]]),
            "reference": torch.cat([o.logits.argmax(1) for o in outs["reference"]]),
        }
        same = bool(torch.equal(used_b, used_c)) and bool(torch.equal(pred["dymo"], pred["reference"]))
        row = {
            "recoverer": name,
            "fit_seconds_untimed": fit_s,
            "ms_per_sample": {k: 1000 * v / n for k, v in med.items()},
            "ratio_dymo_over_discard": med["dymo"] / med["discard"],
            "ratio_dymo_over_impute_all": med["dymo"] / med["impute-all"],
            "ratio_reference_over_dymo": med["reference"] / med["dymo"],
            "dymo_reference_identical_decisions": same,
            "avg_steps": float(torch.cat([o.steps for o in outs["dymo"]]).float().mean()),
            "accuracy": {k: float((v == labels).float().mean()) for k, v in pred.items()},
        }
        rows.append(row)
        ms = row["ms_per_sample"]
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items()) + " ms/sample", flush=True)
    result = {"bench": "end_to_end", "run": args.run, "samples": n, "scenario": f"random:{args.eta}",
              "batch_size": args.batch_size, "threads": args.threads, "repeats": args.repeats, "results": rows,
              "torch": torch.__version__}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "end_to_end.json", result)
    print()
    print(f"{n} samples, random:{args.eta}, batch {args.batch_size}, {args.threads} thread(s), median of {args.repeats}")
    print("| recoverer | discard | impute-all | dymo | reference | dymo/discard | dymo/impute-all | reference/dymo "
          "| same decisions | acc discard / impute-all / dymo |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ms, a = r["ms_per_sample"], r["accuracy"]
        print(f"| {r['recoverer']} | {ms['discard']:.3f} | {ms['impute-all']:.3f} | {ms['dymo']:.3f} | {ms['reference']:.3f} "
              f"| {r['ratio_dymo_over_discard']:.2f}x | {r['ratio_dymo_over_impute_all']:.2f}x | {r['ratio_reference_over_dymo']:.1f}x "
              f"| {'yes' if r['dymo_reference_identical_decisions'] else 'NO'} "
              f"| {100 * a['discard']:.2f} / {100 * a['impute-all']:.2f} / {100 * a['dymo']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
