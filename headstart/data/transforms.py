"""Batch transforms: uint8 image batches to normalised float tensors, with light seeded augmentation."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..backbones.spec import ImagePreprocessing
from ..errors import DataError

_MODES = ("bilinear", "bicubic", "nearest")
_CROP_SCALE = (0.8, 1.0)  # area fraction of the source kept by the random crop: light on purpose
_CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratio range of the random crop (as torchvision's RandomResizedCrop)
_LUMA = (0.299, 0.587, 0.114)  # RGB -> gray weights, only used for 1-channel backbones


class BatchTransform:
    """Turn a uint8 (N, C, H, W) batch into the float (N, C', H', W') tensor a backbone expects.

    Eval (and train without augmentation): resize to size / crop_pct and centre-crop, timm style; sources
    smaller than the target are resized to cover it instead. Train with augmentation: a random resized crop
    (area 0.8-1.0) per sample and a random horizontal flip, all drawn from `generator`. Everything runs on whole
    batches with torch ops, on the batch's device.
    """

    def __init__(self, preprocessing: ImagePreprocessing, train: bool, augment: bool = True):
        if preprocessing.interpolation not in _MODES:
            raise DataError(f"unknown interpolation {preprocessing.interpolation!r}; allowed: {', '.join(_MODES)}.")
        channels = int(preprocessing.input_size[0])
        if channels not in (1, 3) or len(preprocessing.mean) != channels or len(preprocessing.std) != channels:
            raise DataError(f"preprocessing needs 1 or 3 channels with one mean and std per channel, got "
                            f"input_size={preprocessing.input_size}, mean={preprocessing.mean}, "
                            f"std={preprocessing.std}.")
        if any(s <= 0 for s in preprocessing.std):
            raise DataError(f"preprocessing std values must be > 0, got {preprocessing.std}.")
        if not 0 < preprocessing.crop_pct <= 1:
            raise DataError(f"preprocessing crop_pct must be in (0, 1], got {preprocessing.crop_pct}.")
        self.preprocessing = preprocessing
        self.train = train
        self.augment = augment
        self.size = (int(preprocessing.image_size[0]), int(preprocessing.image_size[1]))
        self.channels = channels
        self.mode = preprocessing.interpolation
        std = torch.tensor(preprocessing.std, dtype=torch.float32)
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32)
        # (x / 255 - mean) / std folded into one multiply-add
        self._scale = (1.0 / (255.0 * std)).view(1, channels, 1, 1)
        self._shift = (-mean / std).view(1, channels, 1, 1)

    @property
    def random(self) -> bool:
        return self.train and self.augment

    def __repr__(self) -> str:
        return (f"BatchTransform(size={self.size}, mode={self.mode!r}, crop_pct={self.preprocessing.crop_pct}, "
                f"random={self.random})")

    def __call__(self, images_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Transform one batch; randomness (train with augmentation only) comes from `generator`."""
        x = images_uint8
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
            got = (f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor)
                   else type(x).__name__)
            raise DataError(f"BatchTransform expects a uint8 tensor of shape (N, C, H, W) with C in {{1, 3}}, got "
                            f"{got}. For a single image use images.unsqueeze(0).")
        x = x.float()
        x = self._random_crop(x, generator) if self.random else self._eval_crop(x)
        if self.mode == "bicubic":
            x = x.clamp_(0.0, 255.0)  # bicubic overshoots at edges
        if self.channels == 1 and x.shape[1] == 3:
            x = (x * torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        # A 1-channel x broadcasts against the 3-channel scale: gray becomes RGB here, after resizing.
        out = x * self._scale.to(x.device) + self._shift.to(x.device)
        return out.contiguous()

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        downscale = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        if self.mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=self.mode, align_corners=False, antialias=downscale)

    def _eval_size(self, h: int, w: int) -> tuple[int, int]:
        """Size to resize a (h, w) source to before the centre crop, keeping its aspect ratio."""
        th, tw = self.size
        if h < th or w < tw:
            scale = max(th / h, tw / w)  # tiny source (e.g. 28x28): just cover the target, no extra margin
        else:
            crop = self.preprocessing.crop_pct
            scale = max(th / crop / h, tw / crop / w)
        return max(th, round(h * scale)), max(tw, round(w * scale))

    def _eval_crop(self, x: torch.Tensor) -> torch.Tensor:
        th, tw = self.size
        nh, nw = self._eval_size(x.shape[-2], x.shape[-1])
        x = self._resize(x, (nh, nw))
        top, left = (nh - th) // 2, (nw - tw) // 2
        return x[..., top:top + th, left:left + tw]

    def _random_crop(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        th, tw = self.size
        h, w = x.shape[-2], x.shape[-1]
        nh, nw = self._eval_size(h, w)
        if nh < h:
            # grid_sample does not antialias, so large sources are first shrunk (with antialiasing) to the
            # eval resize size; crops of it are then within ~15% of the target size.
            x = self._resize(x, (nh, nw))
            h, w = nh, nw
        n = x.shape[0]
        u = torch.rand(n, 5, generator=generator)
        area = _CROP_SCALE[0] + (_CROP_SCALE[1] - _CROP_SCALE[0]) * u[:, 0]
        log_lo, log_hi = math.log(_CROP_RATIO[0]), math.log(_CROP_RATIO[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])  # crop width / height in pixels
        frac_w = torch.sqrt(area * ratio * h / w).clamp(max=1.0)
        frac_h = torch.sqrt(area / ratio * w / h).clamp(max=1.0)
        cx = (2 * u[:, 2] - 1) * (1 - frac_w)  # crop centre in [-1, 1] coordinates, crop stays inside
        cy = (2 * u[:, 3] - 1) * (1 - frac_h)
        flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = frac_w * flip
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = frac_h
        theta[:, 1, 2] = cy
        theta = theta.to(x.device)
        grid = F.affine_grid(theta, [n, x.shape[1], th, tw], align_corners=False)
        return F.grid_sample(x, grid, mode=self.mode, padding_mode="border", align_corners=False)
