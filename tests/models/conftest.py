"""Fixtures for the per-model mechanism tests: a small input description and random batches."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from batches import random_batch
from ehrcxr.batch import Batch, InputSpec
from ehrcxr.models.encoders import EncoderConfig

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


@pytest.fixture()
def make_batch() -> Callable[..., Batch]:
    """``random_batch`` (tests/batches.py) with the small inputs by default."""
    return functools.partial(random_batch, inputs=SMALL_INPUTS)
