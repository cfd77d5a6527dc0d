"""MoPoE recovery: our path vs the authors' decode-all-subsets path, and a short training probe.

``speed`` (default): one model, one set of inputs (PolyMNIST-shaped: 5 image modalities
3x28x28, random missingness ``random:ETA``), timed through

- ours: :meth:`MoPoERecoverer.recover` (PoE over each sample's observed modalities, posterior
  mean, decode only the missing modalities of the samples that miss them);
- authors': :meth:`MoPoERecoverer.recover_all_subsets` (encode everything, PoE + decode every
  modality for all 31 subsets, then pick per sample the subset equal to its observed set);

checks that both give the same output and prints ms/sample and the ratio::

    .venv/bin/python benchmarks/bench_mopoe_recovery.py speed --threads 1

``probe``: train on ``polymnist-small`` for at most ``--seconds`` (one thread), resuming one
epoch at a time from a run folder, and print the training reconstruction loss per epoch plus
the L1 error of recovered images on the val split at ``random:0.6``::

    .venv/bin/python benchmarks/bench_mopoe_recovery.py probe --seconds 170

``curve``: the learning curve at a stated CPU budget on the full offline PolyMNIST: train one
epoch at a time (resuming from the run folder) until ``--seconds`` of training have passed and,
after every epoch, measure *coherence* (an independently trained unimodal judge, e.g. the one
``dymo recovery-report`` trained for the retrieval run, classifies the recovered images) given
1..4 observed modalities on ``--eval-samples`` test tuples::

    .venv/bin/python benchmarks/bench_mopoe_recovery.py curve --seconds 2400 --threads 1 \
        --judge runs/rec-retrieval/coherence_classifier --run-dir runs/mopoe-cpu

All write a JSON summary to ``benchmarks/results/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset
from dymo.data.scenarios import parse_scenario
from dymo.data.specs import ModalitySpec
from dymo.recovery.mopoe import MoPoEConfig, MoPoERecoverer
from dymo.utils.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def polymnist_shaped(n: int, num_modalities: int = 5, seed: int = 0) -> MultimodalDataset:
    """Random uint8 images with PolyMNIST's shapes (timing does not depend on content)."""
    rng = np.random.default_rng(seed)
    specs = [ModalitySpec(f"m{i}", "image", (3, 28, 28)) for i in range(num_modalities)]
    arrays = {s.name: rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8) for s in specs}
    return MultimodalDataset(specs, arrays, rng.integers(0, 10, n), [str(d) for d in range(10)], name="random-polymnist")


def load_data(kind: str, n: int, root: str | None) -> MultimodalDataset:
    if kind == "random":
        return polymnist_shaped(n)
    from dymo.data.registry import load_or_build

    test = load_or_build(kind, root)["test"]
    return test.subset(np.arange(min(n, len(test))))


def batches(ds: MultimodalDataset, observed: np.ndarray, batch_size: int) -> list[MultimodalBatch]:
    out = []
    for start in range(0, len(ds), batch_size):
        idx = np.arange(start, min(start + batch_size, len(ds)))
        out.append(ds.batch(idx).with_observed(torch.from_numpy(observed[idx])))
    return out


def time_both(fns: list, items: list[MultimodalBatch], repeats: int) -> tuple[list[float], list[list[MultimodalBatch]]]:  # noqa: ANN001
    """Wall time (s) of each function over all batches: per batch the best of ``repeats``, the
    functions interleaved batch by batch so that load from other processes hits both alike.
    One warm-up batch first."""
    for fn in fns:
        fn(items[0])
    best = [[float("inf")] * len(items) for _ in fns]
    outs: list[list[MultimodalBatch]] = [[] for _ in fns]
    for r in range(repeats):
        for j, b in enumerate(items):
            for k, fn in enumerate(fns):
                t0 = time.perf_counter()
                out = fn(b)
                best[k][j] = min(best[k][j], time.perf_counter() - t0)
                if r == 0:
                    outs[k].append(out)
    return [sum(t) for t in best], outs


