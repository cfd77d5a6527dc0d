"""A picture of what the selection did: one row per sample, one column per modality.

Observed modalities are drawn plainly; recovered ones carry a border: green = added,
red = rejected (negative reward), grey = recovered but not added (never evaluated, or kept
with a non-positive reward, or cut by the budget); the title gives the deciding reward.
Missing modalities with no recovered copy are left blank. Uses the object-oriented matplotlib
API (no pyplot, no global backend switch) and writes the PNG atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from dymo.errors import DataError
from dymo.selection.selector import SelectionResult
from dymo.utils.io import atomic_replace_from

COLORS = {"accepted": "#2ca02c", "rejected": "#d62728", "unused": "#9e9e9e"}


def _to_image(x: torch.Tensor | np.ndarray) -> np.ndarray | None:
    """``[C, H, W]`` / ``[H, W, C]`` / ``[H, W]`` -> float HWC (or HW) in [0, 1]; None if not an image."""
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    a = np.nan_to_num(a.astype(np.float32), nan=0.0)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        return None
    return np.clip(a, 0.0, 1.0)


def _status(result: SelectionResult, i: int, j: int) -> str:
    if bool(result.initial_used[i, j]):
        return "observed"
    if not bool(result.candidates[i, j]):
        return "missing"
    if bool(result.used[i, j]):
        return "accepted"
    if bool(result.rejected[i, j]):
        return "rejected"
    return "unused"


def plot_explanations(
    batch_observed_images: Mapping[str, torch.Tensor | np.ndarray],
    recovered_images: Mapping[str, torch.Tensor | np.ndarray],
    result: SelectionResult,
    sample_ids: Sequence[int],
    modalities: Sequence[str] | None = None,
    path: str | os.PathLike = "selection.png",
    class_names: Sequence[str] | None = None,
) -> Path:
    """Draw ``sample_ids`` (rows of ``result`` and of the image tensors) and write ``path``.

    ``batch_observed_images[name][i]`` is sample ``i``'s observed image, ``recovered_images``
    the recovered copy (only read where the modality was a candidate).
    """
    modalities = list(modalities) if modalities is not None else list(result.modalities)
    unknown = [name for name in modalities if name not in result.modalities]
    if unknown:
        raise DataError(f"plot_explanations: unknown modality name(s) {unknown}; the result has {list(result.modalities)}")
    if not sample_ids:
        raise DataError("plot_explanations: no sample to draw")
    for i in sample_ids:
        if not 0 <= int(i) < len(result):
            raise DataError(f"plot_explanations: sample {i} outside [0, {len(result)})")
    rows, cols = len(sample_ids), len(modalities)
    fig = Figure(figsize=(1.7 * cols + 0.6, 1.9 * rows), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, i in enumerate(int(s) for s in sample_ids):
        k = int(result.predictions[i])
        label = class_names[k] if class_names is not None else str(k)
        for c, name in enumerate(modalities):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            j = result.modalities.index(name)
            status = _status(result, i, j)
            source = batch_observed_images if status == "observed" else recovered_images
            img = None
            if status != "missing":
                if name not in source:
                    kind = "observed" if status == "observed" else "recovered"
                    raise DataError(f"plot_explanations: no {kind} image for modality {name!r}")
                img = _to_image(source[name][i])
            if img is not None:
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0)
            elif status != "missing":
                ax.text(0.5, 0.5, "(not an image)", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            if status == "observed":
                title = f"{name}: observed"
                for sp in ax.spines.values():
                    sp.set_visible(False)
            elif status == "missing":
                title = f"{name}: missing"
                for sp in ax.spines.values():
                    sp.set_color("#dddddd")
            else:
                reward = result.reward_of(i, j)
                title = f"{name}: " + ("n/a" if math.isnan(reward) else f"R={reward:+.3f}")
                for sp in ax.spines.values():
                    sp.set_color(COLORS[status])
                    sp.set_linewidth(4)
            ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"#{i} -> {label}", fontsize=8)
    fig.suptitle(
        f"{result.method}: green = added, red = rejected, grey = recovered but not added", fontsize=9
    )
    fig.tight_layout()
    path = Path(path)
    atomic_replace_from(lambda tmp: fig.savefig(tmp, format="png"), path)
    return path
