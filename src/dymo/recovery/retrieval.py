"""Retrieval (hot-deck) recovery in a learned embedding space.

A missing modality is filled with the *real* training data of the training sample most
similar to the query on the modalities the query does observe:

- Classic hot-deck imputation fills a missing value with an observed value from a similar
  "donor" record (Andridge & Little, "A review of hot deck imputation for survey
  non-response", International Statistical Review, 2010).
- M3Care (Zhang et al., "M3Care: Learning with missing modalities in multimodal healthcare
  data", KDD 2022) imputes missing modalities from similar patients found in a learned
  latent space. We keep its core idea (similarity in a task-aware latent space) in its
  simplest, training-free-at-inference form.

Design. Per-modality encoders are the penultimate, L2-normalised features of small
per-modality classifiers (:class:`~dymo.recovery.coherence.UnimodalClassifier`; labels are
used at training time only). After training, the embeddings ``E [N, M, d]`` of every training
sample and modality are stored (float16). For a query observing the set ``S``:

    q = normalise(mean_{m in S} e_m(query))
    key_n = normalise(mean_{m in S} E[n, m])     (computed per observed pattern, on the fly)
    neighbour = argmax_n cos(q, key_n)           (k = 1, the default)

With ``k > 1`` the neighbour is the *medoid* of the ``k`` most similar candidates: the
candidate whose all-modality embedding ``normalise(mean_m E[n, m])`` has the largest summed
cosine similarity to the other candidates (robust to one odd neighbour). One neighbour
supplies all of a sample's missing modalities, so they stay consistent with each other.

Inference is vectorised per observed pattern (samples grouped by pattern) with chunked
matrix products; the encoders run once per observed slot.

Training data are saved by reference (see :class:`~dymo.recovery.base.TrainingData`): the
save folder records the dataset's ``.npy`` files relative to itself plus a fingerprint, so
loading needs the built dataset to be where it was (or ``load(path, train=dataset)``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset
from dymo.errors import BundleError, ConfigError
from dymo.recovery.base import (
    Recoverer,
    RecovererConfig,
    TrainingData,
    group_by_pattern,
    require_weights,
)
from dymo.recovery.coherence import UnimodalClassifier, UnimodalConfig

log = logging.getLogger("dymo.recovery")


@dataclass
class RetrievalConfig(RecovererConfig):
    k: int = 1
    # embedder (a UnimodalClassifier) training
    embed_dim: int = 64
    width: int = 16
    hidden: int = 128
    text_embed: int = 32
    epochs: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    # inference / storage
    chunk_size: int = 512
    max_embedded_mb: float = 256.0

    def validate(self) -> None:
        if self.k < 1 or self.chunk_size < 1:
            raise ConfigError("config keys k and chunk_size must be >= 1")
        if self.max_embedded_mb < 0:
            raise ConfigError("config key 'max_embedded_mb' must be >= 0")
        self.embedder_config()  # validates the embedder keys

    def embedder_config(self) -> UnimodalConfig:
        return UnimodalConfig(
            embed_dim=self.embed_dim,
            width=self.width,
            hidden=self.hidden,
            text_embed=self.text_embed,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.seed,
        )


class RetrievalRecoverer(Recoverer):
    """Hot-deck retrieval of real training rows by cosine similarity in a learned space."""

    name = "retrieval"
    config_class = RetrievalConfig
    config: RetrievalConfig
    uses_training_data = True

    def __init__(self, config: RetrievalConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.embedder: UnimodalClassifier | None = None
        self.train_embeddings: torch.Tensor | None = None  # [N, M, d] float16
        self.train_data: TrainingData | None = None
        #: training-row index used for each sample of the last ``recover`` call (-1: none needed)
        self.last_neighbors: torch.Tensor | None = None

    # -- fitting ---------------------------------------------------------------------------
    def _fit(self, train: MultimodalDataset, progress: bool) -> None:
        data = TrainingData(train)
        data.check_storable(self.config.max_embedded_mb, "retrieval")
        self.embedder = UnimodalClassifier(self.specs, self.class_names, self.config.embedder_config())
        self.embedder.fit(train, progress=progress, description="retrieval embedder")
        self.train_embeddings = self.embedder.embed_dataset(train, progress=progress, dtype=torch.float16)
        self.train_data = data

    # -- inference -------------------------------------------------------------------------
    def _recover_missing(self, batch: MultimodalBatch) -> dict[str, torch.Tensor]:
        assert self.embedder is not None and self.train_embeddings is not None and self.train_data is not None
        self.embedder.eval()
        b, m = len(batch), len(self.specs)
        d = self.train_embeddings.shape[-1]
        needs = ~batch.observed.all(dim=1)
        # Encoders run once per observed slot.
        query = torch.zeros(b, m, d)
        for j, name in enumerate(self.modalities):
            rows = batch.observed[:, j] & needs
            if rows.any():
                x = batch.data[name][rows]
                if x.is_floating_point():
                    x = torch.nan_to_num(x, nan=0.0)
                query[rows, j] = self.embedder.features(name, x).float()
        neighbors = torch.full((b,), -1, dtype=torch.long)
        for pattern, idx in group_by_pattern(batch.observed):
            if bool(pattern.all()):
                continue
            neighbors[idx] = self._neighbors(F.normalize(query[idx][:, pattern].mean(1), dim=-1), pattern)
        self.last_neighbors = neighbors
        return self._gather(batch, neighbors)

    def _neighbors(self, q: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
        """Nearest training rows (k=1) or the medoid of the k nearest, for queries ``q [n, d]``."""
        emb = self.train_embeddings
        assert emb is not None
        keys = F.normalize(emb[:, pattern].float().mean(1), dim=-1)  # [N, d]
        k = min(self.config.k, keys.shape[0])
        out = torch.empty(q.shape[0], dtype=torch.long)
        full = None
        for s in range(0, q.shape[0], self.config.chunk_size):
            sims = q[s : s + self.config.chunk_size] @ keys.T  # [c, N]
            if k == 1:
                out[s : s + len(sims)] = sims.argmax(dim=1)
                continue
            cand = sims.topk(k, dim=1).indices  # [c, k]
            if full is None:
                full = F.normalize(emb.float().mean(1), dim=-1)
            fc = full[cand]  # [c, k, d]
            score = (fc @ fc.transpose(1, 2)).sum(-1)  # [c, k]
            out[s : s + len(sims)] = cand.gather(1, score.argmax(1, keepdim=True)).squeeze(1)
        return out

    def _gather(self, batch: MultimodalBatch, neighbors: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self.train_data is not None
        arrays = self.train_data.dataset.arrays
        filled: dict[str, torch.Tensor] = {}
        for j, spec in enumerate(self.specs):
            miss = ~batch.observed[:, j]
            if not miss.any():
                continue
            rows = neighbors[miss].numpy()
            uniq, inv = np.unique(rows, return_inverse=True)  # sorted reads are fast on memmaps
            x = spec.to_tensor(np.ascontiguousarray(arrays[spec.name][uniq]))[torch.from_numpy(inv.reshape(-1))]
            out = torch.zeros_like(batch.data[spec.name])
            out[miss] = x.to(out.dtype)
            filled[spec.name] = out
        return filled

    def to(self, device: torch.device | str) -> RetrievalRecoverer:
        if str(device) != "cpu":
            log.warning("retrieval recovery runs on the CPU; ignoring device %s", device)
        return self

    # -- persistence -----------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        assert self.embedder is not None and self.train_embeddings is not None
        out = {f"embedder.{k}": v for k, v in self.embedder.state_dict().items()}
        out["train_embeddings"] = self.train_embeddings
        return out

    def extra_state(self, path: Path) -> dict[str, Any]:
        assert self.train_data is not None
        return {"train_data": self.train_data.save(path)}

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any], path: Path, train: MultimodalDataset | None = None) -> None:
        require_weights(tensors, ["train_embeddings"], path)
        if "train_data" not in extra:
            raise BundleError(f"{path}: config.json has no training-data reference")
        self.embedder = UnimodalClassifier(self.specs, self.class_names, self.config.embedder_config())
        try:
            self.embedder.load_state_dict({k[len("embedder."):]: v for k, v in tensors.items() if k.startswith("embedder.")})
        except RuntimeError as e:
            raise BundleError(f"{path}: embedder weights do not fit the config ({e})") from None
        self.embedder.eval()
        self.train_embeddings = tensors["train_embeddings"]
        self.train_data = TrainingData.load(path, extra["train_data"], self.specs, self.class_names, train=train)
        if self.train_embeddings.shape[0] != len(self.train_data.dataset):
            raise BundleError(
                f"{path}: {self.train_embeddings.shape[0]} stored embeddings but the training data has "
                f"{len(self.train_data.dataset)} rows"
            )
