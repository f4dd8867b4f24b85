"""EHR-only Transformer baseline.

Vaswani et al., "Attention Is All You Need", NeurIPS 2017: a Transformer encoder over the 48
hourly steps, mean-pooled.
"""

from __future__ import annotations

from torch import nn

from ehrcxr.batch import Batch, InputSpec, ModelOutput
from ehrcxr.models.encoders import EhrTransformerEncoder
from ehrcxr.models.registry import register_model


@register_model("transformer", modalities=("ehr",))
class Transformer(nn.Module):
    """ehr_input [B, T, F + M] → Transformer encoder → mean over T [B, d] → logits [B, C]."""

    def __init__(
        self,
        inputs: InputSpec,
        n_outputs: int,
        d_model: int = 256,
        n_heads: int = 4,
        n_layers: int = 1,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.encoder = EhrTransformerEncoder(
            inputs.ehr_channels, inputs.time_steps, d_model, n_heads, n_layers, dropout
        )
        self.head = nn.Linear(d_model, n_outputs)

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.head(self.encoder(batch.ehr_input)))
