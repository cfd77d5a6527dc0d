"""Missing-modality scenarios: seeded rules that say which modalities of each sample are missing.

The authors never published their mask files nor the script that made them, so "missing rate"
is left undefined there. Every scenario here has exactly one definition (see ``docs/data.md``):

``none``
    every modality of every sample is observed.
``random:ETA``
    each modality of each sample is missing independently with probability ``ETA`` in
    ``[0, 1)``. A sample left with no modality gets one modality, chosen uniformly, back.
    The resulting fraction of missing entries is :func:`effective_missing_rate`
    ``= ETA - ETA**M / M``.
``count:K``
    exactly ``K`` modalities (``0 <= K <= M-1``) are missing in every sample; which ones is
    uniform over the ``C(M, K)`` choices.
``fixed:1,3`` / ``fixed:m1,m3``
    the listed modalities (indices or names) are missing in every sample.
``file:PATH``
    a mask CSV in the authors' format (see :func:`save_mask_csv`).

``Scenario.sample(n, num_modalities, seed)`` returns ``observed``, a bool ``[n, M]`` array
(True = available), the same convention as :class:`~dymo.data.batch.MultimodalBatch`.
No scenario ever yields a sample with every modality missing.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dymo.data.dataset import MultimodalDataset
from dymo.errors import ScenarioError
from dymo.utils.io import atomic_write

KNOWN_SCENARIOS: tuple[str, ...] = ("none", "random:ETA", "count:K", "fixed:I,J,...", "file:PATH")


def effective_missing_rate(eta: float, num_modalities: int) -> float:
    """Expected fraction of missing (sample, modality) entries under ``random:ETA``.

    The number of missing modalities of a sample is Binomial(M, eta), mean ``M * eta``. Only
    the all-missing outcome (probability ``eta**M``) is changed, from M missing to M - 1, so
    the mean becomes ``M * eta - eta**M`` and the rate ``eta - eta**M / M``.
    """
    _check_eta(eta)
    if num_modalities < 1:
        raise ScenarioError(f"need at least one modality, got {num_modalities}")
    return float(eta - eta**num_modalities / num_modalities)


def _check_eta(eta: float) -> None:
    if not (0.0 <= eta < 1.0):
        raise ScenarioError(f"random:ETA needs ETA in [0, 1), got {eta}")


@dataclass(frozen=True)
class Scenario:
    """A parsed scenario; build with :func:`parse_scenario`.

    ``kind`` is one of ``none``, ``random``, ``count``, ``fixed``, ``file``; ``eta``, ``count``,
    ``modalities`` (indices or names, as written) and ``path`` hold its parameter.
    """

    kind: str
    eta: float = 0.0
    count: int = 0
    modalities: tuple[int | str, ...] = ()
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "random":
            return f"random:{self.eta:g}"
        if self.kind == "count":
            return f"count:{self.count}"
        if self.kind == "fixed":
            return "fixed:" + ",".join(str(m) for m in self.modalities)
        if self.kind == "file":
            return f"file:{self.path}"
        return "none"

    def expected_missing_rate(self, num_modalities: int) -> float | None:
        """Expected fraction of missing entries (None for ``file``: it is whatever the file says)."""
        if self.kind == "none":
            return 0.0
        if self.kind == "random":
            return effective_missing_rate(self.eta, num_modalities)
        if self.kind == "count":
            return self.count / num_modalities
        if self.kind == "fixed":
            return len(self.modalities) / num_modalities
        return None

    def sample(
        self,
        n: int,
        num_modalities: int,
        seed: int = 0,
        names: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Observed mask, bool ``[n, num_modalities]`` (True = available), deterministic by seed.

        ``names`` (the dataset's modality names, in column order) is needed only when a
        ``fixed`` scenario lists modalities by name.
        """
        m = int(num_modalities)
        if m < 1:
            raise ScenarioError(f"need at least one modality, got {num_modalities}")
        if n < 0:
            raise ScenarioError(f"number of samples must be >= 0, got {n}")
        if names is not None and len(names) != m:
            raise ScenarioError(f"{len(names)} modality names given for {m} modalities")
        rng = np.random.default_rng(seed)
        if self.kind == "none":
            return np.ones((n, m), dtype=bool)
        if self.kind == "random":
            _check_eta(self.eta)
            missing = rng.random((n, m)) < self.eta
            # Drawn for every row (not only empty ones) so that the stream does not depend on
            # which rows came out empty.
            restore = rng.integers(0, m, size=n)
            empty = missing.all(axis=1)
            missing[np.nonzero(empty)[0], restore[empty]] = False
            return ~missing
        if self.kind == "count":
            if not 0 <= self.count <= m - 1:
                raise ScenarioError(
                    f"count:{self.count}: K must be in 0..{m - 1} for {m} modalities "
                    "(K = M would leave samples with no modality)"
                )
            # The K smallest of M iid uniform keys are a uniformly random K-subset.
            keys = rng.random((n, m))
            ranks = keys.argsort(axis=1).argsort(axis=1)
            return ranks >= self.count
        if self.kind == "fixed":
            cols = self._fixed_columns(m, names)
            observed = np.ones((n, m), dtype=bool)
            observed[:, cols] = False
            return observed
        if self.kind == "file":
            observed = load_mask_csv(self.path, num_samples=n, num_modalities=m)
            return observed
        raise ScenarioError(f"unknown scenario kind {self.kind!r}; known: {', '.join(KNOWN_SCENARIOS)}")

    def _fixed_columns(self, m: int, names: Sequence[str] | None) -> list[int]:
        cols: list[int] = []
        for item in self.modalities:
            if isinstance(item, int):
                if not 0 <= item < m:
                    raise ScenarioError(f"{self}: modality index {item} outside 0..{m - 1}")
                cols.append(item)
            else:
                if names is None:
                    raise ScenarioError(f"{self}: modality {item!r} is given by name; pass the dataset's modality names")
                if item not in names:
                    raise ScenarioError(f"{self}: unknown modality {item!r}; this dataset has {list(names)}")
                cols.append(list(names).index(item))
        if len(set(cols)) != len(cols):
            raise ScenarioError(f"{self}: a modality is listed twice")
        if len(cols) >= m:
            raise ScenarioError(f"{self}: every modality would be missing; list at most {m - 1} of {m}")
        return cols


