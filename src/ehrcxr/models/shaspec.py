"""ShaSpec: shared and specific features, a missing modality generated from the shared space.

Hu Wang, Yuanhong Chen, Congbo Ma, Jodie Avery, Louise Hull, Gustavo Carneiro, "Multi-modal
Learning with Missing Modality via Shared-Specific Feature Modelling", CVPR 2023 (authors' code:
github.com/billhhh/ShaSpec).

Mechanism (paper §3; authors' ``DualNet_SS.py``, ``train_SS.py``):

- Every modality m has a SPECIFIC encoder giving p_m, and every modality goes through ONE
  SHARED encoder (the same weights for all modalities) giving s_m.
- Distribution alignment objective (DAO) on the shared features: the shared features of the
  modalities of a sample are pulled together; the authors' distance is the L1 loss
  (``nn.L1Loss``, mean absolute difference; "SimShareAllPairs").
- Domain classification objective (DCO) on the specific features: a linear classifier predicts
  from which modality a specific feature came (cross-entropy), so the specific features keep
  what is particular to their modality.
- Residual composition per modality, one layer shared by the modalities:
  f_m = s_m + g([s_m ‖ p_m]). A missing modality's feature is the SHARED feature of an available
  modality (authors: "take the 1st available mode for shared fts"), which the DAO makes
  modality-robust.
- The modalities' features are concatenated and decoded: L = L_task + α·L_DAO + β·L_DCO.

Implemented here: specific encoders = the shared EHR Transformer (``ehr_transformer``) and the
film ResNet (``cxr_resnet(...).present``). The shared encoder is one module — a Transformer
encoder layer, mean over tokens, Linear — that both modalities reach through their own input
stems, which turn heterogeneous inputs into d-wide tokens: the EHR's hours
(Linear(F + M → d) + learned positions, T tokens) and the film's ResNet feature map (a second
ResNet of the ``encoders`` configuration, its last stage average-pooled to a 2×2 grid,
Linear(channels → d) + learned positions, 4 tokens). The film stem has its own backbone, so the
shared and the specific film features come from separate networks, as in the paper (where each
encoder is a full network). Each modality's tokens pass through the shared module in one
batched call (no per-sample loop). Missing film: f_cxr := s_ehr; the placeholder is never
encoded (films that exist only), and every film term (the CXR specific feature in the DCO, the
stay in the DAO) is restricted to stays with a film. Decoder: [f_ehr ‖ f_cxr] → Dropout →
Linear(2d → d) → ReLU → Dropout → Linear(d → C). Both auxiliary terms are label-free:
``aux_loss`` = α·L_DAO + β·L_DCO.

Deliberate differences: the DAO with two modalities is one L1 term (the authors' cycle over
all modality pairs would count the single pair twice); the DCO averages the cross-entropy over
the specific features that exist (all EHR ones, the film ones of stays with a film).

CareBench toolkit bugs and deviations avoided (carebench_models.md §4.14): the domain
classifier reads the specific features (the toolkit applied it to the shared ones, pushing them
apart while the L1 term pulls them together); no per-sample Python loop in the shared encoder;
no bias vectors of missing films counted as class "CXR" (missing films have no CXR feature at
all); no label weights (the toolkit's path crashed for LoS).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ehrcxr.batch import Batch, InputSpec, ModelOutput
from ehrcxr.models.encoders import (
    EncoderConfig,
    cxr_resnet,
    ehr_transformer,
    normalise_films,
    resnet_backbone,
    resnet_stage_channels,
    resnet_stages,
)
from ehrcxr.models.registry import register_model

EHR, CXR = 0, 1  # modality ids: the domain classifier's classes
FILM_GRID = 2  # the film stem's feature map is pooled to FILM_GRID × FILM_GRID tokens


class SharedEncoder(nn.Module):
    """The one shared encoder: tokens [n, L, d] (from any modality's stem) → [n, d].

    A Transformer encoder layer (heads from ``encoders``, FFN 4d, GELU), mean over tokens,
    Linear. The same parameters serve every modality.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True
        )
        self.out = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.layer(tokens).mean(dim=1))


class EhrStem(nn.Module):
    """ehr_input [B, T, F + M] → tokens [B, T, d]: Linear + learned positions."""

    def __init__(self, channels: int, time_steps: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(channels, dim)
        self.position = nn.Parameter(torch.zeros(1, time_steps, dim))
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + self.position[:, : x.shape[1]]


class FilmStem(nn.Module):
    """Films [n, 1, H, W] in [0, 1] (present films only) → tokens [n, FILM_GRID², d]: a ResNet's
    last-stage feature map, average-pooled to FILM_GRID × FILM_GRID, Linear + learned positions."""

    def __init__(self, enc: EncoderConfig) -> None:
        super().__init__()
        net = resnet_backbone(enc.resnet_depth, enc.resnet_weights, enc.resnet_width)
        self.stages = nn.Sequential(*resnet_stages(net))
        self.pool = nn.AdaptiveAvgPool2d(FILM_GRID)
        self.proj = nn.Linear(resnet_stage_channels(net)[-1], enc.dim)
        self.position = nn.Parameter(torch.zeros(1, FILM_GRID * FILM_GRID, enc.dim))
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, films: torch.Tensor) -> torch.Tensor:
        grid = self.pool(self.stages(normalise_films(films)))  # [n, K, g, g]
        return self.proj(grid.flatten(2).transpose(1, 2)) + self.position


