"""MMTM's mechanism: 2σ channel gates from a joint squeeze, fed to each stream's next stage."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ehrcxr.batch import Batch, InputSpec
from ehrcxr.models import create_model
from ehrcxr.models.encoders import EncoderConfig
from ehrcxr.models.mmtm import Mmtm, MultimodalTransferModule
from ehrcxr.tasks import TASKS, get_task
from ehrcxr.training import task_loss


def build(inputs: InputSpec, encoders: EncoderConfig, n_outputs: int = 1, **kw: object) -> Mmtm:
    torch.manual_seed(0)
    model = create_model("mmtm", inputs, n_outputs, encoders, dict(kw))
    assert isinstance(model, Mmtm)
    return model


def bypass(model: Mmtm, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every MMTM becomes the identity: the two streams no longer exchange anything."""
    for block in model.mmtm:
        monkeypatch.setattr(block, "forward", lambda image, ehr: (image, ehr))


def warm_batchnorm(model: Mmtm, batch: Batch) -> None:
    """Running statistics from films: with the initial ones (mean 0, var 1, β 0) the placeholder
    (zero) film stays an all-zero map through every stage, whatever its gates."""
    films = batch.has_cxr.nonzero().squeeze(1)
    rows = {k: v[films] for k, v in vars(batch.without_labels()).items() if v is not None}
    mode = model.training
    with torch.no_grad():
        model.train()(Batch(**rows))
    model.train(mode)


def with_ehr(batch: Batch, ehr: torch.Tensor) -> Batch:
    return dataclasses.replace(batch, ehr=ehr).without_labels()


def test_gates_are_two_sigmoid_in_open_interval() -> None:
    torch.manual_seed(0)
    block = MultimodalTransferModule(image_channels=8, ehr_channels=6, ratio=4)
    assert block.squeeze[0].out_features == (8 + 6) // 4  # C_Z = (C_A + C_B) / ratio
    image, ehr = torch.randn(5, 8, 3, 3) * 3, torch.randn(5, 7, 6) * 3
    g_image, g_ehr = block.gates(image, ehr)
    assert g_image.shape == (5, 8) and g_ehr.shape == (5, 6)
    gates = torch.cat([g_image, g_ehr], dim=1)
    assert ((gates > 0) & (gates < 2)).all()
    with torch.no_grad():
        for lin in (block.excite_image, block.excite_ehr):
            lin.weight.mul_(20)
    gates = torch.cat(block.gates(image, ehr), dim=1)
    assert (gates > 1.5).any() and (gates < 0.5).any()  # 2σ: amplifies as well as suppresses
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
    out_image, out_ehr = block(image, ehr)  # zero excitation: gate 2σ(0) = 1, the identity
    assert torch.equal(out_image, image) and torch.equal(out_ehr, ehr)


def test_gate_recalibrates_channels(inputs: InputSpec) -> None:
    torch.manual_seed(0)
    block = MultimodalTransferModule(image_channels=4, ehr_channels=3, ratio=4)
    image, ehr = torch.randn(2, 4, 5, 5), torch.randn(2, 7, 3)
    g_image, g_ehr = block.gates(image, ehr)
    out_image, out_ehr = block(image, ehr)
    assert torch.allclose(out_image, image * g_image[:, :, None, None])
    assert torch.allclose(out_ehr, ehr * g_ehr[:, None, :])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_image_logits_gradient_reaches_ehr_only_through_gates(
    inputs: InputSpec, encoders: EncoderConfig, make_batch, monkeypatch, mode: str
) -> None:
    model = build(inputs, encoders).train(mode == "train")
    batch = make_batch(b=6, films=True)
    warm_batchnorm(model, batch)

    def ehr_grad() -> torch.Tensor:
        ehr = batch.ehr.clone().requires_grad_(True)
        _, cxr_logits = model.branch_logits(with_ehr(batch, ehr))
        (grad,) = torch.autograd.grad(cxr_logits.sum(), ehr, allow_unused=True)
        return torch.zeros_like(ehr) if grad is None else grad

    grad = ehr_grad()
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # Every row reaches its own EHR, rows without a film (placeholder) included.
    assert (grad.abs().sum(dim=(1, 2)) > 0).all()
    bypass(model, monkeypatch)
    assert ehr_grad().abs().sum() == 0


