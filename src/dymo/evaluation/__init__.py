"""Evaluation: subset accuracies, scenario evaluation, reports."""
