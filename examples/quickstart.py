from dymo import DyMoClassifier
from dymo.data.synthetic import make_synthetic_splits
from dymo.evaluation.pipeline import scenario_mask

data = make_synthetic_splits(600, 100, 200, kinds=("image", "image", "vector"))  # or open_dataset("polymnist"), or your folder
# 1. train the flexible backbone, a recovery model and DyMo's calibration in one call
clf = DyMoClassifier.fit(
    data, recovery="retrieval", recovery_options={"epochs": 2},
    backbone={"dim": 32, "heads": 4, "proj_dim": 16}, train={"epochs": 3, "batch_size": 64},
)
clf.save_pretrained("runs/example-bundle")
# 2. predict samples with modalities missing (observed: True = available); no labels needed
test = data["test"]
batch = test.all().with_observed(scenario_mask("random:0.6", len(test), test.modalities, seed=0))
pred = DyMoClassifier.from_pretrained("runs/example-bundle").predict(batch)
print("accuracy", (pred.class_index == batch.labels).float().mean().item())
print(pred.classes[0], pred.used[0].tolist())  # predicted class, modalities fused
print(pred.explain(0))  # every step, every candidate's reward, accepted/rejected
