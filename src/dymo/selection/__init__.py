"""DyMo's inference-time selection: calibration statistics, the label-free reward and the
per-sample greedy search (plus the ablation variants)."""

from dymo.selection.calibration import Calibration, compute_calibration
from dymo.selection.lazy_calibration import LazyCalibration
from dymo.selection.reward import gain, ics, quality, reward
from dymo.selection.selector import (
    METHODS,
    NO_ACTION,
    SampleExplanation,
    SelectionConfig,
    SelectionResult,
    select,
    select_with_backbone,
)

__all__ = [
    "METHODS",
    "NO_ACTION",
    "Calibration",
    "LazyCalibration",
    "SampleExplanation",
    "SelectionConfig",
    "SelectionResult",
    "compute_calibration",
    "gain",
    "ics",
    "quality",
    "reward",
    "select",
    "select_with_backbone",
]
