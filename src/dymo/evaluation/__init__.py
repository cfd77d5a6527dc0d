"""Evaluation: one engine (``engine``: mask, poison, recover, encode, run every method per
batch) and one set of scores (``metrics``) for ``dymo evaluate`` (``pipeline``) and ``dymo
benchmark`` (``benchmark`` + its plan / store / report modules); reports."""
