"""MedFuse: the EHR encoder is pre-trained for the task with a classifier of its own that is then
discarded (paper §4.2), and a missing film shortens the fusion LSTM's sequence."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from batches import train_context
from ehrcxr.batch import Batch, InputSpec
from ehrcxr.models.encoders import EncoderConfig
from ehrcxr.models.medfuse import MedFuse


def planted(make_batch: Callable[..., Batch], n: int = 4) -> list[Batch]:
    """Batches whose label is the sign of the first EHR channel's mean (learnable from EHR)."""
    out = []
    for i in range(n):
        b = make_batch(b=16, seed=i)
        y = (b.ehr[:, :, 0].mean(1) > 0).float()[:, None]
        out.append(dataclasses.replace(b, y=y))
    return out


def loss_of_a_linear_probe(model: MedFuse, batches: list[Batch]) -> float:
    """How well v_ehr predicts the planted label: a least-squares probe's error (eval mode)."""
    model.eval()
    with torch.no_grad():
        v = torch.cat([model.encode_ehr(b.ehr_input) for b in batches])
        y = torch.cat([b.y for b in batches])
    features = torch.cat([v, torch.ones(len(v), 1)], 1)
    w = torch.linalg.lstsq(features, y).solution
    return float(((features @ w - y) ** 2).mean())


def test_pretraining_moves_only_the_ehr_encoder_towards_the_task(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    batches = planted(make_batch)
    torch.manual_seed(0)
    model = MedFuse(inputs, 1, encoders, ehr_pretrain_batches=120, ehr_pretrain_lr=0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe_before = loss_of_a_linear_probe(model, batches)
    model.train()
    model.pretrain(batches, train_context())
    assert model.training  # the mode it was in
    after = model.state_dict()
    assert after.keys() == before.keys()  # the pre-training classifier was discarded
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("ehr.") for k in changed), changed
    assert loss_of_a_linear_probe(model, batches) < 0.7 * probe_before


def test_zero_batches_is_the_randomly_initialised_variant(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    torch.manual_seed(0)
    model = MedFuse(inputs, 1, encoders, ehr_pretrain_batches=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.pretrain(planted(make_batch), train_context())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="ehr_pretrain"):
        MedFuse(inputs, 1, encoders, ehr_pretrain_batches=-1)


def test_a_missing_film_shortens_the_fusion_sequence(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    torch.manual_seed(0)
    model = MedFuse(inputs, 3, encoders).eval()
    batch = make_batch(b=6).without_labels()
    absent = ~batch.has_cxr
    assert absent.any() and batch.has_cxr.any()
    with torch.no_grad():
        logits = model(batch).logits
        v_ehr = model.encode_ehr(batch.ehr_input)
        _, (h, _) = model.fusion(v_ehr[:, None, :])  # the sequence [v_ehr] alone
        expected = model.head(h[-1])
    assert torch.allclose(logits[absent], expected[absent], atol=1e-5)
    assert not torch.allclose(logits[~absent], expected[~absent], atol=1e-4)
