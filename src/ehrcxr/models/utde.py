"""UTDE: unified temporal discretisation embedding + interleaved self/cross-attention fusion.

Zhang, Li, Chen, Yan & Petzold, "Improving Medical Predictions by Irregular Multimodal
Electronic Health Records Modeling", ICML 2023 (code: github.com/XZhang97666/MultimodalMIMIC;
CareBench paper, appendix C.1).

Mechanism, adapted from (time series, clinical notes) to (hourly EHR, chest film):

1. Imputation-based embedding: the hourly, imputed series ``ehr_input`` [B, T, F + M] through a
   bias-free Conv1d (kernel 1 in the paper) → e_imp [B, T, d].
2. Attention-based embedding (mTAND, Shukla & Marlin, ICLR 2021): a learned time embedding
   φ(t) = [w·t + b ‖ sin(W·t + c)] (size ``embed_time``); queries φ(reference times), keys
   φ(observation times), multi-head; for every input channel the softmax runs over the hours at
   which *that channel* was observed (the mask), so imputed values never enter; the heads'
   interpolants are mapped to d → e_att [B, T, d]. Channels are the values and the masks, as
   in the paper; rhythm indicators (no mask) count as always observed.
3. UTDE gate: g = σ(MLP([maxₜ e_att ‖ maxₜ e_imp])) (``mixup_level='batch'``, the paper's
   setting; per step and per step-and-feature variants too); e = g·e_att + (1 − g)·e_imp.
4. The film: its ResNet feature is one token stamped with its acquisition time — the same
   time embedding φ(cxr_time), projected to d, is added to it, as φ(hour) is added to the EHR
   tokens, so the fusion sees where the film lies on the EHR's time axis.
5. Fusion (the paper's ``self_cross`` encoder, pre-LayerNorm): inputs scaled by √d plus their
   time codes; each layer runs self-attention per stream, then cross-attention (EHR queries the
   film token, the film token queries the EHR hours), then a ReLU feed-forward (4d), each with a
   residual; a final LayerNorm per stream.
6. The last position of both streams, concatenated [B, 2d] → residual MLP → linear → logits.

Departures (see the class docstring): the paper's learned index positions are replaced by the
shared time embedding so that film time and EHR hours are commensurable; attention dropout in
mTAND is left out (the exact masked softmax is computed without materialising per-channel
weights).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ehrcxr.batch import Batch, InputSpec, ModelOutput
from ehrcxr.models.encoders import EncoderConfig, cxr_resnet
from ehrcxr.models.registry import register_model

MIXUP_LEVELS = ("batch", "batch_seq", "batch_seq_feature")


class LearnedTimeEmbedding(nn.Module):
    """Times [...] (normalised hours) → [..., E]: one linear and E − 1 sinusoidal components."""

    def __init__(self, embed_time: int) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.periodic = nn.Linear(1, embed_time - 1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t.unsqueeze(-1)
        return torch.cat([self.linear(t), torch.sin(self.periodic(t))], dim=-1)


class MultiTimeAttention(nn.Module):
    """mTAND: per-channel attention from reference times to the times a channel was observed.

    query [Q, E], key [K, E] (time embeddings shared by the batch: the hourly grid),
    values [B, K, C], observed [B, K, C] (1 = observed) → [B, Q, d].
    """

    def __init__(self, channels: int, dim: int, embed_time: int, heads: int) -> None:
        super().__init__()
        if embed_time % heads:
            raise ValueError(f"embed_time {embed_time} must be divisible by time_heads {heads}")
        self.heads = heads
        self.head_dim = embed_time // heads
        self.query = nn.Linear(embed_time, embed_time)
        self.key = nn.Linear(embed_time, embed_time)
        self.out = nn.Linear(channels * heads, dim)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        values: torch.Tensor,
        observed: torch.Tensor,
    ) -> torch.Tensor:
        q = self.query(query).view(-1, self.heads, self.head_dim).transpose(0, 1)  # [h, Q, e]
        k = self.key(key).view(-1, self.heads, self.head_dim).transpose(0, 1)  # [h, K, e]
        scores = q @ k.transpose(1, 2) / math.sqrt(self.head_dim)  # [h, Q, K]
        # A softmax restricted to each channel's observed keys, without the [B, h, Q, K, C]
        # tensor of the paper's code: exp(scores) weights, masked sums over keys, divided.
        weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
        num = torch.einsum("hqk,bkc->bqhc", weights, values * observed)
        den = torch.einsum("hqk,bkc->bqhc", weights, observed)
        # A channel never observed in the stay contributes zero (the paper's -1e4 fill would
        # average the imputed values instead).
        interp = torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))
        return self.out(interp.flatten(2))  # [B, Q, h·C] → [B, Q, d]


class GateMLP(nn.Module):
    """UTDE's gate: [..., 2d] → [..., k] in (0, 1) (dropout, linear, ReLU, linear, sigmoid)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_dim),
            nn.Sigmoid(),
        )
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SelfCrossLayer(nn.Module):
    """One interleaved layer over two streams (pre-LayerNorm, residuals):
    self-attention per stream → cross-attention between them → feed-forward per stream.

    ehr [B, T, d], cxr [B, N, d] → same shapes.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()

        def attention() -> nn.MultiheadAttention:
            return nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

        self.self_attn = nn.ModuleList([attention(), attention()])
        self.cross_attn = nn.ModuleList([attention(), attention()])
        self.norm_self = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])
        self.norm_cross = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])
        self.norm_ffn = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])
        self.ffn = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Linear(dim, 4 * dim),
                    nn.ReLU(),
                    nn.Dropout(dropout),
                    nn.Linear(4 * dim, dim),
                )
                for _ in range(2)
            ]
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, ehr: torch.Tensor, cxr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        streams = [ehr, cxr]
        for i, (attn, norm) in enumerate(zip(self.self_attn, self.norm_self, strict=True)):
            x = norm(streams[i])
            streams[i] = streams[i] + self.dropout(attn(x, x, x, need_weights=False)[0])
        e, c = (norm(s) for norm, s in zip(self.norm_cross, streams, strict=True))
        # Both directions read the normed inputs of this block (the paper's order).
        ehr_from_cxr = self.cross_attn[0](e, c, c, need_weights=False)[0]
        cxr_from_ehr = self.cross_attn[1](c, e, e, need_weights=False)[0]
        streams = [
            streams[0] + self.dropout(ehr_from_cxr),
            streams[1] + self.dropout(cxr_from_ehr),
        ]
        ehr, cxr = (
            s + self.dropout(ffn(norm(s)))
            for s, ffn, norm in zip(streams, self.ffn, self.norm_ffn, strict=True)
        )
        return ehr, cxr


@register_model("utde", modalities=("ehr", "cxr"))
class UTDE(nn.Module):
    """ehr [B, T, F], ehr_mask [B, T, M], cxr [B, 1, H, W], cxr_time [B] → logits [B, C].

    Arguments (paper defaults): ``embed_time`` 64 (size of φ), ``time_heads`` 8 (mTAND heads),
    ``kernel_size`` 1 (the imputation embedding's Conv1d), ``mixup_level`` 'batch' (one gate per
    stay; 'batch_seq': per hour; 'batch_seq_feature': per hour and dimension),
    ``cross_layers`` 3 (interleaved self/cross layers). Width, dropout and the fusion's heads
    are the shared ``encoders`` settings (paper: d = 128, 8 heads, dropout 0.1).

    Deliberate differences: the EHR hours and the film are placed on one time axis by the
    shared φ (projected to d) instead of the paper's per-index learned positions (a text
    sequence interpolated to 48 references there; one film here, for which mTAND over a single
    key would be constant in time); mTAND has no attention dropout. A missing film is the
    placeholder's feature at time 0 (complete-modality model, as the benchmark's protocol).
    """

    def __init__(
        self,
        inputs: InputSpec,
        n_outputs: int,
        encoders: EncoderConfig,
        embed_time: int = 64,
        time_heads: int = 8,
        kernel_size: int = 1,
        mixup_level: str = "batch",
        cross_layers: int = 3,
    ) -> None:
        super().__init__()
        if mixup_level not in MIXUP_LEVELS:
            raise ValueError(f"mixup_level must be one of {MIXUP_LEVELS}, not {mixup_level!r}")
        d = encoders.dim
        self.mixup_level = mixup_level
        self.scale = math.sqrt(d)
        t = inputs.time_steps
        # Hour h of the grid sits at time h / T: times normalised to [0, 1) over the window,
        # as the paper normalises observation times and its linspace(0, 1) references.
        self.register_buffer("hours", torch.arange(t, dtype=torch.float32) / t, persistent=False)
        self.time_steps = t
        self.register_buffer(
            "mask_feature", torch.tensor(inputs.mask_feature, dtype=torch.long), persistent=False
        )

        self.time_embedding = LearnedTimeEmbedding(embed_time)
        self.time_attention = MultiTimeAttention(inputs.ehr_channels, d, embed_time, time_heads)
        # Padding k // 2, cut back to T: the grid keeps its T hours for any kernel size.
        self.impute = nn.Conv1d(
            inputs.ehr_channels, d, kernel_size, padding=kernel_size // 2, bias=False
        )
        gate_out = d if mixup_level == "batch_seq_feature" else 1
        self.gate = GateMLP(2 * d, d, gate_out, encoders.dropout)

        self.cxr = cxr_resnet(encoders)
        self.time_code = nn.Linear(embed_time, d)  # φ(t) → d, added to every token
        self.embed_dropout = nn.Dropout(encoders.dropout)
        self.layers = nn.ModuleList(
            SelfCrossLayer(d, encoders.transformer_heads, encoders.dropout)
            for _ in range(cross_layers)
        )
        self.final_norm = nn.ModuleList([nn.LayerNorm(d), nn.LayerNorm(d)])
        self.proj1 = nn.Linear(2 * d, 2 * d)
        self.proj2 = nn.Linear(2 * d, 2 * d)
        self.out_dropout = nn.Dropout(encoders.dropout)
        self.out = nn.Linear(2 * d, n_outputs)

    def observed(self, ehr: torch.Tensor, ehr_mask: torch.Tensor) -> torch.Tensor:
        """Per-channel observation mask for ``ehr_input``: [B, T, F + M].

        Value channels take their mask channel (rhythm indicators: all ones); mask channels are
        masked by themselves, as the paper feeds (x ‖ m) with mask (m ‖ m).
        """
        values = torch.ones_like(ehr).index_copy(-1, self.mask_feature, ehr_mask)
        return torch.cat([values, ehr_mask], dim=-1)

    def embeddings(
        self, ehr: torch.Tensor, ehr_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two discretisation embeddings, each [B, T, d]: (attention-based, imputation)."""
        x = torch.cat([ehr, ehr_mask], dim=-1)  # [B, T, F + M]
        phi = self.time_embedding(self.hours)  # [T, E]
        e_att = self.time_attention(phi, phi, x, self.observed(ehr, ehr_mask))
        e_imp = self.impute(x.transpose(1, 2))[..., : self.time_steps].transpose(1, 2)
        return e_att, e_imp

    def gate_values(self, e_att: torch.Tensor, e_imp: torch.Tensor) -> torch.Tensor:
        """g for e = g·e_att + (1 − g)·e_imp: [B, 1, 1], [B, T, 1] or [B, T, d]."""
        if self.mixup_level == "batch":
            pooled = torch.cat([e_att.amax(dim=1), e_imp.amax(dim=1)], dim=-1)  # [B, 2d]
            return self.gate(pooled).unsqueeze(1)
        return self.gate(torch.cat([e_att, e_imp], dim=-1))

    def forward(self, batch: Batch) -> ModelOutput:
        e_att, e_imp = self.embeddings(batch.ehr, batch.ehr_mask)
        g = self.gate_values(e_att, e_imp)
        ehr = g * e_att + (1 - g) * e_imp  # [B, T, d]

        film = self.cxr(batch.cxr, batch.has_cxr).unsqueeze(1)  # [B, 1, d]
        ehr_time = self.time_code(self.time_embedding(self.hours))  # [T, d]
        film_time = self.time_code(self.time_embedding(batch.cxr_time / self.time_steps))
        ehr = self.embed_dropout(self.scale * ehr + ehr_time)
        film = self.embed_dropout(self.scale * film + film_time.unsqueeze(1))
        for layer in self.layers:
            ehr, film = layer(ehr, film)
        ehr, film = self.final_norm[0](ehr), self.final_norm[1](film)

        last = torch.cat([ehr[:, -1], film[:, -1]], dim=-1)  # [B, 2d]
        hidden = self.proj2(self.out_dropout(F.relu(self.proj1(last)))) + last
        return ModelOutput(logits=self.out(hidden))
