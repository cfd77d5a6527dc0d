"""Judging recoveries: independent unimodal classifiers and the recovery report.

*Coherence* (Shi et al., 2019; Sutter et al., 2021) is the accuracy of an independent,
per-modality classifier on a *recovered* modality against the sample's true label: a recovery
can be blurry yet coherent, or sharp yet of the wrong class (misaligned). We report it per
modality and by the number of observed modalities, next to the reconstruction error.

:class:`UnimodalClassifier` holds one small network per modality (image: 2 strided convs;
vector: standardise + MLP; text: embedding + conv + max-pool), trained jointly, one
cross-entropy per modality, with a cosine-softmax head so that the L2-normalised penultimate
features are a good cosine-retrieval space (:mod:`dymo.recovery.retrieval` reuses it as its
embedder). Use a *separately trained* one (other seed, other width) as the judge.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dymo.config import Config
from dymo.data.batch import MultimodalBatch, zero_nan_values
from dymo.data.dataset import MultimodalDataset
from dymo.data.specs import ModalitySpec, specs_from_list
from dymo.errors import BundleError, ConfigError, DataError
from dymo.models.networks import build_network
from dymo.recovery.base import Recoverer
from dymo.training.engine import FitConfig, fit_module
from dymo.utils.artifact import load_weights, read_manifest, write_manifest
from dymo.utils.io import atomic_write, save_tensors
from dymo.utils.progress import progress_bar

log = logging.getLogger("dymo.recovery")

CLASSIFIER_KIND = "unimodal_classifier"


@dataclass
class UnimodalConfig(Config):
    embed_dim: int = 64
    width: int = 16  # image: conv channels width -> 2*width
    hidden: int = 128  # vector MLP / text conv width
    text_embed: int = 32
    epochs: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    cosine_scale: float = 16.0
    seed: int = 0

    def validate(self) -> None:
        for key in ("embed_dim", "width", "hidden", "text_embed", "epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key {key!r}: must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0 or self.cosine_scale <= 0 or self.weight_decay < 0:
            raise ConfigError("config keys lr and cosine_scale must be > 0, weight_decay >= 0")


class UnimodalClassifier(nn.Module):
    """One independent classifier per modality (see the module doc).

    ``embed(data)`` gives L2-normalised features per modality, ``logits(data)`` the per-modality
    class scores; both run only the modalities present as keys of ``data``.
    """

    def __init__(self, specs: list[ModalitySpec], class_names: list[str], config: UnimodalConfig | None = None) -> None:
        super().__init__()
        self.config = config or UnimodalConfig()
        self.specs = list(specs)
        self.class_names = list(class_names)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.encoders = nn.ModuleDict({s.name: build_network(s, "judge", self.config, self.config.embed_dim) for s in self.specs})
            self.heads = nn.ParameterDict(
                {s.name: nn.Parameter(torch.randn(len(class_names), self.config.embed_dim) * 0.1) for s in self.specs}
            )

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def features(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoders[name](x), dim=-1)

    def embed(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: self.features(k, v) for k, v in data.items() if k in self.encoders}

    def logits_from_features(self, name: str, z: torch.Tensor) -> torch.Tensor:
        return self.config.cosine_scale * z @ F.normalize(self.heads[name], dim=-1).T

    def logits(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: self.logits_from_features(k, z) for k, z in self.embed(data).items()}

    @torch.no_grad()
    def predict(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        was = self.training
        self.eval()
        out = {k: v.argmax(-1) for k, v in self.logits(data).items()}
        self.train(was)
        return out

    # -- training --------------------------------------------------------------------------
    def fit(self, train: MultimodalDataset, progress: bool = True, description: str = "unimodal classifiers") -> UnimodalClassifier:
        """Train every modality's classifier jointly (sum of per-modality cross-entropies).

        On an incomplete training set each modality's classifier trains on the samples that
        observe it (and vector statistics come from those rows).
        """
        cfg = self.config
        if list(train.modalities) != list(self.modalities):
            raise DataError(f"training set modalities {list(train.modalities)} != classifier's {list(self.modalities)}")
        complete = bool(train.observed.all())
        for j, s in enumerate(self.specs):
            if s.kind_object.tabular:  # the judge standardises tables with the training statistics
                arr = np.asarray(train.arrays[s.name], dtype=np.float64)
                if not complete:
                    arr = arr[train.observed[:, j]]
                    if len(arr) == 0:
                        raise DataError(f"training set {train.name!r}: no sample observes modality {s.name!r}")
                enc = self.encoders[s.name]
                enc.mean.copy_(torch.from_numpy(np.nanmean(arr, axis=0)).float())
                enc.std.copy_(torch.from_numpy(np.nanstd(arr, axis=0)).float().clamp(min=1e-6))
        fit = FitConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed)
        device = next(self.parameters()).device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self._description = description
            fit_module(self, train, fit, progress=progress, name=description, device=device)
        return self

    # The training engine's hooks (dymo.training.engine): epoch e shuffles with seed * 1000 + e.
    def epoch_seeds(self, epoch: int) -> tuple[int, int]:
        return self.config.seed * 1000 + epoch, 0

    def on_epoch_start(self, epoch: int) -> None:
        self._correct = self._total = 0

    def training_loss(self, batch: MultimodalBatch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Sum over modalities of the cross-entropy on the samples that observe the modality."""
        y = batch.labels
        assert y is not None
        complete = bool(batch.observed.all())
        loss = torch.zeros((), device=y.device)
        for name, lg in self.logits({k: zero_nan_values(v) for k, v in batch.data.items()}).items():
            yj = y
            if not complete:
                rows = batch.observed[:, self.modalities.index(name)]
                if not bool(rows.any()):
                    loss = loss + 0.0 * lg.sum()
                    continue
                lg, yj = lg[rows], y[rows]
            loss = loss + F.cross_entropy(lg, yj)
            self._correct += int((lg.argmax(-1) == yj).sum())
            self._total += len(yj)
        return loss, {"train_acc": self._correct / max(self._total, 1)}

    def on_epoch_end(self, epoch: int) -> None:
        name = getattr(self, "_description", "unimodal classifiers")
        log.info("%s epoch %d: train accuracy %.4f", name, epoch + 1, self._correct / max(self._total, 1))

    @torch.no_grad()
    def embed_dataset(self, ds: MultimodalDataset, batch_size: int = 1024, progress: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Normalised features of every row and modality, ``[N, M, embed_dim]``."""
        self.eval()
        device = next(self.parameters()).device
        out = torch.empty(len(ds), len(self.specs), self.config.embed_dim, dtype=dtype)
        with progress_bar(progress) as bar:
            task = bar.add_task("embedding training set", total=len(ds), info="") if bar else None
            for start in range(0, len(ds), batch_size):
                idx = np.arange(start, min(start + batch_size, len(ds)))
                batch = ds.batch(idx)
                feats = self.embed({k: zero_nan_values(v).to(device) for k, v in batch.data.items()})
                out[start : start + len(idx)] = torch.stack([feats[n] for n in self.modalities], 1).to("cpu", dtype)
                if bar:
                    bar.update(task, advance=len(idx))
        return out

    # -- persistence -----------------------------------------------------------------------
    def save(self, path_dir: str | os.PathLike) -> Path:
        path = Path(path_dir)
        path.mkdir(parents=True, exist_ok=True)
        save_tensors(path / "weights.safetensors", dict(self.state_dict()))
        write_manifest(path, "classifier", CLASSIFIER_KIND, self)
        return path

    @classmethod
    def load(cls, path_dir: str | os.PathLike) -> UnimodalClassifier:
        path = Path(path_dir)
        cfg_path = path / "config.json"
        meta = read_manifest(path, "classifier", required={"kind": str, "config": dict, "specs": list, "class_names": list}, what="unimodal classifier")
        if meta["kind"] != CLASSIFIER_KIND:
            raise BundleError(f"{cfg_path}: not a {CLASSIFIER_KIND} (kind {meta.get('kind')!r})")
        model = cls(specs_from_list(meta["specs"]), meta["class_names"], UnimodalConfig.from_dict(meta["config"]))
        tensors = load_weights(path / "weights.safetensors")
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise BundleError(f"{path / 'weights.safetensors'}: does not fit the config ({e})") from None
        model.eval()
        return model


# -- the report ----------------------------------------------------------------------------

def default_report_masks(num_samples: int, num_modalities: int, seed: int = 0) -> torch.Tensor:
    """Each sample observes a uniformly drawn number k in 1..M-1 of modalities, the subset of
    size k uniform too. Bool ``[N, M]``."""
    if num_modalities < 2:
        raise DataError("a recovery report needs at least 2 modalities")
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(1, num_modalities, (num_samples,), generator=g)
    ranks = torch.rand(num_samples, num_modalities, generator=g).argsort(1).argsort(1)
    return ranks < k[:, None]


def recovery_report(
    recoverer: Recoverer,
    dataset: MultimodalDataset,
    classifier: UnimodalClassifier,
    observed: torch.Tensor | np.ndarray | None = None,
    *,
    batch_size: int = 256,
    seed: int = 0,
    grid_path: str | os.PathLike | None = None,
    grid_samples: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Recover ``dataset`` under ``observed`` (default :func:`default_report_masks`) and report

    - ``error[m]``: mean squared error per value on recovered slots of modality ``m`` (model
      input units: images in [0, 1]; vectors raw) or, for text, the token mismatch rate;
    - ``coherence``: accuracy of ``classifier`` on recovered modalities vs the true label,
      overall, per modality and by number of observed modalities; ``reference_accuracy`` is the
      same classifier on the true data of those slots (what perfect recovery would score);
    - ``throughput_samples_per_s`` of ``recover`` alone (wall clock, this machine).

    The recoverer sees NaN in missing slots (except the oracle, which must see the truth).
    """
    n, m = len(dataset), len(dataset.specs)
    mask = default_report_masks(n, m, seed) if observed is None else torch.as_tensor(np.asarray(observed)).bool()
    if tuple(mask.shape) != (n, m):
        raise DataError(f"report mask has shape {tuple(mask.shape)}, expected {(n, m)}")
    names = dataset.modalities
    err_sum = dict.fromkeys(names, 0.0)
    err_cnt = dict.fromkeys(names, 0)
    corr = torch.zeros(m, m + 1, dtype=torch.long)  # [modality, num_observed]
    ref_corr = torch.zeros(m, m + 1, dtype=torch.long)
    cnt = torch.zeros(m, m + 1, dtype=torch.long)
    seconds = 0.0
    grid: tuple[MultimodalBatch, MultimodalBatch] | None = None
    classifier.eval()
    with progress_bar(progress) as bar:
        task = bar.add_task(f"recovery report ({recoverer.name})", total=n, info="") if bar else None
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n))
            full = dataset.batch(idx)
            obs = mask[idx]
            given = full.with_observed(obs)
            if not recoverer.reads_missing:
                given = given.with_missing_filled()
            t0 = time.perf_counter()
            out = recoverer.recover(given)
            seconds += time.perf_counter() - t0
            if grid is None:
                grid = (full.index(slice(0, grid_samples)).with_observed(obs[:grid_samples]), out.index(slice(0, grid_samples)))
            k_obs = obs.sum(1)
            with torch.no_grad():
                pred = classifier.predict({k: out.data[k] for k in names})
                ref = classifier.predict({k: full.data[k] for k in names})
            for j, (name, spec) in enumerate(zip(names, dataset.specs, strict=True)):
                miss = ~obs[:, j]
                if not miss.any():
                    continue
                a, b = out.data[name][miss], full.data[name][miss]
                err_sum[name] += spec.kind_object.recovery_error(a, b)
                err_cnt[name] += a.numel()
                y = full.labels[miss]
                ks = k_obs[miss]
                corr[j].index_add_(0, ks, (pred[name][miss] == y).long())
                ref_corr[j].index_add_(0, ks, (ref[name][miss] == y).long())
                cnt[j].index_add_(0, ks, torch.ones_like(ks))
            if bar:
                bar.update(task, advance=len(idx))

    def acc(c: torch.Tensor, t: torch.Tensor) -> float | None:
        t = int(t.sum())
        return None if t == 0 else float(c.sum()) / t

    report: dict[str, Any] = {
        "recoverer": recoverer.name,
        "dataset": dataset.name,
        "num_samples": n,
        "num_recovered_slots": int(cnt.sum()),
        "error": {k: (err_sum[k] / err_cnt[k] if err_cnt[k] else None) for k in names},
        "error_kind": {s.name: s.kind_object.error_name for s in dataset.specs},
        "coherence": {
            "overall": acc(corr, cnt),
            "by_modality": {k: acc(corr[j], cnt[j]) for j, k in enumerate(names)},
            "by_num_observed": {str(k): acc(corr[:, k], cnt[:, k]) for k in range(1, m) if int(cnt[:, k].sum())},
        },
        "reference_accuracy": {
            "overall": acc(ref_corr, cnt),
            "by_num_observed": {str(k): acc(ref_corr[:, k], cnt[:, k]) for k in range(1, m) if int(cnt[:, k].sum())},
        },
        "recover_seconds": seconds,
        "throughput_samples_per_s": n / seconds if seconds > 0 else None,
    }
    report["chance"] = _chance(dataset)
    report["warnings"] = coherence_warnings(report)
    if grid_path is not None and grid is not None:
        report["grid"] = str(grid_path) if save_grid(grid[0], grid[1], dataset.specs, grid_path) else None
    return report


