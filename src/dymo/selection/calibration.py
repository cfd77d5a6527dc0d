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
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dymo.errors import BundleError, ConfigError, DataError
from dymo.selection.acceptance import ThresholdTuning
from dymo.selection.reward import METRICS
from dymo.utils.io import load_tensors, save_tensors
from dymo.utils.subsets import all_subsets, codes_to_masks

log = logging.getLogger(__name__)


def shared_projection(backbone: Any, tokens: torch.Tensor) -> Any:
    """The per-sample work that every subset of a sample shares (``FlexibleBackbone.prepare``,
    else ``project``), or None for a backbone that has neither."""
    if hasattr(backbone, "prepare"):
        return backbone.prepare(tokens)
    return backbone.project(tokens) if hasattr(backbone, "project") else None


def fuse_rows(backbone: Any, tokens: torch.Tensor, used: torch.Tensor, rows: torch.Tensor, projected: Any) -> Any:
    """``backbone.fuse`` of sample ``rows[n]`` with subset ``used[n]``; with ``projected``
    (:func:`shared_projection` of ``tokens``) the first block's per-token work is reused."""
    if projected is not None:
        return backbone.fuse(tokens, used, rows=rows, projected=projected)
    return backbone.fuse(tokens[rows], used)

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


class _SufficientStats:
    """Per-(slot, class) sums from which prototypes and sigma follow exactly.

    A slot is a subset: its code for the full table, or its position in a list of requested
    subsets for :class:`LazyCalibration`.
    """

    def __init__(self, metric: str, n_slots: int, num_classes: int) -> None:
        self.metric, self.n_slots, self.c = metric, n_slots, num_classes
        self.count = torch.zeros(n_slots * num_classes, dtype=torch.float64)
        self.sum_z: torch.Tensor | None = None  # [slots * C, D]
        self.sum_zz: torch.Tensor | None = None  # cosine: [slots * C, D, D]
        self.sum_sq: torch.Tensor | None = None  # euclidean: [slots * C]

    def counts(self) -> torch.Tensor:
        return self.count.view(self.n_slots, self.c)

    def add(self, slots: torch.Tensor, labels: torch.Tensor, z: torch.Tensor) -> None:
        z = z.double()
        if self.sum_z is None:
            d = z.shape[1]
            self.sum_z = torch.zeros(self.n_slots * self.c, d, dtype=torch.float64)
            if self.metric == "cosine":
                self.sum_zz = torch.zeros(self.n_slots * self.c, d, d, dtype=torch.float64)
            else:
                self.sum_sq = torch.zeros(self.n_slots * self.c, dtype=torch.float64)
        key = slots * self.c + labels
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
        """``(count [slots, C], prototypes [slots, C, D], mean d^2 [slots, C])`` (float64)."""
        count = self.counts()
        assert self.sum_z is not None, "check the counts before finishing"
        n = self.count.clamp_min(1).unsqueeze(-1)
        proto = self.sum_z / n
        if self.metric == "cosine":
            # mean (1 - z.P)^2 = 1 - 2 P.mean(z) + P^T mean(z z^T) P
            quad = torch.einsum("ki,kij,kj->k", proto, self.sum_zz / n.unsqueeze(-1), proto)
            mean_d2 = 1 - 2 * (proto * proto).sum(-1) + quad
        else:
            # mean ||z - P||^2 = mean ||z||^2 - 2 P.mean(z) + ||P||^2 = mean ||z||^2 - ||P||^2
            mean_d2 = self.sum_sq / n.squeeze(-1) - (proto * proto).sum(-1)
        return count, proto.view(self.n_slots, self.c, -1), mean_d2.view(self.n_slots, self.c)


