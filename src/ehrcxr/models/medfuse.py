"""MedFuse: an LSTM that reads the modality embeddings as a sequence.

Hayat, Geras & Shamout, "MedFuse: Multi-modal fusion with clinical time-series data and chest
X-ray images", MLHC 2022, §3: the EHR encoder is a stacked LSTM (two layers, dropout) whose last
hidden state is v_ehr ∈ R^m; the film's pooled ResNet feature is projected to m (ϕ); the
sequence [v_ehr, ϕ(v_cxr)] is read by a single-layer fusion LSTM (hidden 512 for m = 256) whose
last hidden state is classified by one linear layer. A missing film shortens the sequence to
[v_ehr] (packed), so no placeholder image is read.

Training strategy (paper §4.2): the modality-specific encoders are first pre-trained, each with
a classifier of its own that is then discarded, and then the encoders, ϕ and the fusion module
are fine-tuned jointly. Here the EHR encoder is pre-trained for the task on the run's training
split (``ehr_pretrain_batches`` optimiser steps of the stacked LSTM + a linear classifier, in
shuffled passes over the split, AdamW at ``ehr_pretrain_lr``, through the core's ``pretrain``
hook, before the joint training); 0 gives the paper's "randomly initialised" (RI) variant. A
budget in batches, like the default profile's ``train.max_batches``, costs a base-cohort run
what it costs a matched one. Deliberate differences: the
paper pre-trains on EHR_PARTIAL (every stay with EHR data); a run here reads one cohort, so a
matched-cohort run pre-trains on the matched training stays. The image encoder is not
pre-trained on the 14 radiology labels (not part of this benchmark's data; the paper profile
starts it from ImageNet). Why it matters here: the two stacked unidirectional LSTM layers learn
the planted EHR signal slowly when trained jointly on 25 phenotypes — learning harness,
16 epochs, EHR-only phenotype AUROC 0.55–0.65 over seeds and thread counts, 0.58–0.64 at 30
epochs, while a one-layer LSTM reached 0.90 (it then lost the film: 0.53–0.54).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from ehrcxr.batch import Batch, InputSpec, ModelOutput, TrainContext
from ehrcxr.models.encoders import (
    EncoderConfig,
    encode_films,
    resnet_backbone,
    resnet_stage_channels,
)
from ehrcxr.models.registry import register_model


@register_model("medfuse", modalities=("ehr", "cxr"), missing_modality=True)
class MedFuse(nn.Module):
    """ehr_input [B, T, F + M], cxr [B, 1, H, W], has_cxr [B] → logits [B, C].

    ehr_layers: stacked LSTM layers; fusion_hidden: the fusion LSTM's width;
    ehr_pretrain_batches, ehr_pretrain_lr: the EHR encoder's pre-training (0 batches: none).
    """

    def __init__(
        self,
        inputs: InputSpec,
        n_outputs: int,
        encoders: EncoderConfig,
        ehr_layers: int = 2,
        fusion_hidden: int = 512,
        ehr_pretrain_batches: int = 1000,
        ehr_pretrain_lr: float = 1e-3,
    ) -> None:
        super().__init__()
        if ehr_pretrain_batches < 0 or not ehr_pretrain_lr > 0:
            raise ValueError("ehr_pretrain_batches must be ≥ 0 and ehr_pretrain_lr positive")
        self.ehr_pretrain_batches, self.ehr_pretrain_lr = ehr_pretrain_batches, ehr_pretrain_lr
        self.n_outputs = n_outputs
        d = encoders.dim
        # MedFuse's EHR encoder: a stacked unidirectional LSTM over the hourly input.
        self.ehr = nn.LSTM(
            inputs.ehr_channels,
            d,
            num_layers=ehr_layers,
            batch_first=True,
            dropout=encoders.dropout if ehr_layers > 1 else 0.0,
        )
        self.ehr_dropout = nn.Dropout(encoders.dropout)
        self.cxr = resnet_backbone(
            encoders.resnet_depth, encoders.resnet_weights, encoders.resnet_width
        )
        self.project = nn.Linear(resnet_stage_channels(self.cxr)[-1], d)  # ϕ
        self.fusion = nn.LSTM(d, fusion_hidden, batch_first=True)
        self.head = nn.Linear(fusion_hidden, n_outputs)

    def encode_ehr(self, ehr_input: torch.Tensor) -> torch.Tensor:
        """v_ehr [B, d]: the last layer's last hidden state of the stacked LSTM (dropout)."""
        _, (h, _) = self.ehr(ehr_input)
        return self.ehr_dropout(h[-1])

    def pretrain(self, batches: list[Batch], ctx: TrainContext) -> None:
        """Pre-train the EHR encoder for the task with a classifier of its own, then discard the
        classifier (MedFuse §4.2). ``batches``: the training split (labels included); each pass
        visits its stays in a new random order (torch's seeded global generator), until
        ``ehr_pretrain_batches`` batches of the loader's size have been stepped."""
        if self.ehr_pretrain_batches == 0 or not batches:
            return
        x = torch.cat([b.ehr_input for b in batches])
        y = torch.cat([b.y for b in batches])
        size = len(batches[0])
        head = nn.Linear(self.ehr.hidden_size, self.n_outputs).to(x.device)
        params = [*self.ehr.parameters(), *head.parameters()]
        opt = torch.optim.AdamW(params, lr=self.ehr_pretrain_lr)
        was = self.training
        self.train()
        try:
            steps = 0
            while steps < self.ehr_pretrain_batches:
                order = torch.randperm(len(x), device=x.device)
                for start in range(0, len(x), size):
                    if steps == self.ehr_pretrain_batches:
                        break
                    steps += 1
                    rows = order[start : start + size]
                    loss = ctx.loss_fn(head(self.encode_ehr(x[rows])), y[rows])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        finally:
            self.train(was)

    def forward(self, batch: Batch) -> ModelOutput:
        v_ehr = self.encode_ehr(batch.ehr_input)  # [B, d]
        v_cxr = torch.zeros_like(v_ehr)
        if bool(batch.has_cxr.any()):
            rows = batch.has_cxr.nonzero().squeeze(1)
            present = batch.has_cxr[rows]
            v_cxr = v_cxr.index_put(
                (rows,), self.project(encode_films(self.cxr, batch.cxr[rows], present))
            )
        sequence = torch.stack([v_ehr, v_cxr], dim=1)  # [B, 2, d]
        lengths = 1 + batch.has_cxr.long().cpu()  # 1 when the film is missing
        packed = pack_padded_sequence(sequence, lengths, batch_first=True, enforce_sorted=False)
        _, (fused, _) = self.fusion(packed)
        return ModelOutput(logits=self.head(fused[-1]))