def _chance(dataset: MultimodalDataset) -> float:
    """Accuracy of always predicting the most frequent class of ``dataset``."""
    labels = np.asarray(dataset.labels) if hasattr(dataset, "labels") else None
    if labels is None or labels.size == 0:
        return 1.0 / max(1, len(dataset.class_names))
    return float(np.bincount(labels.astype(np.int64)).max() / labels.size)


#: Coherence counts as near chance when it closes less than this share of the gap between chance
#: and the judge's accuracy on the true data.
NEAR_CHANCE_SHARE = 0.25


def coherence_warnings(report: dict[str, Any]) -> list[str]:
    """Warnings for a report whose coherence is near chance (overall or for some number of
    observed modalities): such recoveries carry next to no label information (for MoPoE, often a
    collapse to the mean image; see ``docs/mopoe.md``)."""
    chance = report.get("chance")
    if chance is None:
        return []
    ref = report["reference_accuracy"]
    out = []
    items = [("overall", report["coherence"]["overall"], ref["overall"])]
    items += [(f"given {k} observed", v, ref["by_num_observed"].get(k)) for k, v in report["coherence"]["by_num_observed"].items()]
    for where, coh, top in items:
        if coh is None or top is None or top <= chance:
            continue
        if coh < chance + NEAR_CHANCE_SHARE * (top - chance):
            out.append(
                f"coherence {100 * coh:.1f}% ({where}) is near chance ({100 * chance:.1f}%; the judge scores "
                f"{100 * top:.1f}% on the true data): these recoveries carry little label information"
                + (" (a MoPoE trained with the authors' settings on a CPU budget collapses like this; see docs/mopoe.md)" if report.get("recoverer") == "mopoe" else "")
            )
    return out


