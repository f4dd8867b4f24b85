"""Encoders shared by several models: EHR sequences and chest X-rays to one vector per stay."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

RESNETS = {18: "resnet18", 34: "resnet34", 50: "resnet50"}
WEIGHTS = ("imagenet", "none")
# torchvision's ImageNet normalisation, applied to the replicated grayscale film.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EhrLstmEncoder(nn.Module):
    """[B, T, C] → [B, d]: input projection, LSTM, last hidden state (both directions).

    Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 1997.
    """

    def __init__(
        self, channels: int, hidden_size: int, num_layers: int, dropout: float, bidirectional: bool
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(channels, hidden_size)
        self.lstm = nn.LSTM(
            hidden_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        directions = 2 if bidirectional else 1
        self.out = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(hidden_size * directions, hidden_size)
        )
        self.dim = hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(self.proj(x))
        directions = 2 if self.lstm.bidirectional else 1
        last = h[-directions:].transpose(0, 1).reshape(x.shape[0], -1)  # last layer, all directions
        return self.out(last)


class EhrTransformerEncoder(nn.Module):
    """[B, T, C] → [B, d]: projection + learned positions, Transformer encoder, mean over time.

    Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    """

    def __init__(
        self,
        channels: int,
        time_steps: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(channels, d_model)
        self.position = nn.Parameter(torch.zeros(1, time_steps, d_model))
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward=4 * d_model, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.dropout = nn.Dropout(dropout)
        self.dim = d_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.proj(x) + self.position[:, : x.shape[1]])
        return self.dropout(h.mean(dim=1))


class CxrResNetEncoder(nn.Module):
    """[B, 1, H, W] in [0, 1] → [B, d]: torchvision ResNet, its classifier replaced by Linear(→d).

    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. ``weights='imagenet'``
    loads torchvision's ImageNet weights (IMAGENET1K_V1 for 18/34, IMAGENET1K_V2 for 50).
    """

    def __init__(self, depth: int, weights: str, dim: int) -> None:
        super().__init__()
        if depth not in RESNETS:
            raise ValueError(f"resnet depth must be one of {sorted(RESNETS)}, not {depth}")
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, not {weights!r}")
        builder = getattr(torchvision.models, RESNETS[depth])
        chosen = None
        if weights == "imagenet":
            enum = torchvision.models.get_model_weights(RESNETS[depth])
            chosen = enum.IMAGENET1K_V2 if depth == 50 else enum.IMAGENET1K_V1
        net = builder(weights=chosen)
        features = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        self.head = nn.Linear(features, dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.dim = dim

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.expand(-1, 3, -1, -1) - self.mean) / self.std
        return self.head(self.net(x))
