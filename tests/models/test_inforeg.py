"""InfoReg: the prime-learning-window rule on the FIM-trace history, and the proximal regulation
that slows only the information-sufficient encoder inside the window."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from batches import train_context
from ehrcxr.models.inforeg import InfoReg
from ehrcxr.tasks import get_task


def build(inputs, encoders, n_outputs: int = 1, **kwargs) -> InfoReg:
    torch.manual_seed(0)
    return InfoReg(inputs, n_outputs, encoders, **kwargs)


def context(task_name: str, optimizer: torch.optim.Optimizer, logged: dict | None = None):
    return train_context(task_name, max_epochs=10, optimizers=[optimizer], logged=logged)


def end_epoch_with_trace(model: InfoReg, trace: float) -> None:
    """Close an epoch whose accumulated FIM trace (every row) was ``trace``."""
    model.fim_epoch.fill_(trace)
    model.on_train_epoch_end(context("mortality", torch.optim.SGD(model.parameters(), lr=0.0)))


def test_window_is_open_at_start_then_follows_the_acquisition_rate(inputs, encoders) -> None:
    model = build(inputs, encoders, history=3, k_threshold=0.05)
    assert bool(model.in_window) and float(model.k_rate) == 1.0  # k_0 = 1: training starts in it
    # A fast rise keeps the window open: k = (Σ last 3 − Σ previous 3) / Σ last 3.
    for trace in (1.0, 2.0, 4.0, 8.0, 16.0):
        end_epoch_with_trace(model, trace)
    assert float(model.k_rate) == pytest.approx((28.0 - 14.0) / 28.0)
    assert bool(model.in_window)
    # Flat traces: k → 0 below the threshold, the window closes (training becomes normal).
    for _ in range(4):
        end_epoch_with_trace(model, 16.0)
    assert float(model.k_rate) == pytest.approx(0.0)
    assert not bool(model.in_window)


def test_short_history_uses_zero_padding_like_the_paper_code(inputs, encoders) -> None:
    model = build(inputs, encoders, history=10, k_threshold=0.04)
    end_epoch_with_trace(model, 5.0)
    assert float(model.k_rate) == pytest.approx(1.0)  # one trace: nothing before it
    end_epoch_with_trace(model, 5.0)
    assert float(model.k_rate) == pytest.approx(0.5)  # t1 / (t0 + t1)


def _force_dominant(model: InfoReg, dominant: str) -> None:
    """Make one unimodal head confidently right (labels all 1) and the other confidently wrong."""
    with torch.no_grad():
        for modality, head in (("ehr", model.head_ehr), ("cxr", model.head_cxr)):
            head.bias.fill_(8.0 if modality == dominant else -8.0)


def _three_steps(inputs, encoders, make_batch, dominant: str, regulate: bool, optimizer: str):
    """Two unregulated steps (the encoders move away from the epoch's anchor), then one step with
    the window ``regulate``; returns (model, parameters before the last step)."""
    model = build(inputs, encoders, gamma_ehr=5.0, gamma_cxr=5.0)
    model.train()
    batch = make_batch("mortality", b=9)
    batch = dataclasses.replace(batch, y=torch.ones_like(batch.y))
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.05)
        if optimizer == "sgd"
        else torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.0)
    )
    ctx = context("mortality", opt)
    for step in range(3):
        if step == 2:
            _force_dominant(model, dominant)  # the warm-up steps may have moved the heads
            model.in_window.fill_(regulate)
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
        else:
            model.in_window.fill_(False)
        torch.manual_seed(step)  # the same dropout masks in both runs
        loss = model.manual_training_step(batch, ctx)
        assert torch.isfinite(loss) and not loss.requires_grad
    return model, before


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("dominant", ["ehr", "cxr"])
def test_regulation_slows_only_the_dominant_encoder(
    inputs, encoders, make_batch, dominant: str, optimizer: str
) -> None:
    other = "cxr" if dominant == "ehr" else "ehr"
    plain, before = _three_steps(inputs, encoders, make_batch, dominant, False, optimizer)
    held, before_held = _three_steps(inputs, encoders, make_batch, dominant, True, optimizer)
    for name in before:
        assert torch.equal(before[name], before_held[name])  # same state before the last step
    anchor = dict(
        zip(
            [n for n, _ in getattr(held, dominant).named_parameters()],
            held._anchor[dominant],
            strict=True,
        )
    )

    def drift(model: InfoReg) -> float:
        """‖θ_dominant − θ_dominant^epoch‖ after the step."""
        params = dict(getattr(model, dominant).named_parameters())
        return sum(float((params[n].detach() - anchor[n]).square().sum()) for n in anchor) ** 0.5

    def change(model: InfoReg, modality: str) -> float:
        """‖θ_after − θ_before‖ of one encoder over the last step."""
        return (
            sum(
                float((p.detach() - before[f"{modality}.{n}"]).square().sum())
                for n, p in getattr(model, modality).named_parameters()
            )
            ** 0.5
        )

    assert drift(held) < 0.9 * drift(plain)  # pulled back towards where the epoch began
    if optimizer == "sgd":
        assert change(held, dominant) != pytest.approx(change(plain, dominant))
    # The information-insufficient encoder trains exactly as without regulation.
    for (n, p), (_, q) in zip(
        getattr(held, other).named_parameters(),
        getattr(plain, other).named_parameters(),
        strict=True,
    ):
        assert torch.equal(p, q), n
    assert change(held, other) > 0


def test_strength_follows_the_score_gap_and_is_zero_outside_the_window(
    inputs, encoders, make_batch
) -> None:
    model = build(inputs, encoders)
    _force_dominant(model, "ehr")
    batch = make_batch("mortality", b=9)
    batch = dataclasses.replace(batch, y=torch.ones_like(batch.y))
    with torch.no_grad():
        h_ehr, h_cxr = model.encode(batch)
        logits_ehr, logits_cxr = model.head_ehr(h_ehr), model.head_cxr(h_cxr)
    beta_ehr, beta_cxr = model.regulation_strengths("binary", logits_ehr, logits_cxr, batch)
    assert beta_cxr == 0.0
    # Six stays with films, each gap ≈ 1 → tanh saturates: β ≈ γ_ehr · e.
    assert beta_ehr == pytest.approx(model.gamma_ehr * torch.e, rel=1e-3)
    model.in_window.fill_(False)
    assert model.regulation_strengths("binary", logits_ehr, logits_cxr, batch) == (0.0, 0.0)


def test_fim_trace_accumulates_and_is_logged(inputs, encoders, make_batch) -> None:
    model = build(inputs, encoders)
    logged: dict[str, list[float]] = {}
    ctx = context("mortality", torch.optim.AdamW(model.parameters(), lr=1e-3), logged)
    model.manual_training_step(make_batch("mortality"), ctx)
    total, ehr, cxr = model.fim_epoch.tolist()
    assert ehr > 0 and cxr > 0 and total > ehr + cxr  # heads contribute too
    model.on_train_epoch_end(ctx)
    assert logged["inforeg/fim_trace"] == [pytest.approx(total)]
    assert logged["inforeg/regulating"] == [1.0]
    assert float(model.fim_history[0, -1]) == pytest.approx(total)
    assert float(model.fim_epoch.abs().sum()) == 0.0


@pytest.mark.parametrize("task_name", ["mortality", "phenotype", "los"])
def test_forward_is_finite_and_a_step_runs(inputs, encoders, make_batch, task_name: str) -> None:
    task = get_task(task_name)
    model = build(inputs, encoders, task.n_outputs)
    batch = make_batch(task_name)
    out = model(batch.without_labels())
    assert out.logits.shape == (len(batch), task.n_outputs)
    assert torch.isfinite(out.logits).all()
    ctx = context(task_name, model.configure_optimizers(1e-3, 1e-2)[0])
    assert torch.isfinite(model.manual_training_step(batch, ctx))
    no_films = make_batch(task_name, films=False)
    assert torch.isfinite(model.manual_training_step(no_films, ctx))


def test_state_dict_loads_strictly_into_a_fresh_model(inputs, encoders) -> None:
    model = build(inputs, encoders, history=4)
    for trace in (1.0, 1.0, 1.0, 1.0, 1.0, 1.0):
        end_epoch_with_trace(model, trace)
    assert not bool(model.in_window)
    fresh = build(inputs, encoders, history=4)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(fresh.fim_history, model.fim_history)
    assert not bool(fresh.in_window)
