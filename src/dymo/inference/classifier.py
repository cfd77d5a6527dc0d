"""A model bundle and the classifier users predict with.

A bundle is one folder holding everything needed to predict::

    bundle.json              format, kind, dymo version, modality specs, class names, backbone + selection
                             configs, made_from (weights hashes) and files (sha256 of every other file)
    backbone.safetensors     backbone weights
    calibration.safetensors  DyMo's calibration statistics
    recovery/                the recoverer (its own config.json + weights; see dymo.recovery.base),
                             with a copy of any training rows it returns (train_data/): self-contained

The folder is built beside its target and renamed into place, so it is complete or absent.
``from_pretrained`` checks every file against its sha256 (``verify=False`` skips it). No pickles.

    clf = DyMoClassifier.from_pretrained("bundles/polymnist")
    pred = clf.predict(batch)            # batch.observed marks the available modalities
    pred.classes, pred.probabilities, pred.used, pred.explain(0)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import dymo
from dymo.data.batch import MultimodalBatch
from dymo.data.kinds import describe_inputs, prepare_batch
from dymo.data.specs import ModalitySpec, specs_from_list, specs_to_list
from dymo.errors import BundleError, ConfigError, DataError, DymoError
from dymo.inference.fit import fit_classifier
from dymo.models.backbone import BackboneConfig, FlexibleBackbone
from dymo.selection.calibration import Calibration
from dymo.selection.selector import (
    SampleExplanation,
    SelectionConfig,
    SelectionResult,
    select_with_backbone,
)
from dymo.utils.io import save_tensors, write_json

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
        """Assemble from a calibrated backbone run folder and a recovery run folder. The
        calibration must have been computed with the run's current weights."""
        from dymo.recovery.registry import load_recoverer
        from dymo.training.run import load_backbone, read_run_config

        run = Path(run_dir)
        backbone = load_backbone(run)
        cal_path = run / "calibration.safetensors"
        if not cal_path.exists():
            raise BundleError(f"{run}: no calibration statistics; run `dymo calibrate {run}` first")
        calibration = Calibration.load(cal_path)
        calibration.check_backbone(run / "backbone.safetensors", cal_path, f"run `dymo calibrate {run}` again")
        class_names = read_run_config(run)["class_names"]
        return cls(backbone, calibration, load_recoverer(recovery_dir), class_names, selection)

    def save_pretrained(self, path: str | os.PathLike, *, force: bool = True, inputs: Sequence[str | os.PathLike] = ()) -> Path:
        """Write the bundle folder: built in a hidden temporary folder beside it, then renamed
        into place. ``path`` must be new, empty, or (``force``) an existing bundle; a foreign
        folder, another kind of dymo artefact or one of ``inputs`` is refused (OutputError).

        The bundle is self-contained (the recoverer's training rows are copied in) and
        ``bundle.json`` lists the sha256 of every file, checked by :meth:`from_pretrained`."""
        from dymo.utils.artifact import (
            check_output,
            component_manifest,
            file_hashes,
            made_from,
            sha256_json,
            staged_dir,
        )

        path = Path(path)
        check_output(path, "bundle", force=force, inputs=inputs)
        with staged_dir(path) as tmp:
            save_tensors(tmp / "backbone.safetensors", self.backbone.state_dict(), metadata={"dymo_version": dymo.__version__})
            self.calibration.save(tmp / "calibration.safetensors")
            self.recoverer.save(tmp / "recovery", self_contained=True)
            files = file_hashes(tmp)
            write_json(
                tmp / "bundle.json",
                component_manifest(
                    "bundle", "bundle",
                    specs=specs_to_list(self.specs),
                    class_names=self.class_names,
                    backbone=self.backbone.config.to_dict(),
                    selection=self.selection.to_dict(),
                    made_from=made_from(
                        backbone_sha256=files["backbone.safetensors"],
                        calibration_backbone_sha256=self.calibration.backbone_sha256,
                        recoverer_sha256=sha256_json({k: v for k, v in files.items() if k.startswith("recovery/")}),
                        recoverer_data_fingerprint=getattr(self.recoverer, "made_from", {}).get("data_fingerprint"),
                    ),
                    inputs=describe_inputs(self.specs),  # informative; see docs/inputs.md
                    files=files,
                ),
            )
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str = "cpu", verify: bool = True) -> DyMoClassifier:
        """Load a bundle. ``verify``: check every file against the sha256 in ``bundle.json``
        (a damaged or edited file is a BundleError); skip it for speed only on trusted copies."""
        from dymo.recovery.registry import load_recoverer
        from dymo.utils.artifact import load_weights, read_manifest, verify_files

        path = Path(path)
        meta_path = path / "bundle.json"
        previous = path.with_name(f".{path.name}.old")
        if not meta_path.exists() and not path.exists() and (previous / "bundle.json").exists():
            # save_pretrained over an existing bundle was killed between its two renames: the
            # previous complete bundle is still there under its temporary name.
            path, meta_path = previous, previous / "bundle.json"
        if not meta_path.exists():
            raise BundleError(f"{path}: not a dymo bundle (no bundle.json; an interrupted save leaves none)")
        meta = read_manifest(
            path, "bundle", file="bundle.json", what="bundle",
            required={"specs": list, "class_names": list, "backbone": dict, "selection": dict},
        )
        if verify:
            if not isinstance(meta.get("files"), dict):
                raise BundleError(f"{meta_path}: no file manifest (bundle from an older dymo); rebuild it, or load with --no-verify")
            verify_files(path, meta["files"], skip=["bundle.json"])
        try:
            specs = specs_from_list(meta["specs"])
            backbone = FlexibleBackbone(specs, len(meta["class_names"]), BackboneConfig.from_saved(meta["backbone"]))
            selection = SelectionConfig.from_dict(meta["selection"])
        except (DymoError, KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{meta_path}: malformed bundle description ({e})") from None
        w = path / "backbone.safetensors"
        state = load_weights(w)
        try:
            backbone.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise BundleError(f"{w}: weights do not match the bundle's modality specs/config ({str(e).splitlines()[0]})") from None
        calibration = Calibration.load(path / "calibration.safetensors")
        recoverer = load_recoverer(path / "recovery")
        return cls(backbone.to(map_location), calibration, recoverer, meta["class_names"], selection)

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
    #: Train backbone + recoverer + calibration on a dataset (:func:`dymo.inference.fit.fit_classifier`).
    fit = classmethod(fit_classifier)

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
