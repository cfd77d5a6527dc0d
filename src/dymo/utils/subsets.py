"""Modality subsets as bit codes: bit ``i`` of the code is 1 when modality ``i`` is used.

Code 0 (nothing used) never denotes a real subset; tables indexed by code keep row 0 unused.
"""

from __future__ import annotations

import torch


def all_subsets(num_modalities: int) -> torch.Tensor:
    """Bool ``[2**M - 1, M]``; row ``r`` is the subset with code ``r + 1``."""
    codes = torch.arange(1, 2**num_modalities)
    return codes_to_masks(codes, num_modalities)


def codes_to_masks(codes: torch.Tensor, num_modalities: int) -> torch.Tensor:
    bits = 2 ** torch.arange(num_modalities, device=codes.device)
    return (codes.unsqueeze(-1) & bits) != 0


def masks_to_codes(masks: torch.Tensor) -> torch.Tensor:
    """Bool ``[..., M]`` -> long codes ``[...]``."""
    bits = 2 ** torch.arange(masks.shape[-1], device=masks.device)
    return (masks.long() * bits).sum(-1)


def sample_subsets(num_modalities: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """K distinct non-empty subsets drawn uniformly, bool ``[K, M]``."""
    n = 2**num_modalities - 1
    if not 1 <= k <= n:
        raise ValueError(f"cannot draw {k} distinct non-empty subsets of {num_modalities} modalities")
    codes = torch.randperm(n, generator=generator)[:k] + 1
    return codes_to_masks(codes, num_modalities)


def stratified_subsets(num_modalities: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Every singleton, the full set, and K distinct random subsets (duplicates dropped), bool ``[<= M + 1 + K, M]``.

    The fixed part comes first, in modality order; the random part is :func:`sample_subsets`'s draw
    minus the subsets already listed, so with the same generator state it draws the same K codes.
    """
    m = num_modalities
    fixed = [1 << i for i in range(m)]
    if (2**m - 1) not in fixed:
        fixed.append(2**m - 1)
    drawn = masks_to_codes(sample_subsets(m, k, generator)).tolist()
    codes = fixed + [c for c in drawn if c not in fixed]
    return codes_to_masks(torch.tensor(codes), m)
