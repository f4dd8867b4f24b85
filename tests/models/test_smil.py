"""SMIL: the inner step shapes the outer gradient (fast weights used), a missing film is
reconstructed at test time, the k-means priors are fit by prepare and kept current, and a real
Lightning fit runs the hooks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from batches import train_context
from ehrcxr.batch import Batch, InputSpec
from ehrcxr.data.augment import AugmentConfig
from ehrcxr.models.encoders import EncoderConfig
from ehrcxr.models.smil import SMIL, kmeans
from ehrcxr.tasks import get_task
from ehrcxr.training import TrainModule


def make_model(inputs: InputSpec, encoders: EncoderConfig, **kwargs) -> SMIL:
    torch.manual_seed(0)
    return SMIL(inputs, 1, encoders, **kwargs)


def outer_loss_and_gradient(
    inputs: InputSpec, encoders: EncoderConfig, batch: Batch, inner_lr: float
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model = make_model(inputs, encoders, inner_lr=inner_lr, mc_samples=2).train()
    with torch.no_grad():
        model.centres.normal_(generator=torch.Generator().manual_seed(1))
        model.prior_ready.fill_(True)
    torch.manual_seed(7)  # the same split, noise and dropout masks for both learning rates
    parts = model.meta_losses(batch, train_context())
    params = list(model.infer.parameters()) + list(model.regulariser.parameters())
    grads = torch.autograd.grad(parts["val"], params, allow_unused=True)
    return parts["val"].detach(), [
        g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)
    ]


def test_the_inner_step_changes_the_outer_loss_and_its_gradient(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    batch = make_batch(b=10, seed=1)
    loss_0, grads_0 = outer_loss_and_gradient(inputs, encoders, batch, inner_lr=0.0)
    loss_1, grads_1 = outer_loss_and_gradient(inputs, encoders, batch, inner_lr=0.5)
    # θ' ≠ θ is what the outer loss is evaluated with.
    assert abs(float(loss_1 - loss_0)) > 1e-5
    # The reconstruction network's outer gradient depends on the inner update ...
    assert (grads_1[0] - grads_0[0]).abs().max() > 1e-7
    # ... and the regulariser, absent from the outer loss itself, learns only through it.
    n_infer = len(list(nn.Module.parameters(make_model(inputs, encoders).infer)))
    assert all((g == 0).all() for g in grads_0[n_infer:])
    assert any((g != 0).any() for g in grads_1[n_infer:])


def test_at_test_time_a_missing_film_is_reconstructed(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    model = make_model(inputs, encoders).eval()
    with torch.no_grad():
        model.centres.normal_(generator=torch.Generator().manual_seed(2))
        model.prior_ready.fill_(True)
    batch = make_batch(b=6, seed=3).without_labels()
    noisy = dataclasses.replace(
        batch,
        cxr=torch.where(batch.has_cxr[:, None, None, None], batch.cxr, torch.rand_like(batch.cxr)),
    )
    with torch.no_grad():
        logits = model(batch).logits
        h_ehr = model.ehr(batch.ehr_input)
        h_cxr = model.cxr(batch.cxr)
        rec = model.reconstruct(h_ehr)
        by_hand = model.out(model.hidden(torch.cat([h_ehr, rec], -1)))
        with_film = model.out(model.hidden(torch.cat([h_ehr, h_cxr], -1)))
        zero_filled = model.out(model.hidden(torch.cat([h_ehr, torch.zeros_like(rec)], -1)))
        assert torch.equal(model(noisy).logits, logits)  # the placeholder is never read
    missing, has = ~batch.has_cxr, batch.has_cxr
    assert torch.allclose(logits[missing], by_hand[missing], atol=1e-6)
    assert torch.allclose(logits[has], with_film[has], atol=1e-5)
    assert (logits[missing] - zero_filled[missing]).abs().min() > 1e-5
    # The reconstruction is the softplus-weighted mean of the mapped priors.
    w = torch.nn.functional.softplus(model.infer(h_ehr))
    mapped = model.prior_map(model.centres)
    assert torch.allclose(rec, (w / w.sum(-1, keepdim=True)) @ mapped, atol=1e-5)


def test_training_reads_a_real_film_and_distils_only_into_the_reconstruction(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    """The paper reconstructs only what is missing: a stay with a film trains the classifier
    on its real film, so its task loss never depends on the reconstruction network; the
    distillation terms train the reconstruction, never the classifier or the EHR encoder."""
    batch = make_batch(b=10, seed=4)
    batch = dataclasses.replace(batch, has_cxr=torch.ones_like(batch.has_cxr))  # all films

    def parts_with(infer_scale: float) -> dict[str, torch.Tensor]:
        model = make_model(inputs, encoders, inner_lr=0.1).train()
        with torch.no_grad():
            model.centres.normal_(generator=torch.Generator().manual_seed(1))
            model.prior_ready.fill_(True)
            for p in model.infer.parameters():
                p.mul_(infer_scale)
        torch.manual_seed(7)  # the same split, noise and dropout masks
        return model, model.meta_losses(batch, train_context())

    (model, a), (_, b) = parts_with(1.0), parts_with(-3.0)
    assert torch.allclose(a["train"], b["train"]) and torch.allclose(a["task"], b["task"])
    assert not torch.allclose(a["reconstruction"], b["reconstruction"])  # the test can fail
    distil = a["kd"] + model.alpha * a["align"] + model.beta * a["reconstruction"]
    assert float(distil) > 0
    named = dict(model.named_parameters())
    grads = torch.autograd.grad(distil, list(named.values()), allow_unused=True)
    reached = {k for (k, _), g in zip(named.items(), grads, strict=True) if g is not None}
    assert reached and all(k.startswith(("infer.", "prior_map.")) for k in reached), reached


class _FeatureStub(nn.Module):
    """A film 'encoder' whose feature is the film's first pixel row (known features)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def present(self, image: torch.Tensor, has_cxr: torch.Tensor) -> torch.Tensor:
        return image[:, 0, 0, : self.dim] * has_cxr[:, None]


