"""DAFT: the image path conditioned on the EHR by a dynamic affine feature-map transform.

Pölsterl, Wolf & Wachinger, "Combining 3D Image and Tabular Data via the Dynamic Affine Feature
Map Transform", MICCAI 2021, §2 (public code: github.com/ai-med/DAFT). Inside one residual block
of the CNN — the last one, where the paper found DAFT most effective — the block's input feature
map F [B, C, H, W] is rescaled and shifted channel-wise before anything else of the block reads
it (the code's ``location=0``: conv path and identity path both see the transformed map):

    z = [GAP(F) ‖ x_tab]                                   (image summary ‖ tabular vector)
    (α, β) = W₂ ReLU(W₁ z),   W₁: C + d → b,  W₂: b → 2C  (bias-free, b = ⌊(C + d) / 7⌋)
    F' = α ⊙ F + β                                         (α, β broadcast over H, W)

with a linear (identity) activation on α. The rest of the network is the plain CNN: the last
block's output is globally pooled and classified by one linear layer, so the tabular data
reaches the prediction only through the affine transform. Here the CNN is the shared ResNet
over the film and the "tabular data" is the shared EHR Transformer's pooled embedding [B, d]:
the image path is conditioned on the EHR (the CareBench toolkit reverses the roles; this follows
the paper). DAFT is a complete-modality model: a missing film is the placeholder image (zero in
normalised space), kept out of BatchNorm's training statistics.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ehrcxr.batch import Batch, InputSpec, ModelOutput
from ehrcxr.models.encoders import (
    EncoderConfig,
    by_film,
    ehr_transformer,
    frozen_batchnorm,
    normalise_films,
    placeholder_films,
    resnet_backbone,
    resnet_stage_channels,
    resnet_stages,
)
from ehrcxr.models.registry import register_model


class DaftTransform(nn.Module):
    """The DAFT auxiliary network and transform: (F [B, C, H, W], x [B, d]) → α ⊙ F + β.

    GAP(F) ‖ x [B, C + d] → Linear(no bias, → b) → ReLU → Linear(no bias, → 2C) → (α, β) [B, C]
    each; linear activation, PyTorch's default initialisation (as the paper's code).
    """

    def __init__(self, channels: int, tabular_dim: int, bottleneck_factor: float) -> None:
        super().__init__()
        if bottleneck_factor <= 0:
            raise ValueError(f"bottleneck_factor must be positive, not {bottleneck_factor}")
        # The paper's code: bottleneck = int((channels + tabular) / factor).
        bottleneck = max(1, int((channels + tabular_dim) / bottleneck_factor))
        self.aux = nn.Sequential(
            nn.Linear(channels + tabular_dim, bottleneck, bias=False),
            nn.ReLU(),
            nn.Linear(bottleneck, 2 * channels, bias=False),
        )
        self.channels = channels

    def forward(self, feature_map: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        squeeze = feature_map.mean(dim=(2, 3))  # [B, C]: global average pooling
        scale, shift = self.aux(torch.cat([squeeze, tabular], dim=1)).split(self.channels, dim=1)
        return scale[:, :, None, None] * feature_map + shift[:, :, None, None]


@register_model("daft", modalities=("ehr", "cxr"))
class Daft(nn.Module):
    """ehr_input [B, T, F + M], cxr [B, 1, H, W], has_cxr [B] → logits [B, C].

    The ResNet runs stage by stage; block ``block`` of ``layer<stage>`` (default: the network's
    last residual block) reads its input through :class:`DaftTransform`, conditioned on the
    EHR embedding [B, d]. The pooled ResNet output [B, K] is classified by Linear(K → C).
    """

    def __init__(
        self,
        inputs: InputSpec,
        n_outputs: int,
        encoders: EncoderConfig,
        stage: int = 4,
        block: int = -1,
        bottleneck_factor: float = 7.0,
    ) -> None:
        super().__init__()
        self.ehr = ehr_transformer(inputs, encoders)
        self.cxr = resnet_backbone(
            encoders.resnet_depth, encoders.resnet_weights, encoders.resnet_width
        )
        if stage not in (1, 2, 3, 4):
            raise ValueError(f"stage must be one of layer1 … layer4 (1-4), not {stage}")
        layer = resnet_stages(self.cxr)[stage]
        if not -len(layer) <= block < len(layer):
            raise ValueError(f"block must index one of layer{stage}'s {len(layer)} blocks")
        self.stage = stage
        self.block = block % len(layer)
        # The conditioned block's input channels: the previous block's (or stage's) output.
        channels = resnet_stage_channels(self.cxr)[stage - 1 if self.block == 0 else stage]
        self.daft = DaftTransform(channels, encoders.dim, bottleneck_factor)
        self.head = nn.Linear(resnet_stage_channels(self.cxr)[-1], n_outputs)

    @property
    def conditioned_block(self) -> nn.Module:
        """The residual block whose input DAFT transforms (for hooks and tests)."""
        return resnet_stages(self.cxr)[self.stage][self.block]

    def _before(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised films [N, 3, H, W] → the conditioned block's input F [N, C, h, w]."""
        stages = resnet_stages(self.cxr)
        for s in stages[: self.stage]:
            x = s(x)
        for b in stages[self.stage][: self.block]:
            x = b(x)
        return x

    def _from_daft(self, feature_map: torch.Tensor, ehr: torch.Tensor) -> torch.Tensor:
        """F [N, C, h, w], EHR embedding [N, d] → pooled ResNet output [N, K]."""
        stages = resnet_stages(self.cxr)
        x = self.conditioned_block(self.daft(feature_map, ehr))
        for b in stages[self.stage][self.block + 1 :]:
            x = b(x)
        for s in stages[self.stage + 1 :]:
            x = s(x)
        return torch.flatten(self.cxr.avgpool(x), 1)

    def _before_maps(self, cxr: torch.Tensor, has_cxr: torch.Tensor) -> torch.Tensor:
        """Films [B, 1, H, W] → F [B, C, h, w]; a stay without a film gets the placeholder's map.

        The part before DAFT does not depend on the EHR, so the placeholder's map is computed
        once (BatchNorm in evaluation mode, as ``encode_films``) and shared by every missing
        film: the cost stays that of the films that exist.
        """
        x = normalise_films(cxr)
        if bool(has_cxr.all()):
            return self._before(x)
        frozen = frozen_batchnorm(self.cxr) if self.training else contextlib.nullcontext()
        with frozen:
            filler = self._before(placeholder_films(x, 1))  # [1, C, h, w]
        out = filler.expand(len(cxr), *filler.shape[1:])
        present = has_cxr.nonzero().squeeze(1)
        if len(present) == 0:
            return out
        out = out.clone()
        out[present] = self._before(x[present])
        return out

    def forward(self, batch: Batch) -> ModelOutput:
        h = self.ehr(batch.ehr_input)  # [B, d], the "tabular" vector
        maps = self._before_maps(batch.cxr, batch.has_cxr)
        # The conditioned part differs per stay (it reads the EHR), so placeholder rows run it
        # row-wise with BatchNorm frozen.
        pooled = by_film(self._from_daft, self.cxr, batch.has_cxr, maps, h)  # [B, K]
        return ModelOutput(logits=self.head(pooled))
