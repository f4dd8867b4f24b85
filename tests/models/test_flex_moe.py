"""Flex-MoE: the missing-modality bank, top-k routing and its dispatch, the gate loss, and the
S-Router's specialised routing of samples without a film."""

from __future__ import annotations

import dataclasses

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from ehrcxr.models.flex_moe import (
    CXR,
    EHR_ONLY,
    FULL,
    FlexMoE,
    NoisyTopKRouter,
    SparseMoE,
    balance_loss,
    cv_squared,
)


def make_model(inputs, encoders, **kwargs) -> FlexMoE:
    torch.manual_seed(0)
    return FlexMoE(inputs, 1, encoders, **kwargs)


def test_constructor_validates_its_keys(inputs, encoders) -> None:
    with pytest.raises(ValueError, match="top_k"):
        FlexMoE(inputs, 1, encoders, n_experts=4, top_k=5)
    with pytest.raises(ValueError, match="n_experts"):
        FlexMoE(inputs, 1, encoders, n_experts=1, top_k=1)
    with pytest.raises(ValueError, match="tokens"):
        FlexMoE(inputs, 1, encoders, tokens=0)


# ---- (1) the missing-modality bank ------------------------------------------------------------
def test_bank_fills_the_film_tokens_exactly_when_the_film_is_missing(
    inputs, encoders, make_batch
) -> None:
    model = make_model(inputs, encoders, tokens=3).train()
    batch = make_batch("mortality", b=9).without_labels()  # stays 0, 3, 6 have no film
    has = batch.has_cxr
    assert FlexMoE.combination(batch).tolist() == [EHR_ONLY if not h else FULL for h in has]
    _, film, _ = model.encode(batch)
    bank = model.bank[EHR_ONLY, CXR]
    for i in range(len(batch)):
        assert torch.equal(film[i], bank) == (not bool(has[i])), i
    # The placeholder's content changes nothing (never encoded).
    noisy = dataclasses.replace(batch, cxr=torch.where(has[:, None, None, None], batch.cxr, 7.0))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch).logits, model(noisy).logits)
        _, film_noisy, _ = model.encode(noisy)
        assert torch.equal(film_noisy[~has], bank.expand(int((~has).sum()), -1, -1))


def test_bank_is_unused_when_every_stay_has_a_film(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders).train()
    batch = make_batch("mortality", b=6)
    batch = dataclasses.replace(batch, has_cxr=torch.ones(6, dtype=torch.bool))
    out = model(batch.without_labels())
    (out.logits.sum() + out.aux_loss).backward()
    assert model.bank.grad is None or not model.bank.grad.any()
    # With missing films, the EHR-only entry (and only it) gets a gradient.
    model.zero_grad()
    out = model(make_batch("mortality", b=6).without_labels())
    (out.logits.sum() + out.aux_loss).backward()
    grad = model.bank.grad
    assert grad[EHR_ONLY, CXR].abs().sum() > 0
    assert not grad[FULL].any() and not grad[EHR_ONLY, 1 - CXR].any()


# ---- (2) routing is top-k, the dispatch is the weighted sum of the chosen experts -------------
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_full_modality_tokens_use_exactly_k_experts_weighted_sum(training: bool) -> None:
    torch.manual_seed(0)
    moe = SparseMoE(dim=8, n_experts=5, top_k=2).train(training)
    x = torch.randn(40, 8)
    combo = torch.full((40,), FULL)
    torch.manual_seed(1)
    y, gates, logits, _ = moe(x, combo)
    assert ((gates > 0).sum(1) == 2).all()
    assert torch.allclose(gates.sum(1), torch.ones(40))
    # The chosen experts are the top-2 router logits (noisy in training), gates their softmax.
    top, idx = logits.topk(2, dim=1)
    assert torch.equal(gates.gather(1, idx), top.softmax(1))
    expected = torch.zeros_like(y)
    for n in range(40):
        for e in gates[n].nonzero().squeeze(1).tolist():
            expected[n] += gates[n, e] * moe.expert(e, x[n : n + 1])[0]
    assert torch.allclose(y, expected, atol=1e-5)
    # Unchosen experts do not matter: zeroing them leaves the output unchanged.
    unused = [e for e in range(5) if not gates[:, e].any()]
    if not training:
        with torch.no_grad():
            for e in unused:
                moe.w2[e].zero_()
            assert torch.allclose(moe(x, combo)[0], y, atol=1e-6)


