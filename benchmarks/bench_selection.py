"""DyMo selection speed: encode once + batched search vs the authors' re-encode-per-candidate loop.

One run, one trained backbone, one set of inputs (the first ``--n`` PolyMNIST test samples, 5
modalities, random missingness ``random:ETA`` from :func:`dymo.evaluation.pipeline.scenario_mask`),
for each ``--eta``, three variants timed side by side (interleaved, order rotated each repeat,
median of ``--repeats``):

- (a) ``plain``: one backbone pass with every modality (encode all + fuse all), the cost of
  classifying with all recovered modalities and no search;
- (b) ``dymo``: ``backbone.encode`` once + :func:`dymo.selection.select_with_backbone` (each
  search step one batched ``fuse`` over every (sample, candidate) pair; encoders never rerun);
- (c) ``reference``: :func:`reference_select`, a straightforward implementation of the same
  algorithm in the style of the authors' code, kept only here as the baseline: for every
  candidate modality it re-runs ``backbone(data, used)`` (all encoders + fusion) for the mask
  with the candidate AND recomputes the "before" pass, computes the ICS in a per-sample
  Python loop, and re-runs the backbone once more on the final masks for the prediction.

Recovery is fixed and excluded from every timing: the missing slots hold the true test data
(what :class:`dymo.recovery.oracle.OracleRecoverer` returns). Only speed and decisions matter
here, and every variant sees the same recovered inputs. The script checks that (b) and (c)
make the same decisions (final masks, number of steps, predictions) and reports ms/sample, the
ratios (b)/(a) and (c)/(b), and (labels used only to score) the accuracies of (a) and (b)::

    .venv/bin/python benchmarks/bench_selection.py --threads 2 --n 1024 --repeats 3

``--data synthetic`` runs the same on a tiny random model and synthetic data (seconds; to try
the script without the trained model). Writes ``benchmarks/results/selection_speed.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from dymo.evaluation.pipeline import scenario_mask
from dymo.selection import Calibration, select_with_backbone
from dymo.selection.reward import ics, quality, reward
from dymo.utils.io import write_json
from dymo.utils.subsets import masks_to_codes

RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------
# (c) the re-encode-per-candidate reference (benchmark baseline only)


class ReferenceResult(NamedTuple):
    used: torch.Tensor  # bool [B, M], final
    logits: torch.Tensor  # [B, C], of the final mask
    steps: torch.Tensor  # long [B], modalities added
    rejected: torch.Tensor  # bool [B, M]
    backbone_rows: int  # sample-rows pushed through backbone(data, used) (encoders + fusion)


def _ics_per_sample(z: torch.Tensor, logits: torch.Tensor, used: torch.Tensor, cal: Calibration) -> torch.Tensor:
    """ICS one sample at a time, as the authors' code does (same arithmetic as ``reward.ics``)."""
    codes = masks_to_codes(used)
    out = torch.empty(z.shape[0], dtype=z.dtype)
    for i in range(z.shape[0]):
        out[i] = ics(z[i : i + 1], logits[i : i + 1], codes[i : i + 1], cal.prototypes, cal.sigma, cal.metric)[0]
    return out


@torch.no_grad()
def reference_select(
    backbone: Any, data: dict[str, torch.Tensor], observed: torch.Tensor, candidates: torch.Tensor, cal: Calibration
) -> ReferenceResult:
    """DyMo (method ``dymo``, no costs, no budget) the straightforward way.

    Each step loops over modalities ``u``; for the active samples that still have ``u`` open it
    runs ``backbone(data, used)`` (every encoder + fusion) for the current mask ("before",
    recomputed for every candidate) and for the mask plus ``u``; quality is vectorised, the ICS a
    per-sample loop. Then, per sample: reject every candidate with R < 0, stop if no R > 0, else
    add the first argmax. Finally ``backbone(data, used)`` on the final masks gives the logits.
    Every sample must observe at least one modality (true of ``random:ETA`` scenarios).
    """
    backbone.eval()
    if not bool(observed.any(1).all()):
        raise ValueError("reference_select: every sample needs at least one observed modality")
    b, m = observed.shape
    overall = cal.overall
    used = observed.clone()
    open_ = candidates & ~observed
    rejected = torch.zeros_like(used)
    steps = torch.zeros(b, dtype=torch.long)
    active = open_.any(1)
    rows_run = 0
    for _ in range(m):
        if not bool(active.any()):
            break
        rewards = torch.full((b, m), float("nan"))
        for u in range(m):
            rows = torch.nonzero(active & open_[:, u]).flatten()
            if len(rows) == 0:
                continue
            sub = {k: v[rows] for k, v in data.items()}
            before = used[rows]
            after = before.clone()
            after[:, u] = True
            out_b = backbone(sub, before)
            out_a = backbone(sub, after)
            rows_run += 2 * len(rows)
            q_b = quality(out_b.z, overall, cal.metric, cal.temperature)
            q_a = quality(out_a.z, overall, cal.metric, cal.temperature)
            p_b = _ics_per_sample(out_b.z, out_b.logits, before, cal)
            p_a = _ics_per_sample(out_a.z, out_a.logits, after, cal)
            rewards[rows, u] = reward(q_b, q_a, p_b, p_a, cal.metric)[0]
        negative = rewards < 0  # NaN (not evaluated) compares False
        rejected |= negative & active.unsqueeze(1)
        open_ &= ~negative
        go = active & (rewards > 0).any(1)
        win = torch.nan_to_num(rewards, nan=-torch.inf).argmax(1)
        sel = torch.nonzero(go).flatten()
        used[sel, win[sel]] = True
        open_[sel, win[sel]] = False
        steps[sel] += 1
        active = go & open_.any(1)
    logits = backbone(data, used).logits
    rows_run += b
    return ReferenceResult(used, logits, steps, rejected, rows_run)


