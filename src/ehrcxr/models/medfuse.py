"""MedFuse: an LSTM that reads the modality embeddings as a sequence.

Hayat, Geras & Shamout, "MedFuse: Multi-modal fusion with clinical time-series data and chest
X-ray images", MLHC 2022, §3: the EHR encoder is a stacked LSTM (two layers, dropout) whose last
hidden state is v_ehr ∈ R^m; the film's pooled ResNet feature is projected to m (ϕ); the
sequence [v_ehr, ϕ(v_cxr)] is read by a single-layer fusion LSTM (hidden 512 for m = 256) whose
last hidden state is classified by one linear layer. A missing film shortens the sequence to
[v_ehr] (packed), so no placeholder image is read. Trained end to end (the paper's joint
fine-tuning); its optional unimodal pre-training is not part of the benchmark protocol.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from ehrcxr.batch import Batch, InputSpec, ModelOutput
from ehrcxr.models.encoders import (
    EncoderConfig,
    encode_films,
    resnet_backbone,
    resnet_stage_channels,
)
from ehrcxr.models.registry import register_model


@register_model("medfuse", modalities=("ehr", "cxr"), missing_modality=True)
class MedFuse(nn.Module):
    """ehr_input [B, T, F + M], cxr [B, 1, H, W], has_cxr [B] → logits [B, C]."""

    def __init__(
        self,
        inputs: InputSpec,
        n_outputs: int,
        encoders: EncoderConfig,
        ehr_layers: int = 2,
        fusion_hidden: int = 512,
    ) -> None:
        super().__init__()
        d = encoders.dim
        # MedFuse's EHR encoder: a stacked unidirectional LSTM over the hourly input.
        self.ehr = nn.LSTM(
            inputs.ehr_channels,
            d,
            num_layers=ehr_layers,
            batch_first=True,
            dropout=encoders.dropout if ehr_layers > 1 else 0.0,
        )
        self.ehr_dropout = nn.Dropout(encoders.dropout)
        self.cxr = resnet_backbone(
            encoders.resnet_depth, encoders.resnet_weights, encoders.resnet_width
        )
        self.project = nn.Linear(resnet_stage_channels(self.cxr)[-1], d)  # ϕ
        self.fusion = nn.LSTM(d, fusion_hidden, batch_first=True)
        self.head = nn.Linear(fusion_hidden, n_outputs)

    def forward(self, batch: Batch) -> ModelOutput:
        _, (h, _) = self.ehr(batch.ehr_input)
        v_ehr = self.ehr_dropout(h[-1])  # [B, d]
        v_cxr = torch.zeros_like(v_ehr)
        if bool(batch.has_cxr.any()):
            rows = batch.has_cxr.nonzero().squeeze(1)
            present = batch.has_cxr[rows]
            v_cxr = v_cxr.index_put(
                (rows,), self.project(encode_films(self.cxr, batch.cxr[rows], present))
            )
        sequence = torch.stack([v_ehr, v_cxr], dim=1)  # [B, 2, d]
        lengths = 1 + batch.has_cxr.long().cpu()  # 1 when the film is missing
        packed = pack_padded_sequence(sequence, lengths, batch_first=True, enforce_sorted=False)
        _, (fused, _) = self.fusion(packed)
        return ModelOutput(logits=self.head(fused[-1]))
