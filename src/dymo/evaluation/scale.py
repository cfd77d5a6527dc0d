"""The evaluation engine's batches over several processes (``dymo evaluate --devices N``)."""

from __future__ import annotations

import os
from typing import Any

import torch

from dymo.utils.scale import ScaleOptions, run_chunks


def run_methods_scaled(
    dataset: Any,
    observed: torch.Tensor,
    methods: Any,
    recoverers: Any,
    batch_size: int,
    masks: Any,
    options: ScaleOptions,
    parts_dir: str | os.PathLike,
) -> Any:
    """:func:`dymo.evaluation.engine.run_methods` with its batches shared among the processes of
    ``options``: each batch (a chunk) runs the engine on its own, the first process concatenates
    the per-sample outputs in batch order. Returns the :class:`EngineResult` in the first
    process, ``None`` in the others. (Per-sample selection results are not gathered.)"""
    import io

    from dymo.evaluation.engine import EngineResult, MethodRun, run_methods

    n = len(dataset)
    num_chunks = (n + batch_size - 1) // batch_size
    fields = ("probs", "predictions", "steps", "added")

    def process(i: int, device: torch.device) -> bytes:
        idx = list(range(i * batch_size, min((i + 1) * batch_size, n)))
        ran = run_methods(dataset.subset(idx), observed[idx], methods, recoverers, batch_size, masks)
        part = {
            "runs": {k: {**{f: getattr(r, f) for f in fields}, "seconds": r.seconds, "shared": r.shared_seconds}
                     for k, r in ran.runs.items()},
            "labels": ran.labels, "candidates": ran.candidates, "recovery_seconds": ran.recovery_seconds,
        }
        buf = io.BytesIO()
        torch.save(part, buf)
        return buf.getvalue()

    parts = run_chunks(num_chunks, process, parts_dir, options)
    if parts is None:
        return None
    loaded = [torch.load(io.BytesIO(p), weights_only=False) for p in parts]  # written by this run
    runs = {}
    for key in loaded[0]["runs"]:
        rs = [p["runs"][key] for p in loaded]
        cat = {f: (torch.cat([r[f] for r in rs]) if rs[0][f] is not None else None) for f in fields}
        runs[key] = MethodRun(**cat, results=[], seconds=sum(r["seconds"] for r in rs),
                              shared_seconds=sum(r["shared"] for r in rs))
    rec_seconds: dict[Any, float] = {}
    for p in loaded:
        for k, v in p["recovery_seconds"].items():
            rec_seconds[k] = rec_seconds.get(k, 0.0) + v
    return EngineResult(runs, torch.cat([p["labels"] for p in loaded]), observed,
                        torch.cat([p["candidates"] for p in loaded]), rec_seconds)
