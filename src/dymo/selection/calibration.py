"""Calibration statistics for DyMo's reward: per-subset class prototypes and distance spreads.

Computed once after training, on the training set, in eval mode (docs/method.md §4):

- ``prototypes[S, k]`` = mean of the fused feature ``z`` over class-``k`` samples fused with
  subset ``S`` (not re-normalised);
- ``sigma[S, k]`` = sqrt(mean d^2), d = 1 - z.P[S,k] (cosine) or ||z - P[S,k]|| (Euclidean);
- ``overall[k]`` = mean over the non-empty subsets of ``prototypes[S, k]``.

Tables are indexed by subset code (bit ``i`` = modality ``i`` used); row 0 is unused. Labels
are used here (this is training-time work); the selection itself never sees them.

**Incomplete training data.** A sample contributes to subset ``S`` only if it observes every
modality of ``S``. A (subset, class) pair seen by fewer than ``min_samples`` training samples is
*thin*: its statistics are borrowed from the largest subset ``T`` of ``S`` that is well estimated
for that class (``T`` is observed by at least as many samples as ``S``); with no such ``T``, its
own samples are used when it has any, else calibration fails naming the pair. Which pairs were thin is logged as a warning, and ``Calibration.counts`` keeps the
number of samples behind every pair (see :meth:`Calibration.thin_subsets`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dymo.errors import BundleError, DataError
from dymo.selection.acceptance import ThresholdTuning
from dymo.selection.reward import METRICS
from dymo.utils.io import load_tensors, save_tensors
from dymo.utils.subsets import all_subsets, codes_to_masks

log = logging.getLogger(__name__)

CALIBRATION_FORMAT = "1"
# A class seen once in a subset has sigma 0; d / 0 would make its ICS NaN or 0.
MIN_SIGMA = 1e-6
# Subsets named in the warning about thin (subset, class) pairs; the rest are counted.
MAX_LISTED = 8


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


class _SufficientStats:
    """Per-(subset code, class) sums from which prototypes and sigma follow exactly."""

    def __init__(self, metric: str, n_codes: int, num_classes: int) -> None:
        self.metric, self.n_codes, self.c = metric, n_codes, num_classes
        self.count = torch.zeros(n_codes * num_classes, dtype=torch.float64)
        self.sum_z: torch.Tensor | None = None  # [codes * C, D]
        self.sum_zz: torch.Tensor | None = None  # cosine: [codes * C, D, D]
        self.sum_sq: torch.Tensor | None = None  # euclidean: [codes * C]

    def add(self, codes: torch.Tensor, labels: torch.Tensor, z: torch.Tensor) -> None:
        z = z.double()
        if self.sum_z is None:
            d = z.shape[1]
            self.sum_z = torch.zeros(self.n_codes * self.c, d, dtype=torch.float64)
            if self.metric == "cosine":
                self.sum_zz = torch.zeros(self.n_codes * self.c, d, d, dtype=torch.float64)
            else:
                self.sum_sq = torch.zeros(self.n_codes * self.c, dtype=torch.float64)
        key = codes * self.c + labels
        self.count.index_add_(0, key, torch.ones_like(key, dtype=torch.float64))
        self.sum_z.index_add_(0, key, z)
        if self.sum_zz is not None:
            # Z_k^T Z_k per key, without materialising a [rows, D, D] tensor
            order = torch.argsort(key, stable=True)
            keys, counts = torch.unique_consecutive(key[order], return_counts=True)
            for k, zk in zip(keys.tolist(), torch.split(z[order], counts.tolist()), strict=True):
                self.sum_zz[k] += zk.t() @ zk
        else:
            self.sum_sq.index_add_(0, key, (z * z).sum(1))

    def finish(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(count [codes, C], prototypes [codes, C, D], mean d^2 [codes, C])`` (float64)."""
        count = self.count.view(self.n_codes, self.c)
        n = self.count.clamp_min(1).unsqueeze(-1)
        proto = self.sum_z / n
        if self.metric == "cosine":
            # mean (1 - z.P)^2 = 1 - 2 P.mean(z) + P^T mean(z z^T) P
            quad = torch.einsum("ki,kij,kj->k", proto, self.sum_zz / n.unsqueeze(-1), proto)
            mean_d2 = 1 - 2 * (proto * proto).sum(-1) + quad
        else:
            # mean ||z - P||^2 = mean ||z||^2 - 2 P.mean(z) + ||P||^2 = mean ||z||^2 - ||P||^2
            mean_d2 = self.sum_sq / n.squeeze(-1) - (proto * proto).sum(-1)
        return count, proto.view(self.n_codes, self.c, -1), mean_d2.view(self.n_codes, self.c)


