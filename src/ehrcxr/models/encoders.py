"""Encoders and encoder settings shared by the models (CareBench paper, §4.3: the core setup —
d = 256, dropout 0.2, a 1-layer 4-head Transformer, ResNet-50 from ImageNet — is the same for
every model; only model-specific components differ).

The one rule for films: a stay without a film never runs its placeholder image through
BatchNorm in training mode. :func:`encode_films` encodes the films that exist and gives the
others the encoder's feature of the placeholder (zero in normalised space, i.e. the ImageNet
mean colour, as the published toolkit) computed with BatchNorm in evaluation mode;
:func:`by_film` does the same for any function of the film rows (DAFT's and MMTM's stage-wise
backbones).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import torch
import torchvision
from torch import nn

from ehrcxr.batch import InputSpec

RESNETS = {18: "resnet18", 34: "resnet34", 50: "resnet50"}
WEIGHTS = ("imagenet", "none")
# torchvision's ImageNet normalisation, applied to the replicated grayscale film.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """params.yaml ``encoders``: the settings every model shares (paper values in comments)."""

    dim: int = 256  # d, the width of every embedding
    dropout: float = 0.2
    transformer_heads: int = 4
    transformer_layers: int = 1
    lstm_layers: int = 1
    lstm_bidirectional: bool = True
    resnet_depth: int = 50
    resnet_weights: str = "imagenet"  # imagenet | none
    resnet_width: int = 64  # channels of the first stage (torchvision: 64; slimmer: faster CPU)


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
    """[B, T, C] → [B, d] (or the sequence [B, T, d]): projection + learned positions,
    Transformer encoder, mean over time.

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

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, C] → [B, T, d]: the encoded hours before pooling."""
        return self.encoder(self.proj(x) + self.position[:, : x.shape[1]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.sequence(x).mean(dim=1))


def ehr_transformer(inputs: InputSpec, enc: EncoderConfig) -> EhrTransformerEncoder:
    """The shared EHR Transformer over ``ehr_input`` [B, T, F + M]."""
    return EhrTransformerEncoder(
        inputs.ehr_channels,
        inputs.time_steps,
        enc.dim,
        enc.transformer_heads,
        enc.transformer_layers,
        enc.dropout,
    )


def ehr_lstm(inputs: InputSpec, enc: EncoderConfig) -> EhrLstmEncoder:
    """The shared EHR LSTM over ``ehr_input`` [B, T, F + M]."""
    return EhrLstmEncoder(
        inputs.ehr_channels, enc.dim, enc.lstm_layers, enc.dropout, enc.lstm_bidirectional
    )


class _SlimResNet(torchvision.models.ResNet):
    """torchvision's ResNet with stage widths w, 2w, 4w, 8w instead of 64 … 512.

    The same modules, names and stages as torchvision's (built with its own ``_make_layer``),
    so every model that runs a ResNet stage by stage works unchanged. Used by the CPU default
    profile: at 48 px a ResNet's cost is dominated by its wide last stages (width 16: ≈ 9×
    faster than 64 per training step, measured on 2 cores).
    """

    def __init__(self, depth: int, width: int) -> None:
        block, layers = _RESNET_LAYOUT[depth]
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


_RESNET_LAYOUT = {
    18: (torchvision.models.resnet.BasicBlock, (2, 2, 2, 2)),
    34: (torchvision.models.resnet.BasicBlock, (3, 4, 6, 3)),
    50: (torchvision.models.resnet.Bottleneck, (3, 4, 6, 3)),
}


def resnet_backbone(depth: int, weights: str, width: int = 64) -> nn.Module:
    """torchvision ResNet (classifier removed: ``fc`` is the identity), ImageNet or random.

    ``width`` 64 is torchvision's network; another width builds the same architecture with
    slimmer stages (random initialisation only: ImageNet weights exist for 64).
    """
    if depth not in RESNETS:
        raise ValueError(f"resnet depth must be one of {sorted(RESNETS)}, not {depth}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, not {weights!r}")
    if width != 64:
        if weights != "none":
            raise ValueError(f"ImageNet weights need resnet_width 64, not {width}")
        return _SlimResNet(depth, width)
    builder = getattr(torchvision.models, RESNETS[depth])
    chosen = None
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(RESNETS[depth])
        chosen = enum.IMAGENET1K_V2 if depth == 50 else enum.IMAGENET1K_V1
    net = builder(weights=chosen)
    net.fc = nn.Identity()
    return net


def resnet_stage_channels(net: nn.Module) -> list[int]:
    """Output channels of the stem and of layer1 … layer4 of a torchvision ResNet."""
    out = [net.conv1.out_channels]
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        last = layer[-1]
        out.append((last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels)
    return out


def resnet_stages(net: nn.Module) -> list[nn.Module]:
    """The five stages of a torchvision ResNet: stem (conv, BN, ReLU, max-pool), layer1 … 4."""
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return [stem, net.layer1, net.layer2, net.layer3, net.layer4]


def normalise_films(image: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] in [0, 1] → [B, 3, H, W] with torchvision's ImageNet normalisation."""
    mean = image.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = image.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (image.expand(-1, 3, -1, -1) - mean) / std


