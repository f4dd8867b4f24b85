"""ShaSpec: the domain classifier reads the specific features only, a missing film is the EHR's
shared feature and is left out of both auxiliary terms, and one shared encoder serves both
modalities."""

from __future__ import annotations

import dataclasses

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from ehrcxr.models.shaspec import SharedEncoder, ShaSpec


def make_model(inputs, encoders, **kwargs) -> ShaSpec:
    torch.manual_seed(0)
    return ShaSpec(inputs, 1, encoders, **kwargs)


def perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))


def test_constructor_validates_its_keys(inputs, encoders) -> None:
    with pytest.raises(ValueError, match="alpha"):
        ShaSpec(inputs, 1, encoders, alpha=-0.1)


# ---- (1) the domain classifier reads only the specific features -------------------------------
def test_domain_loss_ignores_the_shared_encoder_and_follows_the_specific_ones(
    inputs, encoders, make_batch
) -> None:
    model = make_model(inputs, encoders).eval()
    batch = make_batch("mortality", b=9).without_labels()

    def dco_and_shared() -> tuple[float, torch.Tensor]:
        with torch.no_grad():
            f = model.features(batch)
            return model.domain_loss(f["p_ehr"], f["p_cxr"], batch.has_cxr).item(), f["s_ehr"]

    dco, s_ehr = dco_and_shared()
    for shared_part in (model.shared, model.ehr_stem, model.cxr_stem):
        perturb(shared_part)
    dco_after, s_ehr_after = dco_and_shared()
    assert not torch.allclose(s_ehr, s_ehr_after)  # the shared features did move
    assert dco_after == pytest.approx(dco, abs=1e-7)
    for specific in (model.ehr_specific, model.cxr_specific):
        before = dco_and_shared()[0]
        perturb(specific)
        assert dco_and_shared()[0] != pytest.approx(before, abs=1e-5)


def test_domain_loss_gradient_never_reaches_the_shared_encoder(
    inputs, encoders, make_batch
) -> None:
    model = make_model(inputs, encoders).train()
    batch = make_batch("mortality", b=9).without_labels()
    f = model.features(batch)
    model.domain_loss(f["p_ehr"], f["p_cxr"], batch.has_cxr).backward()
    assert all(p.grad is None for p in model.shared.parameters())
    assert model.ehr_specific.proj.weight.grad.abs().sum() > 0
    assert model.cxr_specific.head.weight.grad.abs().sum() > 0
    assert model.domain.weight.grad.abs().sum() > 0


# ---- (2) stays without a film -----------------------------------------------------------------
def test_missing_film_is_the_ehr_shared_feature(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders).eval()
    batch = make_batch("mortality", b=9).without_labels()
    has = batch.has_cxr
    with torch.no_grad():
        f = model.features(batch)
        assert torch.equal(f["f_cxr"][~has], f["s_ehr"][~has])
        assert not torch.allclose(f["f_cxr"][has], f["s_ehr"][has])
        composed = f["s_cxr"] + model.compose(torch.cat([f["s_cxr"], f["p_cxr"]], -1))
        assert torch.allclose(f["f_cxr"][has], composed[has])
        logits = model.decoder(torch.cat([f["f_ehr"], f["f_cxr"]], -1))
        assert torch.allclose(model(batch).logits, logits, atol=1e-6)
        # The placeholder is never encoded: its content changes nothing.
        noisy = dataclasses.replace(
            batch, cxr=torch.where(has[:, None, None, None], batch.cxr, 5.0)
        )
        assert torch.equal(model(noisy).logits, model(batch).logits)


