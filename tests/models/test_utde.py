"""UTDE (Zhang et al., ICML 2023): the gated pair of EHR embeddings, the time-stamped film,
masked time attention, and forward/backward on every task."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from ehrcxr.batch import Batch, InputSpec
from ehrcxr.models.encoders import EncoderConfig
from ehrcxr.models.utde import UTDE
from ehrcxr.tasks import TASKS, get_task
from ehrcxr.training import task_loss


def build(inputs: InputSpec, encoders: EncoderConfig, n_outputs: int = 1, **kw: object) -> UTDE:
    torch.manual_seed(0)
    return UTDE(inputs, n_outputs, encoders, embed_time=16, time_heads=4, cross_layers=2, **kw)


@pytest.mark.parametrize("level", ["batch", "batch_seq", "batch_seq_feature"])
def test_gate_mixes_both_embeddings(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch], level: str
) -> None:
    model = build(inputs, encoders, mixup_level=level).eval()
    batch = make_batch()
    e_att, e_imp = model.embeddings(batch.ehr, batch.ehr_mask)
    assert e_att.shape == e_imp.shape == (8, inputs.time_steps, encoders.dim)
    g = model.gate_values(e_att, e_imp)
    assert ((g > 0) & (g < 1)).all()
    assert g.std() > 0  # the gate depends on the stay, not a constant

    # Both paths carry gradient from the logits.
    model.train()
    model(batch.without_labels()).logits.sum().backward()
    for part in (model.time_attention, model.impute, model.gate, model.time_embedding):
        grads = [p.grad for p in part.parameters()]
        assert all(gr is not None for gr in grads)
        assert sum(gr.abs().sum() for gr in grads) > 0


def test_each_embedding_path_changes_the_output(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    model = build(inputs, encoders).eval()
    batch = make_batch().without_labels()
    with torch.no_grad():
        base = model(batch).logits
        for part in (model.time_attention.out, model.impute):
            saved = part.weight.clone()
            part.weight.mul_(2.0)
            changed = model(batch).logits
            part.weight.copy_(saved)
            assert not torch.allclose(base, changed, atol=1e-6), part
        assert torch.allclose(base, model(batch).logits)


def test_moving_the_film_time_changes_the_output(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    model = build(inputs, encoders).eval()
    batch = make_batch().without_labels()
    moved = dataclasses.replace(batch, cxr_time=batch.cxr_time + 10.0)
    with torch.no_grad():
        a, b = model(batch).logits, model(moved).logits
    assert (a - b).abs().amax(dim=1).gt(1e-6).all()  # every stay, with or without a film


def test_unobserved_values_do_not_reach_the_attention_embedding(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    model = build(inputs, encoders).eval()
    batch = make_batch()
    mask = batch.ehr_mask.clone()
    mask[0, :, 1] = 0  # stay 0 never measured feature 1
    hidden = torch.zeros_like(batch.ehr, dtype=torch.bool)
    hidden[..., list(inputs.mask_feature)] = mask == 0
    noisy = torch.where(hidden, batch.ehr + 100 * torch.randn_like(batch.ehr), batch.ehr)
    with torch.no_grad():
        att, imp = model.embeddings(batch.ehr, mask)
        att_noisy, imp_noisy = model.embeddings(noisy, mask)
        assert torch.allclose(att, att_noisy, atol=1e-5)
        assert not torch.allclose(imp, imp_noisy)  # the imputation path does read them
        # Observed values do reach it.
        shifted = torch.where(~hidden, batch.ehr + 1.0, batch.ehr)
        assert not torch.allclose(att, model.embeddings(shifted, mask)[0], atol=1e-5)
        # Rhythm indicators (no mask) count as always observed.
        rhythm = batch.ehr.clone()
        rhythm[..., inputs.ehr_features - 1] += 1.0
        assert not torch.allclose(att, model.embeddings(rhythm, mask)[0], atol=1e-5)


@pytest.mark.parametrize("task_name", TASKS)
@pytest.mark.parametrize("films", [True, False], ids=["films", "no-films"])
def test_forward_backward_finite(
    inputs: InputSpec,
    encoders: EncoderConfig,
    make_batch: Callable[..., Batch],
    task_name: str,
    films: bool,
) -> None:
    task = get_task(task_name)
    model = build(inputs, encoders, task.n_outputs).train()
    batch = make_batch(task_name, films=films)
    batch.ehr_mask[:, :, 0] = 0  # a feature nobody measured must not give NaN
    logits = model(batch.without_labels()).logits
    assert logits.shape == (8, task.n_outputs) and torch.isfinite(logits).all()
    task_loss(task, logits, batch.y).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_rejects_unknown_mixup_level(inputs: InputSpec, encoders: EncoderConfig) -> None:
    with pytest.raises(ValueError, match="mixup_level"):
        build(inputs, encoders, mixup_level="hour")