def parse_scenario(text: str) -> Scenario:
    """Parse ``none`` | ``random:ETA`` | ``count:K`` | ``fixed:I,J`` (indices or names) | ``file:PATH``."""
    if not isinstance(text, str) or not text.strip():
        raise ScenarioError(f"empty scenario; expected one of {', '.join(KNOWN_SCENARIOS)}")
    text = text.strip()
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    arg = arg.strip()
    if kind == "none":
        if sep and arg:
            raise ScenarioError(f"scenario {text!r}: 'none' takes no argument")
        return Scenario("none")
    if kind not in ("random", "count", "fixed", "file"):
        raise ScenarioError(f"unknown scenario {text!r}; expected one of {', '.join(KNOWN_SCENARIOS)}")
    if not arg:
        raise ScenarioError(f"scenario {text!r} needs an argument, e.g. random:0.4, count:2, fixed:1,3, file:masks.csv")
    if kind == "random":
        try:
            eta = float(arg)
        except ValueError:
            raise ScenarioError(f"scenario {text!r}: ETA must be a number in [0, 1), got {arg!r}") from None
        _check_eta(eta)
        return Scenario("random", eta=eta)
    if kind == "count":
        try:
            k = int(arg)
        except ValueError:
            raise ScenarioError(f"scenario {text!r}: K must be an integer, got {arg!r}") from None
        if k < 0:
            raise ScenarioError(f"scenario {text!r}: K must be >= 0")
        return Scenario("count", count=k)
    if kind == "fixed":
        items: list[int | str] = []
        for part in arg.split(","):
            part = part.strip()
            if not part:
                raise ScenarioError(f"scenario {text!r}: empty item in the modality list")
            items.append(int(part) if part.lstrip("-").isdigit() else part)
        if any(isinstance(i, int) and i < 0 for i in items):
            raise ScenarioError(f"scenario {text!r}: modality indices must be >= 0")
        if len(set(items)) != len(items):
            raise ScenarioError(f"scenario {text!r}: a modality is listed twice")
        return Scenario("fixed", modalities=tuple(items))
    return Scenario("file", path=arg)


# -- mask files ---------------------------------------------------------------------------


