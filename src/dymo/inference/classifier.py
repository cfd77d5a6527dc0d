"""A model bundle and the classifier users predict with.

A bundle is one folder holding everything needed to predict::

    bundle.json              format, dymo version, modality specs, class names, backbone + selection configs
    backbone.safetensors     backbone weights
    calibration.safetensors  DyMo's calibration statistics
    recovery/                the recoverer (its own config.json + weights; see dymo.recovery.base)

``bundle.json`` is written last, so its presence marks a complete bundle. No pickles.

    clf = DyMoClassifier.from_pretrained("bundles/polymnist")
    pred = clf.predict(batch)            # batch.observed marks the available modalities
    pred.classes, pred.probabilities, pred.used, pred.explain(0)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import dymo
from dymo.data.batch import MultimodalBatch
from dymo.data.kinds import describe_inputs, prepare_batch
from dymo.data.specs import ModalitySpec, specs_from_list, specs_to_list
from dymo.errors import BundleError, ConfigError, DataError
from dymo.models.backbone import BackboneConfig, FlexibleBackbone
from dymo.selection.calibration import Calibration
from dymo.selection.selector import (
    SampleExplanation,
    SelectionConfig,
    SelectionResult,
    select_with_backbone,
)
from dymo.utils.io import default_dir_mode, load_tensors, read_json, save_tensors, write_json

BUNDLE_FORMAT = 1


@dataclass
class Prediction:
    """What :meth:`DyMoClassifier.predict` returns for a batch."""

    class_names: list[str]
    modalities: tuple[str, ...]
    class_index: torch.Tensor  # long [B]
    probabilities: torch.Tensor  # [B, C]
    observed: torch.Tensor  # bool [B, M]
    recovered: torch.Tensor  # bool [B, M]: filled by the recoverer (missing, or observed with empty values)
    used: torch.Tensor  # bool [B, M]: what the final prediction fused
    selection: SelectionResult

    @property
    def classes(self) -> list[str]:
        return [self.class_names[i] for i in self.class_index.tolist()]

    def explain(self, i: int) -> SampleExplanation:
        return self.selection.explain(i, self.class_names)

    def to_records(self, sample_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One JSON-able dict per sample: class, probabilities, modalities observed/recovered/used, rewards."""
        out = []
        for i in range(len(self.class_index)):
            expl = self.explain(i).to_dict()

            def names(mask: torch.Tensor, i: int = i) -> list[str]:
                return [m for j, m in enumerate(self.modalities) if bool(mask[i, j])]

            out.append(
                {
                    "sample": sample_ids[i] if sample_ids is not None else i,
                    "predicted_class": self.class_names[int(self.class_index[i])],
                    "probabilities": {c: round(float(p), 6) for c, p in zip(self.class_names, self.probabilities[i], strict=False)},
                    "observed": names(self.observed),
                    "recovered": names(self.recovered),
                    "used": names(self.used),
                    "steps": expl.get("steps", []),
                }
            )
        return out


