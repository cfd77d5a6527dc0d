"""The end-to-end demo: every step reuses what an earlier run already built."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dymo.config import Config
from dymo.data.registry import load_or_build
from dymo.evaluation.pipeline import evaluate_methods, scenario_mask
from dymo.evaluation.report import metrics_markdown, plot_accuracy_by_observed, write_report
from dymo.inference.classifier import DyMoClassifier
from dymo.models.backbone import BackboneConfig
from dymo.recovery.registry import get_recoverer, load_recoverer
from dymo.selection.calibration import Calibration, compute_calibration
from dymo.selection.plot import plot_explanations
from dymo.training.run import TrainConfig, load_backbone, train_backbone
from dymo.utils.artifact import sha256_file
from dymo.utils.io import read_json, write_json


@dataclass
class DemoConfig(Config):
    n_train: int = 10000
    n_val: int = 500
    n_test: int = 2000
    epochs: int = 5
    recovery_epochs: int = 2
    missing: str = "random:0.6"
    seed: int = 0
    metric: str = "cosine"


def run_demo(cfg: DemoConfig, out: Path, report: Path, data_root: Path, log: Callable[[str], None] = print) -> Path:
    out, report = Path(out), Path(report)
    timings: dict[str, float] = {}

    def step(name: str) -> Callable[[], None]:
        t = time.perf_counter()
        log(f"[bold]{name}[/]")
        return lambda: timings.__setitem__(name, round(time.perf_counter() - t, 1))

    done = step("1/6 data: offline PolyMNIST")
    data = load_or_build("polymnist", root=data_root, n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test, seed=cfg.seed)
    done()
    log(f"    train {len(data['train'])}, val {len(data['val'])}, test {len(data['test'])} tuples of {len(data.specs)} modalities")

    done = step("2/6 recovery: retrieval (hot-deck in a learned embedding)")
    rec_dir = out / "recovery"
    if (rec_dir / "config.json").exists():
        recoverer = load_recoverer(rec_dir)
        log(f"    reusing {rec_dir}")
    else:
        recoverer = get_recoverer("retrieval", epochs=cfg.recovery_epochs, seed=cfg.seed).fit(data["train"])
        recoverer.save(rec_dir)
    done()

    done = step("3/6 backbone: flexible transformer, every single modality + the full set + K=5 random subsets per batch")
    bb_dir = out / "backbone"
    tcfg = TrainConfig(epochs=cfg.epochs, seed=cfg.seed, proto_start_epoch=min(2, cfg.epochs - 1))
    bcfg = BackboneConfig(metric=cfg.metric)  # type: ignore[arg-type]
    if (bb_dir / "backbone.safetensors").exists() and (bb_dir / "metrics.json").exists():
        log(f"    reusing {bb_dir}")
    else:
        # an interrupted earlier demo is continued (refused, with a message, if its settings differ)
        train_backbone(data, bb_dir, bcfg, tcfg, data_ref={"name": str(data_root / "polymnist")}, resume=bb_dir.exists())
    backbone = load_backbone(bb_dir)
    test_acc = read_json(bb_dir / "metrics.json").get("test", {})
    done()
    log(f"    complete-data test accuracy {100 * test_acc.get('all_modalities', float('nan')):.2f}%")

    done = step("4/6 calibration on the training set; acceptance rule tuned on the validation split")
    cal_path = bb_dir / "calibration.safetensors"
    calibration = Calibration.load(cal_path) if cal_path.exists() else None
    if calibration is not None and calibration.backbone_sha256 != sha256_file(bb_dir / "backbone.safetensors"):
        calibration = None  # computed for other weights (or unknown ones): recompute
    if calibration is None or calibration.threshold is None:
        from dymo.selection.tuning import tune_threshold

        calibration = calibration or compute_calibration(backbone, data["train"])
        # DyMo's acceptance rule, tuned on the validation split (no test label is read)
        calibration.threshold = tune_threshold(backbone, calibration, recoverer, data["val"], recoverer_name="retrieval")
        calibration.save(cal_path, backbone_sha256=sha256_file(bb_dir / "backbone.safetensors"))
    done()

    done = step(f"5/6 evaluation at {cfg.missing}")
    metrics, results = evaluate_methods(
        backbone, calibration, recoverer, data["test"], cfg.missing, ("discard", "fuse-all", "dymo"), seed=cfg.seed, keep_results=True
    )
    paper = evaluate_methods(
        backbone, calibration, recoverer, data["test"], cfg.missing, ("dymo",), seed=cfg.seed,
        selection={"threshold": 0.0, "added_temperature": 1.0, "added_weight": 1.0},
    )
    done()
    names = {"discard": "discard (observed only)", "fuse-all": "fuse-all (every recovery)", "dymo": "DyMo"}
    metrics = {names[k]: v for k, v in metrics.items()}
    metrics["DyMo, paper's rule (reward > 0)"] = paper["dymo"]
    log(metrics_markdown(metrics))

    done = step("6/6 bundle + report")
    clf = DyMoClassifier(backbone, calibration, recoverer, data.class_names)
    clf.save_pretrained(out / "bundle")
    report.mkdir(parents=True, exist_ok=True)
    plot_accuracy_by_observed(metrics, report / "accuracy.png", f"PolyMNIST test, {cfg.missing}")
    _explanation_image(data, recoverer, results["dymo"][0], cfg, report / "samples.png")
    write_json(report / "metrics.json", {k: v.to_dict() for k, v in metrics.items()})
    done()
    intro = [
        f"Offline PolyMNIST ({cfg.n_train} training tuples, 5 image modalities), missing scenario "
        f"`{cfg.missing}` (seed {cfg.seed}) on {len(data['test'])} test tuples.",
        f"Backbone: {cfg.epochs} epochs; complete-data test accuracy {100 * test_acc.get('all_modalities', float('nan')):.2f}%. "
        "Recovery: retrieval (nearest training sample in a learned embedding).",
        "",
        "Reproduce: `make demo` (or `dymo demo`). Step times (s): " + ", ".join(f"{k.split(' ')[0]} {v}" for k, v in timings.items()),
    ]
    notes = [
        "In `samples.png`, each row is a test sample; observed modalities are drawn plainly, recovered "
        "ones with a green border when DyMo added them, red when it rejected them, with the reward.",
        "",
        f"The bundle `{out / 'bundle'}` predicts on new data: `dymo predict {out / 'bundle'} INPUT --out preds.csv`.",
    ]
    return write_report(report, "dymo demo: DyMo vs discard vs fuse-all", metrics, intro,
                        {"Accuracy by number of observed modalities": "accuracy.png", "Test samples and DyMo's choices": "samples.png"}, notes)


def _explanation_image(data, recoverer, result, cfg: DemoConfig, path: Path) -> None:
    """Draw a few test samples of the first evaluation batch: some accepted, some rejected."""
    n = len(result)
    test = data["test"]
    observed = scenario_mask(cfg.missing, len(test), test.modalities, cfg.seed)[:n]
    batch = test.batch(np.arange(n)).with_observed(observed)
    recovered = recoverer.recover(batch.with_missing_filled())
    added = result.added.any(1)
    rejected = result.rejected.any(1)
    pick = [int(i) for i in torch.nonzero(added & ~rejected).flatten()[:2]]
    pick += [int(i) for i in torch.nonzero(rejected).flatten()[:2]]
    pick += [int(i) for i in torch.nonzero(added & rejected).flatten()[:2]]
    pick = list(dict.fromkeys(pick))[:6] or [0]
    plot_explanations(batch.data, recovered.data, result, pick, path=path, class_names=data.class_names)
