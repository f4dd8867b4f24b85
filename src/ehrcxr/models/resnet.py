"""CXR-only ResNet baseline.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; fine-tuned end to end on the
chest film (CareBench paper, §4.1: ResNet-50 from ImageNet; depth and weights from ``encoders``).
"""

from __future__ import annotations

from torch import nn

from ehrcxr.batch import Batch, InputSpec, ModelOutput
from ehrcxr.models.encoders import EncoderConfig, cxr_resnet
from ehrcxr.models.registry import register_model


@register_model("resnet", modalities=("cxr",))
class ResNet(nn.Module):
    """cxr [B, 1, H, W] → ResNet → [B, d] → dropout → logits [B, C].

    A stay without a film gets the placeholder's feature (zero imputation, as the protocol says;
    kept out of BatchNorm statistics): the model learns one constant prediction for such stays.
    """

    def __init__(self, inputs: InputSpec, n_outputs: int, encoders: EncoderConfig) -> None:
        super().__init__()
        self.encoder = cxr_resnet(encoders)
        self.head = nn.Sequential(nn.Dropout(encoders.dropout), nn.Linear(encoders.dim, n_outputs))

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.head(self.encoder(batch.cxr, batch.has_cxr)))
