"""UMSE: only observed values become set elements, the latest are kept, the skip bottleneck
leaves a no-film stay to its EHR stream, and the film shares the EHR's time embedding."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ehrcxr.batch import InputSpec
from ehrcxr.models.umse import UMSE, build_elements, element_channels


def make_model(inputs, encoders, **kwargs) -> UMSE:
    torch.manual_seed(0)
    return UMSE(inputs, 3, encoders, **kwargs)


def observed_values(inputs: InputSpec, ehr_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, F] bool: value channels that are observed (mask 1; rhythm channels always)."""
    b, t, _ = ehr_mask.shape
    out = torch.ones(b, t, inputs.ehr_features, dtype=torch.bool)
    out[..., list(inputs.mask_feature)] = ehr_mask > 0.5
    return out


# ---- unobserved values never matter -------------------------------------------------------------
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_unobserved_values_never_change_the_output(inputs, encoders, make_batch, mode) -> None:
    model = make_model(inputs, encoders, max_observations=0)
    model.train(mode == "train")
    batch = make_batch(b=6).without_labels()
    observed = observed_values(inputs, batch.ehr_mask)
    assert (~observed).any()
    huge = torch.randn(batch.ehr.shape, generator=torch.Generator().manual_seed(1)) * 1e6
    noisy = dataclasses.replace(batch, ehr=torch.where(observed, batch.ehr, huge))
    first = batch.ehr.clone()
    first[0][observed[0]] += 1.0  # change observed values of stay 0 only
    changed = dataclasses.replace(batch, ehr=first)
    outs = []
    for b in (batch, noisy, changed):
        torch.manual_seed(3)  # the same dropout masks in training mode
        outs.append(model(b).logits.detach())
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0][0], outs[2][0], atol=1e-4)


# ---- skip bottleneck -----------------------------------------------------------------------------
def test_no_film_stay_uses_the_ehr_stream_alone(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders, layers=2).eval()
    batch = make_batch(b=6).without_labels()  # stays 0 and 3 have no film
    absent = ~batch.has_cxr
    nobody = dataclasses.replace(
        batch, has_cxr=torch.zeros_like(absent), cxr=torch.zeros_like(batch.cxr)
    )
    other_films = dataclasses.replace(
        batch, cxr=torch.rand_like(batch.cxr) * batch.has_cxr[:, None, None, None]
    )
    seen = []
    model.cxr_layers[0].register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    with torch.no_grad():
        mixed = model(batch).logits
        alone = model(nobody).logits
        moved = model(other_films).logits
    # The film stream holds the film rows only; the batch without films never runs it.
    assert seen == [int(batch.has_cxr.sum())] * 2
    assert torch.allclose(mixed[absent], alone[absent], atol=1e-5)
    assert torch.allclose(mixed[absent], moved[absent], atol=1e-6)
    # For a stay with a film the film matters (and its own bottleneck copy is averaged in).
    assert not torch.allclose(mixed[~absent], moved[~absent], atol=1e-4)
    assert not torch.allclose(mixed[~absent], alone[~absent], atol=1e-4)


def test_no_films_at_all(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders)
    calls = []
    model.cxr.register_forward_hook(lambda *a: calls.append(1))
    model.cxr_layers[0].register_forward_hook(lambda *a: calls.append(1))
    out = model(make_batch(b=4, films=False).without_labels())
    assert calls == [] and torch.isfinite(out.logits).all()
    out.logits.sum().backward()


# ---- element construction ------------------------------------------------------------------------
def test_elements_known_answer_and_latest_truncation() -> None:
    # 3 values: 0 and 2 have masks, 1 is a rhythm channel (an element every hour); 3 hours.
    spec = InputSpec(ehr_features=3, ehr_masks=2, time_steps=3, image_size=32, mask_feature=(0, 2))
    channels, n_masked = element_channels(spec)
    assert channels == [0, 2, 1] and n_masked == 2
    hours = torch.arange(3.0).view(1, 3, 1)
    ehr = (10 * hours + torch.arange(3.0).view(1, 1, 3)).expand(2, -1, -1).clone()  # 10 t + f
    mask = torch.tensor(
        [[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]]
    )  # stay 1: nothing measured
    t, j, v, valid = build_elements(ehr, mask, channels, max_observations=0)
    expected = [(0, 0, 0.0), (0, 1, 1.0), (1, 2, 12.0), (1, 1, 11.0), (2, 0, 20.0)]
    expected += [(2, 2, 22.0), (2, 1, 21.0)]
    got = [(int(a), int(b), float(c)) for a, b, c in zip(t[0], j[0], v[0], strict=True)]
    assert got == expected and valid[0].all()
    assert valid[1].tolist() == [True] * 3 + [False] * 4  # padded to the longest stay
    got = [(int(a), int(b), float(c)) for a, b, c in zip(t[1], j[1], v[1], strict=True)]
    assert got[:3] == [(0, 1, 1.0), (1, 1, 11.0), (2, 1, 21.0)]
    assert (v[1][3:] == 0).all()
    # The latest 4 elements (closest to the prediction time) survive.
    t, j, v, valid = build_elements(ehr, mask, channels, max_observations=4)
    got = [(int(a), int(b), float(c)) for a, b, c in zip(t[0], j[0], v[0], strict=True)]
    assert got == expected[-4:] and valid[0].all()
    assert valid.shape == (2, 4) and valid[1].tolist() == [True, True, True, False]


# ---- one time embedding for both modalities ------------------------------------------------------
def test_film_element_uses_the_ehr_time_embedding(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders).eval()
    batch = make_batch(b=6).without_labels()
    present = batch.has_cxr.nonzero().squeeze(1)
    inputs_seen = []
    model.time_embedding.register_forward_hook(
        lambda m, args, out: inputs_seen.append(args[0].detach())
    )
    with torch.no_grad():
        model(batch)
        film = model.film_elements(batch, present)
        expected = (
            model.cxr.present(batch.cxr, batch.has_cxr)[present]
            + model.time_embedding((batch.cxr_time[present] / inputs.time_steps).unsqueeze(-1))
            + model.feature_embedding.weight[inputs.ehr_features]
        )
    ehr_times, film_times = inputs_seen[0], inputs_seen[1]
    assert ehr_times.shape[0] == len(batch)  # [B, L, 1]: the EHR elements' hours
    assert torch.allclose(film_times[:, 0], batch.cxr_time[present] / inputs.time_steps)
    assert torch.allclose(film, expected, atol=1e-6)


def test_invalid_settings_fail(inputs, encoders) -> None:
    with pytest.raises(ValueError, match="bottlenecks"):
        UMSE(inputs, 1, encoders, bottlenecks=0)
    with pytest.raises(ValueError, match="max_observations"):
        UMSE(inputs, 1, encoders, max_observations=-1)
