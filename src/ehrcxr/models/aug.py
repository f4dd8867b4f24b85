"""AUG: sustained boosting with adaptive classifier assignment to the weaker modality.

Qing-Yuan Jiang, Longfei Huang, Yang Yang, "Rethinking Multimodal Learning from the Perspective
of Mitigating Classification Ability Disproportion", NeurIPS 2025 (arXiv 2502.20120; authors'
code github.com/njustkmg/NeurIPS25-AUG).

Mechanism. Each modality m has an encoder h_m and a configurable classifier: a base classifier
f_m0 = W·ReLU(E_m h_m) plus boosting classifiers f_mk = W·ReLU(L_mk h_m), k = 1 … n_m, all
sharing the output layer W; the modality's prediction is the sum F_m = f_m0 + Σ_k f_mk.

- Sustained boosting: with n_m ≥ 1 the modality's loss is
  ℓ(F_m, y) + ℓ(F_m − f_mn, y) + ℓ(f_mn, y − ½·y⊙p(F_m − f_mn)) — the ensemble's
  classification error, the previous ensemble's error and the newest classifier's residual error
  (p: σ or softmax of the previous ensemble, detached). Every active classifier is in F_m, so
  every one keeps being optimised (the boosting is "sustained"); with n_m = 0 the loss is ℓ(F_m,y).
- Alternating updates: per batch, the EHR loss is minimised by one optimiser step, then the CXR
  loss by another (the CXR head recomputed after the first step, since W is shared).
- Adaptive classifier assignment: the training scores s_m = Σ over the epoch's samples (and
  labels) of the probability F_m gives the true outcome; after epoch 0 and every ``interval``
  epochs, ratio = s_ehr / s_cxr; ratio > λ + δ gives the CXR branch a new boosting classifier,
  ratio < λ − δ gives one to the EHR branch (the weaker modality gets the extra capacity).
- Inference: logits α·F_ehr + (1 − α)·F_cxr.

Boosting classifiers are pre-allocated (``max_boost`` per modality) and the active counts are a
buffer, so the optimiser holds every classifier from the start and checkpoints load strictly.
An inactive classifier takes no part in any loss, gets no gradient and is skipped by AdamW.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ehrcxr.batch import Batch, InputSpec, ModelOutput, TrainContext
from ehrcxr.models.encoders import EncoderConfig, cxr_resnet, ehr_transformer
from ehrcxr.models.registry import register_model

MODALITIES = ("ehr", "cxr")
EHR, CXR = 0, 1
# Weight of the previous ensemble's probability in the newest classifier's residual target
# (authors' code: CE(add, y) − 0.5·CE(add, y⊙p_prev) = CE(add, y − 0.5·y⊙p_prev)).
RESIDUAL_WEIGHT = 0.5


class ConfigurableClassifier(nn.Module):
    """One modality's base classifier + pre-allocated boosting classifiers, output layer shared.

    h [B, d] → base [B, C] and the boosting outputs [B, C] of the first ``n`` classifiers.
    """

    def __init__(self, dim: int, max_boost: int) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, dim)
        self.boost = nn.ModuleList(nn.Linear(dim, dim) for _ in range(max_boost))
        for layer in self.boost:
            # Authors' initialisation of an added classifier (Xavier normal, zero bias); an
            # inactive one gets no gradient, so it is still this fresh layer when activated.
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self, h: torch.Tensor, n: int, out: nn.Linear
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``out``: the output layer W (d → C), shared by both modalities' classifiers."""
        base = out(F.relu(self.embed(h)))
        return base, [out(F.relu(layer(h))) for layer in self.boost[:n]]


