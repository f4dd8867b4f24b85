"""DrFuse: disentangled shared / distinct representations and disease-wise attention fusion.

Wenfang Yao, Kejing Yin, William K. Cheung, Jia Liu, Jing Qin, "DrFuse: Learning Disentangled
Representation for Clinical Multi-Modal Fusion with Missing Modality and Modal Inconsistency",
AAAI 2024 (authors' code github.com/dorothy-yao/drfuse).

Mechanism (paper §3):

- **Disentanglement.** Each modality m ∈ {EHR, CXR} has a shared encoder (→ s_m) and a distinct
  encoder (→ d_m). The shared representations are projected by one shared projector and aligned
  by **distribution matching**: the Jensen–Shannon divergence between the Bernoulli
  distributions σ(s_ehr) and σ(s_cxr), element by element; the distinct representations are
  pushed away from the shared ones (|cos(s_m, d_m)| minimised). The fused shared representation
  of a stay with both modalities is the logit of the averaged probabilities,
  s = logit((σ(s_ehr) + σ(s_cxr)) / 2) = log(e^a + e^b + 2e^{a+b}) − log(2 + e^a + e^b); a stay
  without a film has s = s_ehr (the shared space is what either modality alone can give).
- **Disease-wise attention.** The three tokens {d_ehr, s, d_cxr} give a query (their mean), a
  value each, and one key per label; for label c the attention over the tokens weighs their
  values into a label-specific feature, classified by label c's own linear head. For a stay
  without a film the d_cxr token is masked out (weight exactly 0) and the query is the mean of
  the two others. Each branch also predicts on its own (p_ehr from d_ehr, p_cxr from d_cxr,
  p_shared from s).
- **Losses.** L_final + λ_ps·L(p_shared) + λ_pe·L(p_ehr) + λ_pc·L(p_cxr) + λ_ds·JSD +
  λ_de·|cos(s_ehr, d_ehr)| + λ_dc·|cos(s_cxr, d_cxr)| + λ_attn·L_rank. The auxiliary ranking loss
  makes the attention agree with the branches' own (detached) losses: for each pair of branches
  (A, B) and each stay and label, hinge max(0, −sign(ℓ_B − ℓ_A)·(a_A − a_B)) — the branch with the
  lower loss should get the higher weight for that label. Every CXR term (p_cxr, JSD,
  |cos(s_cxr, d_cxr)|, ranking pairs with the CXR branch) is averaged over the stays that have a
  film only.

Encoders as in the CareBench paper (appendix C.3, "Following its original settings, we adopt
Transformer and ResNet-50"): a Transformer EHR trunk with one shared and one distinct
Transformer layer on top (mean-pooled), and two ResNets (shared, distinct) for the film, run on
the stays that have one only (the placeholder image is never read).

Deliberate choices: the ranking loss is per stay **and label** (the toolkit averaged the
attention over labels first, losing the "disease-wise" part); for length of stay (one softmax
over 7 classes, no per-label loss) it compares the per-stay losses with the attention averaged
over classes. Toolkit bugs avoided (reference/carebench_models.md §4.12): the pair mask of the
ranking loss is applied per stay (the toolkit broadcast [B]×[B,1] into [B,B] for mortality); the
JSD is a masked mean over stays with a film; LoS losses are cross-entropy on logits (the toolkit
applied CE to σ outputs); predictions are probabilities (the core applies σ / softmax).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ehrcxr.batch import Batch, InputSpec, ModelOutput, TrainContext
from ehrcxr.models.encoders import EncoderConfig, cxr_resnet, ehr_transformer
from ehrcxr.models.registry import register_model

EHR_DISTINCT, SHARED, CXR_DISTINCT = 0, 1, 2  # the attention's token order
BRANCHES = ("ehr", "shared", "cxr")


def logit_average(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """logit((σ(a) + σ(b)) / 2), elementwise and numerically stable (any shapes that broadcast)."""
    two = torch.log(torch.tensor(2.0, dtype=a.dtype, device=a.device))
    num = torch.logsumexp(torch.stack([a, b, a + b + two]), dim=0)
    den = torch.logsumexp(torch.stack([two.expand_as(a), a, b]), dim=0)
    return num - den


def bernoulli_jsd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence between Bernoulli(σ(a)) and Bernoulli(σ(b)) per element [B, d]."""
    p, q = a.sigmoid(), b.sigmoid()
    m = (p + q) / 2

    def kl(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps = 1e-7
        x, y = x.clamp(eps, 1 - eps), y.clamp(eps, 1 - eps)
        return x * (x / y).log() + (1 - x) * ((1 - x) / (1 - y)).log()

    return (kl(p, m) + kl(q, m)) / 2


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [B, …] over the rows where ``mask`` [B] is True (0 when none)."""
    rows = values.reshape(len(values), -1).mean(dim=1)
    weight = mask.to(rows.dtype)
    return (rows * weight).sum() / weight.sum().clamp(min=1.0)


class DiseaseWiseAttention(nn.Module):
    """Tokens [B, 3, d] (d_ehr, s, d_cxr) + token mask [B, 3] → label features [B, C, d] and the
    attention weights [B, C, 3] (exactly 0 on masked tokens) → logits [B, C]."""

    def __init__(self, dim: int, n_outputs: int) -> None:
        super().__init__()
        self.dim, self.n_outputs = dim, n_outputs
        self.query = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.keys = nn.Linear(dim, n_outputs * dim)  # one key per label and token
        self.weight = nn.Parameter(torch.empty(n_outputs, dim))  # label c's own linear head
        self.bias = nn.Parameter(torch.zeros(n_outputs))
        nn.init.xavier_uniform_(self.weight)

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = tokens.shape
        weight = mask.to(tokens.dtype)
        query = (self.query(tokens) * weight[..., None]).sum(1) / weight.sum(1, keepdim=True)
        keys = self.keys(tokens).view(b, n, self.n_outputs, d)  # [B, 3, C, d]
        scores = torch.einsum("bd,bncd->bcn", query, keys) / d**0.5
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        attention = scores.softmax(dim=-1)  # [B, C, 3]
        features = torch.einsum("bcn,bnd->bcd", attention, self.value(tokens))
        logits = (features * self.weight).sum(-1) + self.bias
        return logits, attention


@register_model("drfuse", modalities=("ehr", "cxr"), missing_modality=True)
class DrFuse(nn.Module):
    """EHR [B, T, F + M] and film [B, 1, H, W] → shared s_ehr, s_cxr and distinct d_ehr, d_cxr
    [B, d] → disease-wise attention over {d_ehr, s, d_cxr} → logits [B, C].

    lambda_pred_*: weights of the branches' own prediction losses; lambda_disentangle_shared:
    JSD alignment of the shared representations; lambda_disentangle_ehr / _cxr: |cos| between a
    modality's shared and distinct representations; lambda_attn_aux: the attention ranking loss.
    """

    def __init__(
        self,
        inputs: InputSpec,
        n_outputs: int,
        encoders: EncoderConfig,
        lambda_pred_shared: float = 1.0,
        lambda_pred_ehr: float = 1.0,
        lambda_pred_cxr: float = 1.0,
        lambda_disentangle_shared: float = 1.0,
        lambda_disentangle_ehr: float = 1.0,
        lambda_disentangle_cxr: float = 1.0,
        lambda_attn_aux: float = 1.0,
    ) -> None:
        super().__init__()
        weights = {
            "lambda_pred_shared": lambda_pred_shared,
            "lambda_pred_ehr": lambda_pred_ehr,
            "lambda_pred_cxr": lambda_pred_cxr,
            "lambda_disentangle_shared": lambda_disentangle_shared,
            "lambda_disentangle_ehr": lambda_disentangle_ehr,
            "lambda_disentangle_cxr": lambda_disentangle_cxr,
            "lambda_attn_aux": lambda_attn_aux,
        }
        negative = [k for k, v in weights.items() if v < 0]
        if negative:
            raise ValueError(f"DrFuse loss weights must be ≥ 0: {negative}")
        self.weights = weights
        d = encoders.dim
        self.ehr_trunk = ehr_transformer(inputs, encoders)

        def head_layer() -> nn.TransformerEncoderLayer:
            return nn.TransformerEncoderLayer(
                d,
                encoders.transformer_heads,
                dim_feedforward=4 * d,
                dropout=encoders.dropout,
                batch_first=True,
            )

        self.ehr_shared, self.ehr_distinct = head_layer(), head_layer()
        self.cxr_shared, self.cxr_distinct = cxr_resnet(encoders), cxr_resnet(encoders)
        # One projector for both shared representations: the common space (paper Fig. 2).
        self.projector = nn.Sequential(
            nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, d)
        )
        self.heads = nn.ModuleDict({name: nn.Linear(d, n_outputs) for name in BRANCHES})
        self.attention = DiseaseWiseAttention(d, n_outputs)
        self.dropout = nn.Dropout(encoders.dropout)

    def represent(self, batch: Batch) -> dict[str, torch.Tensor]:
        """s_ehr, d_ehr, s_cxr, d_cxr, s [B, d]; the film entries are zeros without a film."""
        trunk = self.ehr_trunk.sequence(batch.ehr_input)  # [B, T, d]
        s_ehr = self.projector(self.ehr_shared(trunk).mean(1))
        d_ehr = self.ehr_distinct(trunk).mean(1)
        has = batch.has_cxr
        s_cxr = self.projector(self.cxr_shared.present(batch.cxr, has)) * has[:, None]
        d_cxr = self.cxr_distinct.present(batch.cxr, has)
        s = torch.where(has[:, None], logit_average(s_ehr, s_cxr), s_ehr)
        return {"s_ehr": s_ehr, "d_ehr": d_ehr, "s_cxr": s_cxr, "d_cxr": d_cxr, "s": s}

    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Representations + final logits [B, C], attention [B, C, 3], branch logits [B, C]."""
        r = self.represent(batch)
        tokens = self.dropout(torch.stack([r["d_ehr"], r["s"], r["d_cxr"]], dim=1))
        mask = torch.ones(len(batch), 3, dtype=torch.bool, device=tokens.device)
        mask[:, CXR_DISTINCT] = batch.has_cxr
        r["logits"], r["attention"] = self.attention(tokens, mask)
        r["ehr"] = self.heads["ehr"](self.dropout(r["d_ehr"]))
        r["shared"] = self.heads["shared"](self.dropout(r["s"]))
        r["cxr"] = self.heads["cxr"](self.dropout(r["d_cxr"]))
        return r

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.predict(batch)["logits"])

    def training_loss(self, batch: Batch, ctx: TrainContext) -> torch.Tensor:
        r = self.predict(batch.without_labels())
        y, has = batch.y, batch.has_cxr
        w = self.weights
        multiclass = ctx.task.kind == "multiclass"

        def per_element(logits: torch.Tensor) -> torch.Tensor:
            """The task loss per stay [B] (multiclass) or per stay and label [B, C]."""
            if multiclass:
                return F.cross_entropy(logits, y, reduction="none")
            return F.binary_cross_entropy_with_logits(logits, y, reduction="none")

        branch = {name: per_element(r[name]) for name in BRANCHES}
        loss = ctx.loss_fn(r["logits"], y)
        loss = loss + w["lambda_pred_shared"] * branch["shared"].mean()
        loss = loss + w["lambda_pred_ehr"] * branch["ehr"].mean()
        loss = loss + w["lambda_pred_cxr"] * masked_mean(branch["cxr"], has)
        jsd = masked_mean(bernoulli_jsd(r["s_ehr"], r["s_cxr"]), has)
        cos_ehr = F.cosine_similarity(r["s_ehr"], r["d_ehr"], dim=-1).abs().mean()
        cos_cxr = masked_mean(F.cosine_similarity(r["s_cxr"], r["d_cxr"], dim=-1).abs(), has)
        rank = self.ranking_loss(r["attention"], branch, has)
        loss = (
            loss
            + w["lambda_disentangle_shared"] * jsd
            + w["lambda_disentangle_ehr"] * cos_ehr
            + w["lambda_disentangle_cxr"] * cos_cxr
            + w["lambda_attn_aux"] * rank
        )
        for name, value in (("jsd", jsd), ("cos_ehr", cos_ehr), ("cos_cxr", cos_cxr)):
            ctx.log(f"train/drfuse_{name}", value.detach())
        ctx.log("train/drfuse_rank", rank.detach())
        return loss

    @staticmethod
    def ranking_loss(
        attention: torch.Tensor, branch: dict[str, torch.Tensor], has_cxr: torch.Tensor
    ) -> torch.Tensor:
        """Mean hinge max(0, −sign(ℓ_B − ℓ_A)·(a_A − a_B)) over the branch pairs.

        attention [B, C, 3]; branch losses [B, C] (or [B] for multiclass: then the attention is
        averaged over classes); pairs involving the CXR branch count only stays with a film.
        Each pair's term is averaged over its non-zero entries (as the authors' code), so a pair
        the attention already ranks right contributes 0.
        """
        if branch["ehr"].dim() == 1:
            attention = attention.mean(dim=1, keepdim=True)
            branch = {k: v[:, None] for k, v in branch.items()}
        index = {"ehr": EHR_DISTINCT, "shared": SHARED, "cxr": CXR_DISTINCT}
        terms = []
        for a, b in (("cxr", "ehr"), ("shared", "ehr"), ("shared", "cxr")):
            target = torch.sign(branch[b] - branch[a]).detach()  # +1: branch a has lower loss
            hinge = F.relu(-target * (attention[..., index[a]] - attention[..., index[b]]))
            if "cxr" in (a, b):
                hinge = hinge * has_cxr[:, None]
            nonzero = (hinge > 0).sum().clamp(min=1)
            terms.append(hinge.sum() / nonzero)
        return torch.stack(terms).mean()
