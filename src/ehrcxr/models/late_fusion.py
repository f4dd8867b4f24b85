"""Late fusion: concatenate the EHR and CXR embeddings, one linear classifier, joint training.

CareBench paper, appendix C.1: a Transformer EHR encoder and a ResNet image encoder whose
embeddings are concatenated and classified jointly — the baseline every fusion method is
compared with (also Hayat et al., MedFuse, MLHC 2022, §4 baselines).
"""

from __future__ import annotations

import torch
from torch import nn

from ehrcxr.batch import Batch, InputSpec, ModelOutput
from ehrcxr.models.encoders import EncoderConfig, cxr_resnet, ehr_transformer
from ehrcxr.models.registry import register_model


@register_model("late_fusion", modalities=("ehr", "cxr"))
class LateFusion(nn.Module):
    """[Transformer(ehr_input) ‖ ResNet(cxr)] [B, 2d] → dropout → logits [B, C].

    A missing film is the placeholder's feature (zero imputation, no masking): the baseline the
    missing-modality methods are compared with.
    """

    def __init__(self, inputs: InputSpec, n_outputs: int, encoders: EncoderConfig) -> None:
        super().__init__()
        self.ehr = ehr_transformer(inputs, encoders)
        self.cxr = cxr_resnet(encoders)
        self.head = nn.Sequential(
            nn.Dropout(encoders.dropout), nn.Linear(2 * encoders.dim, n_outputs)
        )

    def forward(self, batch: Batch) -> ModelOutput:
        fused = torch.cat([self.ehr(batch.ehr_input), self.cxr(batch.cxr, batch.has_cxr)], dim=-1)
        return ModelOutput(logits=self.head(fused))