def test_eval_routing_is_deterministic_and_training_routing_noisy() -> None:
    torch.manual_seed(0)
    router = NoisyTopKRouter(dim=8, n_experts=6, top_k=2)
    x = torch.randn(64, 8)
    combo = torch.full((64,), FULL)
    router.eval()
    assert torch.equal(router(x, combo)[0], router(x, combo)[0])
    assert torch.equal(router(x, combo)[2], router.w_gate(x))  # clean logits at evaluation
    router.train()
    assert not torch.equal(router(x, combo)[2], router(x, combo)[2])


# ---- (3) the gate loss: known answers ---------------------------------------------------------
def test_cv_squared_known_values() -> None:
    assert cv_squared(torch.tensor([1.0, 1.0, 1.0])).item() == pytest.approx(0.0)
    # [2, 2, 0, 0]: mean 1, unbiased variance 4/3.
    assert cv_squared(torch.tensor([2.0, 2.0, 0.0, 0.0])).item() == pytest.approx(4 / 3)
    assert cv_squared(torch.tensor([5.0])).item() == 0.0


def test_balance_loss_is_minimal_for_balanced_and_larger_for_collapsed_routing() -> None:
    # 4 tokens, 4 experts, top-2 with gates ½: balanced pairs {0,1},{2,3},{0,2},{1,3}.
    balanced = torch.tensor(
        [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5], [0.5, 0, 0.5, 0], [0, 0.5, 0, 0.5]]
    )
    collapsed = torch.tensor([[0.5, 0.5, 0, 0]] * 4)
    load_of = lambda g: (g > 0).float()  # noqa: E731 - the 0/1 load of evaluation mode
    assert balance_loss(balanced, load_of(balanced)).item() == pytest.approx(0.0)
    # importance [2, 2, 0, 0] → 4/3; load [4, 4, 0, 0] → (16/3) / 4 = 4/3.
    assert balance_loss(collapsed, load_of(collapsed)).item() == pytest.approx(8 / 3)


def test_router_loss_terms_per_group_known_answer() -> None:
    gates = torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5], [0, 0.7, 0.3, 0], [0, 0.6, 0, 0.4]])
    load = (gates > 0).float()
    logits = torch.tensor(
        [[1.0, 1.0, 0, 0], [0, 0, 1.0, 1.0], [0, 2.0, 1.0, -1], [-1, 1.0, 0, 0.5]]
    )
    full = torch.tensor([FULL, FULL, FULL, FULL])
    assert NoisyTopKRouter.loss(gates, logits, load, full).item() == pytest.approx(
        balance_loss(gates, load).item()
    )
    mixed = torch.tensor([FULL, FULL, EHR_ONLY, EHR_ONLY])
    expected = (
        balance_loss(gates[:2], load[:2])
        + balance_loss(gates[2:, 1:], load[2:, 1:])  # expert 0 (the full combination's) left out
        + F.cross_entropy(logits[2:], torch.tensor([EHR_ONLY, EHR_ONLY]))
    )
    assert NoisyTopKRouter.loss(gates, logits, load, mixed).item() == pytest.approx(expected.item())
    # By hand: importance over experts 1-3 of the EHR-only tokens [1.3, 0.3, 0.4].
    imp = torch.tensor([1.3, 0.3, 0.4])
    assert cv_squared(imp).item() == pytest.approx((imp.var() / imp.mean() ** 2).item())


def test_model_gate_loss_is_weighted_and_summed_over_blocks(inputs, encoders, make_batch) -> None:
    batch = make_batch("mortality").without_labels()
    out1 = make_model(inputs, encoders, gate_loss_weight=1.0).eval()(batch)
    out2 = make_model(inputs, encoders, gate_loss_weight=0.5).eval()(batch)
    assert out1.aux_loss.item() > 0
    assert out2.aux_loss.item() == pytest.approx(0.5 * out1.aux_loss.item(), rel=1e-5)


