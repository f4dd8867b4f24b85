"""Fixtures for the per-model mechanism tests: a small input description and random batches."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from ehrcxr.batch import Batch, InputSpec
from ehrcxr.models.encoders import EncoderConfig
from ehrcxr.tasks import get_task

# 6 values (the last two rhythm-like, without a mask), 4 masks marking values 0-3.
SMALL_INPUTS = InputSpec(
    ehr_features=6, ehr_masks=4, time_steps=12, image_size=32, mask_feature=(0, 1, 2, 3)
)
SMALL_ENCODERS = EncoderConfig(
    dim=16,
    dropout=0.1,
    transformer_heads=2,
    transformer_layers=1,
    lstm_layers=1,
    lstm_bidirectional=True,
    resnet_depth=18,
    resnet_weights="none",
    resnet_width=16,
)


@pytest.fixture()
def inputs() -> InputSpec:
    return SMALL_INPUTS


@pytest.fixture()
def encoders() -> EncoderConfig:
    return SMALL_ENCODERS


def random_batch(
    task_name: str = "mortality",
    b: int = 8,
    films: bool = True,
    seed: int = 0,
    inputs: InputSpec = SMALL_INPUTS,
) -> Batch:
    """A batch with labels; every third stay lacks its film when ``films`` (all when not)."""
    g = torch.Generator().manual_seed(seed)
    task = get_task(task_name)
    has = torch.tensor([films and i % 3 != 0 for i in range(b)])
    cxr = torch.rand(b, 1, inputs.image_size, inputs.image_size, generator=g)
    cxr = cxr * has[:, None, None, None]
    if task.kind == "multiclass":
        y = torch.randint(0, task.n_outputs, (b,), generator=g)
    else:
        y = torch.randint(0, 2, (b, task.n_outputs), generator=g).float()
    return Batch(
        ehr=torch.randn(b, inputs.time_steps, inputs.ehr_features, generator=g),
        ehr_mask=torch.randint(0, 2, (b, inputs.time_steps, inputs.ehr_masks), generator=g).float(),
        cxr=cxr,
        has_cxr=has,
        cxr_time=(torch.rand(b, generator=g) * 72 - 24) * has,
        stay_id=torch.arange(b),
        y=y,
    )


@pytest.fixture()
def make_batch() -> Callable[..., Batch]:
    return random_batch