def speed(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    ds = load_data(args.data, args.n, args.data_root)
    if args.model:
        rec = MoPoERecoverer.load(args.model)
    else:  # epochs=0: an initialised, untrained model (speed does not depend on training)
        rec = MoPoERecoverer(latent_dim=args.latent_dim, epochs=0).fit(ds, progress=False)
    m = len(ds.specs)
    observed = parse_scenario(f"random:{args.eta}").sample(len(ds), m, seed=args.seed)
    items = batches(ds, observed, args.batch_size)
    (t_ours, t_ref), (ours, ref) = time_both([rec.recover, rec.recover_all_subsets], items, args.repeats)
    max_diff, identical, total = 0.0, 0, 0
    for a, b in zip(ours, ref, strict=True):
        for i, name in enumerate(ds.modalities):
            x, y = a.data[name], b.data[name]
            max_diff = max(max_diff, float((x.double() - y.double()).abs().max()))
            miss = ~a.observed[:, i]
            same = (x[miss] == y[miss]).flatten(1).all(1)
            identical += int(same.sum())
            total += len(same)
    n = len(ds)
    result = {
        "bench": "mopoe_recovery_speed",
        "data": args.data,
        "samples": n,
        "modalities": m,
        "scenario": f"random:{args.eta}",
        "missing_fraction": float(1 - observed.mean()),
        "latent_dim": rec.config.latent_dim,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "ms_per_sample_ours": 1000 * t_ours / n,
        "ms_per_sample_all_subsets": 1000 * t_ref / n,
        "speedup": t_ref / t_ours,
        "max_abs_diff": max_diff,
        "bit_identical_fraction_of_recovered": identical / total,
        "outputs_match": max_diff <= 1e-5,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    print(
        f"{n} samples, {m} modalities, random:{args.eta} (missing fraction {result['missing_fraction']:.3f}), "
        f"latent {rec.config.latent_dim}, batch {args.batch_size}, {args.threads} thread(s), best of {args.repeats} per batch, interleaved\n"
        f"  ours (PoE over observed, decode missing only): {result['ms_per_sample_ours']:.3f} ms/sample\n"
        f"  authors' (decode all {2**m - 1} subsets, pick): {result['ms_per_sample_all_subsets']:.3f} ms/sample\n"
        f"  speed-up {result['speedup']:.1f}x; max |diff| {max_diff:.2e}; "
        f"recovered images bit-identical {100 * result['bit_identical_fraction_of_recovered']:.1f}%"
    )
    return result


@torch.no_grad()
def recovery_l1(rec: MoPoERecoverer, ds: MultimodalDataset, eta: float, seed: int) -> tuple[float, float]:
    """Mean absolute pixel error of recovered missing images, and of the training-mean image."""
    observed = parse_scenario(f"random:{eta}").sample(len(ds), len(ds.specs), seed=seed)
    err, base, count = 0.0, 0.0, 0
    means = rec._train_means  # type: ignore[attr-defined]
    for b in batches(ds, observed, 256):
        truth = b.data
        out = rec.recover(b.with_missing_filled())
        for i, name in enumerate(ds.modalities):
            miss = ~b.observed[:, i]
            if miss.any():
                err += float((out.data[name][miss] - truth[name][miss]).abs().mean(dim=(1, 2, 3)).sum())
                base += float((means[name] - truth[name][miss]).abs().mean(dim=(1, 2, 3)).sum())
                count += int(miss.sum())
    return err / count, base / count


def _config(args: argparse.Namespace) -> MoPoEConfig:
    """The MoPoE settings shared by ``probe`` and ``curve`` (one epoch; the loops extend it)."""
    return MoPoEConfig(
        latent_dim=args.latent_dim, beta=args.beta, likelihood_scale=args.scale, image_likelihood=args.likelihood,
        batch_size=args.batch_size, lr=args.lr, kl_warmup_epochs=args.warmup, epochs=1,
    )


def probe(args: argparse.Namespace) -> dict:
    from dymo.data.registry import load_or_build

    torch.set_num_threads(args.threads)
    data = load_or_build("polymnist-small", args.data_root)
    train, val = data["train"], data["val"]
    run = Path(args.run_dir)
    cfg = _config(args)
    means = {s.name: torch.from_numpy(np.asarray(train.arrays[s.name], dtype=np.float32).mean(0) / 255).permute(2, 0, 1) for s in train.specs}
    t0 = time.perf_counter()
    curve = []
    rec = None
    epoch = 0
    while time.perf_counter() - t0 < args.seconds:
        epoch += 1
        t_epoch = time.perf_counter()
        rec = MoPoERecoverer(cfg.replace(epochs=epoch)).fit(train, progress=False, run_dir=run)
        rec._train_means = means  # type: ignore[attr-defined]
        l1, l1_mean = recovery_l1(rec, val, 0.6, seed=0)
        h = rec.history[-1]
        curve.append({**h, "val_l1_recovered": l1, "val_l1_train_mean": l1_mean, "elapsed_s": time.perf_counter() - t0})
        print(
            f"epoch {epoch:3d}  rec {h['rec']:9.1f}  kl {h['kl']:7.2f}  loss {h['loss']:9.1f}  "
            f"val L1 recovered {l1:.4f} (train-mean image {l1_mean:.4f})  [{time.perf_counter() - t_epoch:.1f}s]",
            flush=True,
        )
    assert rec is not None
    rec.save(run / "final")
    grid = None
    try:
        from dymo.recovery.coherence import save_grid

        observed = parse_scenario("random:0.6").sample(len(val), len(val.specs), seed=0)
        b = batches(val, observed, 8)[0]
        grid = str(run / "grid.png") if save_grid(b, rec.recover(b.with_missing_filled()), val.specs, run / "grid.png") else None
    except ImportError:  # the grid is a convenience; coherence.py is optional here
        pass
    return {
        "bench": "mopoe_training_probe",
        "dataset": "polymnist-small",
        "train_samples": len(train),
        "val_samples": len(val),
        "config": cfg.replace(epochs=epoch).to_dict(),
        "threads": args.threads,
        "seconds": time.perf_counter() - t0,
        "grid": grid,
        "curve": curve,
        "note": "rec = Laplace/Gaussian NLL summed over 5 x 2352 pixels per sample (training, per epoch mean); "
        "val L1 = mean |recovered - true| per pixel over missing images at random:0.6 (seed 0).",
    }


def curve(args: argparse.Namespace) -> dict:
    from dymo.data.registry import open_dataset
    from dymo.recovery.coherence import UnimodalClassifier, recovery_report

    torch.set_num_threads(args.threads)
    data = open_dataset(args.data)
    train, test = data["train"], data["test"]
    if args.max_train_samples:
        train = train.subset(np.arange(min(args.max_train_samples, len(train))))
    test = test.subset(np.arange(min(args.eval_samples, len(test))))
    judge = UnimodalClassifier.load(args.judge)
    run = Path(args.run_dir)
    cfg = _config(args)
    curve: list[dict] = []
    train_seconds = 0.0
    rec = rep = None
    epoch = 0
    while train_seconds < args.seconds and epoch < args.max_epochs:
        epoch += 1
        t0 = time.perf_counter()
        rec = MoPoERecoverer(cfg.replace(epochs=epoch)).fit(train, progress=False, run_dir=run)
        train_seconds += time.perf_counter() - t0
        rep = recovery_report(rec, test, judge, seed=0, progress=False,
                              grid_path=run / f"grid_epoch{epoch:03d}.png")
        h = rec.history[-1]
        coh = rep["coherence"]
        curve.append({**h, "train_seconds": train_seconds, "coherence": coh, "error": rep["error"],
                      "throughput_samples_per_s": rep["throughput_samples_per_s"]})
        byk = "  ".join(f"{k}obs {v:.3f}" for k, v in coh["by_num_observed"].items())
        print(f"epoch {epoch:3d}  train {train_seconds:7.0f}s  rec {h['rec']:9.1f}  kl {h['kl']:7.2f}  "
              f"coherence {coh['overall']:.3f} ({byk})", flush=True)
    assert rec is not None and rep is not None
    rec.save(run / "final")
    return {
        "bench": "mopoe_learning_curve",
        "dataset": args.data,
        "train_samples": len(train),
        "eval_samples": len(test),
        "judge": args.judge,
        "judge_reference_accuracy": rep["reference_accuracy"],
        "config": cfg.replace(epochs=epoch).to_dict(),
        "threads": args.threads,
        "train_seconds": train_seconds,
        "machine": platform.processor() or platform.machine(),
        "curve": curve,
        "note": "coherence = accuracy of the judge on recovered images vs the true label, masks: each test "
        "tuple observes k ~ U{1..4} modalities (default_report_masks, seed 0); posterior-mean recoveries.",
    }


def plot_curve(summary: dict, path: Path) -> Path:
    """Coherence (overall and given 1 / 4 observed) against training seconds, one point per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = summary["curve"]
    t = [p["train_seconds"] / 60 for p in pts]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, label in (("overall", "all"), ("1", "given 1 observed"), ("4", "given 4 observed")):
        y = [100 * (p["coherence"]["overall"] if key == "overall" else p["coherence"]["by_num_observed"][key]) for p in pts]
        ax.plot(t, y, marker="o", label=label)
    ax.axhline(10, color="grey", ls=":", label="chance")
    ax.set_xlabel(f"training minutes ({summary['threads']} CPU thread(s), {summary['train_samples']} tuples/epoch)")
    ax.set_ylabel("coherence (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("MoPoE on PolyMNIST: coherence of recoveries per epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("speed", help="ours vs decode-all-subsets (default)")
    s.add_argument("--n", type=int, default=512)
    s.add_argument("--eta", type=float, default=0.6)
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--latent-dim", type=int, default=512, help="authors' PolyMNIST latent size")
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--data", default="random", help="random | polymnist-small | polymnist (test split)")
    s.add_argument("--data-root", default=None)
    s.add_argument("--model", default=None, help="a saved MoPoE recoverer folder (default: untrained init)")
    q = sub.add_parser("probe", help="short CPU training run on polymnist-small")
    q.add_argument("--seconds", type=float, default=170.0)
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--latent-dim", type=int, default=64)
    q.add_argument("--beta", type=float, default=2.5)
    q.add_argument("--scale", type=float, default=0.75)
    q.add_argument("--likelihood", default="laplace")
    q.add_argument("--batch-size", type=int, default=128)
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--warmup", type=int, default=0)
    q.add_argument("--data-root", default=None)
    q.add_argument("--run-dir", default="runs/mopoe_probe")
    q.add_argument("--tag", default="")
    c = sub.add_parser("curve", help="learning curve (coherence per epoch) on full PolyMNIST at a CPU budget")
    c.add_argument("--seconds", type=float, default=2400.0, help="training wall-clock budget (evaluation excluded)")
    c.add_argument("--max-epochs", type=int, default=1000)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--data", default="polymnist")
    c.add_argument("--max-train-samples", type=int, default=None)
    c.add_argument("--eval-samples", type=int, default=2000)
    c.add_argument("--judge", required=True, help="a UnimodalClassifier folder (RUN/coherence_classifier)")
    c.add_argument("--latent-dim", type=int, default=64)
    c.add_argument("--beta", type=float, default=1.0)
    c.add_argument("--scale", type=float, default=0.2)
    c.add_argument("--likelihood", default="laplace")
    c.add_argument("--batch-size", type=int, default=128)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--warmup", type=int, default=3)
    c.add_argument("--run-dir", default="runs/mopoe-cpu")
    c.add_argument("--tag", default="")
    args = p.parse_args(argv)
    if args.cmd is None:
        args = p.parse_args(["speed", *(argv if argv is not None else sys.argv[1:])])
    result = {"probe": probe, "curve": curve}.get(args.cmd, speed)(args)
    name = f"mopoe_{args.cmd}{'_' + args.tag if getattr(args, 'tag', '') else ''}.json"
    write_json(RESULTS / name, result)
    if args.cmd == "curve":
        print(f"wrote {plot_curve(result, RESULTS / name.replace('.json', '.png'))}")
    print(f"wrote {RESULTS / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
