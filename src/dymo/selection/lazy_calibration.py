"""Calibration statistics computed on demand, for the subsets a selection reaches
(:class:`LazyCalibration`; the full table is :func:`dymo.selection.calibration.compute_calibration`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dymo.errors import BundleError, ConfigError, DataError
from dymo.selection.calibration import (
    LAZY_SAMPLES_PER_CLASS,
    Calibration,
    _check_counts,
    _check_samples_per_class,
    _device_of,
    _sigma_from,
    _SufficientStats,
    fuse_rows,
    shared_projection,
)
from dymo.selection.reward import METRICS
from dymo.utils.subsets import codes_to_masks


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
