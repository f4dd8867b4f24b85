"""MMTM: slow fusion of an EHR LSTM stack and a CXR ResNet by multimodal squeeze-and-excitation.

Vaezi Joze, Shaban, Iuzzolino & Koishida, "MMTM: Multimodal Transfer Module for CNN Fusion",
CVPR 2020, §3. At several depths an MMTM couples two unimodal streams A and B:

- squeeze: S_A, S_B = global average pooling of each stream's feature map over its spatial /
  temporal axes (so the streams may differ in resolution);
- joint representation: Z = ReLU(W [S_A, S_B] + b), of width C_Z = (C_A + C_B) / ratio (ratio 4);
- excitation: E_A = W_A Z + b_A, E_B = W_B Z + b_B;
- recalibration: A ← A ⊙ 2σ(E_A), B ← B ⊙ 2σ(E_B), channel-wise (a gate in (0, 2), 1 at E = 0);

and the recalibrated maps are the inputs of each stream's NEXT stage (slow fusion). The whole
network is trained end to end with one optimiser; the prediction is the average of the two
unimodal heads' logits (the paper's late-fusion output, also the published code's default).

Here stream A is a torchvision ResNet over the film (stages: stem, layer1 … layer4) and stream B
a stack of unidirectional LSTM layers over ``ehr_input``, one layer per fused ResNet stage, so a
gated EHR sequence feeds the next LSTM layer just as a gated image map feeds the next ResNet
stage. A missing film is the placeholder (zero in normalised space, as the other zero-imputation
models); its rows run every ResNet stage with BatchNorm in evaluation mode (``by_film``).
"""

from __future__ import annotations

import torch
from torch import nn

from ehrcxr.batch import Batch, InputSpec, ModelOutput
from ehrcxr.models.encoders import (
    EncoderConfig,
    by_film,
    frozen_batchnorm,
    normalise_films,
    resnet_backbone,
    resnet_stage_channels,
    resnet_stages,
)
from ehrcxr.models.registry import register_model

N_STAGES = 5  # stem, layer1, layer2, layer3, layer4


