"""The acceptance rule of the selection: a recovered modality is added only if its reward R > tau.

The paper's rule is tau = 0. A calibrated rule picks tau per number of observed modalities on
the VALIDATION split under simulated missingness (:func:`dymo.selection.tuning.tune_threshold`), and stores it with
the calibration statistics (:class:`ThresholdTuning`), so a bundle applies it with no labels.

- tau = 0: the paper's rule;
- tau = +inf: no recovery is ever accepted (discard's decisions; a sample with nothing
  observed still takes its forced first addition);
- tau = -inf: every recovery is accepted (fuse-all's final mask).

Tuning (pooled over the scenarios and mask seeds): a global tau is the grid value with the most
correct validation predictions; samples with k observed modalities only see tau[k], and get their
own best value instead only when it is significantly better on them (more than 2 standard
errors of a paired comparison; :func:`pick_thresholds_pooled`). Ties go to the larger tau, so
when recoveries do not help on validation the rule falls back to discard (tau = inf). Labels are
used here, on validation data only; the selection itself never sees them.

The same validation runs fit what a sample that added a recovery reports: a weight ``a`` of its
final mask's logits against its observed modalities' alone (:func:`blend_added`; 1 is the paper's
output) and a temperature of its probabilities (:func:`added_probabilities`), both by validation
NLL (:func:`pick_blend`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dymo.errors import BundleError, ConfigError

log = logging.getLogger(__name__)

INF = math.inf
#: Candidate thresholds: -inf (accept all), the paper's 0, a range of margins, +inf (discard).
DEFAULT_GRID: tuple[float, ...] = (-INF, 0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, INF)
DEFAULT_SCENARIOS: tuple[str, ...] = ("random:0.4", "random:0.6", "random:0.8")
DEFAULT_SEEDS: tuple[int, ...] = (0, 1)
#: Mask seeds of the validation scenarios are offset so that they never coincide with the test
#: masks drawn with the same seed numbers (different data anyway; this keeps them unrelated).
SEED_OFFSET = 10_000


@dataclass
class ThresholdTuning:
    """A tuned acceptance rule and where it comes from (stored in the calibration file).

    ``thresholds[k]``: tau for samples with ``k`` observed modalities (``k`` = 0 .. M-1).
    ``correct[k][j]``: correct validation predictions of those samples with ``grid[j]``;
    ``counts[k]``: how many there were (pooled over ``scenarios`` x ``seeds``).
    """

    thresholds: list[float]
    method: str = "dymo"
    grid: list[float] = field(default_factory=lambda: list(DEFAULT_GRID))
    scenarios: list[str] = field(default_factory=lambda: list(DEFAULT_SCENARIOS))
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    n_val: int = 0
    recoverer: str = ""
    correct: list[list[int]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    #: Temperature for the probabilities of samples that added a recovery (validation NLL).
    added_temperature: float = 1.0
    #: Weight of the selected mask's logits in the prediction of a sample that added a
    #: recovery; 1 - weight goes to its observed modalities' logits (validation NLL, with the
    #: temperature). 1: the selected mask alone (the paper's output).
    added_weight: float = 1.0
    #: Temperature per number of observed modalities k (entry k), fitted on the blended logits
    #: of the samples with k observed when they are at least MIN_TEMPERATURE_SAMPLES, else the
    #: global ``added_temperature``; empty: the global one for every k.
    added_temperatures: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": [float(t) for t in self.thresholds], "method": self.method,
            "grid": [float(t) for t in self.grid], "scenarios": list(self.scenarios), "seeds": list(self.seeds),
            "n_val": self.n_val, "recoverer": self.recoverer, "correct": self.correct, "counts": self.counts,
            "added_temperature": float(self.added_temperature), "added_weight": float(self.added_weight),
            "added_temperatures": [float(t) for t in self.added_temperatures],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "threshold") -> ThresholdTuning:
        try:
            out = cls(**d)
            out.thresholds = [float(t) for t in out.thresholds]
        except (TypeError, ValueError) as e:
            raise BundleError(f"{source}: malformed tuned threshold ({e})") from None
        if not out.thresholds or any(math.isnan(t) for t in out.thresholds):
            raise BundleError(f"{source}: tuned thresholds must be a non-empty list of numbers, got {out.thresholds}")
        temps = [out.added_temperature, *out.added_temperatures]
        if not (0.0 <= float(out.added_weight) <= 1.0) or not all(float(t) > 0 for t in temps):
            raise BundleError(
                f"{source}: added_weight must lie in [0, 1] and the added temperatures be positive, got "
                f"{out.added_weight!r} and {temps!r}"
            )
        if out.added_temperatures and len(out.added_temperatures) != len(out.thresholds):
            raise BundleError(
                f"{source}: {len(out.added_temperatures)} added temperatures for {len(out.thresholds)} thresholds "
                "(one per number of observed modalities)"
            )
        return out

    def to_json(self) -> str:
        # Python's JSON reads back the Infinity it writes, which is all this metadata needs.
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str, source: str = "threshold") -> ThresholdTuning:
        try:
            d = json.loads(text)
        except ValueError as e:
            raise BundleError(f"{source}: malformed tuned threshold ({e})") from None
        if not isinstance(d, dict):
            raise BundleError(f"{source}: malformed tuned threshold (not a mapping)")
        return cls.from_dict(d, source)

    def accuracy_table(self) -> list[dict[str, Any]]:
        """Per number of observed modalities: validation accuracy of every grid value."""
        rows = []
        for k, (corr, n) in enumerate(zip(self.correct, self.counts, strict=False)):
            rows.append({"observed": k, "n": n, "tau": self.thresholds[k],
                         "accuracy": {_fmt_tau(t): (c / n if n else None) for t, c in zip(self.grid, corr, strict=True)}})
        return rows


def _fmt_tau(t: float) -> str:
    return "inf" if t == INF else ("-inf" if t == -INF else f"{t:g}")


def check_threshold_value(value: Any, name: str = "SelectionConfig.threshold") -> None:
    """ConfigError for NaN entries (a float, or a list of floats; +-inf allowed)."""
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not value:
        raise ConfigError(f"{name}: an empty list; give one tau per number of observed modalities")
    if any(isinstance(v, float) and math.isnan(v) for v in values):
        raise ConfigError(f"{name}: NaN is not a threshold (use inf for discard's decisions)")


def resolve_thresholds(threshold: float | list[float] | str, tuned: ThresholdTuning | None, num_modalities: int) -> list[float]:
    """tau per number of observed modalities (index 0 .. M) for a ``SelectionConfig.threshold``.

    ``"calibrated"``: the tuned thresholds stored with the calibration, else the paper's 0.
    """
    m = num_modalities
    if threshold == "calibrated":
        if tuned is None:
            return [0.0] * (m + 1)
        taus = list(tuned.thresholds)
        if len(taus) != m:
            raise BundleError(f"the calibration's tuned thresholds have {len(taus)} entries, expected {m} (one per number of observed modalities 0..{m - 1})")
        return [*taus, 0.0]
    if isinstance(threshold, (int, float)):
        return [float(threshold)] * (m + 1)
    if isinstance(threshold, list):
        if len(threshold) != m:
            raise ConfigError(
                f"SelectionConfig.threshold has {len(threshold)} entries; need one per number of observed "
                f"modalities 0..{m - 1} ({m})"
            )
        return [*map(float, threshold), 0.0]
    raise ConfigError(f"SelectionConfig.threshold: {threshold!r} is not a number, a list or 'calibrated'")


def sample_thresholds(threshold: float | list[float] | str, tuned: ThresholdTuning | None, initial_used: torch.Tensor) -> torch.Tensor:
    """Float ``[B]``: the tau of each sample, by its number of observed modalities."""
    taus = torch.tensor(resolve_thresholds(threshold, tuned, initial_used.shape[1]), device=initial_used.device)
    return taus[initial_used.sum(1)]


#: Candidate temperatures for the probabilities of samples that added a recovery.
TEMPERATURE_GRID: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
#: Candidate weights of the selected mask's logits against the observed-only ones (1 first:
#: ties keep the paper's output).
WEIGHT_GRID: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.0)


def _resolve(value: float | str, tuned: ThresholdTuning | None, attr: str) -> float:
    return (float(getattr(tuned, attr)) if tuned is not None else 1.0) if value == "calibrated" else float(value)


def blend_added(
    logits: torch.Tensor, observed_logits: torch.Tensor | None, added: torch.Tensor, weight: float | str, tuned: ThresholdTuning | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, weights)``: for the samples that ``added`` a recovery, ``a * logits + (1 - a) *
    observed_logits`` (``a`` from ``weight``, or the tuned one for ``"calibrated"``, else 1);
    other samples, and samples with nothing observed (NaN ``observed_logits``), keep ``logits``.
    ``weights [B]`` is each sample's ``a`` (1 where nothing was blended)."""
    a = _resolve(weight, tuned, "added_weight")
    ones = torch.ones(logits.shape[0], dtype=logits.dtype, device=logits.device)
    if a == 1.0 or observed_logits is None or not bool(added.any()):
        return logits, ones
    blend = added.to(logits.device) & ~torch.isnan(observed_logits).any(1)
    w = torch.where(blend, torch.full_like(ones, a), ones)
    mixed = w.unsqueeze(1) * logits + (1 - w).unsqueeze(1) * torch.nan_to_num(observed_logits)
    return mixed, w


