"""Every registered model: forward/backward on a batch, with and without films, every task."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from batches import random_batch
from ehrcxr import params as params_mod
from ehrcxr.batch import Batch, InputSpec
from ehrcxr.models import create_model, list_models, model_modalities
from ehrcxr.models.encoders import EncoderConfig
from ehrcxr.tasks import TASKS, get_task
from ehrcxr.training import probabilities, task_loss

INPUTS = InputSpec(ehr_features=20, ehr_masks=15, time_steps=48, image_size=32)
_ALL = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
PARAMS = {name: params_mod.model_params(_ALL, name) for name in _ALL["models"]}
ENCODERS = EncoderConfig(**_ALL["encoders"])


def build(name: str, n_outputs: int = 1) -> torch.nn.Module:
    """``name`` with the committed params and the default encoder settings."""
    return create_model(name, INPUTS, n_outputs, ENCODERS, PARAMS[name])


def _batch(task_name: str, b: int = 6, films: bool = True, seed: int = 0) -> Batch:
    return random_batch(task_name, b=b, films=films, seed=seed, inputs=INPUTS)


def test_the_five_baselines_are_registered() -> None:
    assert {"lstm", "transformer", "resnet", "late_fusion", "medfuse"} <= set(list_models())
    assert set(list_models()) <= set(PARAMS)  # every registered model has a params section


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("task_name", TASKS)
@pytest.mark.parametrize("films", [True, False], ids=["films", "no-films"])
def test_forward_backward_gives_finite_probabilities(
    name: str, task_name: str, films: bool
) -> None:
    torch.manual_seed(0)
    task = get_task(task_name)
    model = build(name, task.n_outputs)
    batch = _batch(task_name, films=films)
    out = model(batch.without_labels())
    assert out.logits.shape == (6, task.n_outputs)
    p = probabilities(task, out.logits)
    assert torch.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    if task.kind == "multiclass":
        assert torch.allclose(p.sum(dim=1), torch.ones(6))
    loss = task_loss(task, out.logits, batch.y)
    if out.aux_loss is not None:
        loss = loss + out.aux_loss
    loss.backward()
    grads = [q.grad for q in model.parameters() if q.requires_grad and q.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", list_models())
def test_declared_modalities_are_the_inputs_the_model_reads(name: str) -> None:
    """The statistics stage trusts ``modalities`` to tell unimodal from multimodal models."""
    torch.manual_seed(0)
    model = build(name).eval()
    base = _batch("mortality", films=True, seed=1)
    other_ehr = _batch("mortality", films=True, seed=2)
    changed = {
        "ehr": dataclasses.replace(base, ehr=other_ehr.ehr, ehr_mask=other_ehr.ehr_mask),
        "cxr": dataclasses.replace(base, cxr=torch.rand_like(base.cxr) * base.cxr.ne(0)),
    }
    with torch.no_grad():
        reference = model(base).logits
        for modality, batch in changed.items():
            moved = not torch.allclose(model(batch).logits, reference)
            assert moved == (modality in model_modalities(name)), (name, modality)


def test_unknown_params_key_fails_loudly() -> None:
    from ehrcxr.errors import EhrcxrError

    with pytest.raises(EhrcxrError, match=r"models\.lstm"):
        create_model("lstm", INPUTS, 1, ENCODERS, {**PARAMS["lstm"], "hiden_size": 3})


def test_medfuse_reads_a_shorter_sequence_without_a_film() -> None:
    """MedFuse §3.2: without a film the fusion LSTM reads [v_ehr] alone (no placeholder step)."""
    torch.manual_seed(0)
    model = build("medfuse").eval()
    batch = _batch("mortality", films=False).without_labels()
    with torch.no_grad():
        _, (h, _) = model.ehr(batch.ehr_input)
        _, (fused, _) = model.fusion(h[-1].unsqueeze(1))
        assert torch.allclose(model(batch).logits, model.head(fused[-1]), atol=1e-6)
        with_films = _batch("mortality", films=True).without_labels()
        _, (h2, _) = model.ehr(with_films.ehr_input)
        _, (one_step, _) = model.fusion(h2[-1].unsqueeze(1))
        present = with_films.has_cxr
        assert not torch.allclose(
            model(with_films).logits[present], model.head(one_step[-1])[present]
        )


def test_resnet_imagenet_weights_use_torchvision_weights_api() -> None:
    from ehrcxr.models.encoders import CxrResNetEncoder

    with pytest.raises(ValueError, match="weights"):
        CxrResNetEncoder(18, "chexpert", 8)
    with pytest.raises(ValueError, match="depth"):
        CxrResNetEncoder(101, "none", 8)
    with pytest.raises(ValueError, match="width 64"):
        CxrResNetEncoder(18, "imagenet", 8, width=16)


@pytest.mark.parametrize("depth", [18, 50])
def test_slim_resnet_is_torchvision_resnet_with_narrower_stages(depth: int) -> None:
    import torchvision

    from ehrcxr.models.encoders import resnet_backbone, resnet_stage_channels

    standard = resnet_backbone(depth, "none")
    slim = resnet_backbone(depth, "none", width=16)
    reference = getattr(torchvision.models, f"resnet{depth}")()
    assert [n for n, _ in standard.named_modules()] == [n for n, _ in reference.named_modules()]
    assert [n for n, _ in slim.named_modules()] == [n for n, _ in standard.named_modules()]
    assert resnet_stage_channels(slim) == [c // 4 for c in resnet_stage_channels(standard)]
    x = torch.rand(2, 3, 48, 48)
    assert slim(x).shape == (2, resnet_stage_channels(slim)[-1])