class MultimodalTransferModule(nn.Module):
    """One MMTM: image map [B, C_A, H, W] and EHR sequence [B, T, C_B] → both recalibrated."""

    def __init__(self, image_channels: int, ehr_channels: int, ratio: float) -> None:
        super().__init__()
        joint = max(1, int((image_channels + ehr_channels) / ratio))  # C_Z, paper eq. (3)
        self.squeeze = nn.Sequential(nn.Linear(image_channels + ehr_channels, joint), nn.ReLU())
        self.excite_image = nn.Linear(joint, image_channels)
        self.excite_ehr = nn.Linear(joint, ehr_channels)

    def gates(self, image: torch.Tensor, ehr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Channel gates 2σ(E_A) [B, C_A] and 2σ(E_B) [B, C_B], each in (0, 2)."""
        s_image = image.mean(dim=(2, 3))  # spatial squeeze [B, C_A]
        s_ehr = ehr.mean(dim=1)  # temporal squeeze [B, C_B]
        z = self.squeeze(torch.cat([s_image, s_ehr], dim=1))
        # 2σ rather than σ: a gate can amplify as well as suppress, and a zero excitation is the
        # identity, so a module inserted into trained streams starts close to a no-op.
        return 2 * torch.sigmoid(self.excite_image(z)), 2 * torch.sigmoid(self.excite_ehr(z))

    def forward(self, image: torch.Tensor, ehr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g_image, g_ehr = self.gates(image, ehr)
        return image * g_image[:, :, None, None], ehr * g_ehr[:, None, :]


@register_model("mmtm", modalities=("ehr", "cxr"))
class Mmtm(nn.Module):
    """ehr_input [B, T, F + M], cxr [B, 1, H, W], has_cxr [B] → logits [B, C].

    stages: the ResNet stages (0 = stem, 1 … 4 = layer1 … layer4) after which an MMTM fuses
    the streams; the EHR stream has one LSTM layer of width d per entry. Default (2, 3, 4): the
    last three blocks, as the paper's and the published code's ResNet fusion points (the paper's
    ablation, §4, finds the later levels the useful ones). ratio: C_Z = (C_A + C_B) / ratio.
    """

    def __init__(
        self,
        inputs: InputSpec,
        n_outputs: int,
        encoders: EncoderConfig,
        stages: tuple[int, ...] = (2, 3, 4),
        ratio: float = 4.0,
    ) -> None:
        super().__init__()
        stages = tuple(sorted(int(s) for s in stages))
        if not stages or len(set(stages)) != len(stages) or not set(stages) <= set(range(5)):
            raise ValueError(f"stages must be distinct ResNet stages in 0 … 4, not {stages}")
        if ratio <= 0:
            raise ValueError(f"ratio must be positive, not {ratio}")
        self.stages = stages
        d = encoders.dim
        self.cnn = resnet_backbone(
            encoders.resnet_depth, encoders.resnet_weights, encoders.resnet_width
        )
        channels = resnet_stage_channels(self.cnn)
        # Unidirectional, so that a gated sequence is an ordinary input to the next layer and the
        # last step summarises the stay (MedFuse's and the CareBench MMTM's EHR branch).
        self.ehr_layers = nn.ModuleList(
            nn.LSTM(inputs.ehr_channels if i == 0 else d, d, batch_first=True)
            for i in range(len(stages))
        )
        self.ehr_dropout = nn.Dropout(encoders.dropout)
        self.mmtm = nn.ModuleList(MultimodalTransferModule(channels[s], d, ratio) for s in stages)
        self.image_head = nn.Sequential(
            nn.Dropout(encoders.dropout), nn.Linear(channels[-1], n_outputs)
        )
        self.ehr_head = nn.Linear(d, n_outputs)

    def branch_logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The two unimodal heads' logits (EHR, CXR), each [B, C], after slow fusion."""
        cnn_stages = resnet_stages(self.cnn)
        first = self.stages[0]
        x = self._unfused(nn.Sequential(*cnn_stages[: first + 1]), batch)  # [B, C, H, W]
        h = batch.ehr_input  # [B, T, F + M]
        fused = 0
        for s, stage in enumerate(cnn_stages):
            if s > first:
                # Row-wise, placeholder rows with BatchNorm in evaluation mode; every row now
                # runs, since after an MMTM each placeholder row's map depends on its own EHR.
                x = by_film(stage, self.cnn, batch.has_cxr, x)  # [B, C_s, H_s, W_s]
            if fused < len(self.stages) and s == self.stages[fused]:
                layer = self.ehr_layers[fused]
                h, _ = layer(self.ehr_dropout(h) if fused > 0 else h)  # [B, T, d]
                x, h = self.mmtm[fused](x, h)  # both gated; each feeds its stream's next stage
                fused += 1
        ehr_logits = self.ehr_head(self.ehr_dropout(h[:, -1]))  # last (gated) step [B, d]
        cxr_logits = self.image_head(x.mean(dim=(2, 3)))  # GAP of the last map [B, C_4]
        return ehr_logits, cxr_logits

    def _unfused(self, prefix: nn.Module, batch: Batch) -> torch.Tensor:
        """The ResNet stages up to the first MMTM, [B, C, H, W]: films run as usual; before any
        fusion every placeholder map is the same, so it is computed once (BatchNorm in
        evaluation mode) and shared by the rows without a film."""
        x = normalise_films(batch.cxr)  # placeholder rows: zeros, i.e. zero in normalised space
        has = batch.has_cxr
        if not self.training or bool(has.all()):
            return prefix(x)
        with frozen_batchnorm(self.cnn):
            filler = prefix(x[:1].new_zeros(x[:1].shape))  # [1, C, H, W]
        out = filler.expand(len(x), *filler.shape[1:])
        if not bool(has.any()):
            return out
        present = has.nonzero().squeeze(1)
        return out.index_put((present,), prefix(x[present]))

    def forward(self, batch: Batch) -> ModelOutput:
        ehr_logits, cxr_logits = self.branch_logits(batch)
        # The paper's prediction: the average of the unimodal streams' logits.
        return ModelOutput(logits=(ehr_logits + cxr_logits) / 2)
