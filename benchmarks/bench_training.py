"""Training throughput: encode once per batch vs re-encode for each of the K subset passes.

One run, the PolyMNIST-size backbone (``BackboneConfig()`` defaults: 5 CNN encoders, dim 128,
2 blocks), K subsets per batch (default 5, drawn by :meth:`BackboneModule.subsets_for_step`,
the same for both), the same PolyMNIST training batches, CE + prototype loss (as from the
third epoch on), Adam. Two models start from the same weights and take alternate steps on
the same batch (the order swapped every step), so load from other processes hits both alike:

- ``encode_once``: ``backbone.encode`` once, then :meth:`BackboneModule.loss_for_tokens` fuses
  the K subsets from those tokens (what ``training_step`` does) + backward + Adam step;
- ``reencode``: for each subset, ``backbone.encode(data, used)`` again and the same loss on
  that subset alone (the authors' ``model(data, mask)`` per subset), mean over K + backward +
  Adam step.

Before timing, one batch checks that both give the same loss and gradients (the comparison is
between two ways of computing the same update). Prints samples/s of both and the ratio::

    .venv/bin/python benchmarks/bench_training.py --threads 2 --steps 10 --warmup 3

Writes ``benchmarks/results/training_speed.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dymo.data.specs import specs_to_list
from dymo.models import BackboneConfig
from dymo.training.module import BackboneModule
from dymo.training.run import TrainConfig
from dymo.utils.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


def step_encode_once(module: BackboneModule, opt: torch.optim.Optimizer, batch: Batch, subsets: torch.Tensor) -> float:
    data, labels = batch
    opt.zero_grad(set_to_none=True)
    tokens = module.backbone.encode(data)
    loss, _ = module.loss_for_tokens(tokens, labels, subsets, use_proto=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def reencode_loss(module: BackboneModule, batch: Batch, subsets: torch.Tensor) -> torch.Tensor:
    data, labels = batch
    b = labels.shape[0]
    total = torch.zeros(())
    for used in subsets:
        tokens = module.backbone.encode(data, used.expand(b, -1))
        loss, _ = module.loss_for_tokens(tokens, labels, used.unsqueeze(0), use_proto=True)
        total = total + loss
    return total / len(subsets)


def step_reencode(module: BackboneModule, opt: torch.optim.Optimizer, batch: Batch, subsets: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    loss = reencode_loss(module, batch, subsets)
    loss.backward()
    opt.step()
    return float(loss.detach())


def gradient_check(a: BackboneModule, b: BackboneModule, batch: Batch, subsets: torch.Tensor) -> dict[str, float]:
    """Loss and gradients of both ways on one batch, from the same weights (no update)."""
    data, labels = batch
    a.zero_grad(set_to_none=True)
    b.zero_grad(set_to_none=True)
    la, _ = a.loss_for_tokens(a.backbone.encode(data), labels, subsets, use_proto=True)
    la.backward()
    lb = reencode_loss(b, batch, subsets)
    lb.backward()
    diff, scale = 0.0, 0.0
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        ga = pa.grad if pa.grad is not None else torch.zeros_like(pa)
        gb = pb.grad if pb.grad is not None else torch.zeros_like(pb)
        diff = max(diff, float((ga - gb).abs().max()))
        scale = max(scale, float(ga.abs().max()))
    a.zero_grad(set_to_none=True)
    b.zero_grad(set_to_none=True)
    return {"loss_encode_once": float(la.detach()), "loss_reencode": float(lb.detach()), "max_abs_grad_diff": diff, "max_abs_grad": scale}


def load_batches(n_batches: int, batch_size: int, data: str, seed: int) -> tuple[list, list[Batch], int]:
    if data == "synthetic":
        from dymo.data.synthetic import make_synthetic

        train = make_synthetic(n_batches * batch_size, kinds=("image",) * 5, num_classes=10, image_size=28, seed=seed)
    else:
        from dymo.data.registry import open_dataset

        train = open_dataset(data)["train"]
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(train))[: n_batches * batch_size]
    batches = []
    for i in range(n_batches):
        bt = train.batch(idx[i * batch_size : (i + 1) * batch_size])
        batches.append((bt.data, bt.labels))
    return train.specs, batches, train.num_classes


def bench(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    n_steps = args.warmup + args.steps
    specs, batches, num_classes = load_batches(n_steps, args.batch_size, args.data, args.seed)
    train_cfg = TrainConfig(batch_size=args.batch_size, subsets_per_batch=args.k, seed=args.seed)
    a = BackboneModule(specs_to_list(specs), num_classes, BackboneConfig().to_dict(), train_cfg.to_dict())
    # Prototype loss on (as from the third epoch): unit-norm random class prototypes.
    a.prototypes.copy_(torch.nn.functional.normalize(torch.randn_like(a.prototypes), dim=1))
    a.prototypes_ready.fill_(True)
    a.train()
    b = copy.deepcopy(a)
    check = gradient_check(a, b, batches[0], a.subsets_for_step(0))
    opt_a = torch.optim.Adam(a.parameters(), lr=train_cfg.lr)
    opt_b = torch.optim.Adam(b.parameters(), lr=train_cfg.lr)
    times: dict[str, list[float]] = {"encode_once": [], "reencode": []}
    losses: dict[str, list[float]] = {"encode_once": [], "reencode": []}
    runs = {"encode_once": (step_encode_once, a, opt_a), "reencode": (step_reencode, b, opt_b)}
    for i, batch in enumerate(batches):
        subsets = a.subsets_for_step(i)
        order = ["encode_once", "reencode"] if i % 2 == 0 else ["reencode", "encode_once"]
        for name in order:
            fn, module, opt = runs[name]
            t0 = time.perf_counter()
            loss = fn(module, opt, batch, subsets)
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[name].append(dt)
                losses[name].append(loss)
        if args.verbose:
            last = {k: f"{v[-1]:.2f}s" for k, v in times.items() if v and i >= args.warmup}
            print(f"step {i + 1}/{n_steps} {'(warm-up)' if i < args.warmup else last}", flush=True)
    sps = {k: args.batch_size * len(v) / sum(v) for k, v in times.items()}
    result = {
        "bench": "training_speed",
        "data": args.data,
        "backbone": BackboneConfig().to_dict(),
        "subsets_per_batch": a.num_subsets,
        "batch_size": args.batch_size,
        "warmup_steps": args.warmup,
        "measured_steps": args.steps,
        "threads": args.threads,
        "samples_per_s": sps,
        "median_step_s": {k: statistics.median(v) for k, v in times.items()},
        "step_seconds": times,
        "speedup_encode_once": sps["encode_once"] / sps["reencode"],
        "same_update_check": check,
        "losses": losses,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor()}".strip() + f", {os.cpu_count()} logical CPUs visible",
    }
    print(
        f"K={a.num_subsets}, batch {args.batch_size}, {args.threads} thread(s), {args.warmup} warm-up + {args.steps} "
        f"measured steps each, interleaved\n"
        f"same update check (batch 0): loss {check['loss_encode_once']:.6f} vs {check['loss_reencode']:.6f}, "
        f"max |grad diff| {check['max_abs_grad_diff']:.2e} (max |grad| {check['max_abs_grad']:.2e})\n\n"
        "| step | samples/s | median s/step |\n|---|---|---|\n"
        f"| encode once + K fusions | {sps['encode_once']:.1f} | {result['median_step_s']['encode_once']:.3f} |\n"
        f"| re-encode per subset | {sps['reencode']:.1f} | {result['median_step_s']['reencode']:.3f} |\n\n"
        f"encode-once speed-up: {result['speedup_encode_once']:.2f}x"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="polymnist", help="a dataset name/folder with a train split, or 'synthetic'")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--k", type=int, default=5, help="subsets per batch")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    p.add_argument("--verbose", action="store_true", help="print each step's times")
    args = p.parse_args(argv)
    result = bench(args)
    name = f"training_speed{'_' + args.tag if args.tag else ''}.json"
    write_json(RESULTS / name, result)
    print(f"\nwrote {RESULTS / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
