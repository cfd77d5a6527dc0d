"""The calibration statistics as an object (:class:`Calibration`: the per-subset tables, the
reward's inputs, save / load); :mod:`dymo.selection.calibration` computes them."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dymo.errors import BundleError
from dymo.selection.acceptance import ThresholdTuning
from dymo.selection.reward import METRICS
from dymo.utils.io import load_tensors, save_tensors
from dymo.utils.subsets import codes_to_masks

log = logging.getLogger("dymo.selection.calibration")


CALIBRATION_FORMAT = "1"


def subset_name(code: int, modalities: tuple[str, ...] | list[str]) -> str:
    """``"{m0, m2}"`` for code 5."""
    mask = codes_to_masks(torch.tensor(code), len(modalities)).tolist()
    return "{" + ", ".join(m for m, u in zip(modalities, mask, strict=True) if u) + "}"


@dataclass(eq=False)
class Calibration:
    """The statistics DyMo's reward needs (see the module docstring)."""

    metric: str
    temperature: float
    prototypes: torch.Tensor  # [2**M, C, D], row 0 unused
    sigma: torch.Tensor  # [2**M, C]
    overall: torch.Tensor  # [C, D]
    num_modalities: int
    modalities: tuple[str, ...] = ()
    #: training samples behind each (subset code, class) pair, ``[2**M, C]`` (None: not recorded)
    counts: torch.Tensor | None = None
    #: sha256 of the backbone weights file the statistics were computed with (None: unknown)
    backbone_sha256: str | None = None
    # The acceptance rule tuned on validation data (dymo.selection.acceptance), if any.
    threshold: ThresholdTuning | None = None

    def __post_init__(self) -> None:
        if not self.modalities:
            self.modalities = tuple(f"m{i}" for i in range(self.num_modalities))
        self.modalities = tuple(self.modalities)
        self.validate()

    @property
    def num_classes(self) -> int:
        return int(self.overall.shape[0])

    @property
    def dim(self) -> int:
        return int(self.overall.shape[1])

    def validate(self, source: str = "calibration") -> None:
        """Raise :class:`BundleError` for wrong shapes or a missing / non-finite subset row."""
        if self.metric not in METRICS:
            raise BundleError(f"{source}: unknown metric {self.metric!r}; expected one of {METRICS}")
        if not (self.temperature > 0 and np.isfinite(self.temperature)):
            raise BundleError(f"{source}: temperature must be positive, got {self.temperature}")
        m = self.num_modalities
        if m < 1 or len(self.modalities) != m:
            raise BundleError(f"{source}: {m} modalities but names {list(self.modalities)}")
        if self.overall.ndim != 2:
            raise BundleError(f"{source}: overall prototypes have shape {tuple(self.overall.shape)}, expected (C, D)")
        c, d = self.overall.shape
        n = 2**m
        if tuple(self.prototypes.shape) != (n, c, d):
            raise BundleError(
                f"{source}: prototypes have shape {tuple(self.prototypes.shape)}, expected {(n, c, d)} "
                f"(2**{m} subset codes x {c} classes x {d} dims)"
            )
        if tuple(self.sigma.shape) != (n, c):
            raise BundleError(f"{source}: sigma has shape {tuple(self.sigma.shape)}, expected {(n, c)}")
        for code in range(1, n):
            ok = bool(torch.isfinite(self.prototypes[code]).all()) and bool(torch.isfinite(self.sigma[code]).all())
            ok = ok and bool((self.sigma[code] > 0).all())
            if not ok:
                raise BundleError(
                    f"{source}: calibration statistics missing subset {code} "
                    f"({subset_name(code, self.modalities)})"
                )
        if not bool(torch.isfinite(self.overall).all()):
            raise BundleError(f"{source}: overall prototypes hold NaN or Inf")
        if self.threshold is not None and len(self.threshold.thresholds) != m:
            raise BundleError(
                f"{source}: tuned thresholds have {len(self.threshold.thresholds)} entries, expected {m} "
                f"(one per number of observed modalities 0..{m - 1})"
            )
        if self.counts is not None and tuple(self.counts.shape) != (n, c):
            raise BundleError(f"{source}: counts have shape {tuple(self.counts.shape)}, expected {(n, c)}")

    def thin_subsets(self, min_samples: int = 5) -> dict[str, list[str]]:
        """``{subset name: [class indices as str]}`` of the pairs estimated from fewer than
        ``min_samples`` training samples (empty when counts were not recorded)."""
        if self.counts is None:
            return {}
        out: dict[str, list[str]] = {}
        for code in range(1, 2**self.num_modalities):
            few = torch.nonzero(self.counts[code] < min_samples).flatten().tolist()
            if few:
                out[subset_name(code, self.modalities)] = [str(k) for k in few]
        return out

    def tables(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rows, prototypes, sigma)``: the statistics of subset ``codes[n]`` are
        ``prototypes[rows[n]]`` and ``sigma[rows[n]]`` (here ``rows`` is ``codes``; a
        :class:`LazyCalibration` computes missing subsets first and maps them to its rows)."""
        return codes, self.prototypes, self.sigma

    def to(self, device: torch.device | str) -> Calibration:
        return Calibration(
            self.metric, self.temperature, self.prototypes.to(device), self.sigma.to(device),
            self.overall.to(device), self.num_modalities, self.modalities,
            None if self.counts is None else self.counts.to(device), self.backbone_sha256, self.threshold,
        )

    def save(self, path: str | os.PathLike, backbone_sha256: str | None = None) -> None:
        """Write a safetensors file (atomic) with the settings in its metadata, and the sha256 of
        the backbone weights it was computed with (its provenance, checked by :meth:`check_backbone`)."""
        if backbone_sha256 is not None:
            self.backbone_sha256 = backbone_sha256
        metadata = {
            "kind": "dymo-calibration",
            "format": CALIBRATION_FORMAT,
            "metric": self.metric,
            "temperature": repr(float(self.temperature)),
            "num_modalities": str(self.num_modalities),
            "modalities": json.dumps(list(self.modalities)),
        }
        if self.backbone_sha256:
            metadata["backbone_sha256"] = self.backbone_sha256
        if self.threshold is not None:
            metadata["selection_threshold"] = self.threshold.to_json()
        tensors = {"prototypes": self.prototypes.float(), "sigma": self.sigma.float(), "overall": self.overall.float()}
        if self.counts is not None:
            tensors["counts"] = self.counts.float()
        save_tensors(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        from safetensors import safe_open

        path = str(path)
        if not os.path.exists(path):
            raise BundleError(f"{path}: calibration file missing")
        try:
            with safe_open(path, framework="pt") as f:
                metadata: dict[str, Any] = dict(f.metadata() or {})
            tensors = load_tensors(path)
        except Exception as e:  # safetensors raises several types for a truncated/corrupt file
            raise BundleError(f"{path}: corrupt or unreadable calibration file ({e})") from None
        if metadata.get("kind") != "dymo-calibration":
            raise BundleError(f"{path}: not a dymo calibration file (metadata kind {metadata.get('kind')!r})")
        if metadata.get("format") != CALIBRATION_FORMAT:
            raise BundleError(
                f"{path}: calibration format {metadata.get('format')!r}, this dymo reads {CALIBRATION_FORMAT}"
            )
        missing = [k for k in ("prototypes", "sigma", "overall") if k not in tensors]
        if missing:
            raise BundleError(f"{path}: calibration file lacks tensor(s) {missing}")
        try:
            num_modalities = int(metadata["num_modalities"])
            modalities = tuple(json.loads(metadata["modalities"]))
            temperature = float(metadata["temperature"])
            metric = metadata["metric"]
        except (KeyError, ValueError) as e:
            raise BundleError(f"{path}: calibration metadata incomplete or malformed ({e})") from None
        cal = object.__new__(cls)
        cal.metric, cal.temperature, cal.num_modalities, cal.modalities = metric, temperature, num_modalities, modalities
        cal.prototypes, cal.sigma, cal.overall = tensors["prototypes"], tensors["sigma"], tensors["overall"]
        cal.counts = tensors.get("counts")
        cal.backbone_sha256 = metadata.get("backbone_sha256")
        tuned = metadata.get("selection_threshold")
        cal.threshold = None if tuned is None else ThresholdTuning.from_json(tuned, source=path)
        cal.validate(source=path)
        return cal

    def check_backbone(self, weights: str | os.PathLike, source: str | os.PathLike, recalibrate: str = "") -> None:
        """Raise :class:`BundleError` when these statistics were computed with other backbone
        weights than the file ``weights`` (a backbone retrained or extended after calibration)."""
        from dymo.utils.artifact import sha256_file

        if self.backbone_sha256 is None:
            log.warning("%s records no backbone hash (written by an older dymo); it cannot be checked against %s", source, weights)
            return
        now = sha256_file(weights)
        if now != self.backbone_sha256:
            raise BundleError(
                f"{source}: stale calibration: computed for backbone weights sha256 {self.backbone_sha256[:12]}..., "
                f"but {weights} is now {now[:12]}... (retrained or extended since); "
                + (recalibrate or "recompute it with `dymo calibrate`")
            )
