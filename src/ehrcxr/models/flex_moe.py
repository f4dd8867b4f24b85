"""Flex-MoE: a missing-modality bank and a sparse mixture of experts with two kinds of routing.

Sukwon Yun, Inyoung Choi, Jie Peng, Yangfan Wu, Jingxuan Bao, Qiyiwen Zhang, Jiayi Xin, Qi Long,
Tianlong Chen, "Flex-MoE: Modeling Arbitrary Modality Combination via the Flexible
Mixture-of-Experts", NeurIPS 2024 (authors' code: github.com/UNITES-Lab/flex-moe).

Mechanism (paper §3, authors' ``models.py``/``moe_module.py``):

- Each modality is encoded to ``tokens`` tokens of width d. A modality a sample lacks is filled
  by the MISSING-MODALITY BANK: learned embeddings indexed by (observed modality combination,
  missing modality). Combinations are indexed by decreasing size, so the full combination is
  index 0 (authors' ``get_modality_combinations``: "0: full modality index"); here
  0 = {EHR, CXR}, 1 = {EHR} (the EHR is always present; {CXR} alone does not occur).
- A learned position table is added to the joint 2·tokens sequence; then ``layers`` Transformer
  blocks whose FFN is a sparse MoE (experts: 2-layer MLPs, hidden 2d, GELU), applied token-wise.
- G-Router (full-modality samples): noisy top-k gating (Shazeer et al., ICLR 2017:
  H = xW_g + ε·softplus(xW_n), keep the top k, softmax over them), balanced by the gate loss
  CV²(importance) + CV²(load) (importance Σ gates, load the smooth P(expert in top k)).
- S-Router (samples with a missing modality): "fixes the top-1 gate as the corresponding
  observed modality combination expert" (paper, Fig. 3d): the expert with the combination's
  index c is always chosen, the other k − 1 are the router's best remaining experts, and the
  router is trained with CE(router logits, c) so that it learns to rank expert c first. As in
  the authors' gate, these tokens also get their own CV² balance terms over the experts other
  than the full combination's index 0.
- Head: mean over each modality's tokens → concatenation → Linear → logits.
- Loss: L_task + w·L_gate, the gate loss summed over the blocks and over the modalities (the
  authors call the MoE once per modality and add the losses), w = ``gate_loss_weight``.

Implemented here: EHR tokens = the shared Transformer ``ehr_transformer`` pooled to d, then a
linear patch adapter d → tokens·d (+ LayerNorm, dropout; the toolkit's adapter); film tokens =
the shared ResNet's ``present`` feature (films that exist only) through its own adapter. The
MoE is plain PyTorch: routing by ``torch.topk``; dispatch by scattering each (token, choice) pair
into per-expert buckets [E, capacity, d], one batched matmul per expert layer, then
``index_add_`` of the gate-weighted outputs back to the tokens — no Python loop over tokens or
experts.

Deliberate differences: standard pre-norm residual blocks x + attn(LN(x)), x + MoE(LN(x))
(the authors' and toolkit's ``x = attn + dropout(attn)`` drops the residual from the input: an
inherited quirk); every block is sparse (the authors alternate sparse/dense blocks for
``layers`` > 1; the paper describes the FFN "replaced with a Sparse MoE layer"); the gate loss
weight is constant, as in the authors' code (the toolkit's decaying w(t) is not in the paper);
the authors' warm-up epochs that present samples sorted by number of modalities are a data-order
choice outside the model and are not reproduced; nn.MultiheadAttention with biases instead of the
authors' bias-free q/kv projections.

CareBench toolkit bugs avoided (carebench_models.md §4.11): the full-modality index is 0 =
{EHR, CXR} (the toolkit's gate treated its EHR-only index 0 as "full", inverting the special
routing); one router per MoE layer, all of it used (the toolkit's extra routers were never
used); no list of top-k indices kept across calls (the toolkit's memory leak); the combination
comes from ``has_cxr`` with the EHR always present (not from the missing mask); the training core
turns logits into probabilities (the toolkit saved logits as predictions).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ehrcxr.batch import Batch, InputSpec, ModelOutput
from ehrcxr.models.encoders import EncoderConfig, cxr_resnet, ehr_transformer
from ehrcxr.models.registry import register_model

EHR, CXR = 0, 1  # modality index (second axis of the bank)
FULL, EHR_ONLY = 0, 1  # combination index: 0 is the full combination (authors' convention)
N_COMBINATIONS = 2
NOISE_EPSILON = 1e-2  # FastMoE NoisyGate's floor on the noise standard deviation
CV_EPSILON = 1e-10


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation var(x) / mean(x)² of a vector [E] (0 for E ≤ 1), the
    balance measure of Shazeer et al. 2017 (unbiased variance, as FastMoE)."""
    if x.numel() <= 1:
        return x.new_zeros(())
    x = x.float()
    return x.var() / (x.mean() ** 2 + CV_EPSILON)


