"""EHR-only LSTM baseline.

Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 9(8), 1997; the EHR
baseline of the CareBench paper (§4.1) and of Hayat et al., MedFuse (MLHC 2022).
"""

from __future__ import annotations

from torch import nn

from ehrcxr.batch import Batch, InputSpec, ModelOutput
from ehrcxr.models.encoders import EncoderConfig, ehr_lstm
from ehrcxr.models.registry import register_model


@register_model("lstm", modalities=("ehr",))
class Lstm(nn.Module):
    """ehr_input [B, T, F + M] → LSTM → last hidden state [B, d] → logits [B, C]."""

    def __init__(self, inputs: InputSpec, n_outputs: int, encoders: EncoderConfig) -> None:
        super().__init__()
        self.encoder = ehr_lstm(inputs, encoders)
        self.head = nn.Linear(encoders.dim, n_outputs)

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.head(self.encoder(batch.ehr_input)))
