"""InfoReg: regulate the information-sufficient modality inside the prime learning window.

Huang, Wei, Yang & Hu, "Adaptive Unimodal Regulation for Balanced Multimodal Information
Acquisition", CVPR 2025 (arXiv 2503.18595; official code GeWu-Lab/InfoReg_CVPR2025).

Architecture (the paper's framework): two unimodal encoders, a joint head on the concatenated
embeddings and one head per modality; the loss is ``L_joint + L_ehr + L_cxr`` (equal weights).

Mechanism:

- Amount of information = trace of the empirical Fisher information matrix, accumulated over an
  **epoch** from the squared gradients of the steps, one mean per weight tensor:
  ``Tr_e = Σ_layers mean_j Σ_steps g_j²`` (the official code's ``fim_trace``).
- Information acquisition rate at the start of epoch e with history length N (paper code: 10),
  traces before the first epoch counted as zero::

      k_e = (Σ_{i=e-N}^{e-1} Tr_i − Σ_{i=e-N-1}^{e-2} Tr_i) / Σ_{i=e-N}^{e-1} Tr_i,  k_0 = 1.

  The epoch is inside the prime learning window when ``k_e > k_thr`` (paper code: 0.04).
- Information sufficiency per batch: ``s_m = Σ_i p_m(y_i | x_i)``, the unimodal head's probability
  of the true outcome summed over the batch. The modality u with the larger score is
  information-sufficient; inside the window its encoder gets the proximal regulation term
  ``(β_u / 2) ‖θ_u − θ_u^epoch‖²`` with ``β_u = γ_u · exp(tanh(s_u − s_n))``, θ_u^epoch the
  encoder's parameters at the start of the epoch: its gradient ``β_u (θ_u − θ_u^epoch)`` pulls
  the encoder back towards where the epoch began, slowing its information acquisition while the
  other modality trains normally. Outside the window training is plain joint training.

Adaptations for EHR + CXR (see the class docstring for the reasons): the binary/multilabel score
is the per-stay mean over labels of the probability of the true outcome; scores are computed on
the stays with a film (both modalities observed); the CXR unimodal loss uses those stays only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ehrcxr.batch import Batch, InputSpec, ModelOutput, TrainContext
from ehrcxr.models.encoders import EncoderConfig, cxr_resnet, ehr_transformer
from ehrcxr.models.registry import register_model

# Rows of the FIM-trace history: the whole network and each encoder (logged; one decides the
# window, ``window_trace``).
TRACES = ("model", "ehr", "cxr")


def _true_outcome_probability(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Probability each stay's head gives its true outcome: [B].

    logits [B, C]; y [B] (multiclass) or [B, C] (binary / multilabel). Binary and multilabel:
    mean over the C labels of p^y (1 − p)^(1 − y), so the score is on the paper's scale (one
    probability per sample) whatever the number of labels.
    """
    if kind == "multiclass":
        return logits.softmax(dim=-1).gather(1, y[:, None]).squeeze(1)
    p = logits.sigmoid()
    return (y * p + (1 - y) * (1 - p)).mean(dim=1)


def _mean_square_sum(grads: list[torch.Tensor]) -> torch.Tensor:
    """Σ_tensors mean(g²) (a 0-d tensor): one step's contribution to the FIM trace."""
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)  # one fused pass over the gradients
    return sum(n.square() / g.numel() for n, g in zip(norms, grads, strict=True))