def _sigma_from(mean_d2: torch.Tensor, modalities: tuple[str, ...], codes: torch.Tensor) -> torch.Tensor:
    """sqrt(mean d^2), clamped to ``MIN_SIGMA`` with a warning naming one clamped subset."""
    sigma = mean_d2.clamp_min(0).sqrt()
    small = sigma < MIN_SIGMA
    if bool(small.any()):
        slot, k = (int(v) for v in torch.nonzero(small)[0])
        log.warning(
            "calibration: %d (subset, class) pairs have a zero distance spread (e.g. subset %s, class %d); "
            "clamped to %g", int(small.sum()), subset_name(int(codes[slot]), modalities), k, MIN_SIGMA,
        )
        sigma = sigma.clamp_min(MIN_SIGMA)
    return sigma


def _check_counts(count: torch.Tensor, codes: torch.Tensor, dataset: Any, modalities: tuple[str, ...]) -> None:
    missing = torch.nonzero(count == 0)
    if len(missing):
        slot, k = (int(v) for v in missing[0])
        code = int(codes[slot])
        cls_name = dataset.class_names[k] if k < len(dataset.class_names) else str(k)
        raise DataError(
            f"dataset {getattr(dataset, 'name', '')}: no training sample of class {k} ({cls_name}) "
            f"observes subset {code} {subset_name(code, modalities)}; cannot calibrate it"
        )


def _device_of(backbone: Any) -> torch.device:
    try:
        return next(backbone.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _dtype_of(backbone: Any) -> torch.dtype:
    params = getattr(backbone, "parameters", None)
    first = next(iter(params()), None) if params is not None else None
    return torch.float32 if first is None else first.dtype


def low_precision_copy(backbone: Any, dtype: torch.dtype | None) -> Any:
    """``backbone`` itself (``dtype`` None or float32), else a copy in ``dtype`` for computing the
    calibration features (``compute_calibration(dtype=torch.bfloat16)``, ``dymo calibrate
    --bf16``): statistics are still accumulated in float64 and stored in float32. Fast only where
    the CPU or GPU has bfloat16 matrix units (a warning says so when the CPU reports none)."""
    if dtype is None or dtype == torch.float32:
        return backbone
    if dtype != torch.bfloat16:
        raise ConfigError(f"calibration: dtype must be float32 or bfloat16, got {dtype}")
    device = _device_of(backbone)
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("calibration in bfloat16: this CPU reports no bfloat16 support; it will be slower than float32")
    import copy

    return copy.deepcopy(backbone).to(dtype).eval()


def _check_samples_per_class(samples_per_class: int | None) -> None:
    if samples_per_class is not None and samples_per_class < 1:
        raise ConfigError(f"calibration: samples_per_class must be >= 1 (or None for every sample), got {samples_per_class}")


def check_sample_size(samples_per_class: int | None, min_samples: int) -> None:
    """A sample smaller than ``min_samples`` would make every pair borrow its statistics."""
    _check_samples_per_class(samples_per_class)
    if samples_per_class is not None and samples_per_class < min_samples:
        raise ConfigError(
            f"calibration: samples_per_class {samples_per_class} is below min_samples {min_samples} "
            "(every (subset, class) pair would be thin)"
        )


def _rank_within_key(key: torch.Tensor) -> torch.Tensor:
    """For each entry, how many earlier entries share its key (0, 1, 2, ...)."""
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    pos = torch.arange(len(key), device=key.device)
    first = torch.ones_like(sorted_key, dtype=torch.bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), 0).values
    rank = torch.empty_like(pos)
    rank[order] = pos - start
    return rank


#: Default of ``samples_per_class`` for :func:`compute_calibration`: every sample. Chosen by
#: measurement (``benchmarks/bench_calibration.py``, ``benchmarks/README.md``): DyMo's decisions
#: are sensitive to the statistics' sampling error (rewards of order 1e-2 change sign), so a
#: sample of 512 per (subset, class) leaves 4-6% of validation decisions different.
DEFAULT_SAMPLES_PER_CLASS: int | None = None
#: Pool per class of :class:`LazyCalibration` (used where the full table is impractical).
LAZY_SAMPLES_PER_CLASS = 512