def save_mask_csv(path: str | os.PathLike, observed: np.ndarray) -> None:
    """Write a mask in the authors' format: one row per sample, one 0/1 column per modality,
    **1 = missing**, comma-separated, no header. Atomic."""
    observed = np.asarray(observed)
    if observed.ndim != 2 or observed.dtype != bool:
        raise ScenarioError(f"observed mask must be a 2-D bool array, got {observed.dtype} {observed.shape}")
    empty = np.nonzero(~observed.any(axis=1))[0]
    if len(empty):
        raise ScenarioError(f"sample {int(empty[0])}: every modality missing; refusing to write such a mask")
    missing = (~observed).astype(np.uint8)
    buf = io.StringIO()
    np.savetxt(buf, missing, fmt="%d", delimiter=",")
    with atomic_write(path) as f:
        f.write(buf.getvalue())


def load_mask_csv(
    path: str | os.PathLike,
    num_samples: int | None = None,
    num_modalities: int | None = None,
) -> np.ndarray:
    """Read a mask CSV (1 = missing) and return ``observed`` (True = available), bool ``[n, M]``.

    Checks the row and column counts against ``num_samples``/``num_modalities`` when given, that
    every value is 0 or 1 and that no row has every modality missing; errors name the line.
    """
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"{path}: mask file not found")
    rows: list[list[int]] = []
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            values = []
            for col, cell in enumerate(row):
                c = cell.strip()
                if c not in ("0", "1"):
                    raise ScenarioError(
                        f"{path}: line {lineno}, column {col + 1}: value {cell!r}; mask files hold only 0 "
                        "(observed) and 1 (missing)"
                    )
                values.append(int(c))
            if rows and len(values) != len(rows[0]):
                raise ScenarioError(
                    f"{path}: line {lineno} has {len(values)} columns, the first row has {len(rows[0])}"
                )
            if all(values):
                raise ScenarioError(f"{path}: line {lineno} (sample {len(rows)}): every modality is missing")
            rows.append(values)
    if not rows:
        raise ScenarioError(f"{path}: empty mask file")
    missing = np.asarray(rows, dtype=bool)
    n, m = missing.shape
    if num_modalities is not None and m != num_modalities:
        raise ScenarioError(f"{path}: {m} columns, but the dataset has {num_modalities} modalities")
    if num_samples is not None and n != num_samples:
        raise ScenarioError(f"{path}: {n} rows, but the dataset has {num_samples} samples")
    return ~missing


# -- value-level missingness (tables) ------------------------------------------------------


def value_mask(shape: int | Sequence[int], gamma: float, seed: int = 0) -> np.ndarray:
    """Entry-level missingness inside a vector (tabular) modality: bool array of ``shape``,
    **True = value observed**; each entry is missing independently with probability ``gamma``
    in ``[0, 1]``. Deterministic by seed."""
    if not (0.0 <= gamma <= 1.0):
        raise ScenarioError(f"value missing rate gamma must be in [0, 1], got {gamma}")
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ScenarioError(f"value_mask: negative dimension in shape {shape}")
    rng = np.random.default_rng(seed)
    return rng.random(shape) >= gamma



VALUE_STRATEGIES: tuple[str, ...] = ("value", "feature")


