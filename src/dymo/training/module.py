"""LightningModule for the flexible backbone: random (or stratified) subsets per batch, encode once."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from dymo.data.batch import MultimodalBatch
from dymo.data.specs import specs_from_list
from dymo.models.backbone import BackboneConfig, FlexibleBackbone
from dymo.training.config import TrainConfig
from dymo.training.losses import prototype_loss
from dymo.utils.subsets import all_subsets, sample_subsets, stratified_subsets


class BackboneModule(L.LightningModule):
    """Trains :class:`FlexibleBackbone` as the DyMo authors do, or with a stratified schedule.

    Per batch (``subset_schedule="random"``, the paper's): K distinct non-empty subsets (drawn
    from a generator seeded by the global step, so every DDP rank and a resumed run draw the same ones); the encoders run once and the
    tokens are reused for all K fusion passes (the same gradient as re-encoding per subset).
    ``subset_schedule="stratified"`` (the default) adds every singleton and the full set to
    the K random subsets of each batch (duplicates removed): each modality is fused alone in
    every step, not in ~K/(2**M - 1) of them, at the cost of M + 1 more (cheap) fusion passes.
    Loss = mean over passes of CE + ``proto_weight`` x prototype loss, the latter from epoch
    ``proto_start_epoch`` (0-based) on, against class prototypes = mean training feature of
    the previous epoch (a buffer, all-reduced across ranks).
    """

    def __init__(self, specs: list, num_classes: int, backbone: dict, train: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_cfg = TrainConfig.from_dict(train)
        self.backbone = FlexibleBackbone(specs_from_list(specs), num_classes, BackboneConfig.from_dict(backbone))
        p = self.backbone.config.proj_dim
        self.register_buffer("prototypes", torch.zeros(num_classes, p))
        self.register_buffer("prototypes_ready", torch.tensor(False))
        # Per-epoch class sums of z: plain tensors, not buffers, since DDP broadcasts buffers
        # from rank 0 at every forward and would overwrite the other ranks' sums.
        self.proto_sum = torch.zeros(num_classes, p)
        self.proto_count = torch.zeros(num_classes)
        self.register_buffer("val_subsets", all_subsets(len(specs)), persistent=False)
        self._val_correct: torch.Tensor | None = None
        self._val_total: torch.Tensor | None = None

    @property
    def num_subsets(self) -> int:
        m = self.backbone.num_modalities
        k = self.train_cfg.subsets_per_batch
        if k is None:
            k = 5 if m >= 4 else 2
        return min(k, 2**m - 1)

    def subsets_for_step(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.train_cfg.seed * 1_000_003 + step)
        m = self.backbone.num_modalities
        if self.train_cfg.subset_schedule == "stratified":
            return stratified_subsets(m, self.num_subsets, g).to(self.device)
        return sample_subsets(m, self.num_subsets, g).to(self.device)

    def loss_for_tokens(
        self,
        tokens: torch.Tensor,
        labels: torch.Tensor,
        subsets: torch.Tensor,
        use_proto: bool,
        observed: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over the K subset passes of CE (+ prototype loss). Accumulates class feature sums.

        With ``observed`` (bool ``[B, M]``, an incomplete training set) a sample only ever trains
        on modalities it has. Pass ``S`` fuses each sample's ``S ∩ observed`` topped up, when that
        is smaller than ``S``, with other observed modalities drawn at random (``generator``) up to
        ``min(|S|, |observed|)`` modalities: intersecting alone would shrink the subsets an
        incomplete sample trains on, and the fusion of many modalities (what DyMo builds when it
        adds recoveries) would be trained far less than on complete data. A complete batch takes
        the same path as before (every row fuses ``S``).
        """
        b = tokens.shape[0]
        total = tokens.new_zeros(())
        ce_sum = tokens.new_zeros(())
        correct = tokens.new_zeros(())
        touch = tokens.sum()
        complete = observed is None or bool(observed.all())
        for used in subsets:
            rows_tokens, rows_labels = tokens, labels
            if complete:
                mask = used.expand(b, -1)
            else:
                assert observed is not None
                mask = size_matched_subsets(used, observed, generator)
                valid = mask.any(1)
                if not bool(valid.any()):
                    continue
                if not bool(valid.all()):
                    rows_tokens, rows_labels, mask = tokens[valid], labels[valid], mask[valid]
            out = self.backbone.fuse(rows_tokens, mask)
            ce = F.cross_entropy(out.logits, rows_labels)
            loss = ce
            if use_proto:
                loss = loss + self.train_cfg.proto_weight * prototype_loss(
                    out.z, rows_labels, self.prototypes, self.backbone.metric, self.train_cfg.temperature
                )
            total = total + loss
            ce_sum = ce_sum + ce.detach()
            correct = correct + (out.logits.argmax(1) == rows_labels).float().mean()
            touch = touch + out.z.sum()
            with torch.no_grad():
                self.proto_sum.index_add_(0, rows_labels, out.z.detach().float())
                self.proto_count.index_add_(0, rows_labels, torch.ones_like(rows_labels, dtype=torch.float))
        k = len(subsets)
        # Every parameter takes part in every step's graph (with a zero gradient when unused:
        # encoders outside the K subsets, the projector before the prototype loss starts), so
        # one process and DDP apply exactly the same optimizer updates.
        total = total + 0.0 * touch
        return total / k, {"ce": ce_sum / k, "acc": correct / k}

    def training_step(self, batch: MultimodalBatch, batch_idx: int) -> torch.Tensor:
        # Missing slots are zeroed before encoding (their content is never read).
        tokens = self.backbone.encode(batch.data, None if bool(batch.observed.all()) else batch.observed)
        use_proto = self.current_epoch >= self.train_cfg.proto_start_epoch and bool(self.prototypes_ready)
        step = self.global_step
        fill = torch.Generator().manual_seed(self.train_cfg.seed * 1_000_003 + step + 500_009)
        loss, stats = self.loss_for_tokens(
            tokens, batch.labels, self.subsets_for_step(step), use_proto, batch.observed, fill
        )
        bs = len(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=bs)
        self.log("train_acc", stats["acc"], prog_bar=True, batch_size=bs)
        return loss

    def on_train_epoch_start(self) -> None:
        self.proto_sum = torch.zeros_like(self.prototypes)
        self.proto_count = torch.zeros(self.prototypes.shape[0], device=self.device)

    def on_train_epoch_end(self) -> None:
        s, c = self.proto_sum.clone(), self.proto_count.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(s)
            torch.distributed.all_reduce(c)
        seen = c > 0
        self.prototypes[seen] = s[seen] / c[seen].unsqueeze(1)
        self.prototypes_ready.fill_(True)

    def on_validation_epoch_start(self) -> None:
        self._val_correct = torch.zeros(len(self.val_subsets), device=self.device)
        self._val_total = torch.zeros(len(self.val_subsets), device=self.device)

    def validation_step(self, batch: MultimodalBatch, batch_idx: int) -> None:
        tokens = self.backbone.encode(batch.data, None if bool(batch.observed.all()) else batch.observed)
        b = len(batch)
        assert self._val_correct is not None and self._val_total is not None
        complete = bool(batch.observed.all())
        for j, used in enumerate(self.val_subsets):
            # An incomplete validation set scores subset S on the samples that observe all of S.
            rows = torch.ones(b, dtype=torch.bool, device=tokens.device) if complete else ~(used & ~batch.observed).any(1)
            if not bool(rows.any()):
                continue
            out = self.backbone.fuse(tokens[rows], used.expand(int(rows.sum()), -1))
            self._val_correct[j] += (out.logits.argmax(1) == batch.labels[rows]).sum()
            self._val_total[j] += rows.sum()

    def on_validation_epoch_end(self) -> None:
        assert self._val_correct is not None and self._val_total is not None
        correct = self._val_correct.clone()
        total = self._val_total.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(correct)
            torch.distributed.all_reduce(total)
        per_subset = correct / total.clamp_min(1)
        seen = total > 0  # subsets no validation sample observes are left out of the mean
        m = self.backbone.num_modalities
        # Already all-reduced above: every rank logs the same value.
        self.log("val_acc", per_subset[seen].mean(), prog_bar=True, rank_zero_only=False, sync_dist=False)
        self.log("val_acc_all", per_subset[2**m - 2], sync_dist=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cfg = self.train_cfg
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def size_matched_subsets(used: torch.Tensor, observed: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per sample, ``used ∩ observed`` topped up with other observed modalities (drawn at
    random) to ``min(|used|, |observed|)`` modalities; bool ``[B, M]``, always within ``observed``."""
    mask = used.unsqueeze(0) & observed
    deficit = int(used.sum()) - mask.sum(1)
    spare = observed & ~mask
    if not bool(((deficit > 0) & spare.any(1)).any()):
        return mask
    noise = torch.rand(observed.shape, generator=generator).to(observed.device)
    score = torch.where(spare, noise, torch.full_like(noise, -1.0))
    rank = torch.argsort(torch.argsort(score, dim=1, descending=True), dim=1)  # 0 = best spare modality
    return mask | (spare & (rank < deficit.unsqueeze(1)))
