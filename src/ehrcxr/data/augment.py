"""Training-time film augmentation: random flip and random affine, per film, on the batch's device.

MedFuse (Hayat et al., MLHC 2022, appendix A.1) and the published CareBench toolkit augment the
training films with random affine transformations (rotation, scaling, translation; MedFuse also a
horizontal flip); evaluation films never are. Vectorised with ``affine_grid``/``grid_sample``, so
it costs one pass over the batch on the GPU instead of a PIL call per film on the CPU.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch.nn import functional as F


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """params.yaml ``augment`` (MedFuse / toolkit values: 45°, ±15 %, ×0.85–1.15, flip ½)."""

    enabled: bool = True
    degrees: float = 45.0  # rotation drawn from [−degrees, degrees]
    translate: float = 0.15  # shift drawn from [−translate, translate] of the side
    scale_min: float = 0.85
    scale_max: float = 1.15
    flip: float = 0.5  # probability of a horizontal flip

    def __post_init__(self) -> None:
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError("augment: need 0 < scale_min ≤ scale_max")
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError("augment: flip is a probability")


def augment_films(films: torch.Tensor, has_cxr: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """films [B, 1, H, W] in [0, 1] → augmented films; rows without a film stay as they are.

    Randomness comes from torch's global generator (seeded per run), so a run is reproducible.
    Areas moved in from outside the film are black (0), as torchvision's RandomAffine fills.
    """
    if not cfg.enabled or films.shape[-1] < 2 or not bool(has_cxr.any()):
        return films
    if not bool(has_cxr.all()):  # only the films that exist (most base-cohort rows have none)
        out = films.clone()
        out[has_cxr] = augment_films(films[has_cxr], has_cxr[has_cxr], cfg)
        return out
    b = films.shape[0]
    device, dtype = films.device, films.dtype

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, device=device, dtype=dtype) * (high - low) + low

    angle = uniform(-cfg.degrees, cfg.degrees) * (math.pi / 180.0)
    scale = uniform(cfg.scale_min, cfg.scale_max)
    # affine_grid works in [-1, 1] coordinates: a shift of t · side is 2t there.
    shift = torch.stack([uniform(-cfg.translate, cfg.translate) for _ in range(2)], dim=1) * 2
    flip = torch.where(torch.rand(b, device=device) < cfg.flip, -1.0, 1.0).to(dtype)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # The grid maps output to input coordinates: the inverse of rotate-scale, then flip x.
    theta = torch.stack(
        [
            torch.stack([cos * flip, sin, -shift[:, 0]], dim=1),
            torch.stack([-sin * flip, cos, -shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(films.shape), align_corners=False)
    return F.grid_sample(films, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
