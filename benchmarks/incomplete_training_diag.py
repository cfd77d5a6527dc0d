"""Where DyMo loses accuracy when trained on incomplete data: swap one component at a time.

Trains `DyMoClassifier.fit` on mfeat with train/val masked by `random:P` (seed S), then scores DyMo
at `random:0.6` (seed S) with (A) everything from the incomplete data, (C) the retrieval recoverer
trained on the complete training set instead, (E) calibration on the complete training set instead;
plus discard and fuse-all. Prints (accuracy %, mean modalities used).

    python benchmarks/incomplete_training_diag.py 0.3 1     # docs/results.md section 6
"""

import logging
import sys
import time

import numpy as np
import torch

from dymo import DyMoClassifier
from dymo.data.dataset import SplitDataset
from dymo.data.registry import open_dataset
from dymo.data.scenarios import parse_scenario
from dymo.models.backbone import BackboneConfig
from dymo.recovery.registry import get_recoverer
from dymo.selection import compute_calibration
from dymo.selection.selector import SelectionConfig
from dymo.training.config import TrainConfig

logging.basicConfig(level=logging.WARNING)
torch.set_num_threads(1)


p, seed = float(sys.argv[1]), int(sys.argv[2])
data = open_dataset("mfeat")
splits = dict(data.splits)
for name in ("train", "val"):
    ds = splits[name]
    mask = np.asarray(parse_scenario(f"random:{p}").sample(len(ds), len(ds.specs), seed=seed, names=ds.modalities))
    splits[name] = ds.with_observed(mask)
inc = SplitDataset(data.name, data.specs, data.class_names, splits)
t=time.time()
clf = DyMoClassifier.fit(inc, "retrieval", recovery_options={"epochs": 20}, backbone=BackboneConfig(metric="cosine"), train=TrainConfig(epochs=20), progress=False)
print("fit", time.time()-t, flush=True)
test = data["test"]
mask = np.asarray(parse_scenario("random:0.6").sample(len(test), len(test.specs), seed=seed, names=test.modalities))
full = test.all()
batch = full.with_observed(torch.from_numpy(mask))
def acc(c, method="dymo"):
    pred = c.predict(batch, SelectionConfig(method=method))
    return round(100*float((pred.class_index == batch.labels).float().mean()), 2), round(float(pred.used.sum(1).float().mean()), 2)
print("A inc all:", acc(clf), "discard", acc(clf, "discard"), "fuse-all", acc(clf, "fuse-all"), flush=True)
rec_full = get_recoverer("retrieval", epochs=20).fit(data["train"], progress=False)
print("C rec complete:", acc(DyMoClassifier(clf.backbone, clf.calibration, rec_full, data.class_names)), "fuse-all", acc(DyMoClassifier(clf.backbone, clf.calibration, rec_full, data.class_names), "fuse-all"), flush=True)
cal_full = compute_calibration(clf.backbone, data["train"], progress=False)
print("E cal on complete train:", acc(DyMoClassifier(clf.backbone, cal_full, clf.recoverer, data.class_names)), flush=True)