# --------------------------------------------------------------------------------------------
# The three timed variants


@torch.no_grad()
def plain_pass(backbone: Any, data: dict[str, torch.Tensor]) -> torch.Tensor:
    """(a) encode all + fuse all: logits."""
    b = next(iter(data.values())).shape[0]
    full = torch.ones(b, backbone.num_modalities, dtype=torch.bool)
    return backbone.fuse(backbone.encode(data, full), full).logits


@torch.no_grad()
def dymo_pass(backbone: Any, data: dict[str, torch.Tensor], observed: torch.Tensor, cal: Calibration) -> Any:
    """(b) encode once (observed + recovered) + ``select_with_backbone``."""
    full = torch.ones_like(observed)
    tokens = backbone.encode(data, full)
    return select_with_backbone(backbone, tokens, observed, ~observed, cal)


def time_interleaved(
    fns: dict[str, Callable[[], Any]], warmups: dict[str, Callable[[], Any]], repeats: int, verbose: bool = False
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Seconds per repeat of each function, after one untimed warm-up call each (on a small
    input); in every round the functions run one after another, the order rotated each round,
    so that load from other processes falls on all of them alike. Returns the times and the
    outputs of the first round."""
    names = list(fns)
    for k in names:
        warmups[k]()
    times: dict[str, list[float]] = {k: [] for k in names}
    outs: dict[str, Any] = {}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for k in order:
            t0 = time.perf_counter()
            out = fns[k]()
            times[k].append(time.perf_counter() - t0)
            outs.setdefault(k, out)
            if verbose:
                print(f"  repeat {r + 1}: {k} {times[k][-1]:.2f}s", flush=True)
    return times, outs


# --------------------------------------------------------------------------------------------
# Inputs


def load_trained(run: str, calibration: str | None, n: int, wait_s: float) -> tuple[Any, Calibration, Any, Any]:
    from dymo.data.registry import open_dataset
    from dymo.training.run import load_backbone

    backbone = load_backbone(run)
    cal_path = Path(calibration or Path(run) / "calibration.safetensors")
    deadline = time.monotonic() + wait_s
    while not cal_path.exists() and time.monotonic() < deadline:
        print(f"waiting for {cal_path} ...", flush=True)
        time.sleep(60)
    cal = Calibration.load(cal_path)
    test = open_dataset("polymnist")["test"]
    batch = test.batch(np.arange(min(n, len(test))))
    return backbone, cal, batch.data, batch.labels


def tiny_random(n: int, seed: int = 0, metric: str = "cosine") -> tuple[Any, Calibration, Any, Any]:
    """A tiny random backbone on synthetic 5-modality data, calibrated on synthetic training data."""
    from dymo.data.synthetic import make_synthetic
    from dymo.models import BackboneConfig, FlexibleBackbone
    from dymo.selection import compute_calibration

    torch.manual_seed(seed)
    kinds = ("image", "image", "vector", "image", "vector")
    train = make_synthetic(400, kinds=kinds, num_classes=4, signal=[0.9, 0.3, 0.6, 0.1, 0.8], seed=seed)
    test = make_synthetic(n, kinds=kinds, num_classes=4, signal=[0.9, 0.3, 0.6, 0.1, 0.8], seed=seed + 1)
    cfg = BackboneConfig(
        dim=16, heads=2, depth=1, proj_dim=8, metric=metric,
        encoder_options={"image_channels": [4, 8, 16]},
    )
    backbone = FlexibleBackbone(train.specs, train.num_classes, cfg).eval()
    cal = compute_calibration(backbone, train, progress=False)
    batch = test.all()
    return backbone, cal, batch.data, batch.labels


def _batches(data: dict[str, torch.Tensor], observed: torch.Tensor, size: int) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    n = observed.shape[0]
    return [({k: v[lo : lo + size] for k, v in data.items()}, observed[lo : lo + size]) for lo in range(0, n, size)]


def bench(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    if args.data == "synthetic":
        backbone, cal, data, labels = tiny_random(args.n)
    else:
        backbone, cal, data, labels = load_trained(args.run, args.calibration, args.n, args.wait)
    n = labels.shape[0]
    mods = backbone.modalities
    rows = []
    for eta in args.eta:
        observed = scenario_mask(f"random:{eta}", n, mods, seed=args.seed)
        parts = _batches(data, observed, args.batch_size)
        variants = {
            "plain": lambda parts: [plain_pass(backbone, d) for d, _ in parts],
            "dymo": lambda parts: [dymo_pass(backbone, d, o, cal) for d, o in parts],
            "reference": lambda parts: [reference_select(backbone, d, o, ~o, cal) for d, o in parts],
        }
        warm = _batches({k: v[:32] for k, v in data.items()}, observed[:32], 32)
        fns = {k: (lambda f=f, parts=parts: f(parts)) for k, f in variants.items()}
        warmups = {k: (lambda f=f, warm=warm: f(warm)) for k, f in variants.items()}
        times, outs = time_interleaved(fns, warmups, args.repeats, args.verbose)
        med = {k: statistics.median(v) for k, v in times.items()}
        used_b = torch.cat([r.used for r in outs["dymo"]])
        used_c = torch.cat([r.used for r in outs["reference"]])
        steps_b = torch.cat([r.steps for r in outs["dymo"]])
        steps_c = torch.cat([r.steps for r in outs["reference"]])
        pred_a = torch.cat(outs["plain"]).argmax(1)
        pred_b = torch.cat([r.predictions for r in outs["dymo"]])
        pred_c = torch.cat([r.logits for r in outs["reference"]]).argmax(1)
        mask_diff = int((used_b != used_c).any(1).sum())
        pred_diff = int((pred_b != pred_c).sum())
        row = {
            "scenario": f"random:{eta}",
            "missing_fraction": float((~observed).float().mean()),
            "ms_per_sample": {k: 1000 * v / n for k, v in med.items()},
            "seconds_all_repeats": times,
            "ratio_dymo_over_plain": med["dymo"] / med["plain"],
            "ratio_reference_over_dymo": med["reference"] / med["dymo"],
            "samples_with_different_mask": mask_diff,
            "samples_with_different_steps": int((steps_b != steps_c).sum()),
            "samples_with_different_prediction": pred_diff,
            "decisions_identical": mask_diff == 0 and pred_diff == 0 and bool(torch.equal(steps_b, steps_c)),
            "avg_steps": float(steps_b.float().mean()),
            "reference_backbone_rows_per_sample": sum(r.backbone_rows for r in outs["reference"]) / n,
            "accuracy_plain_fuse_all": float((pred_a == labels).float().mean()),
            "accuracy_dymo": float((pred_b == labels).float().mean()),
        }
        rows.append(row)
        print(
            f"random:{eta}: plain {row['ms_per_sample']['plain']:.3f}, dymo {row['ms_per_sample']['dymo']:.3f}, "
            f"reference {row['ms_per_sample']['reference']:.3f} ms/sample; identical decisions: {row['decisions_identical']}",
            flush=True,
        )
    result = {
        "bench": "selection_speed",
        "data": args.data,
        "run": args.run if args.data != "synthetic" else None,
        "samples": n,
        "modalities": len(mods),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "statistic": "median over repeats of the wall time over all batches, variants interleaved",
        "recovery": "fixed, excluded from timing: missing slots hold the true test data (oracle)",
        "results": rows,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor()}".strip() + f", {os.cpu_count()} logical CPUs visible",
    }
    print()
    print(markdown_table(result))
    return result


def markdown_table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['samples']} samples, batch {result['batch_size']}, {result['threads']} thread(s), "
        f"median of {result['repeats']} interleaved repeats",
        "",
        "| scenario | (a) plain ms/sample | (b) dymo ms/sample | (c) reference ms/sample | (b)/(a) | (c)/(b) "
        "| avg steps | identical decisions | acc (a) | acc (b) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        ms = r["ms_per_sample"]
        lines.append(
            f"| {r['scenario']} | {ms['plain']:.3f} | {ms['dymo']:.3f} | {ms['reference']:.3f} "
            f"| {r['ratio_dymo_over_plain']:.2f}x | {r['ratio_reference_over_dymo']:.1f}x | {r['avg_steps']:.2f} "
            f"| {'yes' if r['decisions_identical'] else 'NO (' + str(r['samples_with_different_mask']) + ' masks)'} "
            f"| {100 * r['accuracy_plain_fuse_all']:.2f} | {100 * r['accuracy_dymo']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="polymnist", choices=["polymnist", "synthetic"])
    p.add_argument("--run", default="runs/polymnist-cosine", help="trained backbone run folder")
    p.add_argument("--calibration", default=None, help="default: RUN/calibration.safetensors")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the calibration file to appear")
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--eta", type=float, nargs="+", default=[0.4, 0.8])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    p.add_argument("--verbose", action="store_true", help="print each timed call")
    args = p.parse_args(argv)
    result = bench(args)
    name = f"selection_speed{'_' + args.tag if args.tag else ''}.json"
    write_json(RESULTS / name, result)
    print(f"\nwrote {RESULTS / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
