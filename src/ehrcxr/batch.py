"""The data ↔ model contract: what a batch carries and what a model returns."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Batch:
    """One mini-batch (B stays).

    ehr:      float32 [B, T, F]  scaled feature values (T = 48 hours)
    ehr_mask: float32 [B, T, M]  1 where the feature was measured in that hour
    cxr:      float32 [B, 1, H, W] image in [0, 1]; all zeros when ``has_cxr`` is False
    has_cxr:  bool    [B]
    y:        float32 [B, C] (binary, multilabel) or int64 [B] (multiclass)
    stay_id:  int64   [B]
    """

    ehr: torch.Tensor
    ehr_mask: torch.Tensor
    cxr: torch.Tensor
    has_cxr: torch.Tensor
    y: torch.Tensor
    stay_id: torch.Tensor

    @property
    def ehr_input(self) -> torch.Tensor:
        """Values and masks side by side: float32 [B, T, F + M] (the papers' EHR input)."""
        return torch.cat([self.ehr, self.ehr_mask], dim=-1)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})


@dataclasses.dataclass
class ModelOutput:
    """logits: float32 [B, C]; aux_loss: a scalar a model adds to the task loss (or None)."""

    logits: torch.Tensor
    aux_loss: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the data gives a model: EHR feature and mask channels, time steps, image side."""

    ehr_features: int
    ehr_masks: int
    time_steps: int
    image_size: int

    @property
    def ehr_channels(self) -> int:
        return self.ehr_features + self.ehr_masks