def balance_loss(gates: torch.Tensor, load: torch.Tensor) -> torch.Tensor:
    """CV²(importance) + CV²(load) of one group of tokens: gates, load [N, E] → scalar.

    importance_e = Σ_n gates[n, e]; load_e = Σ_n load[n, e] (the smooth probability of expert e
    being in token n's top k). Balanced routing gives 0; collapsed routing a large value.
    """
    return cv_squared(gates.sum(0)) + cv_squared(load.sum(0))


class NoisyTopKRouter(nn.Module):
    """Flex-MoE's router: noisy top-k gating (G-Router) with the combination's expert forced
    into the top k for tokens of samples with a missing modality (S-Router).

    x [N, d], combination [N] (0 = full) → gates [N, E] (k nonzero per row, summing to 1),
    chosen experts [N, k], gate loss (scalar, per modality group, see ``loss``).
    """

    def __init__(self, dim: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        self.n_experts, self.top_k = n_experts, top_k
        # FastMoE's NoisyGate: bias-free w_gate and w_noise, kaiming-uniform (= Linear's init).
        self.w_gate = nn.Linear(dim, n_experts, bias=False)
        self.w_noise = nn.Linear(dim, n_experts, bias=False)

    def forward(
        self, x: torch.Tensor, combination: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns gates [N, E], chosen [N, k], router logits [N, E] (noisy in training) and
        load [N, E] (smooth P(in top k) in training with k < E, else the 0/1 choice)."""
        # Routing in float32 (also under mixed precision): top-k ties and Φ need the precision.
        clean = self.w_gate(x).float()
        if self.training:
            std = F.softplus(self.w_noise(x).float()) + NOISE_EPSILON
            logits = clean + torch.randn_like(clean) * std
        else:
            std, logits = None, clean
        k = self.top_k
        # S-Router: the expert indexed by the sample's combination takes the top-1 slot; the
        # router's best remaining experts fill the other k − 1 (G-Router tokens: plain top-k).
        experts = torch.arange(self.n_experts, device=x.device)
        forced = (combination[:, None] != FULL) & (experts[None] == combination[:, None])
        rank_by = logits.detach().masked_fill(forced, math.inf)
        _, chosen = rank_by.topk(k, dim=1)  # [N, k]
        weights = logits.gather(1, chosen).softmax(dim=1)
        gates = torch.zeros_like(logits).scatter(1, chosen, weights)
        if std is not None and k < self.n_experts:
            load = self._prob_in_top_k(clean, logits, std)
        else:
            load = (gates > 0).to(gates.dtype)
        return gates, chosen, logits, load

    def _prob_in_top_k(
        self, clean: torch.Tensor, noisy: torch.Tensor, std: torch.Tensor
    ) -> torch.Tensor:
        """Shazeer et al.'s smooth load: P(expert e stays in the top k under a fresh noise draw)
        = Φ((clean_e − threshold_e) / std_e), threshold_e the k-th best noisy logit of the other
        experts (the (k+1)-th if e is itself in the top k). [N, E]."""
        top, _ = noisy.topk(self.top_k + 1, dim=1)
        threshold_in = top[:, self.top_k : self.top_k + 1]  # if e is in the top k
        threshold_out = top[:, self.top_k - 1 : self.top_k]  # if it is not
        is_in = noisy > threshold_in
        normal = torch.distributions.Normal(clean.new_zeros(()), clean.new_ones(()))
        p_in = normal.cdf((clean - threshold_in) / std)
        p_out = normal.cdf((clean - threshold_out) / std)
        return torch.where(is_in, p_in, p_out)

    @staticmethod
    def loss(
        gates: torch.Tensor, logits: torch.Tensor, load: torch.Tensor, combination: torch.Tensor
    ) -> torch.Tensor:
        """The gate loss of one group of tokens (one modality's tokens, [N, E] each).

        Full-modality tokens: CV²(importance) + CV²(load) over all experts (G-Router). Tokens of
        samples with a missing modality: CV² terms over the experts other than the full
        combination's (index 0), plus CE(router logits, combination index) (S-Router).
        """
        full = combination == FULL
        total = logits.new_zeros(())
        if bool(full.any()):
            total = total + balance_loss(gates[full], load[full])
        if bool((~full).any()):
            rest = ~full
            total = total + balance_loss(gates[rest][:, 1:], load[rest][:, 1:])
            total = total + F.cross_entropy(logits[rest], combination[rest])
        return total


class SparseMoE(nn.Module):
    """Token-wise sparse mixture of 2-layer GELU MLP experts (hidden 2d).

    x [N, d] → (Σ_{e chosen} gate_e · expert_e(x) [N, d], gates [N, E], router logits, load).
    """

    def __init__(self, dim: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        hidden = 2 * dim
        self.router = NoisyTopKRouter(dim, n_experts, top_k)
        # The experts' weights stacked: bucketed tokens of every expert in one batched matmul.
        self.w1 = nn.Parameter(torch.empty(n_experts, dim, hidden))
        self.b1 = nn.Parameter(torch.empty(n_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, dim))
        self.b2 = nn.Parameter(torch.empty(n_experts, dim))
        for w, b, fan_in in ((self.w1, self.b1, dim), (self.w2, self.b2, hidden)):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation, per expert
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e alone on x [n, d] → [n, d] (for tests and inspection)."""
        return F.gelu(x @ self.w1[e] + self.b1[e]) @ self.w2[e] + self.b2[e]

    def forward(
        self, x: torch.Tensor, combination: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        gates, chosen, logits, load = self.router(x, combination)
        n, k = chosen.shape
        expert = chosen.reshape(-1)  # [N·k] one entry per (token, choice)
        token = torch.arange(n, device=x.device).repeat_interleave(k)
        weight = gates.gather(1, chosen).reshape(-1)
        # Slot of each entry in its expert's bucket: running count of that expert so far.
        onehot = F.one_hot(expert, self.router.n_experts)
        slot = (onehot.cumsum(0) - 1).gather(1, expert[:, None]).squeeze(1)
        capacity = int(onehot.sum(0).max())
        buckets = x.new_zeros(self.router.n_experts, capacity, x.shape[-1])
        buckets[expert, slot] = x[token]
        hidden = F.gelu(torch.baddbmm(self.b1[:, None], buckets, self.w1))
        out = torch.baddbmm(self.b2[:, None], hidden, self.w2)  # [E, capacity, d]
        y = x.new_zeros(n, x.shape[-1]).index_add_(
            0, token, (out[expert, slot] * weight[:, None]).to(x.dtype)
        )
        return y, gates, logits, load


class MoEBlock(nn.Module):
    """Pre-norm Transformer block with a sparse-MoE FFN: x [B, L, d] (L = 2·tokens) →
    (x [B, L, d], gate loss scalar). combination [B]; the first ``tokens`` positions are the
    EHR's, the rest the film's (the gate loss is summed over the two modality groups)."""

    def __init__(self, dim: int, heads: int, dropout: float, n_experts: int, top_k: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.moe = SparseMoE(dim, n_experts, top_k)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.last_gates: torch.Tensor | None = None  # [B, L, E] of the latest call (tests)

    def forward(
        self, x: torch.Tensor, combination: torch.Tensor, n_modalities: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, length, d = x.shape
        h = self.norm1(x)
        x = x + self.dropout1(self.attn(h, h, h, need_weights=False)[0])
        per_token = combination.repeat_interleave(length)  # every token of a sample: its combo
        y, gates, logits, load = self.moe(self.norm2(x).reshape(-1, d), per_token)
        x = x + self.dropout2(y.reshape(b, length, d))
        self.last_gates = gates.detach().reshape(b, length, -1)
        # One loss per modality's tokens, added (the authors route each modality separately).
        per = length // n_modalities
        groups = [t.reshape(b, n_modalities, per, -1) for t in (gates, logits, load)]
        combo = combination.repeat_interleave(per)  # [B·per]: a modality's tokens' combination
        loss = sum(
            NoisyTopKRouter.loss(*(g[:, m].reshape(b * per, -1) for g in groups), combo)
            for m in range(n_modalities)
        )
        return x, loss


class TokenAdapter(nn.Module):
    """Patch adapter [B, d] → [B, tokens, d]: Linear(d → tokens·d), LayerNorm, dropout."""

    def __init__(self, dim: int, tokens: int, dropout: float) -> None:
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Linear(dim, tokens * dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(self.proj(h).reshape(len(h), self.tokens, -1)))


@register_model("flex_moe", modalities=("ehr", "cxr"), missing_modality=True)
class FlexMoE(nn.Module):
    """EHR and film tokens [B, tokens, d] each (bank tokens for a missing film) → position table
    → ``layers`` MoE blocks → per-modality token mean → concat [B, 2d] → Linear → [B, C].

    n_experts: experts per MoE layer (≥ 2: one index per modality combination); top_k: experts
    per token (≤ n_experts); tokens: tokens per modality; layers: MoE Transformer blocks;
    gate_loss_weight: weight of the gate loss in ``aux_loss``.
    """

    def __init__(
        self,
        inputs: InputSpec,
        n_outputs: int,
        encoders: EncoderConfig,
        n_experts: int = 8,
        top_k: int = 2,
        tokens: int = 4,
        layers: int = 1,
        gate_loss_weight: float = 0.01,
    ) -> None:
        super().__init__()
        if n_experts < N_COMBINATIONS:
            raise ValueError(
                f"n_experts must be ≥ {N_COMBINATIONS} (one expert per modality combination), "
                f"not {n_experts}"
            )
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in [1, n_experts={n_experts}], not {top_k}")
        if tokens < 1 or layers < 1:
            raise ValueError(f"tokens and layers must be ≥ 1, not {tokens} and {layers}")
        if gate_loss_weight < 0:
            raise ValueError(f"gate_loss_weight must be ≥ 0, not {gate_loss_weight}")
        d = encoders.dim
        self.tokens, self.gate_loss_weight = tokens, gate_loss_weight
        self.ehr = ehr_transformer(inputs, encoders)
        self.cxr = cxr_resnet(encoders)
        self.adapters = nn.ModuleList(TokenAdapter(d, tokens, encoders.dropout) for _ in (EHR, CXR))
        # Missing-modality bank [combination, modality, tokens, d] (authors: randn init). Only
        # (EHR-only, CXR) is ever read: the EHR is never missing and the full combination
        # misses nothing; the table keeps the paper's indexing.
        self.bank = nn.Parameter(torch.randn(N_COMBINATIONS, 2, tokens, d))
        self.position = nn.Parameter(torch.zeros(1, 2 * tokens, d))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(
            MoEBlock(d, encoders.transformer_heads, encoders.dropout, n_experts, top_k)
            for _ in range(layers)
        )
        self.head = nn.Linear(2 * d, n_outputs)

    @staticmethod
    def combination(batch: Batch) -> torch.Tensor:
        """Modality combination index [B] (int64): 0 = {EHR, CXR}, 1 = {EHR}."""
        return torch.where(batch.has_cxr, FULL, EHR_ONLY).long()

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """EHR tokens, film tokens [B, tokens, d] (the bank's entry where the film is missing)
        and the combination index [B]."""
        combo = self.combination(batch)
        ehr = self.adapters[EHR](self.ehr(batch.ehr_input))
        film = self.adapters[CXR](self.cxr.present(batch.cxr, batch.has_cxr))
        bank = self.bank[combo, CXR]  # [B, tokens, d]
        film = torch.where(batch.has_cxr[:, None, None], film, bank)
        return ehr, film, combo

    def forward(self, batch: Batch) -> ModelOutput:
        ehr, film, combo = self.encode(batch)
        x = torch.cat([ehr, film], dim=1) + self.position
        gate_loss = x.new_zeros(())
        for block in self.blocks:
            x, loss = block(x, combo, n_modalities=2)
            gate_loss = gate_loss + loss
        pooled = torch.cat([x[:, : self.tokens].mean(1), x[:, self.tokens :].mean(1)], dim=-1)
        return ModelOutput(logits=self.head(pooled), aux_loss=self.gate_loss_weight * gate_loss)
