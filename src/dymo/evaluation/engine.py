"""The evaluation engine shared by ``dymo evaluate`` and ``dymo benchmark``.

Per batch of the test set: apply the observed mask, poison the missing slots (NaN, text -1, so
that nothing reads them unnoticed), recover once per recoverer, encode once per (backbone,
recovery), and run every method on what they share. Methods are grouped by the recovery they
read, and a group's recoverer runs just before its methods, in the order first named.

A method is an :class:`EvalMethod`: ``recovery`` names the recoverer whose output it reads
(``None``: none) and ``__call__(ctx)`` classifies one batch from the :class:`BatchContext`.
Two are built in: :class:`SelectionMethod` (a DyMo selection method on a flexible backbone)
and :class:`BaselineMethod` (a :class:`~dymo.baselines.base.Baseline`). Labels only score.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset
from dymo.selection.calibration import Calibration
from dymo.selection.selector import SelectionConfig, SelectionResult, select_with_backbone

#: ``(hidden batch) -> (start_used, candidates)``: which modalities a method starts from and which
#: ones recovery may add. Default: the observed ones, and every missing one.
MaskFn = Callable[[MultimodalBatch], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Output:
    """One method's answer on one batch (CPU tensors)."""

    probs: torch.Tensor  # [B, C]
    predictions: torch.Tensor | None = None  # [B]; default probs.argmax(1)
    steps: torch.Tensor | None = None  # long [B], recovered modalities added (selection only)
    added: torch.Tensor | None = None  # bool [B, M]
    result: SelectionResult | None = None
    shared_seconds: float = 0.0  # time of the shared work it read (encoding), even if done earlier


class EvalMethod(Protocol):
    key: Hashable
    recovery: str | None

    def __call__(self, ctx: BatchContext) -> Output: ...


class BatchContext:
    """What the methods of one batch share: the true batch (for experiment-only oracles), the
    poisoned one, each recovery and each encoding, computed once and kept for the batch."""

    def __init__(self, full: MultimodalBatch, hidden: MultimodalBatch, start_used: torch.Tensor, candidates: torch.Tensor) -> None:
        self.full, self.hidden = full, hidden
        self.start_used, self.candidates = start_used, candidates
        self.recovered: dict[str, MultimodalBatch] = {}
        self.cache: dict[Hashable, Any] = {}  # per-batch memo for methods (e.g. a shuffled recovery)
        self.shared_seconds = 0.0  # time spent here on shared work (encoding)
        self._tokens: dict[tuple[int, str | None], tuple[torch.Tensor, float]] = {}

    def tokens(self, backbone: Any, recovery: str | None) -> tuple[torch.Tensor, float]:
        """``backbone.encode`` of the poisoned batch (``recovery=None``: observed modalities
        only) or of the recovered one (every modality), once per batch; and its seconds."""
        key = (id(backbone), recovery)
        if key not in self._tokens:
            device = next(backbone.parameters()).device
            t0 = time.perf_counter()
            with torch.no_grad():
                if recovery is None:
                    tokens = backbone.encode(self.hidden.to(device).data, self.hidden.observed.to(device))
                else:
                    rec = self.recovered[recovery].to(device)
                    tokens = backbone.encode(rec.data, torch.ones_like(self.hidden.observed).to(device))
            self._tokens[key] = (tokens, time.perf_counter() - t0)
            self.shared_seconds += self._tokens[key][1]
        return self._tokens[key]


@dataclass
class SelectionMethod:
    """A DyMo selection method (``config.method``) on a flexible backbone. It starts from
    ``ctx.start_used`` and may add ``ctx.candidates`` (none for ``discard`` or without
    recovery). ``calibration`` may be ``None`` for ``discard`` / ``fuse-all``."""

    key: Hashable
    backbone: Any
    calibration: Calibration | None
    config: SelectionConfig
    recovery: str | None = None
    keep_result: bool = False

    def __call__(self, ctx: BatchContext) -> Output:
        tokens, encode_s = ctx.tokens(self.backbone, self.recovery)
        adds = self.recovery is not None and self.config.method != "discard"
        cand = ctx.candidates if adds else torch.zeros_like(ctx.candidates)
        res = select_with_backbone(self.backbone, tokens, ctx.start_used, cand, self.calibration, self.config)
        return Output(
            probs=res.probabilities.float().cpu(), predictions=res.predictions.cpu(), steps=res.steps.cpu(),
            added=res.added.cpu(), result=res if self.keep_result else None, shared_seconds=encode_s,
        )