@register_model("shaspec", modalities=("ehr", "cxr"), missing_modality=True)
class ShaSpec(nn.Module):
    """Specific p_ehr, p_cxr and shared s_ehr, s_cxr [B, d] → f_m = s_m + g([s_m ‖ p_m])
    (f_cxr = s_ehr without a film) → [f_ehr ‖ f_cxr] [B, 2d] → decoder → logits [B, C].

    alpha: weight of the distribution alignment (L1) of the shared features; beta: weight of the
    modality classification of the specific features. aux_loss = α·L_DAO + β·L_DCO.
    """

    def __init__(
        self,
        inputs: InputSpec,
        n_outputs: int,
        encoders: EncoderConfig,
        alpha: float = 0.1,
        beta: float = 0.02,
    ) -> None:
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be ≥ 0, not {alpha} and {beta}")
        d = encoders.dim
        self.alpha, self.beta, self.dim = alpha, beta, d
        self.ehr_specific = ehr_transformer(inputs, encoders)
        self.cxr_specific = cxr_resnet(encoders)
        self.ehr_stem = EhrStem(inputs.ehr_channels, inputs.time_steps, d)
        self.cxr_stem = FilmStem(encoders)
        self.shared = SharedEncoder(d, encoders.transformer_heads, encoders.dropout)
        self.compose = nn.Linear(2 * d, d)  # g, one layer for both modalities (authors)
        self.domain = nn.Linear(d, 2)  # modality classifier on the specific features
        self.decoder = nn.Sequential(
            nn.Dropout(encoders.dropout),
            nn.Linear(2 * d, d),
            nn.ReLU(),
            nn.Dropout(encoders.dropout),
            nn.Linear(d, n_outputs),
        )

    def features(self, batch: Batch) -> dict[str, torch.Tensor]:
        """s_ehr, s_cxr, p_ehr, p_cxr, f_ehr, f_cxr [B, d]; s_cxr, p_cxr are zero rows for stays
        without a film (never computed from the placeholder), f_cxr is s_ehr there."""
        has = batch.has_cxr
        s_ehr = self.shared(self.ehr_stem(batch.ehr_input))
        p_ehr = self.ehr_specific(batch.ehr_input)
        s_cxr = s_ehr.new_zeros(len(has), self.dim)
        present = has.nonzero().squeeze(1)
        if len(present):
            s_cxr = s_cxr.index_copy(
                0, present, self.shared(self.cxr_stem(batch.cxr[present])).to(s_cxr.dtype)
            )
        p_cxr = self.cxr_specific.present(batch.cxr, has)
        f_ehr = s_ehr + self.compose(torch.cat([s_ehr, p_ehr], dim=-1))
        composed = s_cxr + self.compose(torch.cat([s_cxr, p_cxr], dim=-1))
        f_cxr = torch.where(has[:, None], composed, s_ehr)
        return {
            "s_ehr": s_ehr,
            "s_cxr": s_cxr,
            "p_ehr": p_ehr,
            "p_cxr": p_cxr,
            "f_ehr": f_ehr,
            "f_cxr": f_cxr,
        }

    def alignment_loss(
        self, s_ehr: torch.Tensor, s_cxr: torch.Tensor, has_cxr: torch.Tensor
    ) -> torch.Tensor:
        """DAO: mean |s_ehr − s_cxr| over the stays with a film and the d channels (L1Loss);
        0 without any film."""
        if not bool(has_cxr.any()):
            return s_ehr.new_zeros(())
        return F.l1_loss(s_ehr[has_cxr], s_cxr[has_cxr])

    def domain_loss(
        self, p_ehr: torch.Tensor, p_cxr: torch.Tensor, has_cxr: torch.Tensor
    ) -> torch.Tensor:
        """DCO: cross-entropy of the modality classifier on the specific features that exist —
        every p_ehr (class EHR) and p_cxr of the stays with a film (class CXR)."""
        specific = torch.cat([p_ehr, p_cxr[has_cxr]])
        target = torch.cat(
            [
                torch.full((len(p_ehr),), EHR, dtype=torch.long, device=p_ehr.device),
                torch.full((int(has_cxr.sum()),), CXR, dtype=torch.long, device=p_ehr.device),
            ]
        )
        return F.cross_entropy(self.domain(specific), target)

    def forward(self, batch: Batch) -> ModelOutput:
        f = self.features(batch)
        logits = self.decoder(torch.cat([f["f_ehr"], f["f_cxr"]], dim=-1))
        dao = self.alignment_loss(f["s_ehr"], f["s_cxr"], batch.has_cxr)
        dco = self.domain_loss(f["p_ehr"], f["p_cxr"], batch.has_cxr)
        return ModelOutput(logits=logits, aux_loss=self.alpha * dao + self.beta * dco)
