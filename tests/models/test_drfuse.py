"""DrFuse: disease-wise attention (label-specific, the CXR-distinct token masked without a film),
the logit-averaged shared representation, the JSD alignment, the ranking loss and the masking of
every CXR term."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from batches import train_context
from ehrcxr.data.augment import AugmentConfig
from ehrcxr.models.drfuse import (
    CXR_DISTINCT,
    DrFuse,
    bernoulli_jsd,
    logit_average,
)
from ehrcxr.tasks import get_task
from ehrcxr.training import TrainModule


def make_model(inputs, encoders, n_outputs: int = 25, **kwargs) -> DrFuse:
    torch.manual_seed(0)
    return DrFuse(inputs, n_outputs, encoders, **kwargs)


def test_attention_is_per_label_and_ignores_the_cxr_token_without_a_film(
    inputs, encoders, make_batch
) -> None:
    model = make_model(inputs, encoders).eval()
    batch = make_batch("phenotype", b=9).without_labels()  # stays 0, 3, 6 have no film
    with torch.no_grad():
        attention = model.predict(batch)["attention"]  # [B, C, 3]
    assert attention.shape == (9, 25, 3)
    assert torch.allclose(attention.sum(-1), torch.ones(9, 25))
    has = batch.has_cxr
    assert torch.equal(attention[~has][..., CXR_DISTINCT], torch.zeros(3, 25))
    assert (attention[has][..., CXR_DISTINCT] > 0).all()
    # Label-specific keys: the weights of one stay differ across labels.
    spread = attention.std(dim=1)  # [B, 3]: across the 25 labels
    assert (spread[has] > 1e-4).all()


def test_shared_representation_is_the_logit_of_averaged_probabilities(
    inputs, encoders, make_batch
) -> None:
    a, b = torch.randn(5, 7) * 4, torch.randn(5, 7) * 4
    expected = torch.logit((a.sigmoid() + b.sigmoid()) / 2, eps=0)
    assert torch.allclose(logit_average(a, b), expected, atol=1e-4)
    big = torch.tensor([60.0]), torch.tensor([-60.0])  # stable where the direct form overflows
    assert torch.isfinite(logit_average(*big)).all()
    model = make_model(inputs, encoders).eval()
    batch = make_batch("phenotype", b=6).without_labels()
    with torch.no_grad():
        r = model.represent(batch)
    has = batch.has_cxr
    assert torch.equal(r["s"][~has], r["s_ehr"][~has])  # no film: the EHR's shared part
    assert torch.allclose(r["s"][has], logit_average(r["s_ehr"], r["s_cxr"])[has])


def test_jsd_known_answer() -> None:
    a, b = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, -1.0]])
    p, q = a.sigmoid(), b.sigmoid()
    m = (p + q) / 2

    def kl(x, y):
        return x * torch.log(x / y) + (1 - x) * torch.log((1 - x) / (1 - y))

    expected = (kl(p, m) + kl(q, m)) / 2
    got = bernoulli_jsd(a, b)
    assert torch.allclose(got, expected, atol=1e-6)
    assert got[0, 0] == 0 and got[0, 1] > 0


def test_ranking_loss_known_answer() -> None:
    # One stay, one label. Losses: ehr 0.1 < shared 0.5 < cxr 0.9 → the right order is
    # a_ehr > a_shared > a_cxr.
    losses = {
        "ehr": torch.tensor([[0.1]]),
        "shared": torch.tensor([[0.5]]),
        "cxr": torch.tensor([[0.9]]),
    }
    has = torch.tensor([True])
    right = torch.tensor([[[0.6, 0.3, 0.1]]])
    assert DrFuse.ranking_loss(right, losses, has) == 0
    wrong = torch.tensor([[[0.1, 0.3, 0.6]]])
    # pairs (cxr, ehr): relu(−(−1)(0.6 − 0.1))... target sign(ℓ_ehr − ℓ_cxr) = −1 → 0.5;
    # (shared, ehr): target −1 → relu(0.3 − 0.1) = 0.2; (shared, cxr): target +1 → relu(0.6 − 0.3)
    expected = (0.5 + 0.2 + 0.3) / 3
    assert torch.isclose(DrFuse.ranking_loss(wrong, losses, has), torch.tensor(expected))
    # Without a film only the (shared, ehr) pair counts.
    no_film = DrFuse.ranking_loss(wrong, losses, torch.tensor([False]))
    assert torch.isclose(no_film, torch.tensor(0.2 / 3))


def test_cxr_terms_are_masked_without_films(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders).train()
    batch = make_batch("phenotype", b=6, films=False)
    logged: dict = {}
    loss = model.training_loss(batch, train_context("phenotype", logged=logged))
    loss.backward()
    assert logged["train/drfuse_jsd"] == [0] and logged["train/drfuse_cos_cxr"] == [0]
    for encoder in (model.cxr_shared, model.cxr_distinct):
        assert all(p.grad is None or not p.grad.any() for p in encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.ehr_trunk.parameters())


def test_training_loss_adds_every_weighted_term(inputs, encoders, make_batch) -> None:
    batch = make_batch("phenotype", b=6)
    zero = {k: 0.0 for k in DrFuse(inputs, 25, encoders).weights}
    model = make_model(inputs, encoders, **zero).eval()  # eval: no dropout, deterministic
    with torch.no_grad():
        only_final = model.training_loss(batch, train_context("phenotype"))
        final = F.binary_cross_entropy_with_logits(model(batch.without_labels()).logits, batch.y)
    assert torch.isclose(only_final, final)
    model.weights = {**zero, "lambda_pred_cxr": 1.0}
    with torch.no_grad():
        r = model.predict(batch.without_labels())
        cxr = F.binary_cross_entropy_with_logits(r["cxr"], batch.y, reduction="none").mean(1)
        expected = final + cxr[batch.has_cxr].mean()
        assert torch.isclose(model.training_loss(batch, train_context("phenotype")), expected)


def test_los_and_mortality_losses_run(inputs, encoders, make_batch) -> None:
    for task_name, n in (("los", 7), ("mortality", 1)):
        model = make_model(inputs, encoders, n_outputs=n).train()
        loss = model.training_loss(make_batch(task_name, b=6), train_context(task_name))
        assert torch.isfinite(loss)
        loss.backward()


def test_a_short_lightning_fit(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders)
    batches = [make_batch("phenotype", b=6, seed=s) for s in range(2)]
    no_augment = AugmentConfig(enabled=False)
    module = TrainModule(model, get_task("phenotype"), 1e-3, 0.0, no_augment)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=1, collate_fn=lambda x: x[0])
    trainer.fit(module, loader)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("attention.") for k in changed)
    assert any(k.startswith("cxr_distinct.") for k in changed)
