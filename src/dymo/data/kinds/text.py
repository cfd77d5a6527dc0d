"""The ``text`` modality kind: ``shape = (L,)`` int64 character ids (0 = padding)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dymo.data.kinds.base import ModalityKind, register_kind
from dymo.data.specs import ModalitySpec
from dymo.errors import DataError


#: Alphabets a spec may name instead of storing the characters (``extra["alphabet"]``).
def _named_alphabets() -> dict[str, str]:
    from dymo.data.mst import MOPOE_ALPHABET

    return {"mopoe": MOPOE_ALPHABET}


@register_kind
class TextKind(ModalityKind):
    """``shape = (L,)``; model input int64 character ids in ``[0, vocab_size)`` (0 = padding)."""

    name = "text"
    dtype = torch.long
    layout = "csv"
    error_name = "token_mismatch_rate"
    networks = "dymo.models.text"

    def check_spec(self, spec):
        super().check_spec(spec)
        if not spec.vocab_size:
            raise DataError(f"text modality {spec.name!r} needs vocab_size")

    def to_tensor(self, array, spec):
        return torch.as_tensor(array).long()

    def csv_width(self, spec):
        return 1

    def csv_expected(self, spec):
        return "id,text"

    def csv_columns(self, spec):
        return ["text"]

    def to_cells(self, value, spec):
        alphabet = spec.extra.get("alphabet", "")
        return ["".join(alphabet[t - 1] for t in np.asarray(value) if 0 < t <= len(alphabet))]

    def check_readable(self, spec):
        self.alphabet(spec)  # a text CSV needs the spec's alphabet: fail the run here, not per sample

    def collate(self, values, spec):
        return self.encode(values, spec)

    def recovery_error(self, recovered, true):
        return float((recovered != true).float().sum())

    def degrade(self, x, spec, config, generator, feature_std):
        swap = torch.rand(x.shape, generator=generator) < config.token_noise
        tokens = torch.randint(1, int(spec.vocab_size or 2), x.shape, generator=generator)
        return torch.where(swap.to(x.device) & (x != 0), tokens.to(x.device), x)

    def draw(self, ax, x):
        ax.text(0.5, 0.5, " ".join(str(int(t)) for t in x[:8]), ha="center", va="center", fontsize=5, transform=ax.transAxes)

    def synthetic(self, name, y, num_classes, signal, proto_rng, rng, options):
        length, vocab = options["text_len"], options["vocab_size"]
        n = len(y)
        pats = proto_rng.integers(1, vocab, (num_classes, length))
        noise = rng.integers(1, vocab, (n, length))
        keep = rng.random((n, length)) < signal
        return ModalitySpec(name, "text", (length,), vocab_size=vocab), np.where(keep, pats[y], noise).astype(np.int64)

    @staticmethod
    def alphabet(spec: ModalitySpec) -> str:
        """The spec's alphabet: ``extra["alphabet"]`` is a name (``"mopoe"``) or the characters themselves."""
        value = spec.extra.get("alphabet")
        if not isinstance(value, str) or not value:
            raise DataError(f"text modality {spec.name!r}: the spec stores no alphabet, so text must be given as token ids")
        return _named_alphabets().get(value, value)

    def parse_cells(self, cells, spec):
        if len(cells) != 1:
            raise DataError(f"{len(cells)} cells after the id, expected 1 (quote a text that holds commas)")
        return cells[0] if cells[0] != "" else None

    def encode(self, texts: Sequence[str | None], spec: ModalitySpec) -> tuple[torch.Tensor, dict[int, str]]:
        """Strings -> int64 ids ``[N, L]`` with the spec's alphabet (as the dataset builders:
        ``alphabet.find(c) + 1``, cut to ``L``, padded with 0), and per-row errors for texts with
        characters outside the alphabet. ``None`` rows give zeros."""
        from dymo.data.mst import encode_text

        if all(t is None for t in texts):
            return torch.zeros((len(texts), spec.shape[0]), dtype=torch.long), {}
        alphabet = self.alphabet(spec)
        known = set(alphabet)
        errors: dict[int, str] = {}
        clean: list[str] = []
        for r, t in enumerate(texts):
            if t is None:
                clean.append("")
                continue
            if not isinstance(t, str):
                raise DataError(f"sample {r}: text modality {spec.name!r} holds a {type(t).__name__}, expected a string")
            unknown = sorted({ch for ch in t[: spec.shape[0]] if ch not in known})
            if unknown:
                errors[r] = f"text modality {spec.name!r}: character(s) {''.join(unknown)!r} are outside the model's alphabet"
            clean.append(t)
        return torch.from_numpy(encode_text(clean, spec.shape[0], alphabet)), errors

    def prepare(self, x, spec, observed, *, preprocessed=False, holes_ok=False):
        if isinstance(x, (list, tuple)):
            if len(x) != len(observed):
                raise DataError(f"modality {spec.name!r}: {len(x)} texts for a batch of {len(observed)}")
            texts = [t if bool(o) else None for t, o in zip(x, observed.tolist(), strict=True)]
            missing = [i for i, t in enumerate(texts) if observed[i] and t is None]
            if missing:
                raise DataError(f"sample {missing[0]}: observed text modality {spec.name!r} is None")
            x, errors = self.encode(texts, spec)
            if errors:
                i = min(errors)
                raise DataError(f"sample {i}: {errors[i]}")
        x = self._tensor(x, spec)
        if x.is_floating_point() or x.dtype == torch.bool or x.is_complex():
            raise DataError(f"text modality {spec.name!r} needs integer token ids, got {x.dtype}")
        x = x.long()
        self._check_shape(x, spec, len(observed))
        if observed.any() and spec.vocab_size:
            vals = x[observed]
            bad = ((vals < 0) | (vals >= spec.vocab_size)).any(dim=1)
            if bad.any():
                i = self._first(bad, observed)
                v = x[i][(x[i] < 0) | (x[i] >= spec.vocab_size)][0]
                raise DataError(f"sample {i}: text modality {spec.name!r} holds token id {int(v)}, outside [0, {spec.vocab_size})")
        return x, torch.zeros(len(observed), dtype=torch.bool)

    def expects(self, spec):
        value = spec.extra.get("alphabet")
        out: dict[str, Any] = {
            "kind": "text",
            "csv": f"{spec.name}.csv: header id,text, one row per sample",
            "array": f"int token ids (B, {spec.shape[0]}) in [0, {spec.vocab_size}), or a list of strings",
            "length": spec.shape[0],
        }
        if isinstance(value, str) and value:
            out["alphabet"] = value if value in _named_alphabets() else f"custom ({len(value)} characters, in the spec)"
            out["values"] = f"characters of the alphabet; cut to {spec.shape[0]}, padded with id 0"
        else:
            out["values"] = "token ids only (the spec stores no alphabet)"
        return out


TEXT: TextKind = TextKind.instance  # type: ignore[assignment]