def sample_size_rule(samples_per_class: int) -> str:
    """The stated accuracy of statistics estimated from ``n`` samples per (subset, class).

    sigma^2 is a mean of d^2; for a half-normal d, d^2 = sigma^2 chi^2_1 (variance 2 sigma^4), so
    the relative standard error of sigma is about 1 / sqrt(2 n). A prototype coordinate has
    standard error (its spread) / sqrt(n).
    """
    n = samples_per_class
    return f"{n} samples per (subset, class): sigma within about {100 / math.sqrt(2 * n):.1f}% (1 s.e.)"


@dataclass
class CalibrationItem:
    """One unit of calibration work: encode ``samples`` (dataset indices) once, then fuse sample
    ``samples[pos[r]]`` with subset ``codes[r]`` for every row ``r`` (rows sorted by subset size)."""

    samples: np.ndarray
    codes: torch.Tensor
    pos: torch.Tensor


def calibration_plan(
    dataset: Any, samples_per_class: int | None = DEFAULT_SAMPLES_PER_CLASS, seed: int = 0, batch_size: int = 512
) -> list[CalibrationItem]:
    """Which (sample, subset) pairs the calibration fuses, batch by batch (labels and observed
    masks only; no model). With ``samples_per_class``, each (subset, class) pair gets the first
    samples of a seeded permutation that observe the subset, until it has that many; batches
    with nothing left to fill are skipped and the plan stops when every pair is full."""
    _check_samples_per_class(samples_per_class)
    m = len(dataset.modalities)
    c = int(dataset.num_classes)
    subsets = all_subsets(m)  # row r = code r + 1
    sizes = subsets.sum(1)
    codes_all = torch.arange(1, 2**m)
    by_size = torch.argsort(sizes, stable=True)  # rows grouped by subset size
    limit = samples_per_class
    n = len(dataset)
    order = np.arange(n) if limit is None else np.random.default_rng(seed).permutation(n)
    labels_all = torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64))
    observed_all = torch.from_numpy(np.asarray(dataset.observed, dtype=bool))
    count = torch.zeros(2**m * c, dtype=torch.long)
    plan = []
    for start in range(0, n, batch_size):
        idx = torch.from_numpy(order[start : start + batch_size])
        labels, observed = labels_all[idx], observed_all[idx]
        # fits[s, b]: sample b observes every modality of subset s (rows in size order)
        fits = ~(subsets[by_size].unsqueeze(1) & ~observed.unsqueeze(0)).any(-1)
        s_idx, b_idx = torch.nonzero(fits, as_tuple=True)
        codes = codes_all[by_size][s_idx]
        if limit is not None:
            if bool((count.view(2**m, c)[1:] >= limit).all()):
                break
            key = codes * c + labels[b_idx]
            keep = _rank_within_key(key) < limit - count[key]
            s_idx, b_idx, codes = s_idx[keep], b_idx[keep], codes[keep]
        if len(codes) == 0:
            continue
        count.index_add_(0, codes * c + labels[b_idx], torch.ones_like(codes))
        used_samples, pos = torch.unique(b_idx, return_inverse=True)  # encode only needed samples
        plan.append(CalibrationItem(idx[used_samples].numpy(), codes, pos))
    return plan


@torch.no_grad()
def calibration_item_features(
    backbone: Any, dataset: Any, item: CalibrationItem, max_rows: int = 8192
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes, labels, z)`` of one plan item (``z`` on the CPU), in the item's row order."""
    device = _device_of(backbone)
    dtype = _dtype_of(backbone)
    batch = dataset.batch(item.samples)
    # float inputs in the backbone's dtype (a bfloat16 copy from `low_precision_copy`)
    data = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.data.items()}
    observed = batch.observed.to(device)
    tokens = backbone.encode(data, observed)
    projected = shared_projection(backbone, tokens)
    masks = codes_to_masks(item.codes, len(dataset.modalities)).to(device)
    pos = item.pos.to(device)
    zs = []
    for lo in range(0, len(item.codes), max_rows):
        zs.append(fuse_rows(backbone, tokens, masks[lo : lo + max_rows], pos[lo : lo + max_rows], projected).z.cpu())
    return item.codes, batch.labels[item.pos], torch.cat(zs)


