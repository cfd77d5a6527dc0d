"""The ``vector`` modality kind: ``shape = (F,)`` float features, NaN = a missing value."""

from __future__ import annotations

import math

import numpy as np
import torch

from dymo.data.batch import zero_nan_values
from dymo.data.kinds.base import ModalityKind, register_kind
from dymo.data.specs import ModalitySpec
from dymo.errors import DataError

#: Cells that mean "no value" in a vector CSV (besides an empty cell), compared case-insensitively.
EMPTY_CELLS = frozenset({"", "nan", "na", "n/a"})


@register_kind
class VectorKind(ModalityKind):
    """``shape = (F,)``; model input float32 (standardised when the spec stores mean/std)."""

    name = "vector"
    layout = "csv"
    tabular = True
    networks = "dymo.models.vector"

    def degrade(self, x, spec, config, generator, feature_std):
        noise = torch.randn(x.shape, generator=generator)
        return zero_nan_values(x.float()) + config.noise_std * feature_std.to(x.device) * noise.to(x.device)

    def synthetic(self, name, y, num_classes, signal, proto_rng, rng, options):
        dim = options["vector_dim"]
        pats = proto_rng.normal(size=(num_classes, dim))
        x = (signal * pats[y] + rng.normal(size=(len(y), dim)) * 0.5).astype(np.float32)
        return ModalitySpec(name, "vector", (dim,)), x

    def csv_width(self, spec):
        return spec.shape[0]

    def csv_header(self, spec):
        cols = spec.extra.get("columns")
        return [str(c) for c in cols] if isinstance(cols, list) and len(cols) == spec.shape[0] else None

    def parse_cells(self, cells, spec):
        f = spec.shape[0]
        if len(cells) != f:
            raise DataError(f"{len(cells)} values, modality {spec.name!r} has {f} features")
        out = np.empty(f, dtype=np.float64)
        for k, cell in enumerate(cells):
            v = cell.strip()
            if v.lower() in EMPTY_CELLS:
                out[k] = math.nan
                continue
            try:
                out[k] = float(v)
            except ValueError:
                raise DataError(f"column {k + 2}: {cell!r} is not a number") from None
            if math.isinf(out[k]):
                raise DataError(f"column {k + 2}: infinite value {cell!r}")
        return None if np.isnan(out).all() else out

    @staticmethod
    def statistics(spec: ModalitySpec) -> tuple[np.ndarray, np.ndarray] | None:
        """The spec's standardisation ``(mean, std)`` (float64 ``[F]``), or None."""
        mean, std = spec.extra.get("mean"), spec.extra.get("std")
        if mean is None and std is None:
            return None
        f = spec.shape[0]
        mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        if mean.shape != (f,) or std.shape != (f,) or not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise DataError(f"modality {spec.name!r}: the spec's mean/std must be {f} finite values each (std > 0)")
        return mean, std

    def preprocess(self, x: torch.Tensor, spec: ModalitySpec) -> torch.Tensor:
        """Raw values -> model values: ``(x - mean) / std`` in float64 (as the dataset builders), then float32."""
        stats = self.statistics(spec)
        if stats is None:
            return x.float()
        mean, std = (torch.from_numpy(s) for s in stats)
        return ((x.double() - mean) / std).float()

    def prepare(self, x, spec, observed, *, preprocessed=False, holes_ok=False):
        x = self._tensor(x, spec)
        if not x.is_floating_point():
            raise DataError(f"modality {spec.name!r} needs a floating dtype, got {x.dtype}")
        self._check_shape(x, spec, len(observed))
        holes = torch.zeros(len(observed), dtype=torch.bool)
        if observed.any():
            vals = x[observed].double()
            inf = torch.isinf(vals).any(dim=1)
            nan = torch.isnan(vals).any(dim=1)
            if inf.any() or (nan.any() and not holes_ok):
                bad = inf | nan
                i = self._first(bad, observed)
                msg = f"sample {i}: observed modality {spec.name!r} holds NaN or Inf"
                if not bool(torch.isinf(x[i].double()).any()):
                    msg += (
                        " (NaN = an empty value: only a recoverer that fills values, such as mean / knn / iterative, "
                        "accepts it, and this one does not)"
                    )
                raise DataError(msg)
            empty = torch.isnan(vals).all(dim=1)
            if empty.any():
                raise DataError(
                    f"sample {self._first(empty, observed)}: observed modality {spec.name!r} has no value at all; "
                    "mark it as not observed"
                )
            holes[observed] = nan
        x = x.float() if preprocessed else self.preprocess(x, spec)
        self._check_codes(x, spec, observed)
        return x, holes

    @staticmethod
    def _check_codes(x: torch.Tensor, spec: ModalitySpec, observed: torch.Tensor) -> None:
        """Categorical columns (``extra["field_lengths"]`` > 1) hold integer codes ``0..L-1``."""
        lengths = spec.extra.get("field_lengths")
        if not lengths or not observed.any():
            return
        lengths_t = torch.as_tensor(lengths, dtype=torch.float64)
        cat = lengths_t > 1
        if not cat.any():
            return
        codes = x[observed][:, cat].double()
        ok = torch.isnan(codes) | ((codes == codes.round()) & (codes >= 0) & (codes < lengths_t[cat]))
        bad = ~ok.all(dim=1)
        if bad.any():
            i = ModalityKind._first(bad, observed)
            col = int(torch.nonzero(cat).flatten()[torch.nonzero(~ok[torch.nonzero(bad).flatten()[0]]).flatten()[0]])
            raise DataError(
                f"sample {i}: modality {spec.name!r} column {col} holds {float(x[i, col]):g}, not a category code "
                f"in 0..{int(lengths[col]) - 1}"
            )

    def expects(self, spec):
        stats = spec.extra.get("mean") is not None
        out = {
            "kind": "vector",
            "csv": f"{spec.name}.csv: header id + {spec.shape[0]} feature columns, one row per sample",
            "array": f"float (B, {spec.shape[0]})",
            "features": spec.shape[0],
            "values": "raw, as in the source data; predict standardises them with the spec's mean/std"
            if stats
            else "used as given (the dataset stored no standardisation)",
        }
        if self.csv_header(spec):
            out["columns"] = self.csv_header(spec)
        return out


VECTOR: VectorKind = VectorKind.instance  # type: ignore[assignment]
