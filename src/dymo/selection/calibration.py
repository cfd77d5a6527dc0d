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

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dymo.errors import BundleError, ConfigError, DataError
from dymo.selection.calibration_table import CALIBRATION_FORMAT, Calibration, subset_name  # noqa: F401  (the object moved; old path kept)
from dymo.selection.reward import METRICS
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

# A class seen once in a subset has sigma 0; d / 0 would make its ICS NaN or 0.
MIN_SIGMA = 1e-6
# Subsets named in the warning about thin (subset, class) pairs; the rest are counted.
MAX_LISTED = 8


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
