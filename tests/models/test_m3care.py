"""M3Care: imputation from similar patients' films, the placeholder never read, permutation
equivariance over the batch, the multi-bandwidth kernel and the pair masking."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from ehrcxr.batch import Batch, InputSpec
from ehrcxr.models.encoders import EncoderConfig
from ehrcxr.models.m3care import M3Care, multi_gaussian_kernel


def make_model(inputs: InputSpec, encoders: EncoderConfig, **kwargs) -> M3Care:
    torch.manual_seed(0)
    return M3Care(inputs, 1, encoders, **kwargs)


def two_groups(make_batch: Callable[..., Batch]) -> Batch:
    """4 stays: group A = {0 (no film), 1 (film)}, group B = {2 (no film), 3 (film)}; the EHR is
    identical within a group and differs between groups."""
    base = make_batch(b=4, films=True, seed=3)
    rows = torch.tensor([0, 0, 2, 2])
    has = torch.tensor([False, True, False, True])
    return dataclasses.replace(
        base,
        ehr=base.ehr[rows],
        ehr_mask=base.ehr_mask[rows],
        has_cxr=has,
        cxr=base.cxr * has[:, None, None, None],
    )


def with_film(batch: Batch, row: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    cxr = batch.cxr.clone()
    cxr[row] = torch.rand(cxr[row].shape, generator=g)
    return dataclasses.replace(batch, cxr=cxr)


def test_a_missing_film_is_imputed_from_similar_patients_films_only(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    model = make_model(inputs, encoders).eval()
    with torch.no_grad():
        model.threshold.fill_(math.log(0.9 / 0.1))  # σ(θ) = 0.9: only same-group pairs survive
        batch = two_groups(make_batch)
        ref = model.representations(batch)
        s = ref["similarity"]
        assert torch.allclose(s[0, 1], torch.tensor(1.0)) and s[0, 3] == 0 and s[1, 3] == 0
        similar = model.representations(with_film(batch, 1, seed=11))
        other = model.representations(with_film(batch, 3, seed=12))
    # Stay 0 has no film: its film representation is aggregated from stay 1's film ...
    assert (similar["imputed_cxr"][0] - ref["imputed_cxr"][0]).abs().max() > 1e-4
    assert (similar["logits"][0] - ref["logits"][0]).abs().max() > 1e-6
    # ... and a film of a stay with zero similarity to it changes nothing about stay 0.
    assert (other["h_cxr"][3] - ref["h_cxr"][3]).abs().max() > 1e-4
    assert torch.allclose(other["imputed_cxr"][0], ref["imputed_cxr"][0], atol=1e-6)
    assert torch.allclose(other["logits"][0], ref["logits"][0], atol=1e-6)
    # The imputation is not the GCN's bias alone (the toolkit's masked-row bug).
    empty = dataclasses.replace(batch, has_cxr=torch.zeros(4, dtype=torch.bool))
    with torch.no_grad():
        nothing = model.representations(empty)
    assert (nothing["imputed_cxr"][0] - ref["imputed_cxr"][0]).abs().max() > 1e-4


def test_placeholder_content_never_matters(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    model = make_model(inputs, encoders).train()
    batch = make_batch(b=9, seed=1).without_labels()
    noisy = dataclasses.replace(
        batch,
        cxr=torch.where(batch.has_cxr[:, None, None, None], batch.cxr, torch.rand_like(batch.cxr)),
    )
    outs = []
    for b in (batch, noisy):
        torch.manual_seed(5)
        model.load_state_dict(make_model(inputs, encoders).state_dict())
        out = model(b)
        outs.append((out.logits, out.aux_loss))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_permuting_the_batch_permutes_the_outputs(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    model = make_model(inputs, encoders).eval()
    batch = make_batch(b=9, seed=2).without_labels()
    perm = torch.tensor([4, 0, 7, 2, 8, 1, 6, 3, 5])
    permuted = Batch(
        **{
            f.name: getattr(batch, f.name)[perm]
            for f in dataclasses.fields(batch)
            if getattr(batch, f.name) is not None
        }
    )
    with torch.no_grad():
        a = model.representations(batch)
        b = model.representations(permuted)
    assert torch.allclose(b["logits"], a["logits"][perm], atol=1e-5)
    assert torch.allclose(b["similarity"], a["similarity"][perm][:, perm], atol=1e-6)
    assert torch.allclose(b["imputed_cxr"], a["imputed_cxr"][perm], atol=1e-5)
    # Predictions do depend on the other stays in the batch (the in-batch patient graph).
    with torch.no_grad():
        alone = model.representations(dataclasses.replace(batch, **_rows(batch, slice(0, 5))))
    assert not torch.allclose(alone["logits"], a["logits"][:5], atol=1e-5)


def _rows(batch: Batch, rows: slice) -> dict[str, torch.Tensor]:
    return {
        f.name: getattr(batch, f.name)[rows]
        for f in dataclasses.fields(batch)
        if getattr(batch, f.name) is not None
    }


def test_kernel_known_answer_and_pairs_without_a_film() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0]])
    everyone = torch.ones(3, 3, dtype=torch.bool)
    k = multi_gaussian_kernel(x, everyone)
    bw = (1 + 9 + 4) * 2 / 6  # mean off-diagonal squared distance

    def expected(d2: float, bw: float) -> float:
        return sum(math.exp(-d2 / (bw * s)) for s in (0.5, 1.0, 2.0)) / 3

    want = torch.tensor(
        [[expected(d, bw) for d in row] for row in ([0, 1, 9], [1, 0, 4], [9, 4, 0])]
    )
    assert torch.allclose(k, want, atol=1e-6)
    # Stay 2 has no film: its pairs are 0 (diagonal included), the bandwidth is that of (0, 1).
    has = torch.tensor([True, True, False])
    k = multi_gaussian_kernel(x, has[:, None] & has[None, :])
    assert torch.allclose(k[0, 1], torch.tensor(expected(1.0, 1.0)))
    assert torch.allclose(k[:2, :2].diagonal(), torch.ones(2))
    assert (k[2] == 0).all() and (k[:, 2] == 0).all()
    # A far-away film row's zeros never enter the bandwidth.
    x_far = torch.tensor([[0.0], [1.0], [0.0]])  # stay 2's feature: the absent film's zeros
    assert torch.equal(k, multi_gaussian_kernel(x_far, has[:, None] & has[None, :]))


def test_similarity_is_the_mean_over_the_modalities_each_pair_has(
    inputs: InputSpec, encoders: EncoderConfig
) -> None:
    model = make_model(inputs, encoders).eval()
    torch.manual_seed(1)
    h = [torch.randn(4, encoders.dim), torch.randn(4, encoders.dim)]
    has = [torch.ones(4, dtype=torch.bool), torch.tensor([True, True, False, True])]
    with torch.no_grad():
        model.threshold.fill_(-30.0)  # keep everything
        s, _ = model.similarity(h, has)
        kernels = []
        for m in range(2):
            pairs = has[m][:, None] & has[m][None, :]
            mix = torch.sigmoid(model.mix[m])
            p = model.project[m](h[m])
            kp, kh = multi_gaussian_kernel(p, pairs), multi_gaussian_kernel(h[m], pairs)
            kernels.append(((1 - mix) * kp + mix) * kh)
    both = has[1][:, None] & has[1][None, :]
    want = torch.where(both, (kernels[0] + kernels[1]) / 2, kernels[0])
    assert torch.allclose(s, want, atol=1e-6)
    assert torch.allclose(s[2], kernels[0][2])  # no film: the EHR-driven similarity
    # The threshold sets entries below σ(θ) to 0 and keeps the others' values.
    with torch.no_grad():
        model.threshold.fill_(0.0)
        cut, _ = model.similarity(h, has)
    assert torch.equal(cut, torch.where(want >= 0.5, cut, torch.zeros_like(cut)))
    assert torch.allclose(cut[want >= 0.5], want[want >= 0.5], atol=1e-6)


def test_stability_regulariser_is_the_norm_gap_times_lambda(
    inputs: InputSpec, encoders: EncoderConfig, make_batch: Callable[..., Batch]
) -> None:
    model = make_model(inputs, encoders, lambda_stability=0.5).eval()
    batch = make_batch(b=6, seed=4).without_labels()
    with torch.no_grad():
        rep = model.representations(batch)
        out = model(batch)
    has = batch.has_cxr
    gap = (rep["projected_ehr"].norm() - rep["h_ehr"].norm()).abs() + (
        rep["projected_cxr"][has].norm() - rep["h_cxr"][has].norm()
    ).abs()
    assert torch.allclose(out.aux_loss, 0.5 * gap)
    try:
        M3Care(inputs, 1, encoders, lambda_stability=-1.0)
    except ValueError:
        pass
    else:
        raise AssertionError("a negative lambda_stability must fail")
