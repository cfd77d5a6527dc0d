"""The ``image`` modality kind: ``shape = (C, H, W)``, model input float32 in [0, 1]."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dymo.data.kinds.base import ModalityKind, register_kind
from dymo.data.specs import ModalitySpec
from dymo.errors import DataError

#: Pillow modes read as 8-bit grey / colour (alpha, if any, is dropped).
_GREY8 = frozenset({"1", "L", "LA", "La"})
_COLOUR8 = frozenset({"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
_GREY16 = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


@register_kind
class ImageKind(ModalityKind):
    """``shape = (C, H, W)``; model input float32 in [0, 1]."""

    name = "image"
    layout = "files"
    rank = 3
    shape_doc = "(C, H, W)"
    networks = "dymo.models.image"

    def to_tensor(self, array, spec):
        x = torch.as_tensor(array)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if x.ndim == 4 and x.shape[-1] == spec.shape[0] and x.shape[1] != spec.shape[0]:
            x = x.permute(0, 3, 1, 2)  # HWC -> CHW
        return x.float().contiguous()

    def shape_hint(self, x, spec):
        if x.ndim == 4 and tuple(x.shape[1:]) == (*spec.shape[1:], spec.shape[0]):
            return " (this looks like (B, H, W, C): images are (B, C, H, W); use x.permute(0, 3, 1, 2))"
        return ""

    def collate(self, values, spec):
        x = np.zeros((len(values), *spec.shape), dtype=np.float32)
        for i, v in enumerate(values):
            if v is not None:
                x[i] = v
        return torch.from_numpy(x), {}

    def write_file(self, value, spec, path):
        from PIL import Image

        img = np.asarray(value)
        if img.shape[0] == spec.shape[0] and img.shape[-1] != spec.shape[0]:
            img = np.moveaxis(img, 0, -1)  # CHW -> HWC
        if img.dtype != np.uint8:
            img = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
        Image.fromarray(img[:, :, 0] if img.shape[-1] == 1 else img).save(path)

    def degrade(self, x, spec, config, generator, feature_std):
        if config.noise == "blur":
            return gaussian_blur(x.float(), config.blur_sigma)
        noise = torch.randn(x.shape, generator=generator)
        return (x.float() + config.noise_std * noise.to(x.device)).clamp(0.0, 1.0)

    def picture(self, x):
        return x.detach().float().clamp(0, 1).permute(1, 2, 0).numpy()

    def draw(self, ax, x):
        img = x.permute(1, 2, 0).numpy()
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)

    def synthetic(self, name, y, num_classes, signal, proto_rng, rng, options):
        size = options["image_size"]
        n = len(y)
        pats = proto_rng.random((num_classes, size, size, 3))
        x = 0.5 * (1 - signal) + signal * pats[y] * 0.6 + rng.random((n, size, size, 3)) * 0.4
        return ModalitySpec(name, "image", (3, size, size)), (np.clip(x, 0, 1) * 255).astype(np.uint8)

    def read_file(self, path: Path, spec: ModalitySpec) -> np.ndarray:
        """An image file (any format Pillow reads) -> float32 ``(C, H, W)`` in [0, 1].

        Rule (``docs/inputs.md``): 8-bit modes (1, L, P, RGB, CMYK, YCbCr, ...) are divided by
        255; 16-bit grey (``I;16*``) by 65535; 32-bit integer ``I`` images must hold 0..65535 and
        are divided by 65535; float ``F`` images must hold values in [0, 1]. Alpha is dropped.
        Grey -> 3 channels repeats the grey; colour -> 1 channel is the luminance
        ``0.299 R + 0.587 G + 0.114 B``. Other sizes are resized to (H, W) (bilinear, aspect not
        kept). Multi-frame files and files above ``PIL.Image.MAX_IMAGE_PIXELS`` pixels are refused.
        Any failure is a :class:`DataError` naming the file and the reason.
        """
        from PIL import Image, ImageOps

        c, h, w = spec.shape
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    limit = Image.MAX_IMAGE_PIXELS
                    if limit is not None and im.size[0] * im.size[1] > limit:
                        raise DataError(
                            f"{path}: refused, {im.size[0]}x{im.size[1]} = {im.size[0] * im.size[1]:,} pixels is above "
                            f"the decompression-bomb limit of {limit:,} (PIL.Image.MAX_IMAGE_PIXELS)"
                        )
                    frames = getattr(im, "n_frames", 1)
                    if frames > 1:
                        raise DataError(f"{path}: refused, a multi-frame image ({frames} frames); give one frame per file")
                    im.load()
                    im = ImageOps.exif_transpose(im)
                    arr = _to_float(im, path)
        except DataError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(f"{path}: refused, decompression bomb ({e})") from None
        except Exception as e:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error, ...)
            raise DataError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from None
        k = arr.shape[2]
        if k != c:
            if k == 1 and c == 3:
                arr = np.repeat(arr, 3, axis=2)
            elif k == 3 and c == 1:
                arr = (arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]
            else:
                raise DataError(f"{path}: refused, an image of {k} channel(s) for modality {spec.name!r} of {c}")
        if arr.shape[:2] != (h, w):
            arr = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(arr[:, :, i])).resize((w, h), Image.BILINEAR)) for i in range(c)], axis=2)
            arr = np.clip(arr, 0.0, 1.0)
        return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)

    def prepare(self, x, spec, observed, *, preprocessed=False, holes_ok=False):
        x = self._tensor(x, spec)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif not x.is_floating_point():
            raise DataError(f"modality {spec.name!r} needs a floating dtype, got {x.dtype} (images: floats in [0, 1] or uint8 0..255)")
        x = x.float()
        self._check_shape(x, spec, len(observed))
        if observed.any():
            vals = x[observed].reshape(int(observed.sum()), -1)
            bad = ~torch.isfinite(vals).all(dim=1)
            if bad.any():
                raise DataError(f"sample {self._first(bad, observed)}: observed modality {spec.name!r} holds NaN or Inf")
            out = (vals < 0).any(dim=1) | (vals > 1).any(dim=1)
            if out.any():
                i = self._first(out, observed)
                lo, hi = float(x[i].min()), float(x[i].max())
                raise DataError(
                    f"sample {i}: image modality {spec.name!r} holds values in [{lo:g}, {hi:g}]; images are floats "
                    "in [0, 1] (divide 0..255 values by 255) or uint8"
                )
        return x, torch.zeros(len(observed), dtype=torch.bool)

    def expects(self, spec):
        c, h, w = spec.shape
        return {
            "kind": "image",
            "folder": f"{spec.name}/<id>.<ext>: one image file per sample, any format Pillow reads",
            "array": f"float (B, {c}, {h}, {w}) in [0, 1], or uint8 0..255",
            "channels": c,
            "size": [h, w],
        }


def _to_float(im: Any, path: Path) -> np.ndarray:
    """A loaded Pillow image -> float32 ``(H, W, 1 or 3)`` in [0, 1] by the rule of :meth:`ImageKind.read_file`."""
    mode = im.mode
    if mode in _GREY8:
        a = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    elif mode in _COLOUR8:
        a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    elif mode in _GREY16:
        a = np.asarray(im).astype(np.float32) / 65535.0
    elif mode == "I":
        raw = np.asarray(im)
        if raw.size and (raw.min() < 0 or raw.max() > 65535):
            raise DataError(f"{path}: refused, a 32-bit integer image with values {raw.min()}..{raw.max()} (only 0..65535 is read, as 16 bits)")
        a = raw.astype(np.float32) / 65535.0
    elif mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise DataError(f"{path}: refused, a float image must hold values in [0, 1], found {np.nanmin(a):g}..{np.nanmax(a):g}")
    else:
        raise DataError(f"{path}: refused, image mode {mode!r} has no documented conversion")
    return a[:, :, None] if a.ndim == 2 else a


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of images ``[B, C, H, W]`` (replicate padding, any size)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


IMAGE: ImageKind = ImageKind.instance  # type: ignore[assignment]
