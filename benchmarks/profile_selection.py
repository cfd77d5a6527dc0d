"""Where DyMo's selection spends its time, next to one plain backbone pass (same run, same inputs).

For ``--n`` PolyMNIST test samples (or ``--data synthetic``) with random missingness
``random:ETA`` and oracle recovery (as in ``bench_selection.py``), batches of ``--batch-size``:

- (a) plain pass: ``encode`` all modalities + ``fuse`` all;
- (b) DyMo: ``encode`` once + ``select_with_backbone``, split into: encode, the per-sample
  shared work (``prepare``: CLS + tokens and the first block's per-token projections, once per
  sample), the ``fuse`` calls of the search (rows
  and tokens fused), scoring (quality + ICS against the calibration), and the rest of the
  search (bookkeeping: masks, rewards, histories).

Each part is timed with ``time.perf_counter`` around the calls (the parts of (b) by wrapping
``backbone.fuse`` and the scoring functions); (a) and (b) alternate for ``--repeats`` rounds
and the median is reported. ``--torch-profile`` also prints the top operators of one (b) call
from ``torch.profiler``::

    .venv/bin/python benchmarks/profile_selection.py --run runs/poly10k --threads 1 --eta 0.4 0.8
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

import dymo.selection.selector as selector
from dymo.evaluation.pipeline import scenario_mask
from dymo.selection import select_with_backbone

HERE = Path(__file__).resolve().parent


class Timers:
    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, fn: Any, counter: Any = None) -> Any:
        def inner(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*a, **k)
            t1 = time.perf_counter()
            self.t[name] += t1 - t0
            if counter is not None:
                for key, v in counter(*a, **k).items():
                    self.count[key] += v
                self.t["counting"] += time.perf_counter() - t1  # not part of the selection
            return out

        return inner


def fusion_macs(backbone: Any, rows: int, tokens: int, tokens_sq: int, shared: bool) -> float:
    """Multiply-adds of ``fuse`` for ``rows`` rows holding ``tokens`` used tokens in all and
    ``tokens_sq`` = sum over rows of (1 + used tokens)^2, at this tree's evaluation path: the
    first block from the per-token projections (``shared``: computed once per sample, not
    counted here), middle blocks in full, the last block for the CLS position only."""
    cfg = backbone.config
    d, r, heads = cfg.dim, cfg.mlp_ratio, cfg.heads
    seq = tokens + rows  # every row also carries the CLS token
    proj = 0.0 if shared else 3 * d * d * seq
    mlp = 2 * r * d * d
    attn = 2 * d * tokens_sq  # scores and weighted values of every query
    heads_out = rows * d * (backbone.num_classes + cfg.proj_dim)
    cls_last = rows * (4 * d * d + mlp) + seq * 2 * heads * d  # q, folded k/v, out, MLP; 2 dots per head per token
    if cfg.depth == 1:
        return proj + cls_last + heads_out
    first = seq * (d * d + mlp) + attn
    middle = (cfg.depth - 2) * (seq * (4 * d * d + mlp) + attn)
    return proj + first + middle + cls_last + heads_out


def baseline_backbone(backbone: Any, commit: str) -> Any:
    """The same weights in ``FlexibleBackbone`` as ``src/dymo/models/backbone.py`` was at ``commit``."""
    import subprocess
    import sys
    import types

    code = subprocess.run(["git", "show", f"{commit}:src/dymo/models/backbone.py"], capture_output=True, text=True,
                          check=True, cwd=HERE.parent).stdout
    module = types.ModuleType("baseline_backbone")
    sys.modules["baseline_backbone"] = module  # dataclasses look their module up
    exec(compile(code, f"{commit}:backbone.py", "exec"), module.__dict__)
    old = module.FlexibleBackbone(backbone.specs, backbone.num_classes, backbone.config)
    old.load_state_dict(backbone.state_dict())
    return old.eval()


@torch.no_grad()
def compare_with_baseline(new: Any, old: Any, parts: Any, cal: Any, repeats: int) -> tuple[int, float, float]:
    """Decisions (final subsets, predictions) of DyMo with both fusions, and their median times."""
    same = 0
    times: dict[str, list[float]] = {"old": [], "new": []}
    for r in range(repeats + 1):
        acc = {"old": 0.0, "new": 0.0}
        for j, (d, o) in enumerate(parts):
            res = {}
            for k in (("old", "new") if (r + j) % 2 == 0 else ("new", "old")):
                bb = old if k == "old" else new
                t0 = time.perf_counter()
                tokens = bb.encode(d, torch.ones_like(o))
                res[k] = select_with_backbone(bb, tokens, o, ~o, cal)
                acc[k] += time.perf_counter() - t0
            if r == 0:
                same += int(((res["old"].used == res["new"].used).all(1) & (res["old"].predictions == res["new"].predictions)).sum())
        if r:
            for k in acc:
                times[k].append(acc[k])
    return same, statistics.median(times["old"]), statistics.median(times["new"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="polymnist", choices=["polymnist", "synthetic"])
    p.add_argument("--run", default="runs/polymnist-cosine")
    p.add_argument("--calibration", default=None)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--eta", type=float, nargs="+", default=[0.4, 0.8])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-profile", action="store_true")
    p.add_argument("--baseline-commit", default=None, help="also compare with the fusion of this commit (same weights)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("bench_selection", HERE / "bench_selection.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_selection"] = bench
    spec.loader.exec_module(bench)
    if args.data == "synthetic":
        backbone, cal, data, labels = bench.tiny_random(args.n)
    else:
        backbone, cal, data, labels = bench.load_trained(args.run, args.calibration, args.n, 0)
    backbone.eval()
    n = labels.shape[0]
    tm = backbone.token_modality

    for eta in args.eta:
        observed = scenario_mask(f"random:{eta}", n, backbone.modalities, seed=args.seed)
        parts = bench._batches(data, observed, args.batch_size)
        rounds: dict[str, list[float]] = defaultdict(list)
        fused = {}
        # the per-sample shared work: `prepare` (CLS + tokens and their projections), else `project`
        shared = "prepare" if hasattr(backbone, "prepare") else "project"
        orig = (backbone.encode, backbone.fuse, getattr(backbone, shared), selector.quality, selector.ics)

        def fuse_count(tokens: Any, used: Any, rows: Any = None, projected: Any = None) -> dict[str, int]:
            per_row = used[:, tm].sum(1)
            macs = fusion_macs(backbone, int(used.shape[0]), int(per_row.sum()), int(((per_row + 1) ** 2).sum()), projected is not None)
            return {"rows": int(used.shape[0]), "tokens": int(per_row.sum()), "macs": int(macs)}

        def run_b(d: Any, o: Any, timers: Timers) -> None:
            t1 = time.perf_counter()
            tokens = backbone.encode(d, torch.ones_like(o))
            t2 = time.perf_counter()
            select_with_backbone(backbone, tokens, o, ~o, cal)
            t3 = time.perf_counter()
            timers.t["b select"] += t3 - t2
            timers.t["b total"] += t3 - t1

        def run_a(d: Any, o: Any, timers: Timers) -> None:
            t1 = time.perf_counter()
            full = torch.ones_like(o)
            backbone.fuse(backbone.encode(d, full), full)
            timers.t["a total"] += time.perf_counter() - t1

        for r in range(args.repeats + 1):  # round 0 warms up
            ta, tb = Timers(), Timers()
            try:
                with torch.no_grad():
                    # (a) and (b) alternate batch by batch (order swapped every batch)
                    for j, (d, o) in enumerate(parts):
                        for which in (("a", "b") if j % 2 == 0 else ("b", "a")):
                            timers = ta if which == "a" else tb
                            backbone.encode = timers.wrap(f"{which} encode", orig[0])
                            backbone.fuse = timers.wrap(f"{which} fuse", orig[1], fuse_count)
                            setattr(backbone, shared, timers.wrap(f"{which} project", orig[2]))
                            selector.quality = timers.wrap(f"{which} score", orig[3])
                            selector.ics = timers.wrap(f"{which} score", orig[4])
                            (run_a if which == "a" else run_b)(d, o, timers)
            finally:
                backbone.encode, backbone.fuse, _, selector.quality, selector.ics = orig
                setattr(backbone, shared, orig[2])
            fused, plain_tokens, plain_macs = dict(tb.count), ta.count["tokens"], ta.count["macs"]
            if r == 0:
                continue
            t = {**ta.t, **tb.t}
            for k in ("a total", "a encode", "a fuse", "b total", "b encode", "b fuse"):
                rounds[k].append(t[k])
            rounds["b project"].append(t.get("b project", 0.0))
            rounds["b score"].append(t["b score"])
            rounds["b search rest"].append(t["b select"] - t.get("b project", 0.0) - t["b fuse"] - t["b score"] - tb.t["counting"])
            rounds["b total"][-1] -= tb.t["counting"]
            rounds["a total"][-1] -= ta.t["counting"]
        if args.baseline_commit:
            old_bb = baseline_backbone(backbone, args.baseline_commit)
            same, t_old, t_new = compare_with_baseline(backbone, old_bb, parts, cal, args.repeats)
            print(f"\nrandom:{eta}: fusion of commit {args.baseline_commit} vs this tree, same weights: "
                  f"identical decisions on {same}/{n} samples; DyMo (encode + select) median "
                  f"{1000 * t_old / n:.3f} vs {1000 * t_new / n:.3f} ms/sample ({t_old / t_new:.2f}x)")
        med = {k: statistics.median(v) for k, v in rounds.items()}
        ms = {k: 1000 * v / n for k, v in med.items()}
        print(f"\nrandom:{eta}: {n} samples, batch {args.batch_size}, {args.threads} thread(s), median of {args.repeats}")
        print(f"(b)/(a) = {med['b total'] / med['a total']:.2f}x; fused per sample: plain {plain_tokens / n:.1f} tokens; "
              f"dymo {fused['rows'] / n:.2f} rows, {fused['tokens'] / n:.1f} tokens")
        work = fused["macs"] / plain_macs
        bound = (med["a encode"] + med["b project"] + med["a fuse"] * work) / med["a total"]
        print(f"fusion work (multiply-adds): dymo / plain = {work:.2f}x ({fused['macs'] / n / 1e6:.2f} M vs "
              f"{plain_macs / n / 1e6:.2f} M per sample); (b)/(a) if (b) fused as fast per multiply-add as (a) and "
              f"the search cost nothing: {bound:.2f}x")
        print("| part | ms/sample | share of (b) | / (a) total |")
        print("|---|---|---|---|")
        for k in ("a encode", "a fuse", "a total", "b encode", "b project", "b fuse", "b score", "b search rest", "b total"):
            print(f"| {k} | {ms[k]:.3f} | {100 * med[k] / med['b total']:.0f}% | {med[k] / med['a total']:.2f} |")

        if args.torch_profile:
            from torch.profiler import ProfilerActivity, profile

            d, o = parts[0]
            with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
                tokens = backbone.encode(d, torch.ones_like(o))
                select_with_backbone(backbone, tokens, o, ~o, cal)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
