"""EHR-only Transformer baseline.

Vaswani et al., "Attention Is All You Need", NeurIPS 2017: a Transformer encoder over the 48
hourly steps, mean-pooled (CareBench paper, §4.1: 4 heads, 1 layer, d = 256).
"""

from __future__ import annotations

from torch import nn

from ehrcxr.batch import Batch, InputSpec, ModelOutput
from ehrcxr.models.encoders import EncoderConfig, ehr_transformer
from ehrcxr.models.registry import register_model


@register_model("transformer", modalities=("ehr",))
class Transformer(nn.Module):
    """ehr_input [B, T, F + M] → Transformer encoder → mean over T [B, d] → logits [B, C]."""

    def __init__(self, inputs: InputSpec, n_outputs: int, encoders: EncoderConfig) -> None:
        super().__init__()
        self.encoder = ehr_transformer(inputs, encoders)
        self.head = nn.Linear(encoders.dim, n_outputs)

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.head(self.encoder(batch.ehr_input)))