def placeholder_films(like: torch.Tensor, n: int) -> torch.Tensor:
    """n placeholder films, already normalised: zeros [n, 3, H, W] (the ImageNet mean colour)."""
    return like.new_zeros(n, 3, like.shape[-2], like.shape[-1])


@contextlib.contextmanager
def frozen_batchnorm(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``module`` in evaluation mode (running statistics, no update)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = [m.training for m in norms]
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(norms, modes, strict=True):
            m.train(mode)


def by_film(
    fn: Callable[..., torch.Tensor],
    module: nn.Module,
    has_cxr: torch.Tensor,
    films: torch.Tensor,
    *row_args: torch.Tensor,
) -> torch.Tensor:
    """``fn(films, *row_args)`` row-wise, keeping placeholders out of BatchNorm statistics.

    films: [B, 3, H, W] normalised (placeholder rows are zeros); row_args: tensors [B, …] passed
    along with the same rows; returns fn's [B, …] output. Rows with a film run as usual; rows
    without one run with ``module``'s BatchNorm layers in evaluation mode. In evaluation mode
    (or when every row has a film) this is one call.
    """
    if not module.training or bool(has_cxr.all()):
        return fn(films, *row_args)
    present = has_cxr.nonzero().squeeze(1)
    absent = (~has_cxr).nonzero().squeeze(1)
    with frozen_batchnorm(module):
        out_absent = fn(films[absent], *(a[absent] for a in row_args))
    if len(present) == 0:
        return out_absent
    out_present = fn(films[present], *(a[present] for a in row_args))
    out = out_present.new_empty((len(has_cxr), *out_present.shape[1:]))
    out[present] = out_present
    out[absent] = out_absent
    return out


class CxrResNetEncoder(nn.Module):
    """Films [B, 1, H, W] in [0, 1] (+ has_cxr [B]) → [B, d]: torchvision ResNet, its classifier
    replaced by Linear(→ d).

    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. ``weights='imagenet'``
    loads torchvision's ImageNet weights (IMAGENET1K_V1 for 18/34, IMAGENET1K_V2 for 50).
    """

    def __init__(self, depth: int, weights: str, dim: int, width: int = 64) -> None:
        super().__init__()
        self.net = resnet_backbone(depth, weights, width)
        self.features = resnet_stage_channels(self.net)[-1]
        self.head = nn.Linear(self.features, dim)
        self.dim = dim

    def forward(self, image: torch.Tensor, has_cxr: torch.Tensor | None = None) -> torch.Tensor:
        if has_cxr is None:
            has_cxr = torch.ones(len(image), dtype=torch.bool, device=image.device)
        return self.head(encode_films(self.net, image, has_cxr))

    def present(self, image: torch.Tensor, has_cxr: torch.Tensor) -> torch.Tensor:
        """[B, d] features of the stays that have a film; zeros for the others.

        For missing-modality models, which replace an absent film by their own mechanism: the
        placeholder rows are never run through the network (not even with BatchNorm frozen), so
        nothing about them is computed from the image tensor. The zero rows carry no gradient to
        the encoder and must be masked or replaced by the caller.
        """
        return present_rows(
            lambda films: self.head(self.net(normalise_films(films))), image, has_cxr, self.dim
        )


def present_rows(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    has_cxr: torch.Tensor,
    dim: int,
) -> torch.Tensor:
    """``fn`` over the rows of ``image`` [B, …] with a film only → [B, dim] (zeros elsewhere).

    ``fn`` maps [n, …] → [n, dim]; rows without a film are never passed to it.
    """
    out = image.new_zeros(len(image), dim)
    present = has_cxr.nonzero().squeeze(1)
    if len(present) == 0:
        return out
    out[present] = fn(image[present]).to(out.dtype)
    return out


def cxr_resnet(enc: EncoderConfig) -> CxrResNetEncoder:
    """The shared CXR ResNet (depth and weights from ``encoders``) → [B, d]."""
    return CxrResNetEncoder(enc.resnet_depth, enc.resnet_weights, enc.dim, enc.resnet_width)


def encode_films(net: nn.Module, image: torch.Tensor, has_cxr: torch.Tensor) -> torch.Tensor:
    """Backbone features [B, K] of films [B, 1, H, W] in [0, 1].

    Stays without a film get the backbone's feature of the placeholder (zero in normalised
    space), computed once with BatchNorm in evaluation mode: zero imputation as the protocol
    says, without the placeholder entering BatchNorm's batch statistics.
    """
    x = normalise_films(image)
    if bool(has_cxr.all()):
        return net(x)
    present = has_cxr.nonzero().squeeze(1)
    with frozen_batchnorm(net) if net.training else contextlib.nullcontext():
        filler = net(placeholder_films(x, 1))  # [1, K]
    out = filler.expand(len(image), -1)
    if len(present) == 0:
        return out
    out = out.clone()
    out[present] = net(x[present])
    return out