def finish_calibration(
    stats_parts: Any, dataset: Any, metric: str, temperature: float = 0.1, min_samples: int = 5
) -> Calibration:
    """Accumulate ``(codes, labels, z)`` parts (in plan order) into a :class:`Calibration`;
    thin (subset, class) pairs borrow their statistics (:func:`_fill_thin_pairs`)."""
    modalities = tuple(dataset.modalities)
    m = len(modalities)
    c = int(dataset.num_classes)
    n_codes = 2**m
    codes_all = torch.arange(1, n_codes)
    stats = _SufficientStats(metric, n_codes, c)
    for codes, labels, z in stats_parts:
        stats.add(codes, labels, z)
    if stats.sum_z is None:
        _check_counts(stats.counts()[1:], codes_all, dataset, modalities)  # names the first empty pair
    count, proto, mean_d2 = stats.finish()
    _fill_thin_pairs(count, proto, mean_d2, min_samples, modalities, dataset)
    sigma = _sigma_from(mean_d2[1:], modalities, codes_all)
    prototypes = proto.float()
    prototypes[0] = 0.0  # row 0 holds no subset
    sigmas = torch.ones(n_codes, c, dtype=torch.float32)
    sigmas[1:] = sigma.float()
    overall = proto[1:].mean(0).float()
    return Calibration(metric, temperature, prototypes, sigmas, overall, m, modalities, count.float())


@torch.no_grad()
def compute_calibration(
    backbone: Any,
    dataset: Any,
    batch_size: int = 512,
    progress: bool = True,
    max_rows: int = 8192,
    temperature: float = 0.1,
    samples_per_class: int | None = DEFAULT_SAMPLES_PER_CLASS,
    seed: int = 0,
    min_samples: int = 5,
    dtype: torch.dtype | None = None,
) -> Calibration:
    """Calibration statistics of ``backbone`` on ``dataset`` (a :class:`MultimodalDataset`).

    ``dtype=torch.bfloat16`` computes the fused features with a bfloat16 copy of the backbone
    (every sample and subset, lower precision; opt-in): on the 60,000 PolyMNIST tuples it was
    1.9x faster on a CPU with bf16 matrix units and kept 99.6-99.8% of DyMo's validation
    decisions (``benchmarks/README.md``).

    ``samples_per_class``: every (subset, class) pair is estimated from (at most) this many
    training samples, the first ones of a seeded random permutation of ``dataset`` that observe
    the subset (``None``, the default: every sample, the full calibration). The pass stops as soon as every
    pair has its samples, so its cost is about ``samples_per_class x classes`` samples instead
    of ``len(dataset)``; :func:`sample_size_rule` states the resulting accuracy.

    The work is planned first (:func:`calibration_plan`); each planned batch is encoded once
    (only the samples still needed) and the first block's per-token projections are shared by
    all its subsets; subsets of equal size are fused together (``max_rows`` bounds one fuse
    call). Only subsets a sample fully observes are used for it; on an incomplete training set,
    (subset, class) pairs with fewer than ``min_samples`` samples borrow their statistics (see
    the module doc). sigma comes from exact sufficient
    statistics accumulated in float64 (sums of z, of z z^T for cosine, of ||z||^2 for
    Euclidean): one pass is enough. ``temperature`` is the prototype-softmax temperature of the
    reward's quality (0.1, as in training). ``dymo calibrate --devices N`` runs the same plan
    over several processes (:mod:`dymo.utils.scale`), with the same result.
    """
    metric = backbone.config.metric
    if metric not in METRICS:
        raise BundleError(f"backbone metric {metric!r} is not one of {METRICS}")
    check_sample_size(samples_per_class, min_samples)
    plan = calibration_plan(dataset, samples_per_class, seed, batch_size)
    items: Any = plan
    if progress:
        from rich.progress import track

        items = track(plan, description="calibration", total=len(plan), transient=True)
    was_training = backbone.training
    backbone.eval()
    features_of = low_precision_copy(backbone, dtype)
    try:
        parts = (calibration_item_features(features_of, dataset, item, max_rows) for item in items)
        return finish_calibration(parts, dataset, metric, temperature, min_samples)
    finally:
        backbone.train(was_training)


