"""Late fusion: concatenate the EHR and CXR embeddings, one linear classifier, joint training.

The standard late (intermediate-feature) fusion baseline of the EHR+CXR literature, e.g.
Hayat et al., MedFuse (MLHC 2022), §4 baselines; Baltrušaitis et al., "Multimodal Machine
Learning: A Survey and Taxonomy", TPAMI 2019.
"""

from __future__ import annotations

import torch
from torch import nn

from ehrcxr.batch import Batch, InputSpec, ModelOutput
from ehrcxr.models.encoders import CxrResNetEncoder, EhrLstmEncoder
from ehrcxr.models.registry import register_model


@register_model("late_fusion", modalities=("ehr", "cxr"))
class LateFusion(nn.Module):
    """[LSTM(ehr_input) ‖ ResNet(cxr)] [B, 2d] → dropout → logits [B, C].

    Missing films are the all-zero image (no masking): the baseline the missing-modality
    methods are compared with.
    """

    def __init__(
        self,
        inputs: InputSpec,
        n_outputs: int,
        hidden_size: int = 256,
        num_layers: int = 1,
        bidirectional: bool = True,
        depth: int = 50,
        weights: str = "imagenet",
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.ehr = EhrLstmEncoder(
            inputs.ehr_channels, hidden_size, num_layers, dropout, bidirectional
        )
        self.cxr = CxrResNetEncoder(depth, weights, hidden_size)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden_size, n_outputs))

    def forward(self, batch: Batch) -> ModelOutput:
        fused = torch.cat([self.ehr(batch.ehr_input), self.cxr(batch.cxr)], dim=-1)
        return ModelOutput(logits=self.head(fused))
