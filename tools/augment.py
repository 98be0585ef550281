"""Batched, seeded image augmentation of rendered emoji (shared by training and the shift benchmark)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .emoji import EmojiRecord

MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip OPENAI_DATASET_MEAN
STD = (0.26862954, 0.26130258, 0.27577711)


def load_images(records: list[EmojiRecord]) -> torch.Tensor:
    """Stack the rendered PNGs: uint8 ``[N, 3, S, S]``."""
    arr = np.stack([np.asarray(Image.open(r.path).convert("RGB")) for r in records])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Float ``[B, 3, S, S]`` in [0, 1] -> CLIP-normalised."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, g: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Batched augmentation of uint8 ``[B, 3, S, S]`` -> float in [0, 1].

    Random zoom (0.75-1.1), aspect jitter, shift (+-12 %), rotation (+-12 deg) with white fill,
    brightness/contrast/saturation jitter and 10 % grayscale. No flips (arrows and hands are chiral).
    """
    b = x.shape[0]
    x = x.float() / 255.0

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=g)

    scale = 1.0 / u(1.0 - 0.25 * strength, 1.0 + 0.1 * strength)  # >1 zooms out
    aspect = torch.exp(u(-0.1 * strength, 0.1 * strength))
    theta_r = u(-12.0, 12.0) * strength * math.pi / 180.0
    tx, ty = u(-0.12, 0.12) * strength, u(-0.12, 0.12) * strength
    cos, sin = torch.cos(theta_r), torch.sin(theta_r)
    sx, sy = scale * aspect, scale / aspect
    theta = torch.stack(
        [torch.stack([cos * sx, -sin * sy, tx], 1), torch.stack([sin * sx, cos * sy, ty], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = 1.0 - F.grid_sample(1.0 - x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    bright = u(1 - 0.2 * strength, 1 + 0.2 * strength).view(b, 1, 1, 1)
    contrast = u(1 - 0.2 * strength, 1 + 0.2 * strength).view(b, 1, 1, 1)
    sat = u(1 - 0.3 * strength, 1 + 0.3 * strength).view(b, 1, 1, 1)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = gray + (x - gray) * sat
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    x = x * bright
    to_gray = (torch.rand(b, generator=g) < 0.1 * strength).view(b, 1, 1, 1)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1).expand_as(x)
    x = torch.where(to_gray, gray, x)
    return x.clamp(0.0, 1.0)