@torch.no_grad()
def compute_calibration(
    backbone: Any,
    dataset: Any,
    batch_size: int = 512,
    progress: bool = True,
    max_rows: int = 8192,
    temperature: float = 0.1,
    min_samples: int = 5,
) -> Calibration:
    """Calibration statistics of ``backbone`` on ``dataset`` (a :class:`MultimodalDataset`).

    Each batch is encoded once; then every non-empty subset is fused, subsets of equal size
    together (no padding waste; ``max_rows`` bounds the rows of one fuse call). Only subsets a
    sample fully observes are used for it; on an incomplete training set, (subset, class) pairs
    with fewer than ``min_samples`` samples borrow their statistics (see the module doc). sigma comes from exact sufficient statistics accumulated in
    float64 (sums of z, of z z^T for cosine, of ||z||^2 for Euclidean): one pass is enough.
    ``temperature`` is the prototype-softmax temperature of the reward's quality (0.1, as in
    training). To calibrate on part of the training set, pass ``dataset.subset(indices)``.
    """
    metric = backbone.config.metric
    if metric not in METRICS:
        raise BundleError(f"backbone metric {metric!r} is not one of {METRICS}")
    modalities = tuple(dataset.modalities)
    m = len(modalities)
    c = int(dataset.num_classes)
    n_codes = 2**m
    try:
        device = next(backbone.parameters()).device
    except (StopIteration, AttributeError):
        device = torch.device("cpu")
    subsets = all_subsets(m).to(device)  # row r = code r + 1
    sizes = subsets.sum(1).cpu()
    codes_all = torch.arange(1, n_codes)
    groups = [codes_all[sizes == k] for k in range(1, m + 1)]
    stats = _SufficientStats(metric, n_codes, c)

    starts = range(0, len(dataset), batch_size)
    if progress:
        from rich.progress import track

        starts = track(starts, description="calibration", total=len(starts), transient=True)
    was_training = backbone.training
    backbone.eval()
    try:
        for start in starts:
            batch = dataset.batch(np.arange(start, min(start + batch_size, len(dataset))))
            data = {k: v.to(device) for k, v in batch.data.items()}
            observed = batch.observed.to(device)
            tokens = backbone.encode(data, observed)
            chunk = max(1, max_rows // tokens.shape[0])
            for group in groups:
                for lo in range(0, len(group), chunk):
                    sub_codes = group[lo : lo + chunk]
                    sub = subsets[sub_codes - 1]  # [S, M]
                    # valid[s, b]: sample b observes every modality of subset s
                    valid = ~(sub.unsqueeze(1) & ~observed.unsqueeze(0)).any(-1)
                    s_idx, b_idx = torch.nonzero(valid, as_tuple=True)
                    if s_idx.numel() == 0:
                        continue
                    z = backbone.fuse(tokens[b_idx], sub[s_idx]).z
                    stats.add(sub_codes[s_idx.cpu()], batch.labels[b_idx.cpu()], z.cpu())
    finally:
        backbone.train(was_training)

    count, proto, mean_d2 = stats.finish()
    _fill_thin_pairs(count, proto, mean_d2, min_samples, modalities, dataset)
    sigma = mean_d2[1:].clamp_min(0).sqrt()
    small = sigma < MIN_SIGMA
    if bool(small.any()):
        code, k = (int(v) for v in torch.nonzero(small)[0])
        log.warning(
            "calibration: %d (subset, class) pairs have a zero distance spread (e.g. subset %s, class %d); "
            "clamped to %g", int(small.sum()), subset_name(code + 1, modalities), k, MIN_SIGMA,
        )
        sigma = sigma.clamp_min(MIN_SIGMA)
    prototypes = proto.float()
    prototypes[0] = 0.0  # row 0 holds no subset
    sigmas = torch.ones(n_codes, c, dtype=torch.float32)
    sigmas[1:] = sigma.float()
    overall = proto[1:].mean(0).float()
    return Calibration(metric, temperature, prototypes, sigmas, overall, m, modalities, count.float())


def _fill_thin_pairs(
    count: torch.Tensor, proto: torch.Tensor, mean_d2: torch.Tensor, min_samples: int, modalities: tuple[str, ...], dataset: Any
) -> None:
    """Give every thin (subset, class) pair borrowed statistics, in place (see the module doc)."""
    n_codes, c = count.shape
    well = count >= min_samples
    sizes = [bin(code).count("1") for code in range(n_codes)]
    borrowed: dict[int, list[str]] = {}
    for k in range(c):
        for code in range(1, n_codes):
            if well[code, k]:
                continue
            # Proper subsets of `code`, well estimated for class k, largest first (then most samples).
            donors = [t for t in range(1, n_codes) if t != code and (t & ~code) == 0 and well[t, k]]
            if donors:
                t = max(donors, key=lambda t: (sizes[t], float(count[t, k])))
                proto[code, k], mean_d2[code, k] = proto[t, k], mean_d2[t, k]
                borrowed.setdefault(code, []).append(f"{k}<-{subset_name(t, modalities)}")
            elif count[code, k] == 0:
                cls_name = dataset.class_names[k] if k < len(dataset.class_names) else str(k)
                raise DataError(
                    f"dataset {getattr(dataset, 'name', '')}: no training sample of class {k} ({cls_name}) "
                    f"observes subset {code} {subset_name(code, modalities)}, and no part of it is observed by "
                    f"{min_samples} or more; cannot calibrate it"
                )
    if borrowed:
        items = sorted(borrowed.items())
        shown = "; ".join(f"{subset_name(code, modalities)}: {', '.join(v)}" for code, v in items[:MAX_LISTED])
        if len(items) > MAX_LISTED:
            shown += f"; ... {len(items) - MAX_LISTED} more subsets (Calibration.thin_subsets() lists them all)"
        log.warning(
            "calibration: %d (subset, class) pairs in %d subsets are observed by fewer than %d training samples and "
            "borrow their statistics (class<-source): %s",
            sum(len(v) for v in borrowed.values()), len(items), min_samples, shown,
        )
