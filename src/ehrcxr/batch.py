"""The data ↔ model contract: what a batch carries, what a model returns, what training tells it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ehrcxr.tasks import Task


@dataclasses.dataclass
class Batch:
    """One mini-batch (B stays).

    ehr:      float32 [B, T, F]  scaled feature values (T = 48 hours)
    ehr_mask: float32 [B, T, M]  1 where the feature was measured in that hour; mask channel m
              marks value channel ``InputSpec.mask_feature[m]``
    cxr:      float32 [B, 1, H, W] film in [0, 1]; for a stay without one (``has_cxr`` False) a
              placeholder of zeros that models must not read as a film: missing-modality models
              use ``has_cxr``; zero-imputation models get it through
              :func:`ehrcxr.models.encoders.encode_films`, which maps it to zero in normalised
              space (the ImageNet mean) and keeps it out of BatchNorm statistics
    has_cxr:  bool    [B]
    cxr_time: float32 [B] hours from ICU admission to the film (negative: before admission);
              0 where ``has_cxr`` is False (removed with the film by the missing-ratio sweep)
    stay_id:  int64   [B]
    y:        float32 [B, C] (binary, multilabel) or int64 [B] (multiclass); None when a model's
              ``forward`` is called: forward never sees labels (see ``without_labels``)
    """

    ehr: torch.Tensor
    ehr_mask: torch.Tensor
    cxr: torch.Tensor
    has_cxr: torch.Tensor
    cxr_time: torch.Tensor
    stay_id: torch.Tensor
    y: torch.Tensor | None = None

    @property
    def ehr_input(self) -> torch.Tensor:
        """Values and masks side by side: float32 [B, T, F + M] (the papers' EHR input)."""
        return torch.cat([self.ehr, self.ehr_mask], dim=-1)

    def __len__(self) -> int:
        return len(self.stay_id)

    def without_labels(self) -> Batch:
        """The same batch with ``y`` None: what every ``forward`` receives."""
        return dataclasses.replace(self, y=None)

    def _map(self, fn) -> Batch:
        return Batch(
            **{
                f.name: (fn(v) if (v := getattr(self, f.name)) is not None else None)
                for f in dataclasses.fields(self)
            }
        )

    def to(self, device: torch.device | str) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> Batch:
        """Page-locked copies (the DataLoader calls this with ``pin_memory=True``): the copy to
        a GPU can then run asynchronously."""
        return self._map(torch.Tensor.pin_memory)


@dataclasses.dataclass
class ModelOutput:
    """logits: float32 [B, C]; aux_loss: a label-free scalar added to the task loss (or None)."""

    logits: torch.Tensor
    aux_loss: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the data gives a model.

    ehr_features: F value channels; ehr_masks: M mask channels; time_steps: T; image_size: H = W;
    mask_feature: for each of the M mask channels, the index (0 … F − 1) of the value channel it
    marks (the rhythm indicators have no mask). Models that read (time, feature, value)
    observations (UMSE) or per-feature masks (UTDE's time attention) use it.
    """

    ehr_features: int
    ehr_masks: int
    time_steps: int
    image_size: int
    mask_feature: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.mask_feature:
            # Default: the masks mark the first M value channels, in order.
            object.__setattr__(self, "mask_feature", tuple(range(self.ehr_masks)))
        if len(self.mask_feature) != self.ehr_masks:
            raise ValueError("mask_feature needs one value channel per mask channel")

    @property
    def ehr_channels(self) -> int:
        return self.ehr_features + self.ehr_masks


@dataclasses.dataclass
class TrainContext:
    """What the training core tells a model that owns part of its training (duck-typed hooks).

    A model may define any of (see ``ehrcxr.training`` for when each is called):

    - ``training_loss(batch, ctx) -> Tensor``: its own loss (``batch.y`` present);
    - ``optimizer_groups(lr, weight_decay) -> list[dict]``: AdamW parameter groups;
    - ``configure_optimizers(lr, weight_decay) -> list[Optimizer]``: its own optimisers;
    - ``manual_training_step(batch, ctx) -> Tensor``: a whole step with several updates, using
      ``ctx.optimizers`` and ``ctx.backward`` (the core then switches to manual optimisation);
      returns the loss to log;
    - ``pretrain(batches, ctx)``: once before fitting (before ``prepare``), with the training
      split's batches (a list, unshuffled, labels included, films not augmented) and gradients
      enabled: a model's own pre-training stage (MedFuse's unimodal encoder pre-training);
    - ``prepare(batches)``: once before fitting, with the unshuffled training split (priors,
      statistics; store them in buffers so they are part of the checkpoint);
    - ``on_train_epoch_end(ctx)``: epoch-level state (classifier assignment, learning windows).

    task:       the task (kind, number of outputs)
    loss_fn:    the task loss, ``loss_fn(logits [B, C], y) -> scalar`` (BCE-with-logits or CE)
    epoch:      current epoch (0-based); max_epochs: the run's limit
    step:       optimiser steps taken so far (global step)
    log:        ``log(name, value)`` records an epoch-mean scalar in the learning curves / W&B
    optimizers: the model's optimisers (manual optimisation only, else empty)
    backward:   ``backward(loss)`` — use instead of ``loss.backward()`` (DDP, precision)
    """

    task: Task
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    epoch: int
    max_epochs: int
    step: int
    log: Callable[[str, torch.Tensor | float], None]
    optimizers: list[torch.optim.Optimizer] = dataclasses.field(default_factory=list)
    backward: Callable[[torch.Tensor], None] = lambda loss: loss.backward()