def test_recalibrated_features_feed_the_next_stage(
    inputs: InputSpec, encoders: EncoderConfig, make_batch, monkeypatch
) -> None:
    """Slow fusion: the EHR changes layer3's *input* (gated layer2 map), hence its raw output;
    the film changes the second LSTM layer's input (gated first-layer sequence)."""
    model = build(inputs, encoders).eval()
    assert model.stages == (2, 3, 4) and len(model.ehr_layers) == 3
    warm_batchnorm(model, make_batch(b=6, films=True, seed=3))
    seen: dict[str, torch.Tensor] = {}
    model.cnn.layer3.register_forward_hook(lambda m, a, out: seen.__setitem__("layer3", out))
    model.ehr_layers[1].register_forward_hook(lambda m, a, out: seen.__setitem__("lstm2", out[0]))
    base = make_batch(b=6, films=True, seed=1)
    other = make_batch(b=6, films=True, seed=2)
    film_rows = base.has_cxr[:, None, None, None]
    new_film = dataclasses.replace(base, cxr=torch.rand_like(base.cxr) * film_rows)

    def run() -> tuple[dict[str, torch.Tensor], ...]:
        out = []
        with torch.no_grad():
            for b in (base, with_ehr(base, other.ehr), new_film):
                model(b.without_labels())
                out.append(dict(seen))
        return tuple(out)

    ref, ehr_changed, film_changed = run()
    assert not torch.allclose(ref["layer3"], ehr_changed["layer3"])
    for rows in (base.has_cxr, ~base.has_cxr):  # film rows and placeholder rows alike
        assert not torch.allclose(ref["layer3"][rows], ehr_changed["layer3"][rows])
    films = base.has_cxr
    assert not torch.allclose(ref["lstm2"][films], film_changed["lstm2"][films])
    bypass(model, monkeypatch)
    ref, ehr_changed, film_changed = run()
    assert torch.allclose(ref["layer3"], ehr_changed["layer3"])
    assert torch.allclose(ref["lstm2"], film_changed["lstm2"])


def test_prediction_is_the_average_of_the_unimodal_heads(
    inputs: InputSpec, encoders: EncoderConfig, make_batch
) -> None:
    model = build(inputs, encoders, n_outputs=3).eval()
    batch = make_batch("phenotype", b=5).without_labels()
    with torch.no_grad():
        ehr_logits, cxr_logits = model.branch_logits(batch)
        assert torch.allclose(model(batch).logits, (ehr_logits + cxr_logits) / 2)


@pytest.mark.parametrize("task_name", TASKS)
@pytest.mark.parametrize("films", [True, False], ids=["films", "no-films"])
@pytest.mark.parametrize("stages", [(2, 3, 4), (0, 4)])
def test_forward_backward_finite(
    inputs: InputSpec,
    encoders: EncoderConfig,
    make_batch,
    task_name: str,
    films: bool,
    stages: tuple[int, ...],
) -> None:
    task = get_task(task_name)
    model = build(inputs, encoders, task.n_outputs, stages=list(stages)).train()
    batch = make_batch(task_name, b=6, films=films)
    out = model(batch.without_labels())
    assert out.logits.shape == (6, task.n_outputs) and torch.isfinite(out.logits).all()
    task_loss(task, out.logits, batch.y).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    for block in model.mmtm:  # the modules are trained jointly with both streams
        assert block.squeeze[0].weight.grad is not None
        assert block.squeeze[0].weight.grad.abs().sum() > 0


def test_placeholder_films_never_enter_batchnorm_statistics(
    inputs: InputSpec, encoders: EncoderConfig, make_batch
) -> None:
    model = build(inputs, encoders).train()
    norms = [m for m in model.cnn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [n.running_mean.clone() for n in norms]
    model(make_batch(b=6, films=False).without_labels())  # no film at all
    assert all(torch.equal(b, n.running_mean) for b, n in zip(before, norms, strict=True))
    # With films, the statistics are those of the film rows alone, in every stage (no dropout,
    # so that the film rows' gates are the same in both batches).
    mixed = make_batch(b=6, films=True)
    only_films = mixed.has_cxr.nonzero().squeeze(1)
    still = dataclasses.replace(encoders, dropout=0.0)
    a, b = build(inputs, still).train(), build(inputs, still).train()
    a(mixed.without_labels())
    rows = {k: v[only_films] for k, v in vars(mixed.without_labels()).items() if v is not None}
    b(Batch(**rows))
    for na, nb in zip(a.cnn.modules(), b.cnn.modules(), strict=True):
        if isinstance(na, torch.nn.BatchNorm2d):
            assert not torch.allclose(na.running_var, torch.ones_like(na.running_var))
            assert torch.allclose(na.running_mean, nb.running_mean, atol=1e-6)
            assert torch.allclose(na.running_var, nb.running_var, atol=1e-5)


def test_rejects_bad_stages(inputs: InputSpec, encoders: EncoderConfig) -> None:
    with pytest.raises(ValueError, match="stages"):
        Mmtm(inputs, 1, encoders, stages=(2, 5))
    with pytest.raises(ValueError, match="stages"):
        Mmtm(inputs, 1, encoders, stages=())
    with pytest.raises(ValueError, match="ratio"):
        Mmtm(inputs, 1, encoders, ratio=0)
