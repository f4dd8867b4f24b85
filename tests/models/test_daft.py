"""DAFT's mechanism: the EHR rescales and shifts the conditioned block's input feature maps."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import pytest
import torch

from ehrcxr.batch import Batch, InputSpec
from ehrcxr.models.daft import Daft, DaftTransform
from ehrcxr.models.encoders import EncoderConfig
from ehrcxr.tasks import get_task
from ehrcxr.training import task_loss


def _capture(model: Daft, batch: Batch) -> dict[str, torch.Tensor]:
    """Feature maps around the DAFT block: its input (before), transform and block outputs."""
    seen: dict[str, torch.Tensor] = {}

    def on_daft(_m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        seen["before"] = args[0].detach().clone()
        seen["transformed"] = out.detach().clone()

    def on_block(_m: torch.nn.Module, _args: tuple, out: torch.Tensor) -> None:
        seen["block"] = out.detach().clone()

    hooks = [
        model.daft.register_forward_hook(on_daft),
        model.conditioned_block.register_forward_hook(on_block),
    ]
    try:
        with torch.no_grad():
            seen["logits"] = model(batch.without_labels()).logits
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_ehr_conditions_the_block_but_not_the_maps_before_it(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    torch.manual_seed(0)
    model = Daft(inputs, 1, encoders).eval()
    base = make_batch(films=True, seed=1)
    other = make_batch(films=True, seed=2)
    changed = dataclasses.replace(base, ehr=other.ehr, ehr_mask=other.ehr_mask)  # same films
    a, b = _capture(model, base), _capture(model, changed)
    assert torch.equal(a["before"], b["before"])  # the image path up to DAFT ignores the EHR
    for key in ("transformed", "block", "logits"):
        per_row = (a[key] - b[key]).flatten(1).abs().amax(dim=1)
        assert (per_row > 1e-6).all(), key  # every stay's maps move with its own EHR


def test_transform_is_a_channelwise_affine_map_of_the_feature_map() -> None:
    torch.manual_seed(0)
    daft = DaftTransform(channels=8, tabular_dim=5, bottleneck_factor=7.0)
    assert daft.aux[0].out_features == (8 + 5) // 7  # the paper's bottleneck
    assert all(layer.bias is None for layer in (daft.aux[0], daft.aux[2]))
    f, x = torch.randn(3, 8, 4, 4), torch.randn(3, 5)
    out = daft(f, x)
    # F' = α ⊙ F + β with α, β per (stay, channel): recover them from two spatial positions.
    f_mean = f.mean(dim=(2, 3))
    scale, shift = daft.aux(torch.cat([f_mean, x], dim=1)).split(8, dim=1)
    assert torch.allclose(out, scale[:, :, None, None] * f + shift[:, :, None, None], atol=1e-6)
    assert not torch.allclose(daft(f, torch.randn(3, 5)), out)


def test_missing_film_is_the_placeholder_whatever_the_pixels(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    torch.manual_seed(0)
    model = Daft(inputs, 1, encoders)
    batch = make_batch(films=True, seed=3)
    noisy = dataclasses.replace(
        batch,
        cxr=torch.where(batch.has_cxr[:, None, None, None], batch.cxr, torch.rand_like(batch.cxr)),
    )
    state = copy.deepcopy(model.state_dict())
    for mode in (False, True):
        model.train(mode)
        torch.manual_seed(1)  # the same dropout masks for both batches
        a = model(batch.without_labels()).logits
        model.load_state_dict(state)  # undo the running-statistics update of the first call
        torch.manual_seed(1)
        b = model(noisy.without_labels()).logits
        assert torch.allclose(a, b, atol=1e-5), mode


def test_placeholder_rows_leave_batchnorm_statistics_alone(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    torch.manual_seed(0)
    model = Daft(inputs, 1, encoders).train()
    batch = make_batch(films=True, seed=4)
    present = dataclasses.replace(
        batch,
        ehr=batch.ehr[batch.has_cxr],
        ehr_mask=batch.ehr_mask[batch.has_cxr],
        cxr=batch.cxr[batch.has_cxr],
        has_cxr=batch.has_cxr[batch.has_cxr],
        cxr_time=batch.cxr_time[batch.has_cxr],
        stay_id=batch.stay_id[batch.has_cxr],
        y=None,
    )
    twin = Daft(inputs, 1, encoders).train()
    twin.load_state_dict(model.state_dict())
    # No dropout: the same EHR embedding for the same stay in both models.
    model.ehr.eval()
    twin.ehr.eval()
    model(batch.without_labels())
    twin(present)  # only the films that exist
    for (name, a), b in zip(
        model.cxr.state_dict().items(), twin.cxr.state_dict().values(), strict=True
    ):
        if "running" in name:
            assert torch.allclose(a, b, atol=1e-6), name


@pytest.mark.parametrize("task_name", ["mortality", "phenotype", "los"])
def test_forward_backward_is_finite_and_reaches_the_ehr_encoder(
    task_name: str, inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    torch.manual_seed(0)
    task = get_task(task_name)
    model = Daft(inputs, task.n_outputs, encoders).train()
    batch = make_batch(task_name, films=True)
    out = model(batch.without_labels())
    assert out.logits.shape == (len(batch), task.n_outputs)
    assert torch.isfinite(out.logits).all()
    task_loss(task, out.logits, batch.y).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    # The EHR reaches the logits only through α, β on the image path.
    assert model.ehr.proj.weight.grad is not None and model.ehr.proj.weight.grad.abs().sum() > 0
    assert model.daft.aux[0].weight.grad.abs().sum() > 0


def test_image_path_gradient_reaches_the_ehr_encoder(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    """The pooled image feature itself (not only the logits) depends on the EHR embedding."""
    torch.manual_seed(0)
    model = Daft(inputs, 1, encoders).train()
    batch = make_batch(films=False)  # placeholders only: the BN-frozen path carries it as well
    seen: dict[str, torch.Tensor] = {}
    hook = model.conditioned_block.register_forward_hook(lambda _m, _a, out: seen.update(x=out))
    model(batch.without_labels())
    hook.remove()
    seen["x"].sum().backward()
    grad = model.ehr.proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize(("depth", "stage", "block"), [(18, 4, -1), (18, 3, 0), (50, 4, -1)])
def test_any_resnet_and_block(
    depth: int, stage: int, block: int, inputs: InputSpec, make_batch: Callable[..., Batch]
) -> None:
    torch.manual_seed(0)
    enc = EncoderConfig(dim=8, transformer_heads=2, resnet_depth=depth, resnet_weights="none")
    model = Daft(inputs, 2, enc, stage=stage, block=block)
    x = model.conditioned_block
    first = x.conv1.in_channels
    assert model.daft.channels == first  # the transform matches the block's input
    out = model(make_batch(films=True).without_labels())
    assert out.logits.shape == (8, 2) and torch.isfinite(out.logits).all()


def test_rejects_bad_locations(inputs: InputSpec, encoders: EncoderConfig) -> None:
    with pytest.raises(ValueError, match="stage"):
        Daft(inputs, 1, encoders, stage=0)
    with pytest.raises(ValueError, match="block"):
        Daft(inputs, 1, encoders, block=5)