def save_grid(original: MultimodalBatch, recovered: MultimodalBatch, specs: list[ModalitySpec], path: str | os.PathLike) -> bool:
    """PNG: per sample a row of originals and a row of recoveries (image modalities only).
    Observed cells are titled in green, recovered ones in red. Returns False if no images."""
    images = [s for s in specs if len(original) and s.kind_object.picture(original.data[s.name][0]) is not None]
    if not images or len(original) == 0:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = 2 * len(original), len(images)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.5 * rows), squeeze=False)
    names = list(original.modalities)
    for i in range(len(original)):
        for c, spec in enumerate(images):
            j = names.index(spec.name)
            seen = bool(original.observed[i, j])
            for r, (src, label) in enumerate(((original, "true"), (recovered, "observed" if seen else "recovered"))):
                ax = axes[2 * i + r, c]
                img = spec.kind_object.picture(src.data[spec.name][i])
                assert img is not None
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
                ax.set_xticks([])
                ax.set_yticks([])
                color = "black" if r == 0 else ("green" if seen else "red")
                ax.set_title(f"{spec.name}: {label}", fontsize=6, color=color)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
    return True


def iter_batches(ds: MultimodalDataset, batch_size: int) -> Iterator[MultimodalBatch]:
    for start in range(0, len(ds), batch_size):
        yield ds.batch(np.arange(start, min(start + batch_size, len(ds))))
