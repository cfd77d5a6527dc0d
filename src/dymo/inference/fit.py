"""One call from a dataset to a :class:`~dymo.inference.classifier.DyMoClassifier`.

``DyMoClassifier.fit(dataset, recovery="retrieval")`` runs the three training stages of DyMo
with documented defaults, each with a progress bar:

1. the flexible backbone (:func:`dymo.training.train_backbone`; ``BackboneConfig()`` and
   ``TrainConfig()`` defaults unless ``backbone=`` / ``train=`` / ``epochs=`` say otherwise), best
   epoch chosen on ``dataset["val"]``;
2. the recoverer (``recovery`` is a registry name, options in ``recovery_options``);
3. DyMo's calibration statistics on the training split;
4. with ``tune=True`` (the default), DyMo's acceptance rule tuned on ``dataset["val"]`` under
   simulated missingness (:func:`dymo.selection.tuning.tune_threshold`), stored with the
   calibration. A validation split that misses modalities itself works too: the simulated
   masks hide only modalities a sample has.

The training split may miss modalities (see docs/data.md, "Incomplete training data").
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from dymo.data.dataset import SplitDataset
from dymo.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def _as_config(value: Any, cls: type, what: str) -> Any:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.from_dict(value)
    raise ConfigError(f"{what}: expected a {cls.__name__} or a dict, got {type(value).__name__}")


def fit_classifier(
    cls: type,
    dataset: SplitDataset | str | os.PathLike,
    recovery: str = "retrieval",
    *,
    recovery_options: dict[str, Any] | None = None,
    backbone: Any = None,
    train: Any = None,
    epochs: int | None = None,
    selection: Any = None,
    run_dir: str | os.PathLike | None = None,
    progress: bool = True,
    accelerator: str = "cpu",
    devices: int | str = 1,
    root: str | os.PathLike | None = None,
    tune: bool = True,
) -> Any:
    """Train backbone + recoverer + calibration on ``dataset`` and return the classifier.

    ``dataset``: a :class:`~dymo.data.dataset.SplitDataset` with ``train`` and ``val`` splits,
    or a dataset name / folder (``open_dataset``). ``recovery``: a recoverer name
    (``retrieval``, ``mopoe``, ``knn``, ...; options in ``recovery_options``). ``backbone`` /
    ``train`` / ``selection``: configs or dicts (defaults: ``BackboneConfig()``,
    ``TrainConfig()`` = a budget that scales with the data (:func:`dymo.training.config.auto_epochs`), batch 256, Adam 1e-3; ``SelectionConfig()`` = DyMo).
    ``epochs`` overrides ``train.epochs``. ``run_dir`` keeps the backbone run (logs,
    checkpoints); by default it is a temporary folder. The training split may miss
    modalities (docs/data.md). ``tune``: also tune DyMo's acceptance rule on the validation
    split (docs/selection.md; off = the paper's rule, reward > 0). ``root``: where a named dataset is
    looked up. Then ``predict`` /
    ``predict_proba`` / ``explain`` / ``save_pretrained``.
    """
    from dymo.data.registry import open_dataset
    from dymo.models.backbone import BackboneConfig
    from dymo.recovery.registry import get_recoverer
    from dymo.selection import compute_calibration
    from dymo.selection.selector import SelectionConfig
    from dymo.training.run import TrainConfig, load_backbone, train_backbone

    data = dataset if isinstance(dataset, SplitDataset) else open_dataset(dataset, root)
    for split in ("train", "val"):
        if split not in data.splits:
            raise DataError(f"dataset {data.name!r} has no {split!r} split; fit needs train and val (it has {sorted(data.splits)})")
    backbone_cfg = _as_config(backbone, BackboneConfig, "backbone")
    train_cfg = _as_config(train, TrainConfig, "train")
    if epochs is not None:
        train_cfg = train_cfg.replace(epochs=epochs)
    selection_cfg = None if selection is None else _as_config(selection, SelectionConfig, "selection")
    missing = 1.0 - float(data["train"].observed.mean())
    if missing:
        log.info("fit: %.0f%% of the training split's modality slots are missing; training on what is observed", 100 * missing)

    with tempfile.TemporaryDirectory(prefix="dymo-fit-") as tmp:
        run = Path(run_dir) if run_dir is not None else Path(tmp) / "backbone"
        train_cfg = train_cfg.with_budget(len(data["train"]))
        log.info("fit: 1/4 backbone (at most %d epochs) in %s", train_cfg.epochs, run)
        train_backbone(
            data, run, backbone_cfg, train_cfg, progress=progress, accelerator=accelerator, devices=devices,
            evaluate_test=False,
        )
        model = load_backbone(run)
    log.info("fit: 2/4 recoverer %r", recovery)
    recoverer = get_recoverer(recovery, **(recovery_options or {})).fit(data["train"], progress=progress)
    log.info("fit: 3/4 calibration")
    calibration = compute_calibration(model, data["train"], progress=progress)
    if tune:
        from dymo.selection.tuning import tune_threshold

        log.info("fit: 4/4 acceptance rule, tuned on the validation split")
        try:
            calibration.threshold = tune_threshold(model, calibration, recoverer, data["val"], recoverer_name=recovery)
        except DataError as e:
            # e.g. a table imputer cannot recover the image modalities the simulated masks hide
            log.warning("fit: the acceptance rule could not be tuned (%s); keeping the paper's rule (reward > 0)", e)
    return cls(model, calibration, recoverer, data.class_names, selection_cfg)