@register_model("aug", modalities=("ehr", "cxr"))
class AUG(nn.Module):
    """Transformer(ehr_input) [B, d] and ResNet(cxr) [B, d], each with a configurable
    classifier → F_ehr, F_cxr [B, C]; logits α·F_ehr + (1 − α)·F_cxr [B, C].

    alpha: fusion weight of the EHR prediction; lam: target score ratio s_ehr / s_cxr; delta:
    margin around it; interval: assignment check every ``interval`` epochs (and after epoch 0);
    max_boost: boosting classifiers pre-allocated per modality (assignment stops there).
    A missing film is the placeholder's feature (zero imputation, as late fusion).
    """

    def __init__(
        self,
        inputs: InputSpec,
        n_outputs: int,
        encoders: EncoderConfig,
        alpha: float = 0.5,
        lam: float = 1.0,
        delta: float = 0.01,
        interval: int = 5,
        max_boost: int = 10,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], not {alpha}")
        if interval < 1 or max_boost < 0 or delta < 0:
            raise ValueError("interval must be ≥ 1, max_boost ≥ 0 and delta ≥ 0")
        self.alpha, self.lam, self.delta = alpha, lam, delta
        self.interval, self.max_boost = interval, max_boost
        self.ehr = ehr_transformer(inputs, encoders)
        self.cxr = cxr_resnet(encoders)
        self.out = nn.Linear(encoders.dim, n_outputs)
        self.heads = nn.ModuleList(
            ConfigurableClassifier(encoders.dim, max_boost) for _ in MODALITIES
        )
        # Active boosting classifiers per modality (ehr, cxr): part of the checkpoint.
        self.register_buffer("n_boost", torch.zeros(2, dtype=torch.long))
        # The epoch's summed true-outcome probabilities (ehr, cxr): training state only.
        self.register_buffer("scores", torch.zeros(2, dtype=torch.float64), persistent=False)

    # ---- predictions ---------------------------------------------------------------------------
    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings h_ehr, h_cxr [B, d]."""
        return self.ehr(batch.ehr_input), self.cxr(batch.cxr, batch.has_cxr)

    def classify(self, m: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Modality m's ensemble F_m [B, C] and its newest boosting output f_mn [B, C] (None
        without boosting classifiers)."""
        base, boosts = self.heads[m](h, int(self.n_boost[m]), self.out)
        total = base + sum(boosts) if boosts else base
        return total, (boosts[-1] if boosts else None)

    def forward(self, batch: Batch) -> ModelOutput:
        h_ehr, h_cxr = self.encode(batch)
        f_ehr, _ = self.classify(EHR, h_ehr)
        f_cxr, _ = self.classify(CXR, h_cxr)
        return ModelOutput(logits=self.alpha * f_ehr + (1.0 - self.alpha) * f_cxr)

    # ---- training ------------------------------------------------------------------------------
    def boosting_loss(
        self, m: int, h: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Modality m's sustained-boosting loss (scalar) and its ensemble logits F_m [B, C]."""
        total, newest = self.classify(m, h)
        if newest is None:
            return ctx.loss_fn(total, y), total
        prev = total - newest  # the ensemble before the newest classifier
        multiclass = ctx.task.kind == "multiclass"
        with torch.no_grad():
            onehot = F.one_hot(y, total.shape[-1]).to(total.dtype) if multiclass else y
            p_prev = prev.softmax(dim=-1) if multiclass else prev.sigmoid()
            # What the previous ensemble has not yet explained: the residual target.
            target = onehot - RESIDUAL_WEIGHT * onehot * p_prev
        # The target is linear in ℓ for CE and BCE, so this equals the authors'
        # ℓ(f, y) − ½·ℓ(f, y⊙p); unlike that form with BCE, it stays bounded below.
        residual = (
            F.cross_entropy(newest, target)
            if multiclass
            else F.binary_cross_entropy_with_logits(newest, target)
        )
        return ctx.loss_fn(total, y) + ctx.loss_fn(prev, y) + residual, total

    @torch.no_grad()
    def _true_outcome_probability(
        self, logits: torch.Tensor, y: torch.Tensor, kind: str
    ) -> torch.Tensor:
        """Σ over rows (and labels) of the probability the logits [B, C] give the truth."""
        if kind == "multiclass":
            return logits.softmax(dim=-1).gather(1, y[:, None]).sum().double()
        p = logits.sigmoid()
        return (y * p + (1 - y) * (1 - p)).sum().double()

    def manual_training_step(self, batch: Batch, ctx: TrainContext) -> torch.Tensor:
        """One step per modality (EHR, then CXR) on a batch; returns α·L_ehr + (1 − α)·L_cxr
        (detached), the toolkit's and the authors' logged training loss."""
        (opt,) = ctx.optimizers
        y = batch.y
        h = self.encode(batch)  # both encoders once; each loss reaches only its own encoder
        losses = []
        for m in (EHR, CXR):
            opt.zero_grad()  # set_to_none: the other branch's parameters are not stepped
            loss, total = self.boosting_loss(m, h[m], y, ctx)
            ctx.backward(loss)
            opt.step()
            self.scores[m] += self._true_outcome_probability(total.detach(), y, ctx.task.kind)
            losses.append(loss.detach())
        ctx.log("train/loss_ehr", losses[EHR])
        ctx.log("train/loss_cxr", losses[CXR])
        return self.alpha * losses[EHR] + (1.0 - self.alpha) * losses[CXR]

    def assign(self, epoch: int) -> int | None:
        """Adaptive classifier assignment after ``epoch`` (0-based) from the epoch's scores;
        returns the modality that got a classifier (or None) and resets the scores."""
        scores = self.scores.clone()
        self.scores.zero_()
        if not (epoch == 0 or (epoch + 1) % self.interval == 0):
            return None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every process must take the same decision: scores over the whole training split.
            torch.distributed.all_reduce(scores)
        if scores[CXR] <= 0:
            return None
        ratio = float(scores[EHR] / scores[CXR])
        weaker = None
        if ratio > self.lam + self.delta:
            weaker = CXR  # EHR explains the labels better: boost the CXR branch
        elif ratio < self.lam - self.delta:
            weaker = EHR
        if weaker is None or int(self.n_boost[weaker]) >= self.max_boost:
            return None
        self.n_boost[weaker] += 1
        return weaker

    def on_train_epoch_end(self, ctx: TrainContext) -> None:
        if bool(self.scores[CXR] > 0):
            ctx.log("train/score_ratio", float(self.scores[EHR] / self.scores[CXR]))
        self.assign(ctx.epoch)
        ctx.log("train/boost_ehr", float(self.n_boost[EHR]))
        ctx.log("train/boost_cxr", float(self.n_boost[CXR]))

    def configure_optimizers(self, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
        """One AdamW over every parameter, the pre-allocated boosting classifiers included."""
        return [torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)]