# ---- (4) S-Router: missing-modality samples go to their combination's expert ------------------
@pytest.mark.parametrize("top_k", [1, 2, 3])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_missing_modality_tokens_get_their_combination_expert_as_top_1(
    top_k: int, training: bool
) -> None:
    torch.manual_seed(0)
    router = NoisyTopKRouter(dim=8, n_experts=6, top_k=top_k).train(training)
    x = torch.randn(50, 8).abs()
    with torch.no_grad():  # the router ranks expert 1 far below the others for every token
        router.w_gate.weight.abs_()
        router.w_gate.weight[EHR_ONLY] = -5.0
        router.w_noise.weight.zero_()  # noise std softplus(0) + ε ≈ 0.7
    combo = torch.tensor([FULL, EHR_ONLY] * 25)
    torch.manual_seed(2)
    gates, chosen, logits, _ = router(x, combo)
    special = combo == EHR_ONLY
    assert (chosen[special, 0] == EHR_ONLY).all()  # fixed top-1: the combination's expert
    assert not (chosen[~special] == EHR_ONLY).any()  # the G-Router never picks it here
    assert ((gates > 0).sum(1) == top_k).all() and torch.allclose(gates.sum(1), torch.ones(50))
    # The other k − 1 are the router's best among the remaining experts.
    rest = logits[special].clone()
    rest[:, EHR_ONLY] = -torch.inf
    best_rest = rest.topk(top_k - 1, dim=1).indices if top_k > 1 else None
    if best_rest is not None:
        assert torch.equal(chosen[special, 1:].sort(1).values, best_rest.sort(1).values)
    else:
        assert torch.allclose(gates[special, EHR_ONLY], torch.ones(int(special.sum())))
    assert torch.allclose(
        gates[special].gather(1, chosen[special]),
        logits[special].gather(1, chosen[special]).softmax(1),
    )


def test_s_router_cross_entropy_pulls_the_logits_to_the_combination_expert() -> None:
    """The loss's only dependence on the router logits is CE(logits, c) over the tokens with a
    missing modality: its gradient is (softmax − onehot(c)) / n there and zero elsewhere."""
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    gates = torch.rand(6, 4)  # constants here: only the CE term reads the logits
    load = torch.rand(6, 4)
    combo = torch.tensor([FULL, EHR_ONLY, FULL, EHR_ONLY, EHR_ONLY, FULL])
    NoisyTopKRouter.loss(gates, logits, load, combo).backward()
    special = combo == EHR_ONLY
    expected = (logits.softmax(1) - F.one_hot(combo, 4).float()).detach() / int(special.sum())
    assert torch.allclose(logits.grad[special], expected[special], atol=1e-6)
    assert not logits.grad[~special].any()
    assert (logits.grad[special, EHR_ONLY] < 0).all()  # descent raises expert c's logit


def test_model_routes_no_film_stays_to_the_ehr_only_expert(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders, n_experts=4, top_k=2, layers=2, tokens=2).eval()
    batch = make_batch("mortality", b=9).without_labels()
    with torch.no_grad():
        model(batch)
    for block in model.blocks:
        gates = block.last_gates  # [B, 2·tokens, E]
        assert (gates[~batch.has_cxr][..., EHR_ONLY] > 0).all()  # EHR and bank tokens alike
        assert ((gates > 0).sum(-1) == 2).all()


def test_all_missing_films_is_finite_and_never_reads_the_resnet(
    inputs, encoders, make_batch
) -> None:
    model = make_model(inputs, encoders).train()
    calls = []
    model.cxr.net.register_forward_hook(lambda *a: calls.append(1))
    out = model(make_batch("phenotype", films=False).without_labels())
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.aux_loss)
    assert calls == []


# ---- a short fit through the training core ----------------------------------------------------
def test_short_lightning_fit_updates_the_model(inputs, encoders, make_batch) -> None:
    from ehrcxr.data.augment import AugmentConfig
    from ehrcxr.tasks import get_task
    from ehrcxr.training import TrainModule

    torch.manual_seed(0)
    model = FlexMoE(inputs, 7, encoders)
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
