"""From a folder of your own files to predictions (docs/data.md, "Your own data").

The example first *writes* such a folder from UCI mfeat (offline): each digit's 16x15 pixel
image as a PNG and its other five feature views as one CSV table, with 30% of the training
samples' modalities missing (absent PNGs, absent table rows), plus a labels.csv. It also writes a
folder of new, unlabelled samples with 60% of their modalities missing. Then it runs the three
steps a user runs, in Python; the equivalent commands are printed beside each step:

    dymo data build folder --source RAW --name own-mfeat
    dymo fit own-mfeat --out BUNDLE
    dymo predict BUNDLE NEW --out predictions.csv

    python examples/own_data.py [--workdir runs/own-data] [--epochs 4] [--small]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    from dymo import DyMoClassifier
    from dymo.data.folder import write_folder
    from dymo.data.registry import build_dataset, load_or_build
    from dymo.data.scenarios import parse_scenario
    from dymo.inference.folder import InputFolder

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("runs/own-data"))
    p.add_argument("--train-missing", type=float, default=0.3, help="share of training modalities missing")
    p.add_argument("--epochs", type=int, default=4, help="backbone epochs")
    p.add_argument("--small", action="store_true", help="tiny budget (tests): 1 epoch, small networks")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    work: Path = args.workdir

    # 0. A folder of raw files, as you would have it (written here from mfeat-image-table).
    source = load_or_build("mfeat-image-table", progress=None)
    train = source["train"]
    train_observed = parse_scenario(f"random:{args.train_missing}").sample(len(train), 2, seed=args.seed, names=train.modalities)
    write_folder(source, work / "raw", observed={"train": np.asarray(train_observed)})
    test = source["test"]
    new_observed = np.asarray(parse_scenario("random:0.6").sample(len(test), 2, seed=args.seed + 1, names=test.modalities))
    write_folder(test, work / "new", observed={"test": new_observed}, labels=False)
    print(f"wrote {work / 'raw'} (image/<id>.png, table.csv, labels.csv) and {work / 'new'} (no labels)")

    # 1. dymo data build folder --source RAW --name own-mfeat
    print(f"$ dymo data build folder --source {work / 'raw'} --name own-mfeat --root {work / 'data'}")
    data = build_dataset("folder", root=work / "data", out_name="own-mfeat", source=str(work / "raw"), seed=args.seed)
    print("  ", {k: len(v) for k, v in data.splits.items()}, "missing in train:", f"{1 - data['train'].observed.mean():.0%}")

    # 2. dymo fit own-mfeat --out BUNDLE
    print(f"$ dymo fit own-mfeat --root {work / 'data'} --out {work / 'bundle'}")
    small = {"backbone": {"dim": 32, "heads": 4, "proj_dim": 16}, "recovery_options": {"epochs": 1}} if args.small else {}
    clf = DyMoClassifier.fit(data, "retrieval", epochs=1 if args.small else args.epochs, progress=not args.small, **small)
    clf.save_pretrained(work / "bundle")

    # 3. dymo predict BUNDLE NEW --out predictions.csv
    print(f"$ dymo predict {work / 'bundle'} {work / 'new'} --out predictions.csv")
    clf = DyMoClassifier.from_pretrained(work / "bundle")
    folder = InputFolder.scan(work / "new", clf.specs)
    batch, errors = folder.load(folder.ids)
    pred = clf.predict(batch)
    truth = [test.class_names[int(test.labels[int(sid[len("test"):])])] for sid in folder.ids]
    accuracy = float(np.mean([a == b for a, b in zip(pred.classes, truth, strict=True)]))
    print(f"   {len(folder.ids)} new samples, {len(errors)} unreadable; accuracy {accuracy:.4f}")
    print(f"   sample {folder.ids[0]}: class {pred.classes[0]}, used {[m for m, u in zip(clf.modalities, pred.used[0].tolist(), strict=True) if u]}")
    return {"accuracy": accuracy, "n": len(folder.ids), "errors": len(errors)}


if __name__ == "__main__":
    main()
