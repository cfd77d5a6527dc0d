"""Prediction with a model bundle: :class:`DyMoClassifier`."""

from dymo.inference.classifier import DyMoClassifier, Prediction

__all__ = ["DyMoClassifier", "Prediction"]