class DyMoClassifier:
    """Backbone + calibration + recoverer + selection config: predict from incomplete samples."""

    def __init__(
        self,
        backbone: FlexibleBackbone,
        calibration: Calibration,
        recoverer: Any,
        class_names: Sequence[str],
        selection: SelectionConfig | None = None,
    ) -> None:
        self.backbone = backbone.eval()
        self.calibration = calibration
        self.recoverer = recoverer
        self.class_names = list(class_names)
        self.selection = selection or SelectionConfig()
        self.specs: list[ModalitySpec] = list(backbone.specs)
        if tuple(calibration.modalities) != backbone.modalities:
            raise BundleError(f"calibration modalities {list(calibration.modalities)} != backbone {list(backbone.modalities)}")
        if calibration.metric != backbone.config.metric:
            raise BundleError(f"calibration metric {calibration.metric!r} != backbone metric {backbone.config.metric!r}")
        rec_specs = getattr(recoverer, "specs", None)
        if rec_specs is not None and [s.to_dict() for s in rec_specs] != [s.to_dict() for s in self.specs]:
            raise BundleError("the recoverer was trained for other modality specs than the backbone")
        if len(self.class_names) != backbone.num_classes:
            raise BundleError(f"{len(self.class_names)} class names for a {backbone.num_classes}-class backbone")

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.backbone.modalities

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, recovery_dir: str | os.PathLike, selection: SelectionConfig | None = None) -> DyMoClassifier:
        """Assemble from a calibrated backbone run folder and a recovery run folder."""
        from dymo.recovery.registry import load_recoverer
        from dymo.training.run import load_backbone

        run = Path(run_dir)
        backbone = load_backbone(run)
        cal_path = run / "calibration.safetensors"
        if not cal_path.exists():
            raise BundleError(f"{run}: no calibration statistics; run `dymo calibrate {run}` first")
        class_names = read_json(run / "config.json")["class_names"]
        return cls(backbone, Calibration.load(cal_path), load_recoverer(recovery_dir), class_names, selection)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write the bundle folder. Built in a temporary folder beside it, then renamed into place."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        os.chmod(tmp, default_dir_mode())  # mkdtemp makes it 0o700
        try:
            save_tensors(tmp / "backbone.safetensors", self.backbone.state_dict(), metadata={"dymo_version": dymo.__version__})
            self.calibration.save(tmp / "calibration.safetensors")
            self.recoverer.save(tmp / "recovery")
            write_json(
                tmp / "bundle.json",
                {
                    "format": BUNDLE_FORMAT,
                    "dymo_version": dymo.__version__,
                    "specs": specs_to_list(self.specs),
                    "class_names": self.class_names,
                    "backbone": self.backbone.config.to_dict(),
                    "selection": self.selection.to_dict(),
                    "inputs": describe_inputs(self.specs),  # informative; see docs/inputs.md
                },
            )
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str = "cpu") -> DyMoClassifier:
        from dymo.recovery.registry import load_recoverer

        path = Path(path)
        meta_path = path / "bundle.json"
        previous = path.with_name(f".{path.name}.old")
        if not meta_path.exists() and not path.exists() and (previous / "bundle.json").exists():
            # save_pretrained over an existing bundle was killed between its two renames: the
            # previous complete bundle is still there under its temporary name.
            path, meta_path = previous, previous / "bundle.json"
        if not meta_path.exists():
            raise BundleError(f"{path}: not a dymo bundle (no bundle.json; an interrupted save leaves none)")
        try:
            meta = read_json(meta_path)
        except ValueError as e:
            raise BundleError(f"{meta_path}: corrupt JSON ({e})") from None
        if meta.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{meta_path}: bundle format {meta.get('format')!r}, this dymo reads {BUNDLE_FORMAT}")
        if meta.get("dymo_version") != dymo.__version__:
            raise BundleError(
                f"{path}: bundle written by dymo {meta.get('dymo_version')!r}; this is dymo {dymo.__version__}. "
                "Install that version or rebuild the bundle."
            )
        specs = specs_from_list(meta["specs"])
        backbone = FlexibleBackbone(specs, len(meta["class_names"]), BackboneConfig.from_dict(meta["backbone"]))
        w = path / "backbone.safetensors"
        try:
            state = load_tensors(w)
        except FileNotFoundError:
            raise BundleError(f"{w}: file missing") from None
        except Exception as e:
            raise BundleError(f"{w}: truncated or corrupt weights ({e})") from None
        try:
            backbone.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise BundleError(f"{w}: weights do not match the bundle's modality specs/config ({str(e).splitlines()[0]})") from None
        calibration = Calibration.load(path / "calibration.safetensors")
        recoverer = load_recoverer(path / "recovery")
        return cls(backbone.to(map_location), calibration, recoverer, meta["class_names"], SelectionConfig.from_dict(meta["selection"]))

    # -- prediction -----------------------------------------------------------------------------
    def expected_inputs(self) -> dict[str, Any]:
        """What this model expects per modality (also written to ``bundle.json`` as ``"inputs"``)."""
        return describe_inputs(self.specs)

    def _selection_config(self, selection: SelectionConfig | str | None) -> SelectionConfig:
        if selection is None:
            return self.selection
        if isinstance(selection, SelectionConfig):
            return selection
        if isinstance(selection, str):
            return SelectionConfig.from_dict({**self.selection.to_dict(), "method": selection})
        raise ConfigError(f"selection must be a SelectionConfig, a method name or None, got {type(selection).__name__}")

    @torch.no_grad()
    def predict(self, batch: MultimodalBatch, selection: SelectionConfig | str | None = None) -> Prediction:
        """Recover what is missing, choose per sample which recoveries to use, predict.

        ``batch.observed`` marks the available modalities; what missing slots hold is never read.
        Labels, if the batch carries any, are ignored. ``selection``: a config or a method name
        (``"dymo"``, ``"discard"``, ...; the bundle's other settings kept); None = the bundle's.

        Inputs follow ``docs/inputs.md``: tensors or numpy arrays of any float dtype (images in
        [0, 1] or uint8; text as token ids or a list of strings). A batch holds raw values unless
        ``batch.preprocessed`` (batches of a built dymo dataset): raw vectors are standardised
        with the specs' statistics, as in training. NaN entries in an observed vector modality
        are empty values: the recoverer fills them if it can (the modality then counts as
        recovered, as ``dymo evaluate --value-missing``), else it is a :class:`DataError`.
        """
        if isinstance(batch, MultimodalBatch) and tuple(batch.modalities) != self.modalities:
            raise DataError(f"batch modalities {list(batch.modalities)} do not match the bundle's {list(self.modalities)}")
        config = self._selection_config(selection)
        holes_ok = bool(getattr(self.recoverer, "allows_missing_values", False))
        inputs, partial = prepare_batch(batch, self.specs, holes_ok=holes_ok)
        hidden = inputs.with_missing_filled()
        observed = hidden.observed
        complete = observed & ~partial
        start = complete | (partial & ~complete.any(dim=1, keepdim=True))
        device = next(self.backbone.parameters()).device
        needs_recovery = bool((~observed).any()) or bool(partial.any())
        recovered = self.recoverer.recover(hidden) if needs_recovery else hidden
        tokens = self.backbone.encode(recovered.to(device).data, torch.ones_like(observed, device=device))
        result = select_with_backbone(self.backbone, tokens, start, ~start, self.calibration, config)
        return Prediction(
            class_names=self.class_names,
            modalities=self.modalities,
            class_index=result.predictions,
            probabilities=result.probabilities,
            observed=observed.cpu(),
            recovered=(~observed | partial).cpu(),
            used=result.used,
            selection=result,
        )

    # -- one-call training and scikit-learn style helpers -----------------------------------------
    @classmethod
    def fit(
        cls,
        dataset: Any,
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
    ) -> DyMoClassifier:
        """Train backbone + recoverer + calibration on ``dataset`` and return the classifier.

        ``dataset``: a :class:`~dymo.data.dataset.SplitDataset` with ``train`` and ``val`` splits,
        or a dataset name / folder (``open_dataset``). ``recovery``: a recoverer name
        (``retrieval``, ``mopoe``, ``knn``, ...; options in ``recovery_options``). ``backbone`` /
        ``train`` / ``selection``: configs or dicts (defaults: ``BackboneConfig()``,
        ``TrainConfig()`` = 4 epochs, batch 256, Adam 1e-3; ``SelectionConfig()`` = DyMo).
        ``epochs`` overrides ``train.epochs``. ``run_dir`` keeps the backbone run (logs,
        checkpoints); by default it is a temporary folder. The training split may miss
        modalities (docs/data.md). Then ``predict`` / ``predict_proba`` / ``explain`` /
        ``save_pretrained``.
        """
        from dymo.inference.fit import fit_classifier

        return fit_classifier(
            cls, dataset, recovery, recovery_options=recovery_options, backbone=backbone, train=train, epochs=epochs,
            selection=selection, run_dir=run_dir, progress=progress, accelerator=accelerator, devices=devices,
        )

    def predict_proba(self, batch: MultimodalBatch) -> torch.Tensor:
        """Class probabilities ``[B, C]`` of DyMo's final choice per sample."""
        return self.predict(batch).probabilities

    def explain(self, batch: MultimodalBatch, index: int | None = None) -> Any:
        """The selection steps of sample ``index`` (every sample's when None): candidates,
        rewards, accepted / rejected. Same as ``predict(batch).explain(i)``."""
        pred = self.predict(batch)
        if index is not None:
            return pred.explain(index)
        return [pred.explain(i) for i in range(len(pred.class_index))]