def _draw_codes(num_modalities: int, k: int, seed: int) -> torch.Tensor:
    """``k`` distinct non-empty subset codes drawn uniformly (all of them when ``k >= 2**M - 1``)."""
    total = 2**num_modalities - 1
    if k >= total:
        return torch.arange(1, total + 1)
    picked = np.random.default_rng(seed).choice(total, size=k, replace=False) + 1
    return torch.from_numpy(np.sort(picked).astype(np.int64))


class LazyCalibration:
    """Calibration statistics computed on demand, for the subsets a selection reaches, and cached.

    The full table has ``2**M - 1`` subsets (4,095 for 12 modalities) while a selection only
    visits a sample's observed subset plus one candidate at a time. At construction a
    calibration pool is drawn (per class, the first ``samples_per_class`` samples of a seeded
    permutation of ``dataset``) and encoded once; its tokens are kept. Each :meth:`tables` call
    (what the selection's evaluator uses) fuses the pool with the subsets not seen before and
    caches their prototypes and sigma; repeated subsets cost nothing.

    ``overall[k]`` is the mean of ``prototypes[S, k]`` over *all* subsets; here it is
    estimated as the mean over ``overall_subsets`` subsets drawn uniformly without replacement
    (all of them when there are no more), computed at construction. A subset a pool sample does
    not fully observe gets no contribution from it (incomplete training sets), and a (subset,
    class) pair with no sample raises :class:`DataError` when the subset is first needed.
    Use it wherever a :class:`Calibration` is accepted by the selection (``select``,
    ``select_with_backbone``); :meth:`to_calibration` computes everything for a saveable file.
    """

    def __init__(
        self,
        backbone: Any,
        dataset: Any,
        samples_per_class: int = LAZY_SAMPLES_PER_CLASS,
        seed: int = 0,
        temperature: float = 0.1,
        overall_subsets: int = 64,
        batch_size: int = 512,
        max_rows: int = 8192,
    ) -> None:
        metric = backbone.config.metric
        if metric not in METRICS:
            raise BundleError(f"backbone metric {metric!r} is not one of {METRICS}")
        _check_samples_per_class(samples_per_class)
        if overall_subsets < 1:
            raise ConfigError(f"LazyCalibration: overall_subsets must be >= 1, got {overall_subsets}")
        self.backbone, self.dataset = backbone, dataset
        self.metric, self.temperature = metric, float(temperature)
        self.modalities = tuple(dataset.modalities)
        self.num_modalities = len(self.modalities)
        self._c = int(dataset.num_classes)
        self.max_rows = max_rows
        self.device = _device_of(backbone)
        labels = np.asarray(dataset.labels, dtype=np.int64)
        order = np.random.default_rng(seed).permutation(len(labels))
        pool = np.concatenate([order[labels[order] == k][:samples_per_class] for k in range(self._c)])
        pool.sort()
        self.pool_size = len(pool)
        self._labels = torch.from_numpy(labels[pool])
        self._observed = torch.from_numpy(np.asarray(dataset.observed, dtype=bool)[pool]).to(self.device)
        was_training = backbone.training
        backbone.eval()
        try:
            with torch.no_grad():
                parts = []
                for lo in range(0, len(pool), batch_size):
                    batch = dataset.batch(pool[lo : lo + batch_size])
                    data = {k: v.to(self.device) for k, v in batch.data.items()}
                    parts.append(backbone.encode(data, self._observed[lo : lo + batch_size]))
                self._tokens = torch.cat(parts)
                self._projected = shared_projection(backbone, self._tokens)
        finally:
            backbone.train(was_training)
        self._row: dict[int, int] = {}
        self._prototypes = torch.zeros(0, self._c, 0)
        self._sigma = torch.ones(0, self._c)
        self.fused_rows = 0  # pool rows fused so far (the cost)
        codes = _draw_codes(self.num_modalities, overall_subsets, seed)
        rows, protos, _ = self.tables(codes)
        self.overall = protos[rows].double().mean(0).float()
        self.overall_codes = codes

    @property
    def num_classes(self) -> int:
        return self._c

    @property
    def dim(self) -> int:
        return int(self.overall.shape[1])

    @property
    def computed_subsets(self) -> int:
        return len(self._row)

    def tables(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like :meth:`Calibration.tables`, computing the subsets not seen before."""
        flat = codes.reshape(-1).cpu()
        uniq = torch.unique(flat).tolist()
        new = [code for code in uniq if code not in self._row]
        for lo in range(0, len(new), 64):  # bounds the float64 D x D sums of the cosine metric
            self._compute(new[lo : lo + 64])
        lut = {code: self._row[code] for code in uniq}
        rows = torch.tensor([lut[code] for code in flat.tolist()], dtype=torch.long).view(codes.shape)
        return rows.to(codes.device), self._prototypes, self._sigma

    @torch.no_grad()
    def _compute(self, codes: list[int]) -> None:
        if any(code < 1 or code >= 2**self.num_modalities for code in codes):
            raise DataError(f"calibration: subset codes {codes} outside [1, {2**self.num_modalities})")
        code_t = torch.tensor(codes, dtype=torch.long)
        masks = codes_to_masks(code_t, self.num_modalities).to(self.device)  # [S, M]
        valid = ~(masks.unsqueeze(1) & ~self._observed.unsqueeze(0)).any(-1)  # [S, P]
        s_idx, b_idx = torch.nonzero(valid, as_tuple=True)
        stats = _SufficientStats(self.metric, len(codes), self._c)
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            # rows with the same number of used modalities together (one fuse group each)
            size = masks.sum(1)[s_idx]
            order = torch.argsort(size, stable=True)
            s_idx, b_idx = s_idx[order], b_idx[order]
            for lo in range(0, len(s_idx), self.max_rows):
                s, b = s_idx[lo : lo + self.max_rows], b_idx[lo : lo + self.max_rows]
                z = fuse_rows(self.backbone, self._tokens, masks[s], b, self._projected).z
                stats.add(s.cpu(), self._labels[b.cpu()], z.cpu())
        finally:
            self.backbone.train(was_training)
        self.fused_rows += len(s_idx)
        _check_counts(stats.counts(), code_t, self.dataset, self.modalities)
        _, proto, mean_d2 = stats.finish()
        sigma = _sigma_from(mean_d2, self.modalities, code_t)
        start = self._prototypes.shape[0]
        if start == 0:
            self._prototypes = proto.float()
        else:
            self._prototypes = torch.cat([self._prototypes, proto.float()])
        self._sigma = torch.cat([self._sigma, sigma.float()])
        for i, code in enumerate(codes):
            self._row[code] = start + i

    def to_calibration(self) -> Calibration:
        """Every subset computed, as a (saveable) :class:`Calibration`; ``overall`` is then the
        exact mean over all subsets."""
        n_codes = 2**self.num_modalities
        rows, protos, sigma = self.tables(torch.arange(1, n_codes))
        prototypes = torch.zeros(n_codes, self._c, protos.shape[-1])
        prototypes[1:] = protos[rows]
        sigmas = torch.ones(n_codes, self._c)
        sigmas[1:] = sigma[rows]
        overall = prototypes[1:].double().mean(0).float()
        return Calibration(self.metric, self.temperature, prototypes, sigmas, overall, self.num_modalities, self.modalities)


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
