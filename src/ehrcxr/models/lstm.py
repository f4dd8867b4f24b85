"""EHR-only LSTM baseline.

Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 9(8), 1997; as the EHR
baseline of Hayat et al., MedFuse (MLHC 2022).
"""

from __future__ import annotations

from torch import nn

from ehrcxr.batch import Batch, InputSpec, ModelOutput
from ehrcxr.models.encoders import EhrLstmEncoder
from ehrcxr.models.registry import register_model


@register_model("lstm", modalities=("ehr",))
class Lstm(nn.Module):
    """ehr_input [B, T, F + M] → LSTM → last hidden state [B, d] → logits [B, C]."""

    def __init__(
        self,
        inputs: InputSpec,
        n_outputs: int,
        hidden_size: int = 256,
        num_layers: int = 1,
        dropout: float = 0.2,
        bidirectional: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = EhrLstmEncoder(
            inputs.ehr_channels, hidden_size, num_layers, dropout, bidirectional
        )
        self.head = nn.Linear(hidden_size, n_outputs)

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.head(self.encoder(batch.ehr_input)))