def added_probabilities(
    logits: torch.Tensor, added: torch.Tensor, temperature: float | list[float] | str, tuned: ThresholdTuning | None,
    observed_count: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(logits), with logits / T for the samples that ``added`` a recovery. ``temperature``:
    a number; a list with one T per number of observed modalities (``observed_count [B]``
    picks the entry); or ``"calibrated"``: the tuned one(s), else 1. The argmax never changes."""
    if temperature == "calibrated":
        temperature = (tuned.added_temperatures or float(tuned.added_temperature)) if tuned is not None else 1.0
    if not bool(added.any()) or (not isinstance(temperature, list) and float(temperature) == 1.0):
        return torch.softmax(logits, dim=-1)
    one = torch.ones((), dtype=logits.dtype, device=logits.device)
    if isinstance(temperature, list):
        if observed_count is None:
            raise ConfigError("added_probabilities: a temperature per number of observed modalities needs observed_count")
        table = torch.tensor([*temperature, temperature[-1]], dtype=logits.dtype, device=logits.device)
        temps = table[observed_count.to(logits.device).clamp(max=len(table) - 1)]
    else:
        temps = torch.full((), float(temperature), dtype=logits.dtype, device=logits.device)
    scale = torch.where(added.to(logits.device), temps, one)
    return torch.softmax(logits / scale.unsqueeze(1), dim=-1)


def pick_temperature(logits: torch.Tensor, labels: torch.Tensor, grid: Sequence[float] = TEMPERATURE_GRID) -> float:
    """The grid temperature with the lowest mean NLL (ties: the smallest; 1 when no sample)."""
    if len(labels) == 0:
        return 1.0
    nll = [float(torch.nn.functional.cross_entropy(logits.double() / t, labels)) for t in grid]
    return float(grid[int(np.argmin(nll))])


def pick_blend(
    selected: torch.Tensor, observed: torch.Tensor, labels: torch.Tensor,
    weights: Sequence[float] = WEIGHT_GRID, temperatures: Sequence[float] = TEMPERATURE_GRID,
) -> tuple[float, float]:
    """``(weight, temperature)`` with the lowest mean NLL of ``(a * selected + (1 - a) * observed) / T``
    over samples that added a recovery (``observed`` may be NaN for a sample with nothing
    observed: it keeps ``selected``). Ties: the first weight of the grid (1, the paper's output
    first), then the smallest T; ``(1, 1)`` when there is no sample."""
    if len(labels) == 0:
        return 1.0, 1.0
    none = torch.isnan(observed).any(1, keepdim=True)
    observed = torch.where(none, selected, observed).double()
    selected = selected.double()
    best, best_nll = (1.0, 1.0), math.inf
    for a in weights:
        mixed = a * selected + (1 - a) * observed
        for t in temperatures:
            nll = float(torch.nn.functional.cross_entropy(mixed / t, labels))
            if nll < best_nll - 1e-12:
                best, best_nll = (float(a), float(t)), nll
    return best


#: A number of observed modalities gets its own temperature only with this many validation
#: samples that added a recovery (else the global one).
MIN_TEMPERATURE_SAMPLES = 50


def pick_temperatures_by_count(
    blended: torch.Tensor, labels: torch.Tensor, observed_count: torch.Tensor, num_modalities: int, fallback: float,
) -> list[float]:
    """Temperature per number of observed modalities k = 0 .. M-1 (lowest NLL of the samples
    with k observed), ``fallback`` where fewer than :data:`MIN_TEMPERATURE_SAMPLES` samples."""
    out = []
    for k in range(num_modalities):
        sel = observed_count == k
        out.append(pick_temperature(blended[sel], labels[sel]) if int(sel.sum()) >= MIN_TEMPERATURE_SAMPLES else float(fallback))
    return out


#: A number of observed modalities departs from the global tau only when its own best tau is
#: more than Z_DEPART standard errors better on validation (sqrt of the discordant samples).
Z_DEPART = 2.0


def _best(scores: np.ndarray, grid: Sequence[float]) -> int:
    """Index of the highest score, ties going to the larger tau."""
    order = sorted(range(len(grid)), key=lambda j: -grid[j])
    best = order[0]
    for j in order[1:]:
        if scores[j] > scores[best]:
            best = j
    return best


def pick_thresholds_pooled(ok: np.ndarray, k_obs: np.ndarray, grid: Sequence[float], num_modalities: int, z: float = Z_DEPART) -> tuple[list[float], float]:
    """tau per number of observed modalities from per-sample correctness ``ok [G, N]``.

    The global tau is the grid value with the most correct validation predictions over all
    samples (ties: the larger tau). Samples with k observed modalities get their own best tau
    instead only if it beats the global one by more than ``z`` standard errors, i.e. by more
    than ``z * sqrt(d)`` samples, d = samples the two taus disagree on (a paired, McNemar-style
    test); on a small validation set single-sample differences are noise. Returns
    ``(taus, global_tau)``."""
    g = _best(ok.sum(1), grid)
    taus = []
    for k in range(num_modalities):
        sel = k_obs == k
        if not sel.any():
            taus.append(float(grid[g]))
            continue
        sub = ok[:, sel]
        j = _best(sub.sum(1), grid)
        gain = int(sub[j].sum()) - int(sub[g].sum())
        disagree = int((sub[j] != sub[g]).sum())
        taus.append(float(grid[j]) if gain > z * math.sqrt(disagree) else float(grid[g]))
    return taus, float(grid[g])


def pick_thresholds(correct: np.ndarray, grid: Sequence[float]) -> list[float]:
    """Per row k of ``correct [K, G]``: the grid value with the most correct predictions, ties
    going to the larger tau (so +inf, discard, wins a tie)."""
    order = sorted(range(len(grid)), key=lambda j: -grid[j])  # largest tau first
    out = []
    for row in correct:
        best = order[0]
        for j in order[1:]:
            if row[j] > row[best]:
                best = j
        out.append(float(grid[best]))
    return out
