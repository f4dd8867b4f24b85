"""SMIL: a missing film's feature reconstructed from k-means priors, Bayesian meta-learning.

Mengmeng Ma, Jian Ren, Long Zhao, Sergey Tulyakov, Cathy Wu, Xi Peng, "SMIL: Multimodal
Learning with Severely Missing Modality", AAAI 2021 (authors' code github.com/mengmenm/SMIL).

Mechanism (paper §3). A main network θ (here: EHR Transformer, film ResNet, and a classifier on
the concatenated features) is trained with two auxiliary networks φ:

- Reconstruction network: the missing modality's feature is approximated from the observed one
  as a weighted combination of learned PRIORS — k-means centres of that modality's features:
  w = softplus(f_φ(h_ehr)) ∈ R^K, ĥ_cxr = Σ_k w_k·M_k / Σ_k w_k (authors' code: the weights are
  normalised by their sum), M = the centres through a learned linear map (identity at start).
- Feature regularisation network: a Bayesian perturbation of the latent (fused) feature
  f = [h_ehr ‖ ĥ_cxr]: f̃ = f ⊙ (1 + σ_φ(h_ehr) ⊙ ε), ε ~ N(0, I) (reparameterised; the
  perturbation scale is inferred from the observed modality), ``mc_samples`` draws whose
  logits are averaged (the Monte-Carlo estimate of the predictive).
- Bayesian meta-learning (paper Alg. 1, authors' ``meta_training``): per step the batch is split
  at random into meta-train (80 %) and meta-val (20 %). Inner loop (``inner_steps`` times) on
  meta-train: θ' = θ − inner_lr·∇_θ L_train(θ, φ) with ``create_graph=True``; the outer loss on
  meta-val is evaluated with the fast weights θ' (``torch.func.functional_call``), so φ is
  learned through the inner step. The total L_train(θ) + L_val(θ') is back-propagated once by
  the core's optimiser step.

Which parameters are inner-updated: θ = the EHR encoder and the classifier (the observed
modality's branch and the fusion head, as the authors'); the film encoder — the missing
modality's branch, which the authors keep out of the inner update — and φ (reconstruction,
prior map, regulariser) are updated by the outer step only.

Losses. The main network's input is the paper's: a stay's own film feature where it has one,
the reconstruction ĥ_cxr(h_ehr) where it has none ("mode one"). ``L_train`` (meta-train rows,
θ): the task loss of that input with the feature perturbation (``mc_samples`` draws).
``L_val`` (meta-val rows, θ'; no perturbation, the authors' ``meta_train=False``): the task
loss of the same input + on the rows that have a film the distillation of the full modality
into its reconstruction — the student is the classifier on [h_ehr ‖ ĥ_cxr] of a stay whose
film is known, the teacher the classifier on its real film (detached):
τ²·KL(teacher/τ ‖ student/τ) on the logits (``tau``: Hinton's temperature, as the authors' KD
losses; softmax for LoS, per-label Bernoulli otherwise); ``alpha``·MSE between the student's
and the teacher's classifier hidden activations (feature alignment); ``beta``·MSE(ĥ_cxr, h_cxr)
between the reconstructed and the real film feature (reconstruction / feature distillation).
So the reconstruction is learned from the stays whose film is known — even when no training
film is missing (the matched cohort) — and from the task loss of those whose film is missing.
The student's pass uses the classifier's weights detached: the distillation terms move the
reconstruction (and the EHR features it is made from) towards the film, and never pull the
classifier towards ignoring the film — which, with the τ² = 9 weight of the KD term, kept the
film unlearned (learning harness source, seed 12, 16 epochs: image-only phenotype AUROC 0.56
with the classifier in the distillation, 0.73 with the distillation weights at α = β = 0, τ = 1).

Priors. The k-means centres (``n_clusters``) are fit INSIDE the pipeline: ``prepare(batches)``
encodes the training split's films (unshuffled, eval mode, so no BatchNorm statistic moves) and
runs a deterministic k-means (k-means++ from a seeded generator, Lloyd iterations, float64 on
the CPU) into the ``centres`` buffer (in the checkpoint). Because the film encoder trains, each
training step refreshes the centres by an online mini-batch k-means update with the batch's
detached film features (each centre moves a fraction PRIOR_MOMENTUM towards the mean of the
features assigned to it), and the reconstruction reads them through the learned linear map.
Without ``prepare`` the first training step with films fits the centres on that batch.

Inference. A stay with a film uses its film's feature; a stay WITHOUT one uses the
reconstruction ĥ_cxr(h_ehr) (never the placeholder image, never zero-filled); no perturbation
(its expectation: f itself), so predictions are deterministic.

Deliberate differences. Shared encoders (benchmark setup), trained jointly rather than
pretrained. The perturbation is multiplicative with mean one (meta-dropout style) instead of
the authors' additive softplus output, so that using the feature itself at test time is the
perturbation's expectation (the authors add softplus(μ) at test time). The teacher is the main
network on the real film, trained jointly, instead of a pretrained full-modality network. An
earlier version here replaced EVERY stay's film by its reconstruction in the task losses (to
train the reconstruction on the matched cohort); the classifier then met real film features
only through a second "teacher" loss and did not learn the film (learning harness, 16 epochs:
image-only phenotype AUROC 0.58–0.60); the paper reconstructs only what is missing.

CareBench toolkit bugs avoided: its functional forward ignored the fast weights (inert
meta-learning) — here the outer loss runs with θ' (tested); it zero-filled missing films at
validation/test — here they are reconstructed (tested); its priors were precomputed .npy files
in a random projection unrelated to the trained features — here they are fit in the pipeline on
the model's own training-split features and kept current; its noise branch never fired and
``mc_size`` was unused — here both act.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ehrcxr.batch import Batch, InputSpec, ModelOutput, TrainContext
from ehrcxr.models.encoders import EncoderConfig, cxr_resnet, ehr_transformer
from ehrcxr.models.registry import register_model

META_VAL_FRACTION = 0.2  # authors' / toolkit's split: B // 5 meta-val rows
PRIOR_MOMENTUM = 0.1  # online k-means: step of an assigned centre towards its batch mean
KMEANS_ITERATIONS = 100
KMEANS_SEED = 0
NOISE_SCALE_INIT = -2.0  # regulariser's last bias: σ = softplus(−2) ≈ 0.13 at start
INNER = ("ehr.", "hidden.", "out.")  # θ: the inner-updated parameters (by name prefix)


def kmeans(
    x: torch.Tensor, k: int, iterations: int = KMEANS_ITERATIONS, seed: int = 0
) -> torch.Tensor:
    """Deterministic k-means of the rows of x [n, d] → centres [k, d] (x's dtype and device).

    k-means++ initialisation from a seeded CPU generator, then Lloyd iterations (an empty
    cluster keeps its centre) until the centres stop moving; float64 on the CPU, so the same
    features give the same centres on any device. n < k repeats points as centres.
    """
    data = x.detach().to("cpu", torch.float64)
    n = len(data)
    if n == 0:
        raise ValueError("k-means needs at least one row")
    g = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(n, (1,), generator=g))]
    d2 = (data - data[chosen[0]]).pow(2).sum(1)
    for _ in range(1, k):
        if float(d2.sum()) > 0:
            nxt = int(torch.multinomial(d2 / d2.sum(), 1, generator=g))
        else:  # every row coincides with a chosen centre (n < k, duplicates)
            nxt = int(torch.randint(n, (1,), generator=g))
        chosen.append(nxt)
        d2 = torch.minimum(d2, (data - data[nxt]).pow(2).sum(1))
    centres = data[chosen].clone()
    for _ in range(iterations):
        assign = _nearest(data, centres)
        onehot = F.one_hot(assign, k).to(data.dtype)
        counts = onehot.sum(0)
        sums = onehot.T @ data
        new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
        if torch.equal(new, centres):
            break
        centres = new
    return centres.to(x.dtype).to(x.device)


def _nearest(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre [n] for rows x [n, d] (squared Euclidean distance)."""
    return (x[:, None, :] - centres[None, :, :]).pow(2).sum(-1).argmin(1)


def distillation(
    student: torch.Tensor, teacher: torch.Tensor, tau: float, kind: str
) -> torch.Tensor:
    """τ²·KL(teacher/τ ‖ student/τ) on logits [n, C]: softmax (multiclass) or per-label
    Bernoulli (binary, multilabel), mean over rows (and labels)."""
    if kind == "multiclass":
        return (
            F.kl_div(
                F.log_softmax(student / tau, -1), F.log_softmax(teacher / tau, -1),
                log_target=True, reduction="batchmean",
            )
            * tau**2
        )  # fmt: skip
    s, t = student / tau, teacher / tau
    p = torch.sigmoid(t)
    kl = p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return kl.mean() * tau**2


@register_model("smil", modalities=("ehr", "cxr"), missing_modality=True)
class SMIL(nn.Module):
    """Transformer(ehr_input) h_ehr [B, d]; film feature h_cxr [B, d] = ResNet(film) if the stay
    has one, else the reconstruction from priors ĥ_cxr(h_ehr); classifier
    [h_ehr ‖ h_cxr] [B, 2d] → Linear → ReLU (hidden [B, d]) → Dropout → Linear → logits [B, C].

    n_clusters: K priors (k-means centres of film features); inner_steps / inner_lr: the
    meta-learning inner loop; mc_samples: perturbation draws per meta-train row; alpha: hidden-
    feature alignment weight; beta: reconstruction distillation weight; tau: KD temperature.
    """

    def __init__(
        self,
        inputs: InputSpec,
        n_outputs: int,
        encoders: EncoderConfig,
        n_clusters: int = 10,
        inner_steps: int = 1,
        inner_lr: float = 0.01,
        mc_samples: int = 1,
        alpha: float = 0.05,
        beta: float = 0.05,
        tau: float = 3.0,
    ) -> None:
        super().__init__()
        if n_clusters < 1 or inner_steps < 1 or mc_samples < 1:
            raise ValueError("n_clusters, inner_steps and mc_samples must be ≥ 1")
        if not all(math.isfinite(v) and v >= 0 for v in (inner_lr, alpha, beta)):
            raise ValueError("inner_lr, alpha and beta must be finite and ≥ 0")
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be positive, not {tau}")
        self.n_clusters, self.inner_steps, self.inner_lr = n_clusters, inner_steps, inner_lr
        self.mc_samples, self.alpha, self.beta, self.tau = mc_samples, alpha, beta, tau
        d = encoders.dim
        # Main network θ.
        self.ehr = ehr_transformer(inputs, encoders)
        self.cxr = cxr_resnet(encoders)
        self.hidden = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU())
        self.out = nn.Sequential(nn.Dropout(encoders.dropout), nn.Linear(d, n_outputs))
        # Reconstruction network φ_r: cluster weights from the EHR, priors through a linear map.
        self.infer = nn.Sequential(
            nn.Linear(d, d), nn.ReLU(), nn.Dropout(encoders.dropout), nn.Linear(d, n_clusters)
        )
        self.prior_map = nn.Linear(d, d)
        with torch.no_grad():
            self.prior_map.weight.copy_(torch.eye(d))
            self.prior_map.bias.zero_()
        # Feature regularisation network φ_n: the perturbation scale σ [2d] from the EHR.
        self.regulariser = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 2 * d))
        with torch.no_grad():
            self.regulariser[-1].bias.fill_(NOISE_SCALE_INIT)
        self.register_buffer("centres", torch.zeros(n_clusters, d))
        self.register_buffer("prior_ready", torch.tensor(False))

    # ---- pieces ------------------------------------------------------------------------------
    def _call(
        self,
        name: str,
        fast: dict[str, torch.Tensor] | None,
        *args: torch.Tensor,
        frozen: bool = False,
    ):
        """Submodule ``name`` on args, with the fast weights of ``fast`` when given; with
        ``frozen`` its weights are detached (the output still carries the inputs' gradient)."""
        module = getattr(self, name)
        if fast is None and not frozen:
            return module(*args)
        prefix = name + "."
        weights = fast if fast is not None else dict(self.named_parameters())
        own = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        if frozen:
            own = {k: v.detach() for k, v in own.items()}
        return functional_call(module, own, args)

    def reconstruct(self, h_ehr: torch.Tensor) -> torch.Tensor:
        """ĥ_cxr [n, d] = Σ_k w_k M_k / Σ_k w_k, w = softplus(f(h_ehr)) [n, K], M = map(centres)."""
        w = F.softplus(self.infer(h_ehr))
        priors = self.prior_map(self.centres)
        return (w @ priors) / w.sum(-1, keepdim=True).clamp(min=1e-8)

    def classify(
        self,
        fused: torch.Tensor,
        fast: dict[str, torch.Tensor] | None = None,
        frozen: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused [..., 2d] → (hidden [..., d], logits [..., C]); ``frozen``: the classifier's
        weights detached, so a loss on the output trains only what made the input."""
        hidden = self._call("hidden", fast, fused, frozen=frozen)
        return hidden, self._call("out", fast, hidden, frozen=frozen)

    def perturbed_logits(
        self, h_ehr: torch.Tensor, film: torch.Tensor, fast: dict[str, torch.Tensor] | None
    ) -> torch.Tensor:
        """Mean logits [n, C] over ``mc_samples`` perturbations f ⊙ (1 + σ(h_ehr) ⊙ ε)."""
        fused = torch.cat([h_ehr, film], dim=-1)
        scale = F.softplus(self.regulariser(h_ehr))
        eps = torch.randn((self.mc_samples, *fused.shape), device=fused.device, dtype=fused.dtype)
        _, logits = self.classify(fused * (1.0 + scale * eps), fast)
        return logits.mean(0)

    def forward(self, batch: Batch) -> ModelOutput:
        """Inference: the film's feature if the stay has one, else its reconstruction."""
        h_ehr = self.ehr(batch.ehr_input)
        h_cxr = self.cxr.present(batch.cxr, batch.has_cxr)
        film = torch.where(batch.has_cxr[:, None], h_cxr, self.reconstruct(h_ehr))
        _, logits = self.classify(torch.cat([h_ehr, film], dim=-1))
        return ModelOutput(logits=logits)

    # ---- priors ------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, batches) -> None:
        """Fit the K centres on the training split's film features (eval mode: no BatchNorm
        statistic moves, no dropout)."""
        was = self.training
        self.eval()
        try:
            feats = [self.cxr.present(b.cxr, b.has_cxr)[b.has_cxr] for b in batches]
        finally:
            self.train(was)
        feats = [f for f in feats if len(f)]
        if not feats:
            return  # no film in the training split: the first training step cannot fit either
        self.centres.copy_(kmeans(torch.cat(feats), self.n_clusters, seed=KMEANS_SEED))
        self.prior_ready.fill_(True)

    @torch.no_grad()
    def refresh_priors(self, feats: torch.Tensor) -> None:
        """Online mini-batch k-means with detached film features [n, d]: each centre with
        assigned features moves PRIOR_MOMENTUM towards their mean (fit from scratch if none)."""
        if len(feats) == 0:
            return
        feats = feats.detach().to(self.centres.dtype)
        if not bool(self.prior_ready):
            self.centres.copy_(kmeans(feats, self.n_clusters, seed=KMEANS_SEED))
            self.prior_ready.fill_(True)
            return
        onehot = F.one_hot(_nearest(feats, self.centres), self.n_clusters).to(feats.dtype)
        counts = onehot.sum(0)
        means = (onehot.T @ feats) / counts.clamp(min=1)[:, None]
        step = PRIOR_MOMENTUM * (counts > 0).to(feats.dtype)[:, None]
        self.centres.mul_(1 - step).add_(step * means)

    # ---- meta-learning -----------------------------------------------------------------------
    def meta_losses(self, batch: Batch, ctx: TrainContext) -> dict[str, torch.Tensor]:
        """L_train (meta-train rows, θ) and L_val (meta-val rows, θ') and their parts."""
        y, has = batch.y, batch.has_cxr
        b = len(batch)
        x = batch.ehr_input
        # The film encoder is not inner-updated: one ResNet pass over every film serves both.
        h_cxr = self.cxr.present(batch.cxr, has)
        if self.training:
            self.refresh_priors(h_cxr[has])
        perm = torch.randperm(b, device=x.device)
        n_val = max(1, int(b * META_VAL_FRACTION)) if b > 1 else 0
        val, train = perm[:n_val], perm[n_val:]
        if n_val == 0:
            val = train  # a single stay: meta-train and meta-val coincide
        theta = {k: p for k, p in self.named_parameters() if k.startswith(INNER)}
        fast = dict(theta)
        first = None
        for _ in range(self.inner_steps):
            loss_train = self._train_loss(x[train], h_cxr[train], has[train], y[train], fast, ctx)
            first = loss_train if first is None else first
            names = [k for k, p in fast.items() if p.requires_grad]
            if not names or not torch.is_grad_enabled():
                break
            grads = torch.autograd.grad(
                loss_train, [fast[k] for k in names], create_graph=True, allow_unused=True
            )
            for k, g in zip(names, grads, strict=True):
                if g is not None:
                    fast[k] = fast[k] - self.inner_lr * g
        parts = self._val_loss(x[val], h_cxr[val], has[val], y[val], fast, ctx)
        parts["train"] = first
        return parts

    def _film_input(
        self, h_ehr: torch.Tensor, h_cxr: torch.Tensor, has: torch.Tensor
    ) -> torch.Tensor:
        """Mode one [n, d]: the real film feature where the stay has one, else the
        reconstruction from the EHR."""
        return torch.where(has[:, None], h_cxr, self.reconstruct(h_ehr))

    def _train_loss(self, x, h_cxr, has, y, fast, ctx: TrainContext) -> torch.Tensor:
        """Task loss of the perturbed mode-one input (meta-train rows, θ or the fast weights)."""
        h_ehr = self._call("ehr", fast, x)
        film = self._film_input(h_ehr, h_cxr, has)
        return ctx.loss_fn(self.perturbed_logits(h_ehr, film, fast), y)

    def _val_loss(self, x, h_cxr, has, y, fast, ctx: TrainContext) -> dict[str, torch.Tensor]:
        """Task loss of the mode-one input + the film rows' distillation into the
        reconstruction (meta-val rows, θ')."""
        h_ehr = self._call("ehr", fast, x)
        film = self._film_input(h_ehr, h_cxr, has)
        hidden, logits = self.classify(torch.cat([h_ehr, film], -1), fast)
        parts = {"task": ctx.loss_fn(logits, y)}
        zero = logits.new_zeros(())
        parts.update(kd=zero, align=zero, reconstruction=zero)
        if bool(has.any()):
            # The student's classifier is frozen: distillation trains the reconstruction to
            # stand in for the film, never the classifier to ignore the film.
            e, r = h_ehr[has].detach(), self.reconstruct(h_ehr[has].detach())
            s_hidden, s_logits = self.classify(torch.cat([e, r], -1), fast, frozen=True)
            # The teacher is the main forward of the film rows (their input is the real film).
            t_hidden, t_logits = hidden[has], logits[has]
            parts["kd"] = distillation(s_logits, t_logits.detach(), self.tau, ctx.task.kind)
            parts["align"] = F.mse_loss(s_hidden, t_hidden.detach())
            parts["reconstruction"] = F.mse_loss(r, h_cxr[has].detach())
        parts["val"] = (
            parts["task"] + parts["kd"]
            + self.alpha * parts["align"] + self.beta * parts["reconstruction"]
        )  # fmt: skip
        return parts

    def training_loss(self, batch: Batch, ctx: TrainContext) -> torch.Tensor:
        """L_train(θ) + L_val(θ'): one backward through the inner update (the core steps)."""
        parts = self.meta_losses(batch, ctx)
        for name in ("train", "val", "kd", "reconstruction"):
            ctx.log(f"train/smil_{name}", parts[name].detach())
        return parts["train"] + parts["val"]
