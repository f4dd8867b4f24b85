"""CXR-only ResNet baseline.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; fine-tuned end to end on the
chest film (depth 18/34/50; torchvision ImageNet weights or random initialisation).
"""

from __future__ import annotations

from torch import nn

from ehrcxr.batch import Batch, InputSpec, ModelOutput
from ehrcxr.models.encoders import CxrResNetEncoder
from ehrcxr.models.registry import register_model


@register_model("resnet", modalities=("cxr",))
class ResNet(nn.Module):
    """cxr [B, 1, H, W] → ResNet → [B, d] → dropout → logits [B, C].

    A stay without a film sees the all-zero image (zero imputation, as the protocol says).
    """

    def __init__(
        self,
        inputs: InputSpec,
        n_outputs: int,
        depth: int = 50,
        weights: str = "imagenet",
        dim: int = 256,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.encoder = CxrResNetEncoder(depth, weights, dim)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, n_outputs))

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.head(self.encoder(batch.cxr)))