def _clustered_batches(inputs: InputSpec, dim: int) -> tuple[list[Batch], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    truth = torch.zeros(3, dim)
    truth[0, 0], truth[1, 1], truth[2, 2] = 10.0, 10.0, -10.0
    batches = []
    for i in range(4):
        labels = torch.arange(12) % 3
        feats = truth[labels] + 0.1 * torch.randn(12, dim, generator=g)
        cxr = torch.zeros(12, 1, inputs.image_size, inputs.image_size)
        cxr[:, 0, 0, :dim] = feats
        has = torch.tensor([j % 4 != 0 for j in range(12)])
        batches.append(
            Batch(
                ehr=torch.zeros(12, inputs.time_steps, inputs.ehr_features),
                ehr_mask=torch.zeros(12, inputs.time_steps, inputs.ehr_masks),
                cxr=cxr * has[:, None, None, None],
                has_cxr=has,
                cxr_time=torch.zeros(12),
                stay_id=torch.arange(12) + 12 * i,
            )
        )
    return batches, truth


def test_prepare_fits_the_priors_on_training_films(
    inputs: InputSpec, encoders: EncoderConfig
) -> None:
    dim = encoders.dim
    batches, truth = _clustered_batches(inputs, dim)
    fitted = []
    for _ in range(2):
        model = make_model(inputs, encoders, n_clusters=3)
        model.cxr = _FeatureStub(dim)
        model.prepare(iter(batches))
        fitted.append(model.centres.clone())
        assert bool(model.prior_ready) and model.training  # mode restored
    assert torch.equal(fitted[0], fitted[1])  # deterministic
    # Every true centre is recovered (up to the small noise), in some order.
    dist = torch.cdist(truth, fitted[0])
    assert (dist.min(dim=1).values < 0.2).all() and len(set(dist.argmin(1).tolist())) == 3
    state = model.state_dict()
    assert "centres" in state and "prior_ready" in state
    assert torch.equal(state["centres"], fitted[0])
    # The k-means itself: known answer on points and n < k repeats points.
    pts = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
    centres = kmeans(pts, 2)
    assert torch.allclose(centres[centres[:, 0].argsort()], torch.tensor([[0.0, 0.5], [10.0, 0.5]]))
    assert kmeans(pts[:1], 3).shape == (3, 2)


def test_training_steps_keep_the_priors_in_the_trained_feature_space(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    model = make_model(inputs, encoders, n_clusters=2).train()
    batch = make_batch(b=9, seed=5)
    assert not bool(model.prior_ready)
    model.training_loss(batch, train_context())  # no prepare: the first step fits the batch's films
    assert bool(model.prior_ready)
    with torch.no_grad():
        model.centres.fill_(5.0)
        feats = model.cxr.present(batch.cxr, batch.has_cxr)[batch.has_cxr]
    before = model.centres.clone()
    model.training_loss(batch, train_context())
    # One centre took all the features (the other was equidistant: the first one wins), and
    # moved PRIOR_MOMENTUM of the way to their mean; the other did not move.
    moved = (model.centres - before).abs().amax(dim=1) > 0
    assert moved.tolist() == [True, False]
    assert torch.allclose(model.centres[0], 0.9 * before[0] + 0.1 * feats.mean(0), atol=1e-4)
    # Inference never moves the priors.
    after = model.centres.clone()
    model.eval()
    with torch.no_grad():
        model(batch.without_labels())
    assert torch.equal(model.centres, after)


def test_a_short_lightning_fit_runs_the_prepare_hook_and_the_meta_step(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    model = make_model(inputs, encoders, n_clusters=3)
    batches = [make_batch(b=8, seed=s) for s in range(3)]
    loader = DataLoader(batches, batch_size=1, collate_fn=lambda x: x[0])
    module = TrainModule(
        model, get_task("mortality"), 1e-3, 0.0, AugmentConfig(enabled=False), prepare_loader=loader
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    assert bool(model.prior_ready)
    assert not torch.equal(model.centres, before["centres"])
    for name in ("infer.0.weight", "regulariser.0.weight", "ehr.proj.weight", "hidden.0.weight"):
        assert not torch.equal(model.state_dict()[name], before[name]), name
    assert "train/smil_val" in trainer.callback_metrics
