"""HEALNet: a missing film skips its update, modality-specific cross-attention tied across
layers, Fourier position encodings with known values, film tokens = the ResNet's patch grid."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ehrcxr.models.encoders import normalise_films
from ehrcxr.models.healnet import HEALNet, LatentBlock, fourier_encode, position_encoding


def make_model(inputs, encoders, **kwargs) -> HEALNet:
    torch.manual_seed(0)
    return HEALNet(inputs, 3, encoders, **kwargs)


# ---- missing film: the update is skipped --------------------------------------------------------
def test_image_cross_attention_sees_only_the_present_films(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders, depth=2).eval()
    batch = make_batch(b=6).without_labels()  # stays 0 and 3 have no film
    present = batch.has_cxr.nonzero().squeeze(1)
    seen = []
    handle = model.cross["cxr"].register_forward_hook(
        lambda module, args, out: seen.append((args[0].shape[0], args[1].detach().clone()))
    )
    with torch.no_grad():
        model(batch)
    handle.remove()
    assert [n for n, _ in seen] == [len(present)] * 2  # every layer, present rows only
    tokens = seen[0][1]
    with torch.no_grad():
        assert torch.equal(tokens, model.cxr_tokens(batch.cxr[present]))  # the real films


def test_no_film_latents_change_only_through_the_ehr(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders, depth=2).eval()
    batch = make_batch(b=6).without_labels()
    absent = ~batch.has_cxr
    with torch.no_grad():
        latents = model.encode(batch)
        # Independent expectation: the EHR update and the latent block only, layer by layer.
        x = model.latents.expand(len(batch), -1, -1)
        ehr = model.ehr_tokens(batch)
        for block in model.latent_blocks:
            x = block(model.cross["ehr"](x, ehr))
        # The same stays alone, without any film in the batch.
        alone = model.encode(dataclasses.replace(batch, has_cxr=torch.zeros_like(absent)))
    assert torch.allclose(latents[absent], x[absent], atol=1e-5)
    assert torch.allclose(latents[absent], alone[absent], atol=1e-5)
    # A stay with a film is moved by it (so the test can fail).
    assert not torch.allclose(latents[~absent], x[~absent], atol=1e-3)


def test_no_film_stay_ignores_the_other_stays_films(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders).eval()
    batch = make_batch(b=6).without_labels()
    other = dataclasses.replace(
        batch, cxr=torch.rand_like(batch.cxr) * batch.has_cxr[:, None, None, None]
    )
    with torch.no_grad():
        a, b = model(batch).logits, model(other).logits
    assert torch.allclose(a[~batch.has_cxr], b[~batch.has_cxr], atol=1e-6)
    assert not torch.allclose(a[batch.has_cxr], b[batch.has_cxr], atol=1e-4)


def test_no_films_at_all_runs_without_the_image_block(inputs, encoders, make_batch) -> None:
    model = make_model(inputs, encoders)
    calls = []
    model.cross["cxr"].register_forward_hook(lambda *a: calls.append(1))
    out = model(make_batch(b=4, films=False).without_labels())
    assert calls == [] and torch.isfinite(out.logits).all()
    out.logits.sum().backward()


# ---- weight tying --------------------------------------------------------------------------------
def test_cross_attention_is_shared_across_layers(inputs, encoders, make_batch) -> None:
    counts = {}
    for depth in (1, 3):
        model = make_model(inputs, encoders, depth=depth)
        counts[depth] = sum(p.numel() for p in model.parameters())
        calls = {"ehr": [], "cxr": []}
        for name in calls:
            model.cross[name].register_forward_hook(
                lambda module, args, out, seen=calls[name]: seen.append(id(module))
            )
        model(make_batch(b=3).without_labels())
        # One module object per modality, called once per layer.
        assert calls["ehr"] == [id(model.cross["ehr"])] * depth
        assert calls["cxr"] == [id(model.cross["cxr"])] * depth
    per_layer = sum(p.numel() for p in LatentBlock(encoders.dim, 4, 16, 0.0).parameters())
    # Depth adds only the (untied) latent self-attention blocks, never cross-attention.
    assert counts[3] - counts[1] == 2 * per_layer


# ---- inputs: Fourier encoding and patches --------------------------------------------------------
def test_fourier_encoding_known_values() -> None:
    enc = fourier_encode(torch.tensor([0.5]), max_freq=6.0, num_bands=3)  # f = 1, 2, 3
    expected = [
        math.sin(0.5 * math.pi),
        math.sin(1.0 * math.pi),
        math.sin(1.5 * math.pi),
        math.cos(0.5 * math.pi),
        math.cos(1.0 * math.pi),
        math.cos(1.5 * math.pi),
        0.5,
    ]
    assert torch.allclose(enc[0], torch.tensor(expected), atol=1e-6)

    pos = position_encoding((3,), max_freq=6.0, num_bands=3)
    assert pos.shape == (3, 7)
    assert torch.allclose(pos[:, -1], torch.tensor([-1.0, 0.0, 1.0]))  # the raw coordinate
    assert torch.allclose(pos[1], torch.tensor([0.0, 0, 0, 1, 1, 1, 0]))  # x = 0

    grid = position_encoding((2, 3), max_freq=5.0, num_bands=4)  # 2·(2·4 + 1) channels
    assert grid.shape == (6, 18)
    rows, cols = grid[:, 8], grid[:, 17]
    assert torch.allclose(rows, torch.tensor([-1.0, -1, -1, 1, 1, 1]))  # row-major order
    assert torch.allclose(cols, torch.tensor([-1.0, 0, 1, -1, 0, 1]))
    freqs = torch.linspace(1.0, 2.5, 4)
    assert torch.allclose(grid[5, 9:13], torch.sin(freqs * math.pi * 1.0), atol=1e-6)


def test_film_tokens_are_the_resnet_patch_grid_with_its_positions(inputs, encoders) -> None:
    inputs = dataclasses.replace(inputs, image_size=64)  # stage 3 (/16): a 4 × 4 grid
    model = make_model(inputs, encoders, num_freq_bands=2, film_stage=3).eval()
    films = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        maps = model.cxr_stages(normalise_films(films))  # [3, C, h, w]
        tokens = model.cxr_tokens(films)
    _, c, h, w = maps.shape
    assert (h, w) == (4, 4) and c == 4 * encoders.resnet_width  # layer3's width
    assert tokens.shape == (3, h * w, c + 2 * (2 * 2 + 1))
    # Row-major grid: token r·w + q is the feature vector at row r, column q.
    for r in range(h):
        for q in range(w):
            assert torch.equal(tokens[:, r * w + q, :c], maps[:, :, r, q])
    expected = position_encoding((h, w), model.max_freq, 2)
    assert torch.equal(tokens[0, :, c:], expected) and torch.equal(tokens[2, :, c:], expected)


def test_invalid_settings_fail(inputs, encoders) -> None:
    with pytest.raises(ValueError, match="depth"):
        HEALNet(inputs, 1, encoders, depth=0)
    with pytest.raises(ValueError, match="film_stage"):
        HEALNet(inputs, 1, encoders, film_stage=5)
    with pytest.raises(ValueError, match="max_freq"):
        HEALNet(inputs, 1, encoders, max_freq=0.0)
