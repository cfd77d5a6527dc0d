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

Inference is vectorised over a whole batch with mixed patterns: the encoders run once per
observed slot, the scores ``q . sum_{m in S} E[n, m]`` are accumulated one modality at a time
(chunked matrix products over queries), and the key norms ``||sum_{m in S} E[n, m]||`` come
from per-training-sample Gram matrices ``E[n] E[n]^T`` (cached per pattern), so per-pattern
keys are never built.

**Incomplete training data.** A training row's unobserved modalities get a zero embedding, so
its key is built from the modalities it observes (``S`` ∩ its own), and a row can only donate
modalities it observes: a query's neighbour is searched among the rows that observe every
modality the query misses; when no row does, each missing modality is taken from the nearest
row that observes it.

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

from dymo.data.batch import MultimodalBatch, zero_nan_values
from dymo.data.dataset import MultimodalDataset
from dymo.errors import BundleError, ConfigError
from dymo.recovery.base import Recoverer, RecovererConfig, TrainingData, require_weights
from dymo.recovery.coherence import UnimodalClassifier, UnimodalConfig
from dymo.utils.subsets import masks_to_codes

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
    chunk_size: int = 256  # queries scored at once: chunk_size x N floats of memory
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
        self._emb: torch.Tensor | None = None  # derived search tables, see _prepare
        self.fit_device = torch.device("cpu")  # where fit trains the embedder (see to())

    # -- fitting ---------------------------------------------------------------------------
    def _fit(self, train: MultimodalDataset, progress: bool) -> None:
        data = TrainingData(train)
        data.check_storable(self.config.max_embedded_mb, "retrieval")
        self.embedder = UnimodalClassifier(self.specs, self.class_names, self.config.embedder_config()).to(self.fit_device)
        self.embedder.fit(train, progress=progress, description="retrieval embedder")
        self.train_embeddings = self.embedder.embed_dataset(train, progress=progress, dtype=torch.float16).cpu()
        self.embedder.to("cpu")  # the search runs on the CPU
        if not train.observed.all():
            self.train_embeddings[~torch.from_numpy(np.asarray(train.observed))] = 0  # see the module doc
        self._emb = None
        self.train_data = data

    # -- inference -------------------------------------------------------------------------
    def _recover_missing(self, batch: MultimodalBatch) -> dict[str, torch.Tensor]:
        assert self.embedder is not None and self.train_embeddings is not None and self.train_data is not None
        self.embedder.eval()
        batch = batch.to("cpu")  # retrieval runs on the CPU; merge_recovered moves results back
        b, m = len(batch), len(self.specs)
        d = self.train_embeddings.shape[-1]
        needs = ~batch.observed.all(dim=1)
        # Encoders run once per observed slot.
        query = torch.zeros(b, m, d)
        for j, name in enumerate(self.modalities):
            rows = batch.observed[:, j] & needs
            if rows.any():
                x = batch.data[name][rows]
                x = zero_nan_values(x)
                query[rows, j] = self.embedder.features(name, x).float()
        query_sum = query.sum(1)  # [B, d]; a positive per-query scale does not change the ranking
        codes = masks_to_codes(batch.observed)
        neighbors = torch.full((b,), -1, dtype=torch.long)
        donors = torch.full((b, m), -1, dtype=torch.long)  # per modality (incomplete training data only)
        todo = torch.nonzero(needs).flatten()
        for s in range(0, len(todo), self.config.chunk_size):
            rows = todo[s : s + self.config.chunk_size]
            neighbors[rows], donors[rows] = self._neighbors(query_sum[rows], batch.observed[rows], codes[rows])
        self.last_neighbors = neighbors
        return self._gather(batch, torch.where(donors >= 0, donors, neighbors.unsqueeze(1)))

    def _prepare(self) -> None:
        """Derived search tables (float32 ``[M, N, d]`` embeddings, per-sample Gram matrices)."""
        if getattr(self, "_emb", None) is not None:
            return
        assert self.train_embeddings is not None
        e = self.train_embeddings.float()  # [N, M, d]
        self._emb = e.transpose(0, 1).contiguous()  # [M, N, d]
        self._gram = e @ e.transpose(1, 2)  # [N, M, M]
        self._inv_norm: dict[int, torch.Tensor] = {}
        self._full: torch.Tensor | None = None
        # Rows observe a modality iff its (unit-norm) embedding is not zeroed (see the module doc).
        observed = e.abs().sum(-1) > 0  # [N, M]
        self._lacks: torch.Tensor | None = None if bool(observed.all()) else (~observed).float()

    def _inverse_key_norms(self, code: int) -> torch.Tensor:
        """``1 / ||sum_{m in S} E[n, m]||`` for the subset with bit code ``code``, cached."""
        if code not in self._inv_norm:
            sel = ((code >> torch.arange(len(self.specs))) & 1).float()
            sq = torch.einsum("nij,i,j->n", self._gram, sel, sel)
            self._inv_norm[code] = sq.clamp(min=1e-12).rsqrt()
        return self._inv_norm[code]

    def _neighbors(self, q: torch.Tensor, observed: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest training rows (k=1) or the medoid of the k nearest, and per-modality donors.

        ``q [c, d]`` is the sum of each query's observed embeddings. The cosine similarity to
        ``key_n = normalise(sum_{m in S} E[n, m])`` is ``q . sum_{m in S} E[n, m] / ||...||``
        up to a positive per-query factor; it is accumulated one modality at a time and the key
        norms come from per-sample Gram matrices, so keys are never materialised.

        Returns ``(neighbour [c], donors [c, M])``; ``donors`` is -1 except for queries that no
        training row can serve whole (incomplete training data), whose missing modalities each
        come from the best row observing it (their ``neighbour`` is then -1).
        """
        self._prepare()
        n_train = self._emb.shape[1]
        m = len(self.specs)
        scores = torch.zeros(len(q), n_train)
        for j in range(m):
            rows = torch.nonzero(observed[:, j]).flatten()
            if len(rows):
                scores.index_add_(0, rows, q[rows] @ self._emb[j].T)
        uniq, inv = torch.unique(codes, return_inverse=True)
        scale = torch.stack([self._inverse_key_norms(int(c)) for c in uniq])  # [u, N]
        scores.mul_(scale[inv])
        donors = torch.full((len(q), m), -1, dtype=torch.long)
        if self._lacks is not None:
            # A row can donate only what it observes: candidates observe all the query misses.
            open_scores = scores
            scores = scores.masked_fill((~observed).float() @ self._lacks.T > 0, float("-inf"))
            alone = torch.isinf(scores).all(1)
            for i in torch.nonzero(alone).flatten().tolist():
                for j in torch.nonzero(~observed[i]).flatten().tolist():
                    has = self._lacks[:, j] == 0
                    if not bool(has.any()):
                        raise BundleError(f"retrieval: no training row observes modality {self.modalities[j]!r}")
                    donors[i, j] = int(open_scores[i].masked_fill(~has, float("-inf")).argmax())
            scores[alone] = 0.0  # unused (donors set), keeps topk finite
        k = min(self.config.k, n_train)
        if k == 1:
            best = scores.argmax(dim=1)
        else:
            cand = scores.topk(k, dim=1)
            idx = torch.where(torch.isinf(cand.values), cand.indices[:, :1], cand.indices)  # fewer than k donors
            if self._full is None:
                self._full = F.normalize(self._emb.mean(0), dim=-1)  # all-modality embedding [N, d]
            fc = self._full[idx]  # [c, k, d]
            medoid = (fc @ fc.transpose(1, 2)).sum(-1).argmax(1, keepdim=True)
            best = idx.gather(1, medoid).squeeze(1)
        return torch.where((donors >= 0).any(1), torch.full_like(best, -1), best), donors

    def _gather(self, batch: MultimodalBatch, neighbors: torch.Tensor) -> dict[str, torch.Tensor]:
        """Missing slots from training rows: ``neighbors`` is ``[B]`` or per modality ``[B, M]``."""
        assert self.train_data is not None
        arrays = self.train_data.dataset.arrays
        if neighbors.ndim == 1:
            neighbors = neighbors.unsqueeze(1).expand(-1, len(self.specs))
        filled: dict[str, torch.Tensor] = {}
        for j, spec in enumerate(self.specs):
            miss = ~batch.observed[:, j]
            if not miss.any():
                continue
            rows = neighbors[miss, j].numpy()
            uniq, inv = np.unique(rows, return_inverse=True)  # sorted reads are fast on memmaps
            x = spec.to_tensor(np.ascontiguousarray(arrays[spec.name][uniq]))[torch.from_numpy(inv.reshape(-1))]
            out = torch.zeros_like(batch.data[spec.name])
            out[miss] = x.to(out.dtype)
            filled[spec.name] = out
        return filled

    def to(self, device: torch.device | str) -> RetrievalRecoverer:
        """The embedder of a later :meth:`fit` trains on ``device``; the search (and so
        :meth:`recover`) always runs on the CPU."""
        self.fit_device = torch.device(device)
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
        self._emb = None
        self.train_data = TrainingData.load(path, extra["train_data"], self.specs, self.class_names, train=train)
        if self.train_embeddings.shape[0] != len(self.train_data.dataset):
            raise BundleError(
                f"{path}: {self.train_embeddings.shape[0]} stored embeddings but the training data has "
                f"{len(self.train_data.dataset)} rows"
            )
