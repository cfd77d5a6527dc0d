"""What a selection returns (:class:`SelectionResult`) and how it explains one sample
(:class:`SampleExplanation`, per step and candidate); the search is :mod:`dymo.selection.selector`."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dymo.utils.io import atomic_write

NO_ACTION = 100  # action_history entry of a step in which the sample added nothing
_STOP_REASONS = ("", "no candidates", "budget reached", "no candidates left", "single step", "no positive reward")


@dataclass
class CandidateExplanation:
    modality: str
    reward: float
    quality: float
    ics: float
    gain: float
    decision: str  # "accepted" | "rejected" (R < tau) | "kept" (R >= tau but not chosen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reward": self.reward,
            "quality": self.quality,
            "ics": self.ics,
            "gain": self.gain,
            "decision": self.decision,
        }


@dataclass
class StepExplanation:
    step: int
    quality: float | None  # of the mask before the step (None: nothing used yet)
    ics: float | None
    candidates: list[CandidateExplanation]
    accepted: list[str]
    rejected: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "quality": self.quality,
            "ics": self.ics,
            "candidates": {c.modality: c.to_dict() for c in self.candidates},
            "accepted": list(self.accepted),
            "rejected": list(self.rejected),
        }


@dataclass
class SampleExplanation:
    sample: int
    method: str
    observed: list[str]
    candidates: list[str]
    used: list[str]
    added: list[str]
    rejected: list[str]
    predicted_class: int
    predicted_name: str | None
    confidence: float
    stop_reason: str
    steps: list[StepExplanation] = field(default_factory=list)
    #: weight of the used modalities' prediction; 1 - weight is the observed modalities' alone
    recovered_weight: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample": self.sample,
            "method": self.method,
            "observed": self.observed,
            "candidates": self.candidates,
            "used": self.used,
            "added": self.added,
            "rejected": self.rejected,
            "predicted_class": self.predicted_class,
            "predicted_name": self.predicted_name,
            "confidence": self.confidence,
            "stop_reason": self.stop_reason,
            "recovered_weight": self.recovered_weight,
            "steps": [s.to_dict() for s in self.steps],
        }

    def __str__(self) -> str:
        name = f" ({self.predicted_name})" if self.predicted_name is not None else ""
        lines = [
            f"sample {self.sample} [{self.method}]: observed {self.observed}, recovered candidates "
            f"{self.candidates} -> used {self.used}; predicted class {self.predicted_class}{name} "
            f"(p={self.confidence:.3f}); stopped: {self.stop_reason}"
            + (
                f"; prediction = {self.recovered_weight:g} x used + {1 - self.recovered_weight:g} x observed only"
                if self.recovered_weight != 1.0 else ""
            )
        ]
        for s in self.steps:
            q = "-" if s.quality is None else f"{s.quality:.4f}"
            lines.append(f"  step {s.step}: quality of current subset {q}")
            for c in s.candidates:
                lines.append(
                    f"    {c.modality:>12}: reward {c.reward:+.4f} (quality {c.quality:.4f}, "
                    f"ICS {c.ics:.4f}, G {c.gain:.4f}) {c.decision}"
                )
        return "\n".join(lines)


@dataclass(eq=False)
class SelectionResult:
    """What the selection chose for each sample, and why (all tensors on the CPU).

    History tensors have one row per step ``t`` of the search: ``action_history[t, b]`` is the
    modality added (``NO_ACTION`` = none), ``reward_history[t, b, u]`` the reward of candidate
    ``u`` (NaN = not evaluated), and likewise the candidate's quality, ICS and gain factor;
    ``quality_history[t, b]``/``ics_history[t, b]`` belong to the mask before the step (NaN when
    the sample was not searched at that step, or had nothing used yet).
    """

    method: str
    modalities: tuple[str, ...]
    initial_used: torch.Tensor  # bool [B, M]
    candidates: torch.Tensor  # bool [B, M], recovered and not observed
    used: torch.Tensor  # bool [B, M], final
    logits: torch.Tensor  # [B, C]
    probabilities: torch.Tensor  # [B, C]
    steps: torch.Tensor  # long [B], number of additions
    rejected: torch.Tensor  # bool [B, M]
    stop_reason: list[str]
    action_history: torch.Tensor  # long [T, B]
    reward_history: torch.Tensor  # [T, B, M]
    candidate_quality: torch.Tensor  # [T, B, M]
    candidate_ics: torch.Tensor  # [T, B, M]
    gain_history: torch.Tensor  # [T, B, M]
    quality_history: torch.Tensor  # [T, B]
    ics_history: torch.Tensor  # [T, B]
    thresholds: torch.Tensor | None = None  # [B], each sample's tau (None: 0, the paper's rule)
    # [B], weight of the selected mask's logits in the prediction (the rest: the observed
    # modalities' logits); None or 1: the selected mask alone
    weights: torch.Tensor | None = None
    # [B, C], the logits of the observed modalities alone (NaN rows: nothing observed); None
    # for methods that do not search
    observed_logits: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.used.shape[0])

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    @property
    def added(self) -> torch.Tensor:
        return self.used & ~self.initial_used

    def explain(self, i: int, class_names: Sequence[str] | None = None) -> SampleExplanation:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} outside [0, {len(self)})")
        names = self.modalities

        def pick(mask: torch.Tensor) -> list[str]:
            return [names[j] for j in range(len(names)) if bool(mask[j])]

        steps = []
        for t in range(self.reward_history.shape[0]):
            r = self.reward_history[t, i]
            evaluated = ~torch.isnan(r)
            if not bool(evaluated.any()):
                continue
            action = int(self.action_history[t, i])
            if self.method == "simultaneous":
                accepted_mask = self.added[i] & evaluated
            else:
                accepted_mask = torch.zeros_like(evaluated)
                if action != NO_ACTION:
                    accepted_mask[action] = True
            tau = 0.0 if self.thresholds is None else float(self.thresholds[i])
            rejected_mask = evaluated & (r < tau) & ~accepted_mask
            cands = []
            for u in range(len(names)):
                if not bool(evaluated[u]):
                    continue
                decision = "accepted" if accepted_mask[u] else ("rejected" if rejected_mask[u] else "kept")
                cands.append(
                    CandidateExplanation(
                        names[u], float(r[u]), float(self.candidate_quality[t, i, u]),
                        float(self.candidate_ics[t, i, u]), float(self.gain_history[t, i, u]), decision,
                    )
                )
            q, p = float(self.quality_history[t, i]), float(self.ics_history[t, i])
            steps.append(
                StepExplanation(
                    t, None if math.isnan(q) else q, None if math.isnan(p) else p, cands,
                    pick(accepted_mask), pick(rejected_mask),
                )
            )
        k = int(self.predictions[i])
        return SampleExplanation(
            sample=i,
            method=self.method,
            observed=pick(self.initial_used[i]),
            candidates=pick(self.candidates[i]),
            used=pick(self.used[i]),
            added=pick(self.added[i]),
            rejected=pick(self.rejected[i]),
            predicted_class=k,
            predicted_name=None if class_names is None else str(class_names[k]),
            confidence=float(self.probabilities[i, k]),
            stop_reason=self.stop_reason[i],
            steps=steps,
            recovered_weight=1.0 if self.weights is None else float(self.weights[i]),
        )

    def to_records(self, class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per sample (the format is in ``docs/selection.md``)."""
        return [self.explain(i, class_names).to_dict() for i in range(len(self))]

    def to_json(self, path: str | os.PathLike | None = None, class_names: Sequence[str] | None = None) -> str:
        """The records as JSON text (NaN-free); written atomically to ``path`` when given."""
        text = json.dumps(
            {"format": 1, "method": self.method, "modalities": list(self.modalities),
             "samples": self.to_records(class_names)},
            indent=1, allow_nan=False,
        )
        if path is not None:
            with atomic_write(path) as f:
                f.write(text + "\n")
        return text

    def reward_of(self, i: int, u: int) -> float:
        """The reward that decided modality ``u`` of sample ``i``: at its acceptance, else its
        last evaluation (NaN when it was never evaluated)."""
        col = self.reward_history[:, i, u]
        hit = torch.nonzero(self.action_history[:, i] == u).flatten()
        if len(hit) and self.method != "simultaneous":
            return float(col[hit[0]])
        seen = torch.nonzero(~torch.isnan(col)).flatten()
        return float(col[seen[-1]]) if len(seen) else float("nan")
