from dymo.data.synthetic import make_synthetic_splits
from dymo.evaluation.pipeline import scenario_mask
from dymo.inference import DyMoClassifier
from dymo.models import BackboneConfig
from dymo.recovery.registry import get_recoverer
from dymo.selection import compute_calibration
from dymo.training import TrainConfig, load_backbone, train_backbone

data = make_synthetic_splits(600, 100, 200, kinds=("image", "image", "vector"))  # or open_dataset("polymnist")
# 1. train the flexible backbone (any subset of modalities) and a recovery model
run = train_backbone(data, "runs/example", BackboneConfig(dim=32, heads=4, proj_dim=16), TrainConfig(epochs=3, batch_size=64))
backbone = load_backbone(run)
recoverer = get_recoverer("retrieval", epochs=2).fit(data["train"])
# 2. calibrate on the complete training set
calibration = compute_calibration(backbone, data["train"])
clf = DyMoClassifier(backbone, calibration, recoverer, data.class_names)
clf.save_pretrained("runs/example-bundle")
# 3. predict samples with modalities missing (observed: True = available)
test = data["test"]
batch = test.all().with_observed(scenario_mask("random:0.6", len(test), test.modalities, seed=0))
pred = DyMoClassifier.from_pretrained("runs/example-bundle").predict(batch)
print("accuracy", (pred.class_index == batch.labels).float().mean().item())
print(pred.classes[0], pred.used[0].tolist())
print(pred.explain(0))
