"""AUG: assignment to the weaker modality, sustained boosting of every active classifier,
strict checkpoints with added classifiers, the boosting loss and the α-weighted fusion."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from batches import train_context
from ehrcxr.batch import TrainContext
from ehrcxr.models.aug import AUG, CXR, EHR
from ehrcxr.tasks import TASKS, get_task
from ehrcxr.training import task_loss


def make_model(inputs, encoders, n_outputs: int = 1, **kwargs) -> AUG:
    torch.manual_seed(0)
    return AUG(inputs, n_outputs, encoders, **kwargs)


def context(task_name: str, opt=None, backward=None, epoch: int = 0) -> TrainContext:
    optimizers = [opt] if opt is not None else None
    return train_context(
        task_name, epoch=epoch, max_epochs=10, optimizers=optimizers, backward=backward
    )


def set_scores(model: AUG, ehr: float, cxr: float) -> None:
    model.scores.copy_(torch.tensor([ehr, cxr], dtype=torch.float64))


# ---- adaptive classifier assignment -----------------------------------------------------------
def test_stronger_ehr_gives_the_cxr_branch_a_classifier(inputs, encoders) -> None:
    model = make_model(inputs, encoders, lam=1.0, delta=0.01)
    set_scores(model, ehr=60.0, cxr=40.0)  # ratio 1.5 > λ + δ
    assert model.assign(epoch=0) == CXR
    assert model.n_boost.tolist() == [0, 1]
    assert model.scores.tolist() == [0.0, 0.0]  # a new epoch starts from zero


def test_stronger_cxr_gives_the_ehr_branch_a_classifier(inputs, encoders) -> None:
    model = make_model(inputs, encoders, lam=1.0, delta=0.01)
    set_scores(model, ehr=40.0, cxr=60.0)  # ratio 0.67 < λ − δ
    assert model.assign(epoch=0) == EHR
    assert model.n_boost.tolist() == [1, 0]


def test_within_the_margin_no_classifier_is_added(inputs, encoders) -> None:
    model = make_model(inputs, encoders, lam=1.0, delta=0.01)
    for ehr in (100.5, 99.5):  # ratios 1.005, 0.995: inside λ ± δ
        set_scores(model, ehr=ehr, cxr=100.0)
        assert model.assign(epoch=0) is None
    assert model.n_boost.tolist() == [0, 0]


def test_lambda_moves_the_balance_point(inputs, encoders) -> None:
    model = make_model(inputs, encoders, lam=1.2, delta=0.01)
    set_scores(model, ehr=110.0, cxr=100.0)  # ratio 1.1: stronger EHR, but below λ − δ
    assert model.assign(epoch=0) == EHR


def test_assignment_only_after_epoch_0_and_every_interval(inputs, encoders) -> None:
    model = make_model(inputs, encoders, interval=3)
    checked = []
    for epoch in range(7):
        set_scores(model, ehr=2.0, cxr=1.0)
        checked.append(model.assign(epoch) is not None)
    assert checked == [True, False, True, False, False, True, False]  # epochs 0, 2, 5
    assert model.n_boost.tolist() == [0, 3]


def test_assignment_stops_at_max_boost(inputs, encoders) -> None:
    model = make_model(inputs, encoders, interval=1, max_boost=2)
    for epoch in range(4):
        set_scores(model, ehr=1.0, cxr=2.0)
        model.assign(epoch)
    assert model.n_boost.tolist() == [2, 0]


def test_training_steps_accumulate_true_outcome_probabilities(inputs, encoders, make_batch):
    model = make_model(inputs, encoders, n_outputs=25)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = make_batch("phenotype", b=8)
    model.manual_training_step(batch, context("phenotype", opt))
    scores = model.scores.clone()
    assert (scores > 0).all() and (scores < 8 * 25).all()
    model.manual_training_step(batch, context("phenotype", opt))
    assert (model.scores > scores).all()  # summed over the epoch's steps


def test_true_outcome_probability_known_values(inputs, encoders) -> None:
    model = make_model(inputs, encoders)
    logits = torch.tensor([[0.0], [torch.log(torch.tensor(3.0))]])  # p = 0.5, 0.75
    y = torch.tensor([[0.0], [1.0]])
    assert model._true_outcome_probability(logits, y, "binary").item() == pytest.approx(1.25)
    logits = torch.log(torch.tensor([[0.2, 0.8], [0.6, 0.4]]))
    y = torch.tensor([1, 1])
    assert model._true_outcome_probability(logits, y, "multiclass").item() == pytest.approx(1.2)


# ---- sustained boosting -----------------------------------------------------------------------
def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("task_name", TASKS)
def test_every_active_classifier_gets_gradients_and_is_updated(
    inputs, encoders, make_batch, task_name: str
) -> None:
    task = get_task(task_name)
    model = make_model(inputs, encoders, n_outputs=task.n_outputs, max_boost=3)
    model.n_boost.copy_(torch.tensor([2, 1]))  # as after three assignments
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    # The step clears gradients before each modality's update: record them at each backward.
    grads: list[dict[str, torch.Tensor | None]] = []

    def backward(loss: torch.Tensor) -> None:
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})

    before = snapshot(model)
    loss = model.manual_training_step(make_batch(task_name), context(task_name, opt, backward))
    after = snapshot(model)
    assert not loss.requires_grad and torch.isfinite(loss)
    assert len(grads) == 2  # one update per modality
    for m, prefix in ((EHR, "heads.0."), (CXR, "heads.1.")):
        n = int(model.n_boost[m])
        active = ["embed"] + [f"boost.{k}" for k in range(n)]
        for layer in active:
            for kind in ("weight", "bias"):
                name = f"{prefix}{layer}.{kind}"
                g = grads[m][name]
                assert g is not None and g.abs().sum() > 0, name
                assert not torch.equal(before[name], after[name]), name
        for k in range(n, model.max_boost):  # inactive classifiers are left alone
            name = f"{prefix}boost.{k}.weight"
            assert grads[m][name] is None and torch.equal(before[name], after[name]), name
    # Each modality's update reaches its own encoder only; the shared output layer both.
    assert grads[EHR]["cxr.head.weight"] is None and grads[CXR]["ehr.proj.weight"] is None
    assert grads[EHR]["out.weight"] is not None and grads[CXR]["out.weight"] is not None
    assert not torch.equal(before["ehr.proj.weight"], after["ehr.proj.weight"])
    assert not torch.equal(before["cxr.head.weight"], after["cxr.head.weight"])


@pytest.mark.parametrize("task_name", TASKS)
def test_boosting_loss_has_the_residual_terms(inputs, encoders, make_batch, task_name: str) -> None:
    task = get_task(task_name)
    model = make_model(inputs, encoders, n_outputs=task.n_outputs).eval()
    batch = make_batch(task_name)
    ctx = context(task_name)
    with torch.no_grad():
        h = model.ehr(batch.ehr_input)
        plain, total0 = model.boosting_loss(EHR, h, batch.y, ctx)
        assert plain == pytest.approx(task_loss(task, total0, batch.y).item())
        model.n_boost[EHR] = 2
        loss, total = model.boosting_loss(EHR, h, batch.y, ctx)
        base, boosts = model.heads[EHR](h, 2, model.out)
        prev, newest = base + boosts[0], boosts[1]
        assert torch.allclose(total, prev + newest)
        if task.kind == "multiclass":
            onehot = F.one_hot(batch.y, task.n_outputs).float()
            target = onehot - 0.5 * onehot * prev.softmax(-1)
            residual = -(target * newest.log_softmax(-1)).sum(-1)
        else:
            target = batch.y * (1 - 0.5 * prev.sigmoid())
            residual = F.binary_cross_entropy_with_logits(newest, target, reduction="none")
        expected = (
            task_loss(task, total, batch.y) + task_loss(task, prev, batch.y) + residual.mean()
        )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(plain.item())


# ---- checkpoints, inference -------------------------------------------------------------------
def test_checkpoint_with_added_classifiers_loads_strictly(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders, n_outputs=7, interval=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = make_batch("los")
    for epoch, (ehr, cxr) in enumerate([(1.0, 2.0), (2.0, 1.0), (2.0, 1.0)]):
        model.manual_training_step(batch, context("los", opt, epoch=epoch))
        set_scores(model, ehr, cxr)
        model.assign(epoch)
    assert model.n_boost.tolist() == [1, 2]
    fresh = make_model(inputs, encoders, n_outputs=7, interval=1)
    torch.manual_seed(1)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert fresh.n_boost.tolist() == [1, 2]
    model.eval()
    fresh.eval()
    x = batch.without_labels()
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, model(x).logits)
        fresh.n_boost.zero_()  # the added classifiers matter: without them the output moves
        assert not torch.allclose(fresh(x).logits, model(x).logits)


def test_optimiser_holds_every_preallocated_classifier(inputs, encoders) -> None:
    model = make_model(inputs, encoders, max_boost=4)
    (opt,) = model.configure_optimizers(lr=1e-3, weight_decay=0.01)
    held = {id(p) for group in opt.param_groups for p in group["params"]}
    assert {id(p) for p in model.parameters()} == held
    assert isinstance(opt, torch.optim.AdamW)
    assert len(model.heads[CXR].boost) == 4


@pytest.mark.parametrize("task_name", TASKS)
@pytest.mark.parametrize("films", [True, False], ids=["films", "no-films"])
def test_forward_is_the_alpha_weighted_sum_and_finite(
    inputs, encoders, make_batch, task_name: str, films: bool
) -> None:
    task = get_task(task_name)
    model = make_model(inputs, encoders, n_outputs=task.n_outputs, alpha=0.3).eval()
    model.n_boost.copy_(torch.tensor([1, 2]))
    batch = make_batch(task_name, films=films).without_labels()
    with torch.no_grad():
        logits = model(batch).logits
        h_ehr, h_cxr = model.encode(batch)
        f_ehr, _ = model.classify(EHR, h_ehr)
        f_cxr, _ = model.classify(CXR, h_cxr)
    assert logits.shape == (len(batch), task.n_outputs) and torch.isfinite(logits).all()
    assert torch.allclose(logits, 0.3 * f_ehr + 0.7 * f_cxr, atol=1e-6)


def test_alpha_one_ignores_the_film(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders, alpha=1.0).eval()
    batch = make_batch("mortality").without_labels()
    other = dataclasses.replace(batch, cxr=torch.rand_like(batch.cxr) * batch.cxr.ne(0))
    with torch.no_grad():
        assert torch.equal(model(batch).logits, model(other).logits)


def test_epoch_end_hook_assigns_and_logs(inputs, encoders) -> None:
    model = make_model(inputs, encoders, interval=5)
    logged: dict[str, float] = {}
    ctx = dataclasses.replace(context("mortality", epoch=4), log=logged.__setitem__)
    set_scores(model, ehr=3.0, cxr=1.0)
    model.on_train_epoch_end(ctx)
    assert model.n_boost.tolist() == [0, 1]
    assert logged["train/score_ratio"] == pytest.approx(3.0)
    assert logged["train/boost_cxr"] == 1.0
