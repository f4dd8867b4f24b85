"""MedFuse: an LSTM that reads the modality embeddings as a sequence.

Hayat, Geras & Shamout, "MedFuse: Multi-modal fusion with clinical time-series data and chest
X-ray images", MLHC 2022. The EHR LSTM's last hidden state and the projected CXR feature form a
sequence [h_ehr, h_cxr] read by a fusion LSTM; for a stay without a film the sequence is
shortened to [h_ehr] (packed), so no zero image is fed. Trained end to end here; the paper's
optional unimodal pre-training is not part of the benchmark protocol.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from ehrcxr.batch import Batch, InputSpec, ModelOutput
from ehrcxr.models.encoders import CxrResNetEncoder
from ehrcxr.models.registry import register_model


@register_model("medfuse", modalities=("ehr", "cxr"))
class MedFuse(nn.Module):
    """ehr_input [B, T, F + M], cxr [B, 1, H, W], has_cxr [B] → logits [B, C]."""

    def __init__(
        self,
        inputs: InputSpec,
        n_outputs: int,
        hidden_size: int = 256,
        ehr_layers: int = 2,
        depth: int = 50,
        weights: str = "imagenet",
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        # MedFuse's EHR encoder: a unidirectional LSTM over the raw hourly input.
        self.ehr = nn.LSTM(
            inputs.ehr_channels,
            hidden_size,
            num_layers=ehr_layers,
            batch_first=True,
            dropout=dropout if ehr_layers > 1 else 0.0,
        )
        self.ehr_dropout = nn.Dropout(dropout)
        self.cxr = CxrResNetEncoder(depth, weights, hidden_size)  # 2048 → d projection inside
        self.fusion = nn.LSTM(hidden_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, n_outputs)

    def forward(self, batch: Batch) -> ModelOutput:
        _, (h, _) = self.ehr(batch.ehr_input)
        h_ehr = self.ehr_dropout(h[-1])  # [B, d]
        h_cxr = self.cxr(batch.cxr)  # [B, d]; unused (packed away) when the film is missing
        sequence = torch.stack([h_ehr, h_cxr], dim=1)  # [B, 2, d]
        lengths = 1 + batch.has_cxr.long().cpu()  # 1 when the film is missing
        packed = pack_padded_sequence(sequence, lengths, batch_first=True, enforce_sorted=False)
        _, (fused, _) = self.fusion(packed)
        return ModelOutput(logits=self.head(fused[-1]))