@dataclass
class BaselineMethod:
    """A baseline. It reads ``ctx.recovered[recovery]`` (when it uses recovery), the true data
    (``reads_true_data``: the experiment-only oracle-complete), or its own ``recovered_fn``."""

    key: Hashable
    baseline: Any
    recovery: str | None = None
    reads_true_data: bool = False
    recovered_fn: Callable[[BatchContext], MultimodalBatch] | None = None

    def __call__(self, ctx: BatchContext) -> Output:
        if self.reads_true_data:
            probs = self.baseline.predict_proba(ctx.full)
        elif self.recovered_fn is not None:
            probs = self.baseline.predict_proba(ctx.hidden, recovered=self.recovered_fn(ctx))
        else:
            rec = ctx.recovered[self.recovery] if self.recovery is not None and self.baseline.uses_recovery else None
            probs = self.baseline.predict_proba(ctx.hidden, recovered=rec)
        return Output(probs=probs.float())


@dataclass
class MethodRun:
    """One method's outputs over the whole test set."""

    probs: torch.Tensor
    predictions: torch.Tensor
    steps: torch.Tensor | None
    added: torch.Tensor | None
    results: list[SelectionResult]
    seconds: float  # the method's own time
    shared_seconds: float  # encoding it needed (also counted for the other methods using it)


@dataclass
class EngineResult:
    runs: dict[Hashable, MethodRun]
    labels: torch.Tensor
    observed: torch.Tensor  # bool [N, M], the mask applied
    candidates: torch.Tensor  # bool [N, M], what recovery could add
    recovery_seconds: dict[str | None, float] = field(default_factory=dict)


def _default_masks(hidden: MultimodalBatch) -> tuple[torch.Tensor, torch.Tensor]:
    return hidden.observed, ~hidden.observed


@torch.no_grad()
def run_methods(
    dataset: MultimodalDataset,
    observed: torch.Tensor,
    methods: Sequence[EvalMethod],
    recoverers: Mapping[str, Any],
    batch_size: int = 512,
    masks: MaskFn | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> EngineResult:
    """Run ``methods`` on ``dataset`` with ``observed`` (bool ``[N, M]``) applied, batch by batch.

    ``recoverers``: label -> fitted recoverer, for the labels the methods name. A recoverer
    with ``reads_missing`` (an experiment-only oracle) gets the true batch, the others the
    poisoned one.
    """
    masks = masks or _default_masks
    groups: dict[str | None, list[EvalMethod]] = {}
    for m in methods:
        groups.setdefault(m.recovery, []).append(m)
    outs: dict[Hashable, list[Output]] = {m.key: [] for m in methods}
    own_seconds = dict.fromkeys(outs, 0.0)
    rec_seconds: dict[str | None, float] = dict.fromkeys(groups, 0.0)
    labels, cand_rows = [], []
    n = len(dataset)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        full = dataset.batch(idx).with_observed(observed[idx])
        hidden = full.with_missing_filled()  # the batch contract's poison
        start_used, candidates = masks(hidden)
        ctx = BatchContext(full, hidden, start_used, candidates)
        labels.append(full.labels)
        cand_rows.append(candidates)
        for label, group in groups.items():
            if label is not None:
                t0 = time.perf_counter()
                r = recoverers[label]
                ctx.recovered[label] = r.recover(full if getattr(r, "reads_missing", False) else hidden)
                rec_seconds[label] += time.perf_counter() - t0
            for m in group:
                t1, shared = time.perf_counter(), ctx.shared_seconds
                out = m(ctx)
                own_seconds[m.key] += time.perf_counter() - t1 - (ctx.shared_seconds - shared)
                outs[m.key].append(out)
        if on_batch is not None:
            on_batch(len(idx))
    runs = {key: _gather(parts, own_seconds[key]) for key, parts in outs.items()}
    return EngineResult(runs, torch.cat(labels), observed, torch.cat(cand_rows), rec_seconds)


def _gather(parts: list[Output], seconds: float) -> MethodRun:
    probs = torch.cat([p.probs for p in parts])
    selection = parts[0].steps is not None
    return MethodRun(
        probs=probs,
        predictions=torch.cat([p.predictions if p.predictions is not None else p.probs.argmax(1) for p in parts]),
        steps=torch.cat([p.steps for p in parts]) if selection else None,  # type: ignore[misc]
        added=torch.cat([p.added for p in parts]) if selection else None,  # type: ignore[misc]
        results=[p.result for p in parts if p.result is not None],
        seconds=seconds,
        shared_seconds=sum(p.shared_seconds for p in parts),
    )