@register_model("inforeg", modalities=("ehr", "cxr"))
class InfoReg(nn.Module):
    """Transformer(ehr_input) [B, d], ResNet(cxr) [B, d] → joint Linear(2d → C) on the
    concatenation (prediction) + unimodal Linear(d → C) heads (training scores and losses).

    Arguments (paper values as defaults):
        k_threshold: prime-learning-window threshold on the acquisition rate k (paper code 0.04).
        gamma_ehr, gamma_cxr: regulation strength γ_m when m is information-sufficient (paper
            code: 0.95 for the dominant audio, 0.1 for video; EHR plays audio's part here).
        history: N, the number of epoch traces each moving sum of k covers (paper code 10).
        window_trace: which FIM trace decides the window: ``model`` (the whole network, the
            paper's "multimodal model" curve), ``ehr`` or ``cxr`` (one encoder; the official code
            uses the encoder of the modality known to dominate, audio).

    Differences from the official code (deliberate): the dominant modality is chosen per batch
    symmetrically (the official ``elif`` repeats the first condition, so video is never
    regulated); the FIM is accumulated from the task gradients before the regulation term is
    added (the term is not log-likelihood information); the trace covers every weight matrix or
    kernel (ndim ≥ 2, incl. attention projections) rather than Conv2d/Linear modules only.
    """

    def __init__(
        self,
        inputs: InputSpec,
        n_outputs: int,
        encoders: EncoderConfig,
        k_threshold: float = 0.04,
        gamma_ehr: float = 0.95,
        gamma_cxr: float = 0.1,
        history: int = 10,
        window_trace: str = "model",
    ) -> None:
        super().__init__()
        if history < 1:
            raise ValueError("history must be at least 1")
        if window_trace not in TRACES:
            raise ValueError(f"window_trace must be one of {TRACES}")
        self.k_threshold, self.gamma_ehr, self.gamma_cxr = k_threshold, gamma_ehr, gamma_cxr
        self.history, self.window_trace = history, window_trace
        d = encoders.dim
        self.ehr = ehr_transformer(inputs, encoders)
        self.cxr = cxr_resnet(encoders)
        self.head = nn.Sequential(nn.Dropout(encoders.dropout), nn.Linear(2 * d, n_outputs))
        self.head_ehr = nn.Linear(d, n_outputs)
        self.head_cxr = nn.Linear(d, n_outputs)
        # Epoch traces, newest last: [3 (TRACES), history + 1] (k needs N + 1 values); zeros
        # stand for the epochs before training started, as the paper code's padded sums.
        self.register_buffer("fim_history", torch.zeros(len(TRACES), history + 1))
        self.register_buffer("fim_epoch", torch.zeros(len(TRACES)))  # this epoch's running sum
        self.register_buffer("k_rate", torch.ones(()))  # k of the current epoch (k_0 = 1)
        self.register_buffer("in_window", torch.ones((), dtype=torch.bool))
        # The encoders' parameters at the start of the current epoch (the proximal anchor). Only
        # meaningful within an epoch, hence not checkpointed; -1: no snapshot yet.
        self._anchor: dict[str, list[torch.Tensor]] = {}
        self._anchor_epoch = -1

    # ---- prediction ----------------------------------------------------------------------------
    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """EHR and CXR embeddings, each [B, d]."""
        return self.ehr(batch.ehr_input), self.cxr(batch.cxr, batch.has_cxr)

    def forward(self, batch: Batch) -> ModelOutput:
        """Joint logits [B, C]; the unimodal heads only serve training."""
        h_ehr, h_cxr = self.encode(batch)
        return ModelOutput(logits=self.head(torch.cat([h_ehr, h_cxr], dim=-1)))

    # ---- training ------------------------------------------------------------------------------
    def configure_optimizers(self, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)]

    def _encoder_params(self, modality: str) -> list[nn.Parameter]:
        return [p for p in getattr(self, modality).parameters() if p.requires_grad]

    def _snapshot(self, epoch: int) -> None:
        """θ^epoch: copy both encoders at the first step of each epoch."""
        with torch.no_grad():
            self._anchor = {
                m: [p.detach().clone() for p in self._encoder_params(m)] for m in ("ehr", "cxr")
            }
        self._anchor_epoch = epoch

    def regulation_strengths(
        self, kind: str, logits_ehr: torch.Tensor, logits_cxr: torch.Tensor, batch: Batch
    ) -> tuple[float, float]:
        """(β_ehr, β_cxr) for this batch: γ_u exp(tanh(s_u − s_n)) for the information-sufficient
        modality u inside the window, 0 otherwise. logits_*: [B, C]; scores on stays with films.
        """
        if not bool(self.in_window):
            return 0.0, 0.0
        paired = batch.has_cxr
        with torch.no_grad():
            scores = torch.stack(
                [
                    _true_outcome_probability(kind, logits[paired], batch.y[paired]).sum()
                    for logits in (logits_ehr, logits_cxr)
                ]
                + [paired.sum().to(logits_ehr.dtype)]
            )
            # One β on every process keeps the data-parallel replicas in sync.
            scores = _all_reduce_mean(scores)
        s_ehr, s_cxr, n_paired = (float(s) for s in scores)
        if n_paired == 0 or s_ehr == s_cxr:
            return 0.0, 0.0
        gap = math.exp(math.tanh(abs(s_ehr - s_cxr)))
        return (self.gamma_ehr * gap, 0.0) if s_ehr > s_cxr else (0.0, self.gamma_cxr * gap)

    def manual_training_step(self, batch: Batch, ctx: TrainContext) -> torch.Tensor:
        """One step: joint + unimodal losses, FIM accumulation, proximal regulation, update.

        Returns the detached total loss (scalar).
        """
        if self._anchor_epoch != ctx.epoch:
            self._snapshot(ctx.epoch)
        (opt,) = ctx.optimizers
        opt.zero_grad()
        h_ehr, h_cxr = self.encode(batch)
        logits = self.head(torch.cat([h_ehr, h_cxr], dim=-1))
        logits_ehr, logits_cxr = self.head_ehr(h_ehr), self.head_cxr(h_cxr)
        loss = ctx.loss_fn(logits, batch.y) + ctx.loss_fn(logits_ehr, batch.y)
        film = batch.has_cxr
        if bool(film.any()):
            # A placeholder carries no CXR information to learn from: the unimodal CXR loss and
            # the scores use the stays with a film only.
            loss = loss + ctx.loss_fn(logits_cxr[film], batch.y[film])
        else:
            loss = loss + 0.0 * logits_cxr.sum()  # keep the head in the graph (DDP)
        ctx.backward(loss)

        self._accumulate_fim()
        betas = self.regulation_strengths(ctx.task.kind, logits_ehr, logits_cxr, batch)
        with torch.no_grad():
            for modality, beta in zip(("ehr", "cxr"), betas, strict=True):
                pairs = [
                    (p, a)
                    for p, a in zip(
                        self._encoder_params(modality), self._anchor[modality], strict=True
                    )
                    if p.grad is not None
                ]
                if beta > 0 and pairs:
                    # ∇ (β/2)‖θ − θ^epoch‖² = β (θ − θ^epoch), added to the task gradient.
                    drift = torch._foreach_sub([p for p, _ in pairs], [a for _, a in pairs])
                    torch._foreach_add_([p.grad for p, _ in pairs], drift, alpha=beta)
        opt.step()
        ctx.log("inforeg/beta_ehr", betas[0])
        ctx.log("inforeg/beta_cxr", betas[1])
        return loss.detach()

    def _accumulate_fim(self) -> None:
        """Add this step's Σ mean(g²) per trace row (whole network, EHR, CXR encoder)."""
        with torch.no_grad():
            parts = {
                m: _mean_square_sum(
                    [p.grad for p in getattr(self, m).parameters() if _tracked(p)]
                ).to(self.fim_epoch)
                for m in ("ehr", "cxr")
            }
            heads = [self.head, self.head_ehr, self.head_cxr]
            rest = _mean_square_sum([p.grad for h in heads for p in h.parameters() if _tracked(p)])
            total = parts["ehr"] + parts["cxr"] + rest.to(self.fim_epoch)
            self.fim_epoch += torch.stack([total, parts["ehr"], parts["cxr"]])

    def acquisition_rate(self) -> torch.Tensor:
        """k of the next epoch from ``fim_history`` (0-d): relative change of the N-epoch sum."""
        row = self.fim_history[TRACES.index(self.window_trace)]
        recent, earlier = row[1:].sum(), row[:-1].sum()
        return (recent - earlier) / recent.clamp_min(torch.finfo(row.dtype).tiny)

    def on_train_epoch_end(self, ctx: TrainContext) -> None:
        """Push the epoch's FIM traces, recompute k and the window flag for the next epoch."""
        traces = _all_reduce_mean(self.fim_epoch.clone())
        # Plain floats: the buffers below change in place right after.
        for name, value in zip(("", "_ehr", "_cxr"), traces.tolist(), strict=True):
            ctx.log(f"inforeg/fim_trace{name}", value)
        ctx.log("inforeg/k", float(self.k_rate))  # the k that governed the epoch just ended
        ctx.log("inforeg/regulating", float(self.in_window))
        self.fim_history.copy_(torch.cat([self.fim_history[:, 1:], traces[:, None]], dim=1))
        self.fim_epoch.zero_()
        self.k_rate.copy_(self.acquisition_rate())
        self.in_window.copy_(self.k_rate > self.k_threshold)


def _tracked(p: nn.Parameter) -> bool:
    """Weight matrices and kernels with a gradient (biases and norms carry little FIM mass)."""
    return p.grad is not None and p.ndim >= 2


def _all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over data-parallel processes (identity in a single process)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x)
        x = x / dist.get_world_size()
    return x