def test_auxiliary_terms_by_hand_on_film_stays_only(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders, alpha=0.3, beta=0.7).eval()
    batch = make_batch("mortality", b=9).without_labels()
    has = batch.has_cxr
    with torch.no_grad():
        f = model.features(batch)
        out = model(batch)
        # DAO: mean absolute difference of the shared features over film stays and channels.
        s_e, s_c = f["s_ehr"][has], f["s_cxr"][has]
        dao = (s_e - s_c).abs().sum() / (s_e.numel())
        # DCO: CE over every p_ehr (class 0) and the film stays' p_cxr (class 1).
        logp_ehr = model.domain(f["p_ehr"]).log_softmax(-1)[:, 0]
        logp_cxr = model.domain(f["p_cxr"][has]).log_softmax(-1)[:, 1]
        dco = -(logp_ehr.sum() + logp_cxr.sum()) / (len(logp_ehr) + len(logp_cxr))
        assert model.alignment_loss(f["s_ehr"], f["s_cxr"], has).item() == pytest.approx(
            dao.item(), rel=1e-5
        )
        assert model.domain_loss(f["p_ehr"], f["p_cxr"], has).item() == pytest.approx(
            dco.item(), rel=1e-5
        )
        assert out.aux_loss.item() == pytest.approx((0.3 * dao + 0.7 * dco).item(), rel=1e-5)
        # Counting the no-film stays would change both (their s_cxr, p_cxr are zero rows).
        everyone = torch.ones_like(has)
        assert model.alignment_loss(f["s_ehr"], f["s_cxr"], everyone).item() != pytest.approx(
            dao.item(), rel=1e-3
        )
        assert model.domain_loss(f["p_ehr"], f["p_cxr"], everyone).item() != pytest.approx(
            dco.item(), rel=1e-3
        )


def test_without_any_film_no_alignment_and_ehr_only_domain_term(
    inputs, encoders, make_batch
) -> None:
    model = make_model(inputs, encoders, alpha=1.0, beta=1.0).train()
    calls = []
    model.cxr_stem.register_forward_hook(lambda *a: calls.append(1))
    model.cxr_specific.net.register_forward_hook(lambda *a: calls.append(1))
    batch = make_batch("phenotype", films=False).without_labels()
    out = model(batch)
    assert calls == [] and torch.isfinite(out.logits).all()
    f = model.features(batch)
    dco = F.cross_entropy(model.domain(f["p_ehr"]), torch.zeros(len(batch), dtype=torch.long))
    assert model.alignment_loss(f["s_ehr"], f["s_cxr"], batch.has_cxr).item() == 0.0
    assert model.domain_loss(f["p_ehr"], f["p_cxr"], batch.has_cxr).item() == pytest.approx(
        dco.item(), rel=1e-5
    )


# ---- (3) one shared encoder -------------------------------------------------------------------
def test_one_shared_encoder_serves_both_modalities(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders).eval()
    assert sum(isinstance(m, SharedEncoder) for m in model.modules()) == 1
    batch = make_batch("mortality", b=9).without_labels()
    has = batch.has_cxr
    with torch.no_grad():
        f = model.features(batch)
        assert torch.allclose(f["s_ehr"], model.shared(model.ehr_stem(batch.ehr_input)), atol=1e-6)
        assert torch.allclose(
            f["s_cxr"][has], model.shared(model.cxr_stem(batch.cxr[has])), atol=1e-6
        )
        assert not f["s_cxr"][~has].any()
        perturb(model.shared.layer)  # the same parameters move both modalities' shared features
        g = model.features(batch)
        assert not torch.allclose(g["s_ehr"], f["s_ehr"])
        assert not torch.allclose(g["s_cxr"][has], f["s_cxr"][has])
        assert torch.equal(g["p_ehr"], f["p_ehr"]) and torch.equal(g["p_cxr"], f["p_cxr"])


def test_alignment_gradient_reaches_the_shared_encoder_only(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders).train()
    batch = make_batch("mortality", b=9).without_labels()
    f = model.features(batch)
    model.alignment_loss(f["s_ehr"], f["s_cxr"], batch.has_cxr).backward()
    assert model.shared.out.weight.grad.abs().sum() > 0
    assert model.cxr_stem.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.ehr_specific.parameters())
    assert all(p.grad is None for p in model.cxr_specific.parameters())


# ---- a short fit through the training core ----------------------------------------------------
def test_short_lightning_fit_updates_the_model(inputs, encoders, make_batch) -> None:
    from ehrcxr.data.augment import AugmentConfig
    from ehrcxr.tasks import get_task
    from ehrcxr.training import TrainModule

    torch.manual_seed(0)
    model = ShaSpec(inputs, 7, encoders)
    batches = [make_batch("los", b=6, seed=s) for s in range(2)]
    module = TrainModule(model, get_task("los"), 1e-3, 0.0, AugmentConfig(enabled=False))
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
    assert changed and all(torch.isfinite(v).all() for v in model.state_dict().values())
