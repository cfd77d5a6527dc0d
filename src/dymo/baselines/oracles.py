"""EXPERIMENT-ONLY upper bounds. They read what no real method can (the true data of missing
modalities, or the labels) and exist only to bound what recovery or selection could gain.
Never report them as results of a method.
"""

from __future__ import annotations

import torch

from dymo.baselines.dymo_backbone import DyMoBackboneBaseline
from dymo.data.batch import MultimodalBatch
from dymo.errors import DataError
from dymo.utils.subsets import all_subsets


class OracleCompleteBaseline(DyMoBackboneBaseline):
    """``oracle-complete`` (EXPERIMENT-ONLY, ``reads_missing``): the DyMo backbone on the TRUE
    complete data. Missing slots must hold the true data (build the batch from the complete
    test set and set ``observed`` to the scenario mask); NaN/Inf there is a :class:`DataError`.

    Paper: Du et al., ICLR 2026 (DyMo) -- the full-modality reference of its experiments.
    """

    name = "oracle-complete"
    paper = "Du et al., ICLR 2026 (DyMo), complete-data upper bound"
    reads_missing = True

    def _predict(self, batch: MultimodalBatch, recovered: MultimodalBatch | None) -> torch.Tensor:
        for i, name in enumerate(batch.modalities):
            x, miss = batch.data[name], ~batch.observed[:, i]
            if not bool(miss.any()):
                continue
            rows = x[miss].reshape(int(miss.sum()), -1)
            bad = ~torch.isfinite(rows).all(dim=1) if x.is_floating_point() else (rows < 0).any(dim=1)
            if bool(bad.any()):
                s = int(torch.nonzero(miss).flatten()[torch.nonzero(bad).flatten()[0]])
                raise DataError(
                    f"oracle-complete: sample {s}, modality {name!r} is missing and its slot holds no true "
                    "data (NaN/Inf or negative token ids); this upper bound needs the complete data there"
                )
        return self._probs(batch.data, torch.ones_like(batch.observed))


class OracleSelectionBaseline(DyMoBackboneBaseline):
    """``oracle-selection`` (EXPERIMENT-ONLY, LABEL-AWARE: ``uses_labels``): the best any
    per-sample choice of recovered modalities could do with this backbone and recoverer.

    For each sample, every subset of its recovered modalities is added to its observed ones
    (2^#missing candidates; with nothing observed, the non-empty ones); among the candidates
    whose prediction equals the TRUE LABEL (read from ``batch.labels``; a batch without labels
    is a :class:`DataError`) it returns the probabilities of the one with the highest
    true-class probability; if none is correct, the observed-only candidate (the ``discard``
    prediction; with nothing observed, all recovered). Recovery-based, reads no missing slot.

    Paper: Du et al., ICLR 2026 (DyMo) -- the ceiling of inference-time modality selection.
    """

    name = "oracle-selection"
    paper = "Du et al., ICLR 2026 (DyMo), selection upper bound"
    uses_recovery = True
    uses_labels = True

    def _predict(self, batch: MultimodalBatch, recovered: MultimodalBatch | None) -> torch.Tensor:
        assert recovered is not None and batch.labels is not None
        net = self.backbone
        observed, labels = batch.observed, batch.labels
        b, m = observed.shape
        tokens = net.encode(recovered.data)  # every slot holds observed or recovered data
        # Fallback first: observed only (all recovered when nothing is observed).
        start = torch.where(observed.any(dim=1, keepdim=True), observed, torch.ones_like(observed))
        best = torch.softmax(net.fuse(tokens, start).logits, dim=-1)
        best_true = torch.full((b,), -1.0, device=observed.device)  # -1: no correct candidate yet
        for subset in all_subsets(m).to(observed.device):
            # Candidates containing every observed modality, i.e. observed + some recovered ones.
            ok = ~(observed & ~subset).any(dim=1)
            if not bool(ok.any()):
                continue
            idx = torch.nonzero(ok).flatten()
            probs = torch.softmax(net.fuse(tokens[idx], subset.expand(len(idx), m)).logits, dim=-1)
            p_true = probs[torch.arange(len(idx), device=idx.device), labels[idx]]
            better = (probs.argmax(dim=1) == labels[idx]) & (p_true > best_true[idx])
            take = idx[better]
            best[take] = probs[better]
            best_true[take] = p_true[better]
        return best
