"""DyMo's per-sample greedy selection of recovered modalities, and its ablation variants.

The search works on a *fuse function* ``fuse_fn(sample_idx, used) -> (logits, z)`` that fuses
sample ``sample_idx[n]`` with modality subset ``used[n]``; with the flexible backbone that is
the transformer alone on tokens encoded once (:func:`select_with_backbone`), so encoders never
run again. Each step makes ONE batched call covering every (active sample, open candidate)
pair; the "before" state of a sample is evaluated once (step 0) and afterwards taken from the
winning candidate of the previous step. Labels never enter: there is no label parameter.

Everything is per sample: a sample's result does not depend on the other samples of the batch
(up to the floating-point effects of batching inside ``fuse_fn``). See ``docs/selection.md``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from dymo.config import Config
from dymo.errors import BundleError, ConfigError, DataError
from dymo.selection.acceptance import (
    added_probabilities,
    blend_added,
    check_threshold_value,
    sample_thresholds,
)
from dymo.selection.calibration import Calibration, fuse_rows, shared_projection
from dymo.selection.result import (  # noqa: F401  (re-exported: the result classes moved there)
    _STOP_REASONS,
    NO_ACTION,
    CandidateExplanation,
    SampleExplanation,
    SelectionResult,
    StepExplanation,
)
from dymo.selection.reward import ics, quality, reward
from dymo.utils.subsets import masks_to_codes

METHODS = ("dymo", "iterative", "simultaneous", "fuse-all", "discard")
#: The methods that search, and so read the calibration statistics.
SEARCHING = ("dymo", "iterative", "simultaneous")
#: Deprecated spellings of a policy -> its one name. They still work, with a FutureWarning.
DEPRECATED_NAMES = {"impute-all": "fuse-all"}


def canonical_name(name: str) -> str:
    """``name``, or the one spelling of a deprecated alias (saying so with a FutureWarning, a
    warning meant for users, so the CLI shows it too)."""
    new = DEPRECATED_NAMES.get(name)
    if new is None:
        return name
    warnings.warn(f"{name!r} is a deprecated name of {new!r}; use {new!r}", FutureWarning, stacklevel=3)
    return new

FuseFn = Callable[[torch.Tensor, torch.Tensor], Any]

_NO_CANDIDATES, _BUDGET, _NONE_LEFT, _SINGLE_STEP, _NO_POSITIVE = range(1, 6)


@dataclass
class SelectionConfig(Config):
    """How recovered modalities are chosen.

    - ``dymo``: greedy, one modality per step, reward with the ICS calibration factor.
    - ``iterative``: the same loop without the ICS factor (G = 1).
    - ``simultaneous``: one step; every candidate with a positive (DyMo) reward is added at once.
    - ``fuse-all``: use every recovered modality, no search.
    - ``discard``: use the observed modalities only.

    ``max_added`` caps the number of recovered modalities added per sample (None: no cap).
    ``costs[i]`` (one per modality, >= 0) is subtracted from the reward of adding modality ``i``.
    ``threshold`` is the acceptance rule: a candidate is accepted only if its reward R > tau
    (and rejected for good if R < tau). A number is one tau for every sample (0: the paper's
    rule; ``inf``: discard's decisions; ``-inf``: accept everything); a list gives tau per
    number of observed modalities (entry k for samples with k observed, k = 0 .. M-1);
    ``"calibrated"`` (the default) uses the tau tuned on validation data and stored with the
    calibration (``dymo calibrate --tune-threshold``), and the paper's 0 when it stores none.
    See :mod:`dymo.selection.acceptance`.
    """

    method: Literal["dymo", "iterative", "simultaneous", "fuse-all", "discard"] = "dymo"
    max_added: int | None = None
    costs: list[float] | None = None
    threshold: float | list[float] | Literal["calibrated"] = "calibrated"
    # Temperature of the reported probabilities of samples that added a recovery (logits / T;
    # the prediction is unchanged): "calibrated" = the one tuned with the threshold, else 1.
    added_temperature: float | list[float] | Literal["calibrated"] = "calibrated"
    # Weight a of the selected mask's logits in the prediction of a sample that added a
    # recovery; 1 - a goes to its observed modalities' logits: "calibrated" = the one tuned with
    # the threshold, else 1 (the paper's output: the selected mask alone).
    added_weight: float | Literal["calibrated"] = "calibrated"

    def __post_init__(self) -> None:
        if isinstance(self.method, str):
            self.method = canonical_name(self.method)  # type: ignore[assignment]
        super().__post_init__()

    def validate(self) -> None:
        check_threshold_value(self.threshold)
        t = self.added_temperature
        values = t if isinstance(t, list) else [t]
        if t != "calibrated" and not (values and all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)):
            raise ConfigError(
                "SelectionConfig.added_temperature must be a positive number, a list of them (one per number of "
                f"observed modalities) or 'calibrated', got {t!r}"
            )
        a = self.added_weight
        if a != "calibrated" and not (isinstance(a, (int, float)) and 0.0 <= a <= 1.0):
            raise ConfigError(f"SelectionConfig.added_weight must be a number in [0, 1] or 'calibrated', got {a!r}")
        if self.max_added is not None and self.max_added < 0:
            raise ConfigError(f"SelectionConfig: max_added must be >= 0, got {self.max_added}")
        if self.costs is not None:
            bad = [c for c in self.costs if not (math.isfinite(c) and c >= 0)]
            if bad:
                raise ConfigError(f"SelectionConfig: costs must be finite and >= 0, got {self.costs}")


# --------------------------------------------------------------------------------------------
# The search


def _fuse(fuse_fn: FuseFn, idx: torch.Tensor, used: torch.Tensor, chunk_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    n = idx.shape[0]
    step = n if not chunk_size else chunk_size
    logits, zs = [], []
    for lo in range(0, max(n, 1), max(step, 1)):
        out = fuse_fn(idx[lo : lo + step], used[lo : lo + step])
        logits.append(out[0])
        zs.append(out[1])
    return torch.cat(logits), torch.cat(zs)


class _Evaluator:
    """Fuses rows and scores them (quality, ICS) against the calibration statistics."""

    def __init__(self, fuse_fn: FuseFn, cal: Calibration, chunk_size: int | None) -> None:
        self.fuse_fn, self.cal, self.chunk_size = fuse_fn, cal, chunk_size

    def __call__(self, idx: torch.Tensor, used: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, z = _fuse(self.fuse_fn, idx, used, self.chunk_size)
        logits, z = logits.detach(), z.detach()
        cal = self.cal
        dev = z.device
        q = quality(z, cal.overall.to(dev, z.dtype), cal.metric, cal.temperature)
        rows, prototypes, sigma = cal.tables(masks_to_codes(used))
        p = ics(z, logits, rows.to(dev), prototypes.to(dev, z.dtype), sigma.to(dev, z.dtype), cal.metric)
        return logits, z, q, p


def _validate_inputs(
    initial_used: torch.Tensor, candidates: torch.Tensor, modalities: tuple[str, ...], config: SelectionConfig
) -> None:
    for name, t in (("initial_used", initial_used), ("candidates", candidates)):
        if t.dtype != torch.bool or t.ndim != 2:
            raise DataError(f"select: {name} must be a bool [B, M] tensor, got {t.dtype} {tuple(t.shape)}")
    if initial_used.shape != candidates.shape:
        raise DataError(
            f"select: initial_used {tuple(initial_used.shape)} and candidates {tuple(candidates.shape)} differ"
        )
    if initial_used.shape[0] == 0:
        raise DataError("select: empty batch (no sample)")
    if initial_used.shape[1] != len(modalities):
        raise DataError(
            f"select: masks have {initial_used.shape[1]} modalities, the calibration {len(modalities)} "
            f"({list(modalities)})"
        )
    temps = config.added_temperature
    if isinstance(temps, list) and len(temps) != len(modalities):
        raise ConfigError(
            f"SelectionConfig.added_temperature has {len(temps)} entries; need one per number of observed "
            f"modalities 0..{len(modalities) - 1} ({len(modalities)})"
        )
    if config.costs is not None and len(config.costs) != len(modalities):
        raise ConfigError(
            f"SelectionConfig.costs has {len(config.costs)} entries; need one per modality "
            f"({list(modalities)})"
        )


def select(
    fuse_fn: FuseFn,
    initial_used: torch.Tensor,
    candidates: torch.Tensor,
    calibration: Calibration | None,
    config: SelectionConfig | None = None,
    chunk_size: int | None = None,
    modalities: Sequence[str] | None = None,
) -> SelectionResult:
    """Choose, per sample, which recovered modalities to add to the observed ones.

    ``fuse_fn(sample_idx: Long[N], used: Bool[N, M]) -> (logits[N, C], z[N, D])`` (a
    ``FusionOutput`` works too). ``initial_used``: the observed modalities (always used).
    ``candidates``: modalities with a recovered copy; entries also in ``initial_used`` are
    ignored. ``chunk_size`` bounds the rows of one ``fuse_fn`` call.

    A sample with no observed modality starts from an empty mask whose quality counts as 0
    (so the reward of a candidate is its quality alone, G = 1); its first addition is forced.
    A sample with nothing observed and no candidate raises :class:`DataError`.

    ``calibration`` may be ``None`` for ``discard`` and ``fuse-all``, which do not search; the
    modality names then come from ``modalities``.
    """
    config = config or SelectionConfig()
    method = config.method
    if calibration is None:
        if method in SEARCHING:
            raise ConfigError(
                f"selection method {method!r} needs calibration statistics: run `dymo calibrate RUN` first"
            )
        if modalities is None:
            raise ConfigError("select: without a calibration, pass the modality names (modalities=)")
        names = tuple(modalities)
    else:
        names = tuple(calibration.modalities)
        if modalities is not None and tuple(modalities) != names:
            raise BundleError(f"modalities {list(modalities)} do not match the calibration's {list(names)}")
    _validate_inputs(initial_used, candidates, names, config)
    initial_used = initial_used.clone()
    candidates = candidates & ~initial_used
    b, m = initial_used.shape
    device = initial_used.device
    empty = ~initial_used.any(1)
    usable = candidates if method != "discard" else torch.zeros_like(candidates)
    bad = empty & ~usable.any(1)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise DataError(
            f"sample {i}: no observed modality and no recovered candidate"
            + (" (method 'discard' uses observed modalities only)" if method == "discard" else "")
            + "; nothing to classify from"
        )
    if method in ("dymo", "iterative", "simultaneous") and config.max_added == 0 and bool(empty.any()):
        i = int(torch.nonzero(empty)[0])
        raise DataError(f"sample {i}: no observed modality, but max_added = 0 forbids adding a recovered one")
    if method in ("fuse-all", "discard"):
        used = initial_used | candidates if method == "fuse-all" else initial_used.clone()
        logits, _ = _fuse(fuse_fn, torch.arange(b, device=device), used, chunk_size)
        t0 = torch.zeros(0, b, m)
        used, logits = used.detach().cpu(), logits.detach().cpu()
        return SelectionResult(
            method=method, modalities=names, initial_used=initial_used.cpu(),
            candidates=candidates.cpu(), used=used, logits=logits, probabilities=torch.softmax(logits, -1),
            steps=(used & ~initial_used.cpu()).sum(1), rejected=torch.zeros_like(used),
            stop_reason=[method] * b, action_history=torch.zeros(0, b, dtype=torch.long),
            reward_history=t0, candidate_quality=t0.clone(), candidate_ics=t0.clone(),
            gain_history=t0.clone(), quality_history=torch.zeros(0, b), ics_history=torch.zeros(0, b),
        )
    assert calibration is not None  # searching methods were checked above
    return _search(_Evaluator(fuse_fn, calibration, chunk_size), initial_used, candidates, calibration, config)


def _search(
    evaluator: _Evaluator,
    initial_used: torch.Tensor,
    candidates: torch.Tensor,
    cal: Calibration,
    config: SelectionConfig,
) -> SelectionResult:
    b, m = initial_used.shape
    device = initial_used.device
    method = config.method
    use_ics = method != "iterative"
    costs = torch.tensor(config.costs if config.costs is not None else [0.0] * m, device=device)
    nan = float("nan")

    used = initial_used.clone()
    open_ = candidates.clone()
    rejected = torch.zeros_like(used)
    steps = torch.zeros(b, dtype=torch.long, device=device)
    active = torch.ones(b, dtype=torch.bool, device=device)
    # stop reasons as codes into _STOP_REASONS (no Python loop over samples per step)
    reason = torch.zeros(b, dtype=torch.long, device=device)
    nothing = ~candidates.any(1)
    reason[nothing] = _NO_CANDIDATES
    active &= ~nothing

    # State of each sample's current mask, created at the first fuse so that its dtype follows
    # the backbone's output (float32, float64, bfloat16, ...).
    cur_logits: torch.Tensor | None = None
    observed_logits: torch.Tensor | None = None
    cur_q = cur_p = torch.empty(0)
    hist: dict[str, list[torch.Tensor]] = {k: [] for k in ("action", "reward", "cq", "cp", "gain", "q", "p")}
    final_refuse = torch.zeros(b, dtype=torch.bool, device=device)

    t = 0
    while True:
        if config.max_added is not None:
            capped = active & (steps >= config.max_added)
            reason[capped] = _BUDGET
            active &= ~capped
        # Samples with no open candidate left are done.
        done = active & ~open_.any(1)
        reason[done] = _NONE_LEFT
        active &= ~done
        pair_b, pair_u = torch.nonzero(open_ & active.unsqueeze(1), as_tuple=True)
        rows_used = used[pair_b].clone()
        rows_used[torch.arange(len(pair_b), device=device), pair_u] = True
        before_b = torch.nonzero(used.any(1)).flatten() if t == 0 else pair_b[:0]
        if len(pair_b) == 0 and len(before_b) == 0:
            break
        idx = torch.cat([before_b, pair_b])
        logits, _, q, p = evaluator(idx, torch.cat([used[before_b], rows_used]))
        if cur_logits is None:
            cur_logits = torch.full((b, logits.shape[1]), nan, dtype=logits.dtype, device=device)
            cur_q = torch.full((b,), nan, dtype=q.dtype, device=device)
            cur_p = torch.full((b,), nan, dtype=p.dtype, device=device)
        nb = len(before_b)
        if nb:
            cur_logits[before_b], cur_q[before_b], cur_p[before_b] = logits[:nb], q[:nb], p[:nb]
        if observed_logits is None:
            observed_logits = cur_logits.clone()  # the observed modalities alone (NaN: none)
        if len(pair_b) == 0:
            break
        logits_u, q_u, p_u = logits[nb:], q[nb:], p[nb:]
        row_empty = ~used[pair_b].any(1)
        q_b = torch.where(row_empty, torch.zeros_like(q_u), cur_q[pair_b])
        p_b = cur_p[pair_b]
        r, g = reward(q_b, q_u, p_b if use_ics else None, p_u if use_ics else None, cal.metric)
        g = torch.where(row_empty, torch.ones_like(g), g)
        r = torch.where(row_empty, q_u, r) - costs[pair_u].to(r.dtype)

        def grid(values: torch.Tensor, pair_b: torch.Tensor = pair_b, pair_u: torch.Tensor = pair_u) -> torch.Tensor:
            out = torch.full((b, m), nan, dtype=values.dtype, device=device)
            out[pair_b, pair_u] = values
            return out

        rm = grid(r)
        hist["reward"].append(rm)
        hist["cq"].append(grid(q_u))
        hist["cp"].append(grid(p_u))
        hist["gain"].append(grid(g))
        searched = active & used.any(1)
        hist["q"].append(torch.where(searched, cur_q, torch.full_like(cur_q, nan)))
        hist["p"].append(torch.where(searched, cur_p, torch.full_like(cur_p, nan)))
        row_of = torch.full((b, m), -1, dtype=torch.long, device=device)
        row_of[pair_b, pair_u] = torch.arange(len(pair_b), device=device)
        # NaN compares False: only evaluated entries can be rejected or accepted. The acceptance
        # rule: accepted only if R > tau, rejected for good if R < tau (tau 0: the paper's).
        tau = sample_thresholds(config.threshold, getattr(cal, "threshold", None), initial_used).to(rm.dtype).unsqueeze(1)
        negative = rm < tau
        positive = rm > tau
        forced = active & ~used.any(1)  # nothing used yet: the first addition is forced
        score = torch.nan_to_num(rm, nan=-math.inf)
        action = torch.full((b,), NO_ACTION, dtype=torch.long, device=device)

        if method == "simultaneous":
            add = positive.clone()
            if config.max_added is not None:
                # keep the max_added largest positive rewards
                order = torch.argsort(-score, dim=1, stable=True)
                rank = torch.empty_like(order)
                rank.scatter_(1, order, torch.arange(m, device=device).expand(b, m).contiguous())
                add &= rank < config.max_added
            win = score.argmax(1)
            force = forced & ~add.any(1)
            add[force, win[force]] = True
            negative &= ~add
            rejected |= negative
            open_ &= ~negative & ~add
            n_add = add.sum(1)
            one = n_add == 1
            reason[active] = torch.where(n_add[active] > 0, _SINGLE_STEP, _NO_POSITIVE)
            sel = torch.nonzero(one).flatten()
            if len(sel):
                w = add[sel].float().argmax(1)
                rows = row_of[sel, w]
                cur_logits[sel] = logits_u[rows]
                action[sel] = w
            used |= add
            steps += n_add
            final_refuse = n_add > 1
            hist["action"].append(action)
            break

        win = score.argmax(1)
        go = active & (positive.any(1) | forced)
        negative[torch.nonzero(go).flatten(), win[go]] = False  # a forced winner is not rejected
        rejected |= negative
        open_ &= ~negative
        reason[active & ~go] = _NO_POSITIVE
        active &= go
        sel = torch.nonzero(go).flatten()
        if len(sel):
            w = win[sel]
            rows = row_of[sel, w]
            used[sel, w] = True
            open_[sel, w] = False
            cur_logits[sel], cur_q[sel], cur_p[sel] = logits_u[rows], q_u[rows], p_u[rows]
            steps[sel] += 1
            action[sel] = w
        hist["action"].append(action)
        t += 1

    if bool(final_refuse.any()):
        sel = torch.nonzero(final_refuse).flatten()
        cur_logits[sel] = evaluator(sel, used[sel])[0]
    reason[reason == 0] = _NONE_LEFT
    stop_reason = [_STOP_REASONS[k] for k in reason.tolist()]
    nt = len(hist["action"])

    def stack(key: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if not nt:
            return torch.zeros(0, *shape, dtype=dtype)
        out = torch.stack(hist[key]).cpu()
        return out if dtype == torch.long else out.float()

    assert cur_logits is not None
    tuned = getattr(cal, "threshold", None)
    added = steps.cpu() > 0
    cur_logits, weights = blend_added(cur_logits.cpu(), None if observed_logits is None else observed_logits.cpu(), added, config.added_weight, tuned)
    return SelectionResult(
        method=method,
        modalities=cal.modalities,
        initial_used=initial_used.cpu(),
        candidates=candidates.cpu(),
        used=used.cpu(),
        logits=cur_logits,
        probabilities=added_probabilities(cur_logits, added, config.added_temperature, tuned, initial_used.sum(1).cpu()),
        steps=steps.cpu(),
        rejected=rejected.cpu(),
        stop_reason=stop_reason,
        action_history=stack("action", (b,), torch.long),
        reward_history=stack("reward", (b, m)),
        candidate_quality=stack("cq", (b, m)),
        candidate_ics=stack("cp", (b, m)),
        gain_history=stack("gain", (b, m)),
        quality_history=stack("q", (b,)),
        ics_history=stack("p", (b,)),
        thresholds=sample_thresholds(config.threshold, tuned, initial_used).float().cpu(),
        weights=weights.float(),
        observed_logits=None if observed_logits is None else observed_logits.cpu(),
    )


def select_with_backbone(
    backbone: Any,
    tokens: torch.Tensor,
    initial_used: torch.Tensor,
    candidates: torch.Tensor,
    calibration: Calibration | None,
    config: SelectionConfig | None = None,
    chunk_size: int | None = 4096,
) -> SelectionResult:
    """:func:`select` with ``backbone.fuse`` on ``tokens`` (``backbone.encode`` of the observed
    plus recovered modalities, computed once by the caller), in eval mode, without gradients.
    ``calibration`` may be ``None`` for ``discard`` and ``fuse-all``."""
    names = getattr(backbone, "modalities", None)
    if calibration is not None:
        metric = backbone.config.metric
        if metric != calibration.metric:
            raise BundleError(
                f"the backbone uses the {metric!r} metric but the calibration was computed for {calibration.metric!r}"
            )
        if names is not None and tuple(names) != tuple(calibration.modalities):
            raise BundleError(
                f"backbone modalities {list(names)} do not match the calibration's {list(calibration.modalities)}"
            )
        names = None  # the calibration's names, checked above
    initial_used, candidates = initial_used.to(tokens.device), candidates.to(tokens.device)
    was_training = backbone.training
    backbone.eval()

    def fuse_fn(idx: torch.Tensor, used: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = fuse_rows(backbone, tokens, used, idx, projected)
        return out[0], out[1]

    try:
        with torch.no_grad():
            # the first block's per-token projections, once per sample for every candidate row
            projected = shared_projection(backbone, tokens)
            return select(fuse_fn, initial_used, candidates, calibration, config, chunk_size, modalities=names)
    finally:
        backbone.train(was_training)