def parse_value_missing(text: str | float) -> tuple[str, float]:
    """Parse a value-missingness option: ``GAMMA`` or ``value:GAMMA`` (each table entry missing
    independently with probability GAMMA), ``feature:GAMMA`` (the same ``round(GAMMA * F)``
    columns missing in every row, TIP's "feature" strategy), or ``none``. Returns
    ``(strategy, gamma)``; ``none`` is ``("value", 0.0)``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        strategy, arg = "value", str(text)
    else:
        raw = str(text).strip()
        if raw.lower() == "none":
            return "value", 0.0
        strategy, sep, arg = raw.partition(":")
        if not sep:
            strategy, arg = "value", raw
        strategy = strategy.strip().lower()
    if strategy not in VALUE_STRATEGIES:
        raise ScenarioError(f"value missingness {text!r}: strategy must be one of {VALUE_STRATEGIES} (e.g. value:0.3)")
    try:
        gamma = float(arg)
    except ValueError:
        raise ScenarioError(f"value missingness {text!r}: GAMMA must be a number in [0, 1), got {arg!r}") from None
    if not 0.0 <= gamma < 1.0:
        raise ScenarioError(f"value missingness {text!r}: GAMMA must be in [0, 1), got {gamma}")
    return strategy, gamma


def apply_value_missing(
    dataset: MultimodalDataset,
    gamma: float | str,
    seed: int = 0,
    modalities: Sequence[str] | None = None,
    strategy: str | None = None,
    missing: dict[str, np.ndarray] | None = None,
) -> MultimodalDataset:
    """Partly missing tables: a copy of ``dataset`` whose vector modalities hold NaN at missing
    entries (the convention :mod:`dymo.recovery.imputers` and the ``tabular`` encoder read).

    ``gamma``: a rate in [0, 1) or a string for :func:`parse_value_missing` (``"value:0.3"``,
    ``"feature:0.5"``); ``strategy`` overrides the parsed one. ``modalities``: the vector
    modalities to touch (default: every vector modality). ``missing``: explicit masks instead
    (modality -> bool ``[N, F]``, True = missing, e.g. a TIP ``missing_mask/*.npy`` file);
    ``gamma`` is then ignored.

    - ``value``: each entry missing independently with probability gamma (:func:`value_mask`,
      seeded per modality); a row left with no value gets one entry, chosen uniformly, back (as
      ``random:ETA`` does for modalities), so an observed table always carries something and the
      expected missing fraction is ``gamma - gamma**F / F``.
    - ``feature``: ``round(gamma * F)`` columns, chosen once (seeded), missing in every row.

    The modality-level ``observed`` mask is kept as is; entries of rows whose modality is
    unobserved are set to NaN too (they are ignored downstream either way).
    """
    specs = {s.name: s for s in dataset.specs}
    names = list(modalities) if modalities is not None else [s.name for s in dataset.specs if s.kind_object.tabular]
    for name in names:
        if name not in specs:
            raise ScenarioError(f"value missingness: unknown modality {name!r}; this dataset has {list(specs)}")
        if not specs[name].kind_object.tabular:
            raise ScenarioError(f"value missingness: modality {name!r} is {specs[name].kind}, only vector modalities hold values")
    if not names:
        raise ScenarioError(f"value missingness: dataset {dataset.name!r} has no vector modality")
    parsed_strategy, rate = parse_value_missing(gamma) if missing is None else ("value", 0.0)
    strategy = strategy or parsed_strategy
    if strategy not in VALUE_STRATEGIES:
        raise ScenarioError(f"value missingness: strategy must be one of {VALUE_STRATEGIES}, got {strategy!r}")
    n = len(dataset)
    arrays = dict(dataset.arrays)
    seeds = np.random.SeedSequence(seed).spawn(len(names))
    for ss, name in zip(seeds, names, strict=True):
        f = specs[name].shape[0]
        if missing is not None:
            if name not in missing:
                continue
            holes = np.asarray(missing[name])
            if holes.shape != (n, f) or holes.dtype != bool:
                raise ScenarioError(f"value missingness: mask for {name!r} must be bool {(n, f)}, got {holes.dtype} {holes.shape}")
        elif strategy == "value":
            rng = np.random.default_rng(ss)
            holes = ~value_mask((n, f), rate, seed=int(rng.integers(2**63)))
            empty = np.nonzero(holes.all(axis=1))[0]
            if len(empty):
                holes[empty, rng.integers(0, f, size=len(empty))] = False
        else:
            k = round(rate * f)
            if k >= f:
                raise ScenarioError(f"value missingness feature:{rate}: all {f} columns of {name!r} would be missing")
            cols = np.random.default_rng(ss).choice(f, size=k, replace=False)
            holes = np.zeros((n, f), dtype=bool)
            holes[:, cols] = True
        x = np.array(dataset.arrays[name], dtype=np.float32, copy=True)
        x[holes] = np.nan
        arrays[name] = x
    return MultimodalDataset(dataset.specs, arrays, dataset.labels, dataset.class_names, dataset.observed, dataset.name)


def scenario_mask(scenario: str, n: int, modalities: Sequence[str], seed: int) -> torch.Tensor:
    """The observed mask (True = available) a scenario string gives for ``n`` samples."""
    return torch.from_numpy(parse_scenario(scenario).sample(n, len(modalities), seed=seed, names=list(modalities)))
